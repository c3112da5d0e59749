"""Real (tiny) trainings into local and ``s3://`` lakes; S3 against a real
S3-compatible server on loopback (moto): commit markers, an outage mid-run."""

from __future__ import annotations

import logging
import time

import pyarrow.dataset as ds
import pytest
from s3_server import BUCKET, s3_server  # noqa: F401 - the fixture

from storage import reader
from storage.lake import open_lake
from storage.schema import METRICS_COLUMNS, SYMBIO_METRIC_COLUMNS
from storage.sink import LakeHook, MetricSink
from storage.spool import Spool

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def spool_dir(tmp_path, monkeypatch):
    path = tmp_path / "spool"
    monkeypatch.setenv("ALPHA_SPOOL", str(path))
    monkeypatch.setenv("ALPHA_LAKE_GATE", "thread")  # the training test uses the default
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    return path


def _train(lake, run_id: str, tmp_path, *, symbio: bool) -> None:
    """A real (tiny) training run with the lake hook, as ``tasks.run`` wires it."""
    from model.config import SHIPPED_CORPUS, TrainConfig
    from model.trainer import train

    cfg = TrainConfig(
        data=str(SHIPPED_CORPUS),
        device="cpu",
        iters=10,
        batch=4,
        block=16,
        dim=16,
        heads=2,
        layers=1,
        dropout=0.0,
        eval_interval=5,
        eval_iters=2,
        sample_tokens=0,
        run_dir=str(tmp_path / run_id),
        activation="swiglu" if symbio else "gelu",
    )
    sink = MetricSink(lake, run_id, max_seconds=1.0)
    hooks = []
    run_row = {"symbio": int(symbio)}
    if symbio:
        from symbio.config import load_symbio_config
        from symbio.hook import SymbioHook

        sc, _ = load_symbio_config({"metricsInterval": 5, "batchMin": 2, "batchMax": 8})
        hooks.append(SymbioHook(sc))
        run_row.update(symbio_config=sc.to_camel_json(), symbio_mode="none")
    hooks.append(LakeHook(sink, run_row))
    result = train(cfg, hooks, run_id=run_id, progress=False)
    stats = sink.close()
    assert result.status == "completed"
    assert (stats.rows_landed, stats.rows_quarantined, stats.spool_left) == (10, 0, 0)


def test_plain_and_symbio_runs_land_in_an_s3_lake(s3_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("ALPHA_LAKE_GATE")  # as in production: GX in a child process
    lake = open_lake(f"s3://{BUCKET}/team/lake")
    _train(lake, "plain-1", tmp_path, symbio=False)
    _train(lake, "symbio-1", tmp_path, symbio=True)

    runs = reader.list_runs(lake)
    assert sorted(runs["run_id"].to_list()) == ["plain-1", "symbio-1"]
    assert set(runs["status"].to_list()) == {"completed"}
    assert reader.list_runs(lake, symbio=True)["run_id"].to_list() == ["symbio-1"]
    sym = reader.run_metrics(lake, "symbio-1")
    assert sym["step"].to_list() == list(range(1, 11))
    assert sym["cusum_grad"].null_count() == 0 and sym["weight_entropy"].drop_nulls().len() >= 2
    plain = reader.run_metrics(lake, "plain-1")
    assert plain["clip_coef"].null_count() == 0  # clip telemetry on every run
    assert all(plain[c].null_count() == plain.height for c in SYMBIO_METRIC_COLUMNS)

    # anyone can read it with plain pyarrow + s3fs
    table = ds.dataset(f"{BUCKET}/team/lake/metrics", filesystem=lake.fs, partitioning="hive")
    table = table.to_table()
    assert set(table.schema.names) == {c.name for c in METRICS_COLUMNS}
    assert table.num_rows == 20
    # every object has its commit marker
    objects = lake.fs.find(f"{BUCKET}/team/lake/metrics")
    markers = lake.fs.find(f"{BUCKET}/team/lake/_commits/metrics")
    assert len(objects) == len(markers) >= 2


def test_plain_and_symbio_runs_land_in_a_local_lake(tmp_path):
    lake = open_lake(tmp_path / "lake")
    _train(lake, "plain-1", tmp_path, symbio=False)
    _train(lake, "symbio-1", tmp_path, symbio=True)
    runs = reader.list_runs(lake)
    assert dict(zip(runs["run_id"], runs["symbio"], strict=True)) == {"plain-1": 0, "symbio-1": 1}
    assert reader.get_run(lake, "symbio-1")["ffn_activation"] == "swiglu"
    table = ds.dataset(str(tmp_path / "lake" / "metrics"), partitioning="hive").to_table()
    assert set(table.schema.names) == {c.name for c in METRICS_COLUMNS}
    assert table.num_rows == 20
    assert not (tmp_path / "lake" / "quarantine").exists()


def test_reader_ignores_objects_without_a_commit_marker(s3_server):  # noqa: F811
    lake = open_lake(f"s3://{BUCKET}/lake")
    sink = MetricSink(lake, "r1", register_atexit=False)
    sink.put({"run_id": "r1", "step": 1, "loss": 1.0})
    sink.close()
    # a batch whose PUT happened but whose commit did not (crash between the two)
    obj = lake.fs.find(f"{BUCKET}/lake/metrics/run_id=r1")[0]
    lake.fs.copy(obj, obj.replace(".parquet", "0.parquet"))
    plain = ds.dataset(f"{BUCKET}/lake/metrics", filesystem=lake.fs, partitioning="hive")
    assert plain.count_rows() == 2  # the uncommitted object is there...
    assert reader.run_metrics(lake, "r1").height == 1  # ...and the reader ignores it


def test_s3_outage_mid_run_every_step_lands_exactly_once(s3_server, spool_dir):  # noqa: F811
    lake = open_lake(f"s3://{BUCKET}/lake")
    sink = MetricSink(
        lake,
        "outage-1",
        max_rows=25,
        max_seconds=0.2,
        retry_base=0.2,
        retry_max=1.0,
        register_atexit=False,
    )
    sink.write_run({"status": "running"})
    step = 0

    def train_steps(n: int) -> float:
        nonlocal step
        worst = 0.0
        for _ in range(n):
            step += 1
            t0 = time.perf_counter()
            sink.put({"run_id": "outage-1", "step": step, "loss": 1.0 / step})
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.002)
        return worst

    train_steps(100)
    assert sink.flush(timeout=60)
    s3_server.stop()  # the store goes away mid-run
    worst = train_steps(150)
    assert sink.flush(timeout=60)
    assert sink.stats.store_errors >= 1 and Spool(spool_dir).entries(lake.url)
    s3_server.start()  # back on the same port, with what it stored before
    train_steps(100)
    sink.write_run({"status": "completed", "latest_step": step})
    stats = sink.close(timeout=60)

    assert stats.spool_left == 0 and stats.spool_landed >= 1
    assert worst < 0.05  # put() never waited for the dead store
    table = ds.dataset(f"{BUCKET}/lake/metrics", filesystem=lake.fs, partitioning="hive").to_table()
    steps = sorted(table.column("step").to_pylist())
    assert steps == list(range(1, 351))  # every step, exactly once
    assert reader.get_run(lake, "outage-1")["status"] == "completed"
