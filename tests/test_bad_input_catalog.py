"""Every bad input of the ``alpha`` CLI: one line on stderr, exit 2, no traceback, nothing written.

Most cases call ``flows.cli.main(argv)`` in-process (the same code the console
script runs; argparse errors arrive as ``SystemExit(2)``), in a fresh folder
that is the working directory, with ``$ALPHA_SPOOL`` inside it. "Nothing
written" is checked on the whole folder: the same files with the same sizes and
modification times before and after, so a run dir, a lake, a spool entry or a
rewritten data file of a resumed run would all fail the case. A few cases run
the real console script to prove that no traceback reaches a terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flows.cli import main
from model.config import SHIPPED_CORPUS, build_train_config
from model.rundir import lock_run_dir
from model.trainer import train

ROOT = Path(__file__).resolve().parents[1]
ALPHA = [str(Path(sys.executable).parent / "alpha")]
if not Path(ALPHA[0]).exists():  # installed elsewhere: run the module
    ALPHA = [sys.executable, "-m", "flows.cli"]
TINY = {
    "device": "cpu", "batch": 4, "block": 16, "dim": 16, "heads": 2, "layers": 1,
    "iters": 10, "eval_interval": 10, "eval_iters": 1, "sample_tokens": 0,
}  # fmt: skip


# -- inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished run dir (10 steps) whose checkpoint the cases corrupt."""
    base = tmp_path_factory.mktemp("good")
    data = base / "tiny.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = build_train_config({**TINY, "data": str(data), "run_dir": str(base / "run")})
        assert train(cfg, progress=False).status == "completed"
    finally:
        torch.set_num_threads(n)
    return base / "run"


def _rewrite_meta(run: Path, **changes) -> None:
    """Rewrite fields of the checkpoint's JSON metadata (None deletes the field)."""
    path = run / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        fields = f.metadata()
    meta = json.loads(fields["meta"])
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    fields["meta"] = json.dumps(meta)
    save_file(tensors, str(path), metadata=fields)


def _corrupt_run(**changes) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, good: Path) -> Path:
        run = tmp / "bad-run"
        shutil.copytree(good, run)
        _rewrite_meta(run, **changes)
        return run

    return build


def _write(name: str, content: str | bytes) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, good: Path) -> Path:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return build


def _foreign(tmp: Path, good: Path) -> Path:
    path = tmp / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    return path


def _truncated(tmp: Path, good: Path) -> Path:
    run = tmp / "bad-run"
    shutil.copytree(good, run)
    ckpt = run / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-4000])
    return run


def _fifo(tmp: Path, good: Path) -> Path:
    os.mkfifo(tmp / "pipe")  # opening it would block until a writer comes
    return tmp / "pipe"


def _copy_of_good(tmp: Path, good: Path) -> Path:
    shutil.copytree(good, tmp / "copy")
    return tmp / "copy"


def _nonempty(tmp: Path, good: Path) -> Path:
    (tmp / "full").mkdir()
    (tmp / "full" / "notes.txt").write_text("mine\n")
    return tmp / "full"


def _empty_dir(tmp: Path, good: Path) -> Path:
    (tmp / "emptydir").mkdir()
    return tmp / "emptydir"


