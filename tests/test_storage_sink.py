"""The sink under stress (local disk): concurrency, resume, outage, crash; the reader; the CLI."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from flows.cli import main as alpha
from storage import reader
from storage.lake import open_lake
from storage.schema import arrow_schema
from storage.sink import LakeHook, MetricSink
from storage.spool import Spool
from storage.writer import batch_key, encode_parquet, object_name, put_object

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def spool_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "spool"
    monkeypatch.setenv("ALPHA_SPOOL", str(path))
    monkeypatch.setenv("ALPHA_LAKE_GATE", "thread")  # one GX import per test process
    return path


def _row(run_id: str, step: int, loss: float | None = None, **kw) -> dict:
    return dict(run_id=run_id, step=step, loss=1.0 / step if loss is None else loss, **kw)


def _raw_rows(lake_dir: Path, run_id: str) -> list[dict]:
    table = ds.dataset(str(lake_dir / "metrics"), partitioning="hive").to_table()
    return [r for r in table.to_pylist() if r["run_id"] == run_id]


def test_concurrent_processes_write_one_lake(tmp_path):
    lake_dir = tmp_path / "lake"
    script = textwrap.dedent(
        """
        import sys
        from storage.lake import open_lake
        from storage.sink import MetricSink
        run_id = sys.argv[2]
        sink = MetricSink(open_lake(sys.argv[1]), run_id, max_rows=100, max_seconds=0.2)
        sink.write_run({"status": "running"})
        for step in range(1, 301):
            sink.put({"run_id": run_id, "step": step, "loss": 1.0 / step})
        sink.write_run({"status": "completed", "latest_step": 300})
        stats = sink.close()
        assert stats.rows_landed == 300, stats
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(lake_dir), rid], cwd=ROOT)
        for rid in ("proc-a", "proc-b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    for rid in ("proc-a", "proc-b"):
        rows = _raw_rows(lake_dir, rid)
        assert sorted(r["step"] for r in rows) == list(range(1, 301))  # each exactly once
    runs = reader.list_runs(open_lake(lake_dir))
    assert sorted(runs["run_id"].to_list()) == ["proc-a", "proc-b"]
    assert set(runs["status"].to_list()) == {"completed"}  # newest row version wins


def test_resumed_run_re_emits_steps_and_last_write_wins(tmp_path):
    lake = open_lake(tmp_path / "lake")
    first = MetricSink(lake, "r1", register_atexit=False)
    for step in range(1, 101):
        first.put(_row("r1", step, loss=10.0))
    first.close()
    resumed = MetricSink(lake, "r1", register_atexit=False)  # resumed from a step-60 checkpoint
    for step in range(61, 151):
        resumed.put(_row("r1", step, loss=1.0))
    resumed.close()
    assert len(_raw_rows(tmp_path / "lake", "r1")) == 190  # writers never drop a row
    df = reader.run_metrics(lake, "r1", ["loss"])
    assert df["step"].to_list() == list(range(1, 151))
    assert df.filter(df["step"] <= 60)["loss"].unique().to_list() == [10.0]
    assert df.filter(df["step"] > 60)["loss"].unique().to_list() == [1.0]
    assert reader.run_metrics(lake, "r1", ["loss"], since_step=140)["step"].to_list() == list(
        range(141, 151)
    )


def test_unreachable_store_spools_then_lands_everything_once(tmp_path, spool_dir):
    """The lake folder cannot be created (a file is in the way): the run goes
    on, batches spool; once the obstacle is gone they land, each row once."""
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory")
    lake = open_lake(blocker / "lake")
    sink = MetricSink(
        lake,
        "r1",
        max_rows=20,
        max_seconds=0.1,
        retry_base=0.1,
        retry_max=0.2,
        register_atexit=False,
    )
    t0 = time.perf_counter()
    for step in range(1, 101):
        sink.put(_row("r1", step))
    put_cost = (time.perf_counter() - t0) / 100
    assert sink.flush(timeout=60)
    assert len(Spool(spool_dir).entries(lake.url)) >= 5
    assert sink.stats.store_errors >= 1
    blocker.unlink()  # the store comes back
    for step in range(101, 141):
        sink.put(_row("r1", step))
    stats = sink.close()
    assert stats.spool_left == 0 and stats.spool_landed >= 5
    steps = sorted(r["step"] for r in _raw_rows(blocker / "lake", "r1"))
    assert steps == list(range(1, 141))
    assert put_cost < 1e-3  # the training thread never waited on the failing store


def test_crash_leaves_rows_in_lake_or_spool_and_alpha_lake_flush_lands_them(tmp_path, spool_dir):
    blocker = tmp_path / "mnt"
    blocker.write_text("store down")
    script = textwrap.dedent(
        """
        import sys
        from storage.lake import open_lake
        from storage.sink import LakeHook, MetricSink
        sink = MetricSink(open_lake(sys.argv[1]), "crash-1", max_seconds=60)
        hook = LakeHook(sink)
        for step in range(1, 51):
            hook.on_step_end(None, {"run_id": "crash-1", "step": step, "loss": 0.5})
        raise RuntimeError("boom: the trainer crashed")  # atexit must flush or spool
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(blocker / "lake")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "boom" in proc.stderr
    assert len(Spool(spool_dir).entries()) == 1
    blocker.unlink()
    assert alpha(["lake", "flush"]) == 0
    assert sorted(r["step"] for r in _raw_rows(blocker / "lake", "crash-1")) == list(range(1, 51))
    assert Spool(spool_dir).entries() == []


def test_lake_hook_writes_run_row_at_start_and_end(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "h1", register_atexit=False)
    hook = LakeHook(sink, {"domain": "code", "symbio": 1, "symbio_mode": "none"})

    class FakeTrainer:  # only the attributes the hook may read
        param_count = 1234
        run_dir = tmp_path / "run"

    class Result:
        status, best_val_loss, steps, last_loss, error = "interrupted", float("inf"), 3, None, None

    hook.on_train_start(FakeTrainer())
    assert sink.flush(30)
    assert reader.get_run(lake, "h1")["status"] == "running"
    for step, val in ((1, None), (2, 1.5), (3, 1.7)):
        hook.on_step_end(FakeTrainer(), _row("h1", step, val_loss=val))
    hook.update_run(symbio_winner='{"candidate_id": "c1"}')
    hook.on_train_end(FakeTrainer(), Result())
    sink.close()
    run = reader.get_run(lake, "h1")
    assert run["status"] == "cancelled" and run["latest_step"] == 3
    assert run["best_val_loss"] == 1.5 and run["last_loss"] == pytest.approx(1 / 3)
    assert run["symbio_winner"] == '{"candidate_id": "c1"}' and run["param_count"] == 1234
    assert run["finished_at"] is not None and run["started_at"] < run["finished_at"]
    assert run["domain"] == "code"


# -- reader -------------------------------------------------------------------------


def _write_metrics(lake, run_id: str, steps: np.ndarray, loss: np.ndarray, **cols) -> None:
    schema = arrow_schema("metrics", with_partition=False)
    n = len(steps)
    data = {f.name: pa.nulls(n, f.type) for f in schema}
    data.update(step=pa.array(steps, pa.int64()), loss=pa.array(loss, pa.float64()))
    for name, values in cols.items():
        data[name] = pa.array(values, schema.field(name).type, from_pandas=True)
    put_object(
        lake,
        batch_key("metrics", run_id, object_name()),
        encode_parquet(pa.table(data, schema=schema)),
    )


def test_downsampling_keeps_spikes_and_sparse_values_and_is_fast(tmp_path):
    lake = open_lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    n, per_file = 100_000, 5_000
    loss = 3.0 * np.exp(-np.arange(n) / 30_000) + rng.normal(0, 0.01, n)
    loss[77_777] = 50.0  # one spike
    grad = np.abs(rng.normal(1, 0.1, n))
    grad[12_345] = -0.0  # a dip
    val = np.full(n, np.nan)
    val[::500] = 2.0  # eval every 500 steps
    for i in range(0, n, per_file):
        sl = slice(i, i + per_file)
        _write_metrics(
            lake, "big", np.arange(n)[sl] + 1, loss[sl], grad_norm=grad[sl], val_loss=val[sl]
        )
    reader.run_metrics(lake, "big", ["loss"], max_points=10)  # warm-up (imports)
    t0 = time.perf_counter()
    df = reader.run_metrics(lake, "big", ["loss", "grad_norm", "val_loss"], max_points=2000)
    elapsed = time.perf_counter() - t0
    assert 100 < df.height <= 2000
    assert df["step"].is_sorted()
    assert df["loss"].max() == 50.0 and df.filter(df["loss"] == 50.0)["step"].item() == 77_778
    assert df["grad_norm"].min() == 0.0
    assert df["val_loss"].drop_nulls().len() >= 150  # sparse values survive, nulls elsewhere
    assert df["val_loss"].null_count() > 0
    assert elapsed < 1.0, f"100k-row read + downsample took {elapsed:.2f}s"
    full = reader.run_metrics(lake, "big", ["loss"])
    assert full.height == n


def test_list_runs_filters_and_newest_version(tmp_path):
    lake = open_lake(tmp_path / "lake")
    t = dt.datetime(2026, 11, 26, 7, tzinfo=dt.UTC)
    rows = [
        ("a", "running", 0, "shakespeare", t, t),
        ("a", "completed", 0, "shakespeare", t, t + dt.timedelta(minutes=5)),
        ("b", "running", 1, "code", t + dt.timedelta(hours=1), t + dt.timedelta(hours=1)),
        ("c", "failed", 1, "chat", t + dt.timedelta(hours=2), t + dt.timedelta(hours=2)),
    ]
    for rid, status, symbio, domain, started, updated in rows:
        sink = MetricSink(lake, rid, register_atexit=False)
        sink.write_run(
            dict(
                status=status, symbio=symbio, domain=domain, started_at=started, updated_at=updated
            )
        )
        sink.close()
    assert reader.list_runs(lake)["run_id"].to_list() == ["c", "b", "a"]
    assert reader.get_run(lake, "a")["status"] == "completed"
    assert reader.list_runs(lake, symbio=True)["run_id"].to_list() == ["c", "b"]
    assert reader.list_runs(lake, status="completed")["run_id"].to_list() == ["a"]
    assert reader.list_runs(lake, domain="code")["run_id"].to_list() == ["b"]
    assert reader.list_runs(lake, search="CHA")["run_id"].to_list() == ["c"]
    assert reader.list_runs(lake, limit=1)["run_id"].to_list() == ["c"]
    assert reader.get_run(lake, "zzz") is None
    assert reader.run_metrics(lake, "zzz").height == 0


def test_search_candidates_newest_version_per_candidate(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "s1", register_atexit=False)
    base = dict(generation=1, activation="gelu", status="ok")
    sink.write_candidates([dict(base, candidate_id="c1", rank=2), dict(base, candidate_id="c2")])
    assert sink.flush(30)
    sink.write_candidates(
        [dict(base, candidate_id="c2", rank=1, is_winner=True, best_val_loss=1.2)]
    )
    sink.close()
    cands = reader.search_candidates(lake, "s1")
    assert cands["candidate_id"].to_list() == ["c2", "c1"]
    assert cands["is_winner"].to_list() == [True, None]


def test_alpha_runs_prints_a_table(tmp_path, capsys):
    lake = open_lake(tmp_path / "lake")
    for rid, symbio in (("plain-1", 0), ("symbio-1", 1)):
        sink = MetricSink(lake, rid, register_atexit=False)
        sink.write_run(
            dict(
                status="completed",
                symbio=symbio,
                domain="shakespeare",
                latest_step=42,
                last_loss=1.23456,
                ffn_activation="swiglu",
            )
        )
        sink.close()
    assert alpha(["runs", "--lake", str(tmp_path / "lake")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["RUN", "STATUS", "SYMBIO"]
    assert len(out) == 3 and any(line.startswith("symbio-1") and " yes " in line for line in out)
    assert "1.2346" in out[1] and "42" in out[1]
    assert alpha(["runs", "--lake", str(tmp_path / "lake"), "--symbio"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("symbio-1")
    assert alpha(["runs", "--lake", "nope://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown lake protocol" in err


def test_rows_put_after_close_are_rescued_not_dropped(tmp_path, spool_dir):
    sink = MetricSink(open_lake(tmp_path / "lake"), "late", register_atexit=False)
    sink.close()
    sink.put(_row("late", 1))
    rescued = list(spool_dir.glob("rescued-metrics-late-*.jsonl"))
    assert len(rescued) == 1 and '"step": 1' in rescued[0].read_text()
    assert sink.stats.rows_rescued == 1
