"""Config resolution (PRD §5.2) and the run executor's fail-fast checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.config import SHIPPED_CORPUS, build_train_config, domain_defaults
from model.errors import ConfigError
from model.trainer import train
from tasks.resolve import resolve_run_config
from tasks.run import execute

pytestmark = pytest.mark.usefixtures("one_thread")


def test_domain_defaults_then_explicit_flags(tmp_path: Path) -> None:
    run = resolve_run_config({"lr": 1e-2, "run_dir": str(tmp_path / "r")})
    assert run.train.lr == 1e-2 and run.sources["lr"] == "flag"
    assert run.train.iters == domain_defaults("shakespeare")["iters"]
    assert run.sources["iters"] == "domain"
    assert run.train.grad_clip == 1.0 and "grad_clip" not in run.sources  # engine default
    assert run.train.data == str(SHIPPED_CORPUS)
    assert not run.symbio and run.symbio_config is None and run.search_mode == "none"
    assert run.run_dir == tmp_path / "r" and run.train.run_dir == str(tmp_path / "r")
    assert not (tmp_path / "r").exists()  # resolving writes nothing


def test_default_run_dir_is_under_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = resolve_run_config({})
    assert run.run_dir == Path("runs") / run.run_id
    assert run.run_id.startswith("shakespeare-")


def test_resume_layers_checkpoint_config_under_flags(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    cfg = build_train_config(
        dict(data=str(data), device="cpu", iters=3, batch=2, block=16, dim=16, heads=2,
             layers=1, eval_iters=1, sample_tokens=0, run_dir=str(tmp_path / "run"), lr=5e-3)
    )  # fmt: skip
    first = train(cfg, progress=False)
    run = resolve_run_config({"resume": str(tmp_path / "run"), "iters": 6, "eval_iters": 2})
    assert run.run_id == first.run_id and run.resumed_step == 3
    assert run.run_dir == tmp_path / "run"
    assert (run.train.dim, run.train.lr, run.train.iters) == (16, 5e-3, 6)
    assert run.sources["dim"] == "checkpoint" and run.sources["iters"] == "flag"
    with pytest.raises(ConfigError, match="--run-dir: .* is not empty"):
        resolve_run_config({"run_dir": str(tmp_path / "run")})


def test_bad_lake_fails_before_anything_is_written(tmp_path: Path) -> None:
    run = resolve_run_config({"run_dir": str(tmp_path / "r"), "device": "cpu"})
    with pytest.raises(ConfigError, match="^--lake: "):
        execute(run, lake_url="ftp:/nonsense:", progress=False)
    assert not (tmp_path / "r").exists()