def _jsonl_only(tmp: Path, good: Path) -> Path:
    (tmp / "jsonl-only").mkdir()
    (tmp / "jsonl-only" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return tmp / "jsonl-only"


SYMBIO = '{"searchMode": "none"'
INPUTS: dict[str, Callable[[Path, Path], Path]] = {
    "empty": _write("empty.txt", ""),
    "short": _write("short.txt", "just a few words\n"),
    "binary": _write("binary.txt", b"\xff\xfe\x00\x81" * 100),
    "file": _write("plain.txt", "a file, not a folder\n"),
    "garbage": _write("garbage.safetensors", b"not a checkpoint at all"),
    "foreign": _foreign,
    "truncated": _truncated,
    "good": _copy_of_good,
    "fifo": _fifo,
    "nonempty": _nonempty,
    "emptydir": _empty_dir,
    "jsonl_only": _jsonl_only,
    "step_abc": _corrupt_run(step="abc"),
    "step_neg": _corrupt_run(step=-3),
    "data_state_garbage": _corrupt_run(data_state={"train": "garbage", "val": [1, 2]}),
    "data_state_string": _corrupt_run(data_state="garbage"),
    "model_config_bad": _corrupt_run(model_config={"n_embd": "wide", "n_layer": 1}),
    "model_config_huge": _corrupt_run(
        model_config={"vocab_size": 65, "block_size": 16, "n_layer": 1, "n_head": 2,
                      "n_embd": 10_000_000}  # fmt: skip
    ),
    "run_id_evil": _corrupt_run(run_id="../../etc"),
    "tokenizer_bad": _corrupt_run(tokenizer='{"kind": "words"}'),
    "best_val_bad": _corrupt_run(best_val_loss="low"),
    "groups_bad": _corrupt_run(optim_param_groups="x"),
    "scalars_bad": _corrupt_run(optim_scalars={"nope": {"step": 1}}),
    "train_config_bad": _corrupt_run(train_config=["not", "a", "dict"]),
    "sc_badjson": _write("sc.json", "{not json"),
    "sc_list": _write("sc.json", "[1, 2]"),
    "sc_unknown": _write("sc.json", SYMBIO + ', "noSuchKey": 1}'),
    "sc_type": _write("sc.json", SYMBIO + ', "batchMin": "small"}'),
    "sc_bounds": _write("sc.json", SYMBIO + ', "batchMin": 64, "batchMax": 8}'),
}


class Inputs(dict):
    """``{name}`` placeholders: inputs are built on first use, inside the case's folder."""

    def __init__(self, tmp: Path, good: Path) -> None:
        super().__init__(tmp=str(tmp))
        self.tmp, self.good = tmp, good

    def __missing__(self, key: str) -> str:
        self[key] = str(INPUTS[key](self.tmp, self.good))
        return self[key]


# -- the catalog ----------------------------------------------------------------------

T = "train"
CASES: list[tuple[list[str], str]] = [
    # data and text files
    ([T, "--data", "{tmp}/missing.txt"], "--data: file not found"),
    ([T, "--data", "{empty}"], "--data: file is empty"),
    ([T, "--data", "{tmp}"], "--data: is a directory"),
    ([T, "--data", "{binary}"], "--data: not a UTF-8 text file"),
    ([T, "--data", "{short}", "--block", "64"], "--data: the train split has"),
    ([T, "--val-data", "{tmp}/missing.txt"], "--val-data: file not found"),
    ([T, "--data", "{fifo}"], "--data: not a regular file"),
    ([T, "--data", "/dev/zero"], "--data: not a regular file: /dev/zero"),
    ([T, "--val-data", "/dev/zero"], "--val-data: not a regular file"),
    # flag values
    ([T, "--activation", "tanh"], "--activation:"),
    ([T, "--domain", "poetry"], "--domain: unknown domain 'poetry'"),
    ([T, "--device", "tpu"], "--device:"),
    ([T, "--dtype", "float16"], "--dtype:"),
    ([T, "--tokenizer", "words"], "--tokenizer:"),
    ([T, "--iters", "abc"], "argument --iters: invalid int value"),
    ([T, "--lr=fast"], "argument --lr: invalid float value"),
    ([T, "--iters", "-5"], "--iters: input should be greater than or equal to 1"),
    ([T, "--batch", "0"], "--batch: input should be greater than or equal to 1"),
    ([T, "--heads", "0"], "--heads: input should be greater than or equal to 1"),
    ([T, "--block", "100000"], "--block: input should be less than or equal to 65536"),
    ([T, "--vocab-size", "10"], "--vocab-size: input should be greater than or equal to 260"),
    ([T, "--dim", "100", "--heads", "3"], "--dim: 100 is not divisible by heads (3)"),
    ([T, "--lr", "nan"], "--lr: input should be a finite number"),
    ([T, "--dropout", "1.5"], "--dropout:"),
    ([T, "--beta2", "1"], "--beta2:"),
    ([T, "--grad-clip=-1"], "--grad-clip:"),
    ([T, "--seed", "-1"], "--seed:"),
    ([T, "--eval-interval", "0"], "--eval-interval:"),
    ([T, "--eval-iters", "100000000000"], "--eval-iters: input should be less than or equal to"),
    ([T, "--sample-tokens", "100000000000"], "--sample-tokens: input should be less than"),
    ([T, "--lr", "1e-4", "--lr-min", "1e-3"], "--lr-min: 0.001 is larger than lr"),
    ([T, "--compile=yes"], "argument --compile: ignored explicit argument"),
    ([T, "--no-such-flag"], "unrecognized arguments"),
    ([T, "--lr"], "argument --lr: expected one argument"),
    # sizes: refused before anything is allocated or written
    ([T, "--dim", "10000000", "--heads", "2"], "--dim: this config needs"),
    ([T, "--layers", "1000000"], "--layers: this config needs"),
    ([T, "--batch", "1000000000"], "--batch: this config needs"),
    ([T, "--ffn-dim", "100000000000"], "--ffn-dim: this config needs"),
    # run dir
    ([T, "--run-dir", "/proc/alpha-x"], "--run-dir: cannot create /proc/alpha-x"),
    ([T, "--run-dir", "{file}"], "exists and is not a directory"),
    ([T, "--run-dir", "{nonempty}"], "is not empty (use --resume to continue a run)"),
    # lake
    ([T, "--lake", "s3://"], "--lake:"),
    ([T, "--lake", "{file}"], "--lake: lake path"),
    ([T, "--lake", "ftp:/x"], "--lake: malformed lake URL"),
    # checkpoints (--resume)
    ([T, "--resume", "{garbage}"], "--resume: unreadable checkpoint"),
    ([T, "--resume", "{fifo}"], "--resume: unreadable checkpoint"),
    ([T, "--resume", "{foreign}"], "is not an Alpha checkpoint"),
    ([T, "--resume", "{tmp}/nothing"], "--resume: checkpoint not found"),
    ([T, "--resume", "{truncated}", "--iters", "20"], "--resume: unreadable checkpoint"),
    ([T, "--resume", "{good}", "--iters", "5"], "nothing to resume"),
    ([T, "--resume", "{step_abc}", "--iters", "20"], "has a bad step 'abc' in its metadata"),
    ([T, "--resume", "{step_neg}", "--iters", "20"], "has a bad step -3"),
    ([T, "--resume", "{data_state_garbage}", "--iters", "20"], "unreadable data state"),
    ([T, "--resume", "{data_state_string}", "--iters", "20"], "bad data_state (not an object)"),
    ([T, "--resume", "{model_config_bad}", "--iters", "20"], "model config: vocab_size: field required"),
    ([T, "--resume", "{model_config_huge}", "--iters", "20"], "shape mismatch"),
    ([T, "--resume", "{run_id_evil}", "--iters", "20"], "bad run_id '../../etc'"),
    ([T, "--resume", "{tokenizer_bad}", "--iters", "20"], "unknown tokenizer kind 'words'"),
    ([T, "--resume", "{best_val_bad}", "--iters", "20"], "bad best_val_loss 'low'"),
    ([T, "--resume", "{groups_bad}", "--iters", "20"], "bad optim_param_groups"),
    ([T, "--resume", "{scalars_bad}", "--iters", "20"], "optimizer state does not fit"),
    ([T, "--resume", "{train_config_bad}", "--iters", "20"], "bad train_config (not an object)"),
    ([T, "--resume", "{good}", "--dim", "32", "--iters", "20"], "--resume: shape mismatch"),
    # symbio config files
    ([T, "--symbio-config", "{tmp}/x.json"], "--symbio-config: only valid together with --symbio"),
    ([T, "--symbio", "--symbio-config", "{tmp}/x.json"], "--symbio-config: file not found"),
    ([T, "--symbio", "--symbio-config", "{sc_badjson}"], "--symbio-config:"),
    ([T, "--symbio", "--symbio-config", "{fifo}"], "not a regular file"),
    ([T, "--symbio", "--symbio-config", "{sc_list}"], "must be a JSON object"),
    ([T, "--symbio", "--symbio-config", "{sc_unknown}"], "noSuchKey"),
    ([T, "--symbio", "--symbio-config", "{sc_type}"], "batchMin"),
    ([T, "--symbio", "--symbio-config", "{sc_bounds}"], "--symbio-config:"),
    # alpha sample
    (["sample"], "the following arguments are required: --checkpoint"),
    (["sample", "--checkpoint", "{tmp}/none"], "--checkpoint: checkpoint not found"),
    (["sample", "--checkpoint", "{foreign}"], "is not an Alpha checkpoint"),
    (["sample", "--checkpoint", "{garbage}"], "--checkpoint: unreadable checkpoint"),
    (["sample", "--checkpoint", "{fifo}"], "not a regular file"),
    (["sample", "--checkpoint", "{garbage}", "--tokens", "-1"], "--tokens: must be >= 0"),
    (["sample", "--checkpoint", "{good}", "--temperature", "0"], "--temperature:"),
    (["sample", "--checkpoint", "{good}", "--top-k", "0"], "--top-k: must be >= 1"),
    (["sample", "--checkpoint", "{good}", "--device", "tpu"], "--device: unknown device"),
    (["sample", "--checkpoint", "{step_abc}"], "has a bad step 'abc'"),
    (["sample", "--checkpoint", "{model_config_huge}"], "the checkpoint's model has"),
    (["sample", "--checkpoint", "{truncated}"], "--checkpoint: unreadable checkpoint"),
    # alpha runs
    (["runs", "--status", "bogus"], "--status must be one of"),
    (["runs", "--limit", "0"], "--limit must be at least 1"),
    (["runs", "--limit", "many"], "argument --limit: invalid int value"),
    (["runs", "--lake", "s3://"], "--lake:"),
    # alpha lake
    (["lake"], "the following arguments are required: ACTION"),
    (["lake", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["lake", "flush", "--lake", "s3://"], "--lake:"),
    (["lake", "flush", "--run-dir", "{tmp}/none"], "--run-dir: not a directory"),
    (["lake", "flush", "--run-dir", "{emptydir}"], "--run-dir: no metrics.jsonl in"),
    (["lake", "flush", "--run-dir", "{jsonl_only}"], "has no run id"),
    # alpha submit (refused before any Prefect API call)
    (["submit", "--iters", "abc"], "argument --iters: invalid int value"),
    (["submit", "--job-variables", "{{bad"], "--job-variables: not valid JSON"),
    (["submit", "--job-variables", "[1]"], "--job-variables: must be a JSON object"),
    (["submit", "--symbio", "--symbio-config", "{tmp}/x.json"], "--symbio-config: file not found"),
    (["submit", "--symbio", "--symbio-config", "{sc_badjson}"], "is not valid JSON"),
    (["submit", "--symbio", "--symbio-config", "{fifo}"], "--symbio-config: not a regular file"),
    (["submit", "--symbio", "--symbio-config", "{sc_list}"], "must hold a JSON object"),
    (["nonsense"], "unknown command 'nonsense'"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def with_defaults(argv: list[str], tmp: Path) -> list[str]:
    """Train cases run on the CPU into ``tmp/out`` and ``tmp/lake`` unless they say otherwise."""
    if argv[0] != T:
        return argv
    extra = [f"--{k}={v}" for k, v in (("device", "cpu"), ("run-dir", tmp / "out"),
             ("lake", tmp / "lake")) if f"--{k}" not in argv]  # fmt: skip
    return [*argv, *extra]


@pytest.fixture
def case_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPHA_SPOOL", str(tmp_path / "spool"))
    monkeypatch.delenv("ALPHA_LAKE", raising=False)
    monkeypatch.delenv("ALPHA_MEMORY_LIMIT", raising=False)
    return tmp_path


def test_the_catalog_is_large() -> None:
    assert len(CASES) >= 40
    assert len({" ".join(a) for a, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input(argv: list[str], message: str, case_dir: Path, good_run: Path, capsys) -> None:
    inputs = Inputs(case_dir, good_run)
    argv = with_defaults([a.format_map(inputs) for a in argv], case_dir)
    before = snapshot(case_dir)
    code, out, err = run_main(argv, capsys)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith(("alpha ", "alpha: ")), lines[0]
    assert "Traceback" not in err + out
    assert out == "", out  # refused before the config is printed
    assert snapshot(case_dir) == before, "a bad input wrote something"


def test_a_run_dir_in_use_is_refused(case_dir: Path, good_run: Path, capsys) -> None:
    """A live process holds the lock: a resume and a backfill of that folder are refused."""
    run = Path(Inputs(case_dir, good_run)["good"])
    with lock_run_dir(run, fresh=False):
        before = snapshot(case_dir)
        for argv in (
            [T, "--resume", str(run), "--iters", "20", "--lake", str(case_dir / "lake")],
            ["lake", "flush", "--run-dir", str(run)],
        ):
            code, out, err = run_main(argv, capsys)
            assert code == 2 and out == "", (argv, out, err)
            assert err.count("\n") == 1 and f"is in use by a live alpha run (pid {os.getpid()})" in err
        assert snapshot(case_dir) == before


def test_a_runs_limit_beyond_any_lake_lists_them_all(case_dir: Path, capsys) -> None:
    from lake_fixtures import write_run

    write_run(str(case_dir / "lake"), "only-1", status="completed")
    code, out, err = run_main(["runs", "--limit", "9" * 25, "--lake", str(case_dir / "lake")], capsys)
    assert (code, err) == (0, "") and [x.split()[0] for x in out.splitlines()] == ["RUN", "only-1"]


def test_memory_limit_override_is_checked(case_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ALPHA_MEMORY_LIMIT", "lots")
    code, out, err = run_main(with_defaults([T], case_dir), capsys)
    assert code == 2 and out == ""
    assert err.strip() == (
        "alpha train: error: ALPHA_MEMORY_LIMIT: expected bytes such as 64G or 'off' (got 'lots')"
    )
    monkeypatch.setenv("ALPHA_MEMORY_LIMIT", "1M")  # the default tiny config does not fit
    code, _, err = run_main(with_defaults([T], case_dir), capsys)
    assert code == 2 and "the memory limit is 1 MiB" in err
    assert not (case_dir / "out").exists()


def test_size_estimate_is_exact_for_params_and_admits_real_configs() -> None:
    from model.config import ModelConfig, check_size, domain_defaults, estimate_size
    from model.gpt import GPT

    for act, ffn in (("gelu", None), ("swiglu", None), ("relu", 100)):
        cfg = build_train_config({**TINY, "activation": act, "ffn_dim": ffn, "data": "x"})
        model = GPT(ModelConfig.from_train(cfg, 77))
        assert estimate_size(cfg, 77).params == model.num_params()
    eight_gib = 8 << 30  # every shipped preset and the GPU benchmark config fit in 8 GiB
    for domain in ("shakespeare", "chat", "code"):
        check_size(build_train_config(domain_defaults(domain) | {"data": "x"}), limit=eight_gib)
    bench = {"dim": 384, "heads": 6, "layers": 6, "block": 256, "batch": 64, "data": "x"}
    check_size(build_train_config(bench), 65, limit=eight_gib, activation_bytes=2)


# -- through the console script -----------------------------------------------------

SUBPROCESS_CASES = [
    (["train", "--device", "cpu", "--dim", "10000000", "--heads", "2"], "--dim: this config needs"),
    (["train", "--device", "cpu", "--batch", "1000000000"], "--batch: this config needs"),
    (["train", "--device", "cpu", "--run-dir", "/proc/alpha-x"], "--run-dir: cannot create"),
    (["train", "--resume", "{data_state_garbage}", "--iters", "20"], "unreadable data state"),
    (["train", "--resume", "{step_abc}", "--iters", "20"], "has a bad step 'abc'"),
    (["submit", "--iters", "3"], "PREFECT_API_URL is not set"),
]


@pytest.mark.parametrize(("argv", "message"), SUBPROCESS_CASES, ids=[a[1] for a, _ in SUBPROCESS_CASES])
def test_no_traceback_reaches_the_terminal(
    argv: list[str], message: str, tmp_path: Path, good_run: Path
) -> None:
    argv = [a.format_map(Inputs(tmp_path, good_run)) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "ALPHA_SPOOL": str(tmp_path / "spool"), "PREFECT_HOME": str(tmp_path / "prefect")}  # fmt: skip
    for key in ("ALPHA_LAKE", "PREFECT_API_URL", "PREFECT_PROFILES_PATH", "ALPHA_MEMORY_LIMIT"):
        env.pop(key, None)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [*ALPHA, *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("prefect")}
    assert after == before
