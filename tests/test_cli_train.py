"""``alpha train`` / ``alpha sample`` end to end on the CPU (bad inputs: test_bad_input_catalog)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch

from flows import cli_train
from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
ALPHA = [str(ROOT / ".venv" / "bin" / "alpha")]
if not Path(ALPHA[0]).exists():  # installed elsewhere: run the module
    ALPHA = [sys.executable, "-m", "flows.cli"]
TINY = [
    "--device=cpu", "--batch", "4", "--block=32", "--dim", "32", "--heads=2", "--layers=2",
    "--eval-interval=10", "--eval-iters", "2", "--sample-tokens=20", "--lr=3e-3",
]  # fmt: skip


def alpha(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ALPHA_LAKE", None)
    return subprocess.run(
        [*ALPHA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_resume_sample_end_to_end(corpus: Path, tmp_path: Path) -> None:
    run, lake = tmp_path / "run", tmp_path / "lake"
    first = alpha("train", "--data", str(corpus), *TINY, "--iters=30", f"--run-dir={run}",
                  "--lake", str(lake), cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert "resolved config" in first.stdout and f"run dir     {run}" in first.stdout
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "samples.txt"):
        assert (run / name).is_file(), name
    run_id = json.loads((run / "config.json").read_text())["run_id"]

    resumed = alpha(
        "train", "--resume", str(run), "--iters", "40", "--lake", str(lake), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 30" in resumed.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[-1]["loss"] < rows[0]["loss"]

    metrics = ds.dataset(str(lake / "metrics"), partitioning="hive").to_table().to_pylist()
    assert sorted(r["step"] for r in metrics if r["run_id"] == run_id) == list(range(1, 41))
    assert all(r["clip_coef"] is not None for r in metrics)
    runs = ds.dataset(str(lake / "runs"), partitioning="hive").to_table().to_pylist()
    newest = max((r for r in runs if r["run_id"] == run_id), key=lambda r: r["updated_at"])
    assert newest["status"] == "completed" and newest["ffn_activation"] == "gelu"
    assert newest["symbio"] == 0 and newest["latest_step"] == 40

    sample = alpha(
        "sample", "--checkpoint", str(run), "--prompt=ROMEO:", "--tokens", "25", cwd=tmp_path
    )
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout) >= len("ROMEO:") + 25


def test_flags_accept_both_spellings_and_only_explicit_ones_are_kept() -> None:
    parser = argparse.ArgumentParser()
    cli_train.register("train", parser)
    args = parser.parse_args(["--lr=1e-4", "--batch", "3", "--activation", "silu", "--compile"])
    assert vars(args) == {"lr": 1e-4, "batch": 3, "activation": "silu", "compile": True}
    assert vars(parser.parse_args([])) == {}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# The bad-input cases of issue 2 live in tests/test_bad_input_catalog.py.


def test_cuda_requested_without_cuda(tmp_path: Path, capsys, monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--device", "cuda", "--lake", str(tmp_path / "lake")], capsys)
    assert code == 2 and err.strip() == (
        "alpha train: error: --device: cuda requested but no CUDA device is available"
    )
    assert not (tmp_path / "runs").exists()
