"""Real faults against real ``alpha train`` processes (CPU, tiny model): issue 12, engine part.

- SIGTERM mid-run (plain and symbio): every row of ``metrics.jsonl`` is in the lake, the
  run row says ``cancelled``, exit code 143.
- ``kill -9`` three times, then ``--resume`` to the end (loopback S3 lake, moto): no
  step missing or duplicated in the lake (after the reader's de-dup; raw duplicates
  only of steps the killed processes re-did), ``metrics.jsonl`` holds each step once,
  the run row says the truth, and the model is bit-exact with an uninterrupted run.
- One run dir, two processes: the second is refused in one line (exit 2).
- The end status and exit code tell the truth about the lake (spooled, lost).
- In-process: a step's row is recorded before its checkpoint; temp names are unique.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from s3_server import BUCKET, S3Server, s3_env, s3_server  # noqa: F401 - the fixture
from safetensors.torch import load_file

from model import checkpoint as ckpt_io
from model.config import build_train_config
from model.hooks import TrainerHook
from model.rundir import tmp_name
from model.trainer import Trainer
from storage.backfill import backfill_run
from storage.lake import open_lake
from storage.reader import get_run, run_metrics, scan_table
from storage.sink import MetricSink
from tasks.run import lake_verdict

ROOT = Path(__file__).resolve().parents[1]
ALPHA = [str(Path(sys.executable).parent / "alpha")]
if not Path(ALPHA[0]).exists():  # installed elsewhere: run the module
    ALPHA = [sys.executable, "-m", "flows.cli"]
TINY = [
    "--device=cpu", "--batch=4", "--block=32", "--dim=32", "--heads=2", "--layers=2",
    "--eval-iters=2", "--sample-tokens=0", "--lr=3e-3",
]  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Environment of the ``alpha`` processes: this worktree, one thread, a private spool."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
         "ALPHA_SPOOL": str(tmp_path / "spool"), "ALPHA_LAKE_GATE": "thread"}  # fmt: skip
    e.pop("ALPHA_LAKE", None)
    return e


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*ALPHA, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_rows(jsonl: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``jsonl`` has ``n`` lines (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"{jsonl} did not reach {n} rows in {timeout}s")


def jsonl_steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def ckpt_step(run: Path) -> int:
    return ckpt_io.read_meta(run).step


# -- SIGTERM ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "symbio"])
def test_sigterm_lands_every_row_and_says_cancelled(
    mode: str, corpus: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    run, lake = tmp_path / "run", tmp_path / "lake"
    args = ["train", "--data", str(corpus), *TINY, "--iters=100000", "--eval-interval=50",
            f"--run-dir={run}", f"--lake={lake}"]  # fmt: skip
    if mode == "symbio":
        cfg = tmp_path / "symbio.json"
        cfg.write_text(json.dumps({"searchMode": "none", "metricsInterval": 10}))
        args += ["--symbio", f"--symbio-config={cfg}"]
    proc = start(args, tmp_path, env)
    wait_for_rows(run / "metrics.jsonl", 30, proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc, timeout=120)

    assert code == 143, err
    assert "Traceback" not in err
    assert "alpha train: cancelled by SIGTERM after" in out
    steps = jsonl_steps(run / "metrics.jsonl")
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 30
    run_id = json.loads((run / "config.json").read_text())["run_id"]
    landed = run_metrics(str(lake), run_id, ["step"])["step"].to_list()
    assert landed == steps  # every recorded row reached the lake
    row = get_run(str(lake), run_id)
    assert row["status"] == "cancelled" and row["latest_step"] == steps[-1]
    assert row["symbio"] == (mode == "symbio")


def test_sigterm_semantics_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the loop: a request, then an interrupt; outside: an interrupt; while stopping: ignored."""
    from model import signals

    def term() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs in this (main) thread between bytecodes

    previous = signal.getsignal(signal.SIGTERM)
    with signals.sigterm_as_interrupt():
        with pytest.raises(signals.Terminated):  # setup, no loop: like Ctrl-C
            term()
    with signals.sigterm_as_interrupt():
        with signals.training_loop():
            term()
            assert signals.stop_requested() and signals.received()
            with pytest.raises(signals.Terminated):  # a second one does not wait
                term()
        term()  # already stopping: ignored, the shutdown goes on
    monkeypatch.setattr(signals, "STOP_GRACE_S", 0.2)
    with signals.sigterm_as_interrupt(), signals.training_loop():
        term()
        with pytest.raises(signals.Terminated):  # a step that does not end is interrupted
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is previous


