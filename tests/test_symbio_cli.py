"""`alpha train --symbio` end to end: flags, preset and override order (PRD §5.2),
bad symbio configs, and zero symbio footprint without --symbio (PRD §17.1, §18.2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from model.config import SHIPPED_CORPUS, swiglu_ffn_dim
from storage.schema import SYMBIO_METRIC_COLUMNS, column_names
from tasks.resolve import resolve_run_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--device=cpu",
    "--batch=4",
    "--block=32",
    "--dim=32",
    "--heads=2",
    "--layers=2",
    "--eval-iters=2",
    "--sample-tokens=0",
]
PRESET = {
    "activation": "swiglu",
    "lr": 5e-5,
    "grad_clip": 5.0,
    "warmup_iters": 500,
    "spike_threshold": 10.0,
}


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    """The first 100 kB of the shipped corpus: the same text, a faster setup."""
    path = tmp_path / "corpus.txt"
    path.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    return f"--data={path}"


def write_config(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "symbio.json"
    path.write_text(json.dumps(doc))
    return str(path)


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- resolution (no training) ---------------------------------------------------------


def test_symbio_flag_applies_the_preset(tmp_path) -> None:
    plain = resolve_run_config({"run_dir": str(tmp_path / "a")})
    run = resolve_run_config({"symbio": True, "run_dir": str(tmp_path / "b")})
    assert run.symbio and run.symbio_config is not None
    assert {k: getattr(run.train, k) for k in PRESET} == PRESET
    assert run.train.resolved_ffn_dim == swiglu_ffn_dim(run.train.dim)
    assert all(run.sources[k] == "symbio-preset" for k in PRESET)
    untouched = set(type(plain.train).model_fields) - set(PRESET) - {"run_dir", "lr_min"}
    assert {k: getattr(run.train, k) for k in untouched} == {
        k: getattr(plain.train, k) for k in untouched
    }


def test_explicit_flags_beat_the_config_file_which_beats_the_preset(tmp_path) -> None:
    path = write_config(tmp_path, {"lr": 2e-4, "gradClip": 2.0, "searchMode": "none"})
    from_file = resolve_run_config(
        {"symbio": True, "symbio_config": path, "run_dir": str(tmp_path / "a")}
    )
    assert from_file.train.lr == 2e-4 and from_file.train.grad_clip == 2.0
    assert from_file.train.warmup_iters == 500  # preset still applies where the file is silent
    assert from_file.sources["lr"] == "symbio-config"
    flag = resolve_run_config(
        {"symbio": True, "symbio_config": path, "lr": 1e-3, "run_dir": str(tmp_path / "b")}
    )
    assert flag.train.lr == 1e-3 and flag.sources["lr"] == "flag"
    assert flag.train.grad_clip == 2.0
    assert flag.search_mode == "none"


def test_activation_without_symbio_only_sets_the_activation(tmp_path) -> None:
    plain = resolve_run_config({"run_dir": str(tmp_path / "a")})
    silu = resolve_run_config({"activation": "silu", "run_dir": str(tmp_path / "b")})
    assert not silu.symbio and silu.symbio_config is None
    assert silu.train.activation == "silu"
    assert silu.train.model_copy(
        update={"activation": "gelu", "run_dir": None}
    ) == plain.train.model_copy(update={"run_dir": None})
    swiglu = resolve_run_config(
        {"symbio": True, "activation": "silu", "run_dir": str(tmp_path / "c")}
    )
    assert swiglu.train.activation == "silu" and swiglu.train.lr == 5e-5


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"cusumSensitivity": -1}', "cusumSensitivity: must be > 0"),
        ('{"cusumSensitivty": 4}', "cusumSensitivty: unknown key"),
        ('{"metricsInterval": "often"}', "metricsInterval: must be a valid integer"),
        ('{"batchMin": 100}', "batchMin: must be <= batchMax"),
        ('{"activationPool": ["tanh"]}', "activationPool[0]: must be"),
        ('{"searchMode": "none",', "invalid JSON"),
        (None, "file not found"),
    ],
)
def test_bad_symbio_config_exits_2_with_one_line(tmp_path, capsys, content, needle) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    code = main(
        [
            "train",
            "--symbio",
            f"--symbio-config={path}",
            "--iters=5",
            f"--run-dir={tmp_path / 'run'}",
            f"--lake={tmp_path / 'lake'}",
            *TINY,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "--symbio-config" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing may be written for bad input"


def test_symbio_config_needs_symbio(tmp_path, capsys) -> None:
    path = write_config(tmp_path, {"searchMode": "none"})
    assert main(["train", f"--symbio-config={path}", "--iters=5", *TINY]) == 2
    assert "only valid together with --symbio" in capsys.readouterr().err


# -- end to end -------------------------------------------------------------------------


def test_alpha_train_symbio_end_to_end(tmp_path, capsys, corpus) -> None:
    cfg = write_config(
        tmp_path,
        {"searchMode": "none", "trackMIProfiles": True, "gradClip": 0.5, "spikeThreshold": 0.0},
    )
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--symbio",
            f"--symbio-config={cfg}",
            "--iters=100",
            "--lr=1e-3",
            "--eval-interval=25",
            corpus,
            f"--run-dir={run_dir}",
            f"--lake={tmp_path / 'lake'}",
            *TINY,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "symbio" in out and "0.001" in out  # the resolved config is printed

    rows = rows_of(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 101))
    schema = set(column_names("metrics"))
    search_only = {
        "symbio_candidate_id",
        "symbio_candidate_activation",
        "symbio_generation",
        "architecture_diversity",
    }
    seen = set()
    for r in rows:
        assert set(r) <= schema
        seen |= set(r) & SYMBIO_METRIC_COLUMNS
        for key in ("cusum_grad", "cusum_clip", "cusum_tps", "cusum_alerts", "adaptive_batch_size"):
            assert key in r, (r["step"], key)
        assert ("cusum_val" in r) == ("fitness_score" in r) == (r["step"] % 25 == 0)
        metrics_due = r["step"] % 50 == 0  # metricsInterval default
        for key in (
            "weight_entropy",
            "effective_rank",
            "free_energy",
            "population_entropy",
            "activation_distribution",
            "complexity_score",
            "mi_input_repr",
            "mi_repr_output",
            "mi_compression",
        ):
            assert (key in r) == metrics_due, (r["step"], key)
        # --lr=1e-3 beats the preset's 5e-5 (still inside the preset's 500-step warmup)
        assert r["lr"] == pytest.approx(1e-3 * r["step"] / 500)
        # the config file's gradClip 0.5 beats the preset's 5.0
        assert r["clip_coef"] == pytest.approx(min(1.0, 0.5 / r["grad_norm"]))
    # every symbio column a single run can fill shows up (alert columns need an alert)
    assert seen >= SYMBIO_METRIC_COLUMNS - search_only - {
        "cusum_alert_reason",
        "batch_change_reason",
    }
    assert not seen & search_only

    config = json.loads((run_dir / "config.json").read_text())
    assert config["ffn_activation"] == "swiglu" and config["lr"] == 1e-3
    meta = config  # the symbio section sits at the top level of config.json
    assert meta["symbio"] is True and meta["symbio_mode"] == "none"
    assert meta["symbio_config"]["trackMIProfiles"] is True
    assert meta["symbio_config"]["cusumSensitivity"] == 4.0


PLAIN_RUN = """
import json, sys
from flows.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m == "symbio" or m.startswith("symbio."))
print(json.dumps({"code": code, "symbio_modules": loaded}))
"""


def test_plain_run_never_imports_symbio_and_rows_carry_no_symbio_fields(tmp_path, corpus) -> None:
    run_dir = tmp_path / "plain"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_RUN,
            "train",
            "--iters=20",
            "--eval-interval=10",
            "--activation=silu",
            corpus,
            f"--run-dir={run_dir}",
            f"--lake={tmp_path / 'lake'}",
            *TINY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "symbio_modules": []}
    rows = rows_of(run_dir)
    assert len(rows) == 20
    assert all(not SYMBIO_METRIC_COLUMNS & set(r) for r in rows)
    assert all("clip_coef" in r and "clip_pct" in r for r in rows)  # clip telemetry: all runs
    config = json.loads((run_dir / "config.json").read_text())
    assert config["ffn_activation"] == "silu" and config["symbio"] is False