# -- kill -9 three times, resume to the end (loopback S3) ----------------------------


def test_kill9_three_times_then_resume_loses_and_duplicates_nothing(
    corpus: Path, tmp_path: Path, env: dict[str, str], s3_server: S3Server  # noqa: F811
) -> None:
    env = {**env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}}
    run, lake_url, iters = tmp_path / "run", f"s3://{BUCKET}/kill9", 300
    common = [*TINY, "--eval-interval=40", f"--iters={iters}", f"--lake={lake_url}"]
    first = ["train", "--data", str(corpus), *common, f"--run-dir={run}"]
    resume = ["train", "--resume", str(run), f"--iters={iters}", f"--lake={lake_url}"]
    ref = start(["train", "--data", str(corpus), *common[:-1], f"--run-dir={tmp_path / 'ref'}",
                 f"--lake={tmp_path / 'ref-lake'}"], tmp_path, env)  # fmt: skip

    redone: set[int] = set()  # steps a killed process recorded after its last checkpoint
    outputs = []
    for i, kill_at in enumerate((70, 150, 250)):
        proc = start(first if i == 0 else resume, tmp_path, env)
        wait_for_rows(run / "metrics.jsonl", kill_at, proc)
        proc.kill()  # SIGKILL: no handler, no atexit, no flush
        code, out, _ = finish(proc)
        assert code == -signal.SIGKILL
        outputs.append(out)
        steps = jsonl_steps(run / "metrics.jsonl")
        redone |= set(steps) - set(range(1, ckpt_step(run) + 1))
        if i == 0:  # a dead run's rows, landed by hand; its run row stops saying "running"
            flush = subprocess.run(
                [*ALPHA, "lake", "flush", "--run-dir", str(run), "--lake", lake_url],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert flush.returncode == 0, flush.stderr
            run_id = json.loads((run / "config.json").read_text())["run_id"]
            lake = open_lake(lake_url)
            assert run_metrics(lake, run_id, ["step"])["step"].to_list() == steps
            row = get_run(lake, run_id)
            assert row["status"] == "failed" and row["latest_step"] == steps[-1]
    code, out, err = finish(start(resume, tmp_path, env))
    assert code == 0, err
    assert "alpha train: completed after 300 steps" in out and "backfill" in out

    # the lake: every step once after de-dup; raw copies only of re-done steps
    lake = open_lake(lake_url)
    assert run_metrics(lake, run_id, ["step"])["step"].to_list() == list(range(1, iters + 1))
    raw = collections.Counter(scan_table(lake, "metrics", run_id).collect()["step"].to_list())
    raw_dups = {s for s, n in raw.items() if n > 1}
    assert raw_dups <= redone, sorted(raw_dups - redone)
    assert max(raw.values()) <= 4  # at most: landed by flush or a sink, then re-done
    print(f"raw lake rows {sum(raw.values())}, duplicated steps {len(raw_dups)}, "
          f"re-done steps {len(redone)}")  # fmt: skip
    row = get_run(lake, run_id)
    assert row["status"] == "completed" and row["latest_step"] == iters
    # metrics.jsonl: each step once (the re-done rows moved to metrics.superseded.jsonl)
    assert jsonl_steps(run / "metrics.jsonl") == list(range(1, iters + 1))
    assert set(jsonl_steps(run / "metrics.superseded.jsonl")) == redone

    # bit-exact with the uninterrupted run
    assert finish(ref)[0] == 0
    a = load_file(str(run / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "ref" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert losses == [json.loads(x)["loss"] for x in ref_rows]


# -- one run dir, one live process -----------------------------------------------------


def test_a_second_process_on_one_run_dir_is_refused(
    corpus: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    run, lake = tmp_path / "run", tmp_path / "lake"
    args = ["train", "--data", str(corpus), *TINY, "--iters=40", "--eval-interval=20",
            f"--run-dir={run}", f"--lake={lake}"]  # fmt: skip
    procs = [start(args, tmp_path, env) for _ in range(2)]  # both see an empty folder
    results = sorted((finish(p) for p in procs), key=lambda r: r[0])
    (ok, ok_out, _), (refused, _, err) = results
    assert ok == 0 and refused == 2, results
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--run-dir:" in err and ("is in use by a live alpha run" in err or "not empty" in err)
    run_id = json.loads((run / "config.json").read_text())["run_id"]
    assert f"run_id {run_id}" in ok_out
    assert ckpt_io.read_meta(run).run_id == run_id
    assert {json.loads(x)["run_id"] for x in (run / "metrics.jsonl").read_text().splitlines()} == {
        run_id
    }

    # a concurrent --resume of a folder a live resume holds
    live = start(["train", "--resume", str(run), "--iters=100000", f"--lake={lake}"], tmp_path, env)
    wait_for_rows(run / "metrics.jsonl", 60, live)
    before = (run / "checkpoint.safetensors").stat().st_mtime_ns, (run / "config.json").read_text()
    code, out, err = finish(
        start(["train", "--resume", str(run), "--iters=500", f"--lake={lake}"], tmp_path, env)
    )
    assert code == 2 and out == ""
    assert err.strip() == (
        f"alpha train: error: --run-dir: {run} is in use by a live alpha run (pid {live.pid}); "
        "wait for it to end or choose another folder"
    )
    assert (run / "config.json").read_text() == before[1]
    live.send_signal(signal.SIGTERM)
    assert finish(live)[0] == 143
    steps = jsonl_steps(run / "metrics.jsonl")
    assert steps == list(range(1, len(steps) + 1))


# -- the end status tells the truth about the lake --------------------------------------


def test_store_down_says_spooled_and_flush_lands_it(
    corpus: Path, tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = S3Server()
    server.start()
    with s3_env(monkeypatch, server.endpoint):
        from storage.lake import s3_filesystem

        s3_filesystem().makedirs(BUCKET, exist_ok=True)  # moto keeps buckets across servers
        server.stop()  # the store is down for the whole run
        env = {**env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}}
        run, url = tmp_path / "run", f"s3://{BUCKET}/down"
        code, out, err = finish(start(["train", "--data", str(corpus), *TINY, "--iters=20",
                                       "--eval-interval=10", f"--run-dir={run}", f"--lake={url}"],
                                      tmp_path, env))  # fmt: skip
        assert code == 0, err
        # 20 metric rows + the run row at start and at end: every table counts
        assert "alpha train: completed (22 rows spooled, run alpha lake flush) after 20" in out, out[-600:]
        server.start()
        try:
            flush = subprocess.run([*ALPHA, "lake", "flush"], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
            assert flush.returncode == 0, flush.stderr
            run_id = json.loads((run / "config.json").read_text())["run_id"]
            steps = run_metrics(open_lake(url), run_id, ["step"])["step"].to_list()
            assert steps == list(range(1, 21))
        finally:
            server.stop()


@pytest.fixture
def full_disk(tmp_path: Path):
    """A real 256 KiB tmpfs, filled to the last byte (needs root, as in CI)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:120]}")
    try:
        with open(mnt / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_full_spool_with_the_store_down_exits_1_saying_rows_were_lost(
    corpus: Path, tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    full_disk: Path,
) -> None:  # fmt: skip
    """Rows that can be kept nowhere: exit 1, one error line, no hang; metrics.jsonl recovers."""
    server = S3Server()
    server.start()
    with s3_env(monkeypatch, server.endpoint):
        from storage.lake import s3_filesystem

        s3_filesystem().makedirs(BUCKET, exist_ok=True)  # moto keeps buckets across servers
        server.stop()  # the store is down for the whole run
        env = {**env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}}
        env["ALPHA_SPOOL"] = str(full_disk / "spool")  # and the spool's disk is full
        env.pop("ALPHA_LAKE_GATE")  # the production gate (GX in a child process)
        run, url = tmp_path / "run", f"s3://{BUCKET}/full"
        proc = start(["train", "--data", str(corpus), *TINY, "--iters=20", "--eval-interval=10",
                      f"--run-dir={run}", f"--lake={url}"], tmp_path, env)  # fmt: skip
        code, out, err = finish(proc, timeout=120)  # a hang fails here

        assert code == 1, (out[-600:], err[-2000:])
        assert "Traceback" not in err and "timed out" not in err  # no close() timeout either
        footer = [x for x in out.splitlines() if x.startswith("alpha train: ")][-1]
        assert footer.startswith("alpha train: completed (22 rows lost) after 20 steps"), footer
        errors = [x for x in err.splitlines() if x.startswith("alpha train: error:")]
        assert len(errors) == 1, err
        assert errors[0].startswith("alpha train: error: 22 rows lost, kept neither in the lake "
                                    "nor in the spool (the lake was unreachable (")  # fmt: skip
        assert "No space left on device" in errors[0] and str(full_disk / "spool") in errors[0]
        assert f"alpha lake flush --run-dir {run} --lake {url}" in errors[0]
        assert sorted(p.name for p in full_disk.rglob("*") if p.is_file()) == ["filler"]
        assert jsonl_steps(run / "metrics.jsonl") == list(range(1, 21))  # the run dir kept them

        # what the error line promises: with the store back, the run dir refills the lake
        server.start()
        try:
            flush = subprocess.run([*ALPHA, "lake", "flush", "--run-dir", str(run), "--lake", url],
                                   cwd=tmp_path, env=env, capture_output=True, text=True,
                                   timeout=120)  # fmt: skip
            assert flush.returncode == 0, flush.stderr
            run_id = json.loads((run / "config.json").read_text())["run_id"]
            steps = run_metrics(open_lake(url), run_id, ["step"])["step"].to_list()
            assert steps == list(range(1, 21))
        finally:
            server.stop()


def test_lake_verdict_from_sink_stats() -> None:
    """Old sinks (no rows_spooled: spooled rows counted as landed) and new ones alike."""
    old = SimpleNamespace(rows_landed=10, rows_quarantined=0, rows_rescued=0, spool_left=0)
    assert lake_verdict(old, 10) == lake_verdict(old, None)
    assert lake_verdict(old, 10).note is None and lake_verdict(old, 10).exit_code == 0
    spooled_old = SimpleNamespace(rows_landed=10, rows_quarantined=0, rows_rescued=0, spool_left=3)
    assert lake_verdict(spooled_old, 10).note == "10 rows spooled, run alpha lake flush"
    new = SimpleNamespace(rows_landed=4, rows_quarantined=1, rows_rescued=0, spool_left=1,
                          rows_spooled=5, rows_lost=0, problem=None)  # fmt: skip
    v = lake_verdict(new, 10)
    assert v.note == "5 rows spooled, run alpha lake flush; 1 rows quarantined" and v.exit_code == 0
    lost = SimpleNamespace(**{**vars(new), "rows_spooled": 0, "rows_lost": 5, "problem": "disk full"})
    v = lake_verdict(lost, 10)
    assert v.exit_code == 1 and v.note.startswith("5 rows lost")
    assert v.error.startswith("5 rows lost, kept neither in the lake nor in the spool (disk full);")
    lost.problem = "5 row(s) lost: the lake was unreachable (X)"
    assert "spool (the lake was unreachable (X)); metrics.jsonl" in lake_verdict(lost, 10).error
    unaccounted = lake_verdict(old, 13)  # 3 rows never reached the writer
    assert unaccounted.exit_code == 1 and unaccounted.note.startswith("3 rows lost")
    nothing = SimpleNamespace(rows_landed=0, rows_quarantined=0, rows_rescued=0, spool_left=0)
    assert lake_verdict(nothing, 0).note is None
    assert lake_verdict(None, 5).exit_code == 1


# -- in-process: ordering, backfill, temp names ---------------------------------------------


def _cfg(corpus: Path, run: Path, **over) -> object:
    values = {"data": str(corpus), "device": "cpu", "batch": 4, "block": 16, "dim": 16,
              "heads": 2, "layers": 1, "iters": 12, "eval_interval": 4, "eval_iters": 1,
              "sample_tokens": 0, "run_dir": str(run), **over}  # fmt: skip
    return build_train_config(values)


def test_a_steps_row_is_recorded_before_its_checkpoint(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    seen: list[tuple[int, list[int], list[int]]] = []
    real_save = ckpt_io.save

    class Spy(TrainerHook):  # which steps did the hooks get before each save?
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_step_end(self, trainer, row) -> None:
            self.steps.append(row["step"])

    spy = Spy()

    def save(path, *, model, optimizer, meta):
        seen.append((meta["step"], jsonl_steps(path.parent / "metrics.jsonl"), list(spy.steps)))
        return real_save(path, model=model, optimizer=optimizer, meta=meta)

    monkeypatch.setattr(ckpt_io, "save", save)
    run = tmp_path / "run"
    trainer = Trainer(_cfg(corpus, run), [spy], progress=False)
    assert trainer.fit().status == "completed"
    assert [s for s, _, _ in seen] == [4, 8, 12]
    for step, recorded, hooked in seen:
        assert recorded[-1] == step and hooked[-1] == step
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "checkpoint"] == [4, 8, 12]


def test_backfill_lands_only_what_the_lake_lacks(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    monkeypatch.setenv("ALPHA_SPOOL", str(tmp_path / "spool"))
    run, lake = tmp_path / "run", open_lake(str(tmp_path / "lake"))
    trainer = Trainer(_cfg(corpus, run), progress=False)
    trainer.fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sink = MetricSink(lake, trainer.run_id, register_atexit=False, gate_in_process=True)
    for r in rows[::3]:  # the lake got every third row
        sink.put({**r, "timestamp": datetime.fromisoformat(r["timestamp"])})
    sink.close()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": \n')  # a line torn by a crash
    stats = backfill_run(lake, trainer.run_id, run / "metrics.jsonl", max_step=10)
    assert (stats.rows_in_file, stats.rows_present, stats.bad_lines) == (10, 4, 1)
    assert stats.rows_missing == stats.rows_landed == 6 and stats.rows_lost == 0
    steps = run_metrics(lake, trainer.run_id, ["step"])["step"].to_list()
    assert steps == list(range(1, 11))
    assert backfill_run(lake, trainer.run_id, run / "metrics.jsonl").rows_missing == 2  # 11, 12
    assert backfill_run(lake, trainer.run_id, run / "metrics.jsonl").rows_missing == 0
    raw = scan_table(lake, "metrics", trainer.run_id).collect()["step"].to_list()
    assert sorted(raw) == list(range(1, 13))  # nothing landed twice


def test_a_resume_removes_the_temp_files_a_killed_writer_left(
    corpus: Path, tmp_path: Path, one_thread
) -> None:
    run = tmp_path / "run"
    assert Trainer(_cfg(corpus, run, iters=8), progress=False).fit().status == "completed"
    ckpt = (run / "checkpoint.safetensors").read_bytes()
    stale = [run / ".checkpoint.safetensors.4242-1-0badf00d.tmp", run / "data" / ".train.bin.4242-1.tmp"]
    stale[0].write_bytes(ckpt[: len(ckpt) // 2])  # a save cut short by kill -9
    stale[1].write_bytes(b"\0" * 100)
    (run / "notes.tmp").write_text("not a temp file of ours")
    trainer = Trainer(_cfg(corpus, run, iters=12, resume=str(run)), progress=False)
    assert not any(p.exists() for p in stale)
    assert (run / "notes.tmp").exists() and (run / ".alpha.lock").exists()
    assert trainer.fit().status == "completed"
    assert not list(run.rglob(".*.tmp"))


def test_token_files_on_a_full_disk_leave_no_temp_file(full_disk: Path) -> None:
    from model.data import write_token_files

    parts = {"train": np.arange(200_000, dtype=np.int64), "val": np.arange(10, dtype=np.int64)}
    with pytest.raises(OSError):
        write_token_files(parts, 65, full_disk / "data")
    assert [p.name for p in full_disk.rglob("*") if p.is_file()] == ["filler"]


def test_temp_names_are_unique_per_writer(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.safetensors"
    names = {tmp_name(target) for _ in range(100)}
    names |= {n for n in _in_threads(lambda: tmp_name(target), 8)}
    assert len(names) == 108
    assert all(n.parent == tmp_path and n.name.startswith(".") for n in names)


def _in_threads(fn, n: int) -> list:
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(fn())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
