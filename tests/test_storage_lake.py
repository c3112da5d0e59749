"""Lake URLs, layout, schema versions and the gate (local disk)."""

from __future__ import annotations

import datetime as dt
import math
import os

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from storage import reader
from storage.lake import LakeError, open_lake, validate_run_id
from storage.schema import (
    METRICS_COLUMNS,
    RUNS_COLUMNS,
    VERSION_METADATA_KEY,
    arrow_schema,
    column_names,
)
from storage.sink import MetricSink
from storage.validation import MetricsGate
from storage.writer import batch_key, encode_parquet, object_name, put_object


@pytest.fixture(autouse=True)
def _spool(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHA_SPOOL", str(tmp_path / "spool"))
    # GX in the writer thread: one GX import for the whole test process.
    # test_corrupted_batch... runs the default child-process gate.
    monkeypatch.setenv("ALPHA_LAKE_GATE", "thread")


def _row(step: int, **kw) -> dict:
    base = dict(
        run_id="r1",
        step=step,
        loss=2.0 / (1 + step),
        lr=1e-3,
        grad_norm=0.5,
        clip_coef=1.0,
        clip_pct=0.0,
        tokens_per_sec=1000.0,
        ms_per_iter=10.0,
        elapsed_ms=10.0 * step,
        batch_size=8,
        mfu=0.1,
        timestamp=dt.datetime.now(dt.UTC),
        event=None,
        val_loss=None,
    )
    return {**base, **kw}


# -- URLs and credentials -------------------------------------------------------


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("", "empty lake URL"),
        ("foo://bucket/x", "unknown lake protocol 'foo'"),
        ("s3://", "malformed s3 lake URL"),
        ("s3://a", "malformed s3 lake URL"),
        ("s3://Bad_Bucket/x", "malformed s3 lake URL"),
        ("s3://key:secret@bucket/x", "credentials in AWS_* variables"),
        ("s3:bucket/x", "malformed lake URL"),
        ("memory://", "no path after memory://"),
    ],
)
def test_bad_lake_urls_fail_with_one_line(url, fragment, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(LakeError) as err:
        open_lake(url)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    assert "secret" not in msg


def test_missing_s3_credentials_fail_before_any_io(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(LakeError, match="no AWS credentials"):
        open_lake("s3://alpha-lake/runs")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-the-id")
    with pytest.raises(LakeError, match="set both") as err:
        open_lake("s3://alpha-lake/runs")
    assert "only-the-id" not in str(err.value)


def test_default_lake_comes_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALPHA_LAKE", str(tmp_path / "envlake"))
    assert open_lake().root == (tmp_path / "envlake").as_posix()
    monkeypatch.delenv("ALPHA_LAKE")
    monkeypatch.chdir(tmp_path)
    assert open_lake().root == (tmp_path / "lake").as_posix()


def test_run_ids_from_urls_are_checked():
    assert validate_run_id("shakespeare-20261126-0710-ab12") == "shakespeare-20261126-0710-ab12"
    for bad in ("", "../x", "a/b", "..", "a..b", "x" * 200, " a", "a\nb", "run_id=1"):
        with pytest.raises(ValueError):
            validate_run_id(bad)
    with pytest.raises(ValueError):
        reader.run_metrics(open_lake("/nonexistent-lake"), "../../etc")


# -- layout and schema ------------------------------------------------------------


def test_plain_pyarrow_reads_every_prd_column(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "r1", max_rows=50, max_seconds=60, register_atexit=False)
    sink.write_run({"status": "running", "domain": "shakespeare", "symbio": 0})
    for step in range(1, 121):
        sink.put(_row(step, cusum_alerts=0, adaptive_batch_size=8))
    stats = sink.close()
    assert stats.rows_landed == 120 and stats.rows_quarantined == 0

    files = sorted((tmp_path / "lake" / "metrics" / "run_id=r1").glob("*.parquet"))
    assert len(files) == 3  # 50 + 50 + 20 rows: one object per batch, never overwritten
    meta = pq.read_schema(files[0]).metadata
    assert meta[VERSION_METADATA_KEY] == b"2"
    assert "run_id" not in pq.read_schema(files[0]).names  # the Hive partition

    table = ds.dataset(str(tmp_path / "lake" / "metrics"), partitioning="hive").to_table()
    assert set(table.schema.names) == {c.name for c in METRICS_COLUMNS}
    assert table.num_rows == 120
    assert set(table.column("run_id").to_pylist()) == {"r1"}
    runs = ds.dataset(str(tmp_path / "lake" / "runs"), partitioning="hive").to_table()
    assert set(runs.schema.names) == {c.name for c in RUNS_COLUMNS}


def test_schema_evolution_old_files_read_with_new_columns_null(tmp_path):
    """A lake written under schema v1 reads through v2: new columns are null."""
    lake = open_lake(tmp_path / "lake")
    v1 = arrow_schema("metrics", version=1, with_partition=False)
    assert "clip_coef" not in v1.names and v1.metadata[VERSION_METADATA_KEY] == b"1"
    old = pa.table(
        {
            "step": pa.array([1, 2, 3], pa.int64()),
            "loss": [3.0, 2.5, 2.0],
            **{n: pa.nulls(3, v1.field(n).type) for n in v1.names if n not in ("step", "loss")},
        },
        schema=v1,
    )
    put_object(lake, batch_key("metrics", "old", object_name()), encode_parquet(old))
    sink = MetricSink(lake, "old", register_atexit=False)
    sink.put(_row(4, run_id="old", clip_coef=0.5, clip_pct=0.5))
    sink.close()

    df = reader.run_metrics(lake, "old")
    assert df["step"].to_list() == [1, 2, 3, 4]
    assert df.columns == ["run_id", *column_names("metrics")[1:]]
    assert df["clip_coef"].to_list() == [None, None, None, 0.5]
    assert df.schema["clip_coef"] == pl.Float64 and df.schema["cusum_alerts"] == pl.Int64
    # plain pyarrow with the newest schema reads the mixed lake too
    table = ds.dataset(
        str(tmp_path / "lake" / "metrics"), schema=arrow_schema("metrics"), partitioning="hive"
    ).to_table()
    assert table.num_rows == 4


# -- the gate ---------------------------------------------------------------------


def test_corrupted_batch_lands_valid_rows_and_quarantines_the_rest(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(
        lake,
        "r1",
        max_rows=1000,
        batch_bounds=(8, 64),
        register_atexit=False,
        gate_in_process=False,  # the default: GX in a child process
    )
    bad = {
        3: dict(loss=None),
        4: dict(clip_coef=1.5),
        5: dict(clip_pct=-0.1),
        6: dict(grad_norm=math.nan),
        7: dict(lr=math.inf),
        8: dict(cusum_alerts=16),
        9: dict(adaptive_batch_size=65),
        10: dict(not_a_column=1.0),
        11: dict(loss="abc"),
        12: dict(run_id="someone-else"),
    }
    # a NaN-skip step: the engine reports the non-finite loss as null; it lands
    nan_step = {13: dict(loss=None, grad_norm=None, event="nan_skip")}
    for step in range(1, 21):
        sink.put(_row(step, **bad.get(step, nan_step.get(step, {}))))
    sink.put(_row(20, loss=0.25))  # step 20 again in the batch: last write wins
    stats = sink.close()

    good = reader.run_metrics(lake, "r1")
    assert good["step"].to_list() == [1, 2, *range(13, 21)]
    assert good.filter(good["step"] == 20)["loss"].item() == 0.25
    landed_nan = good.filter(good["step"] == 13).row(0, named=True)
    assert landed_nan["loss"] is None and landed_nan["event"] == "nan_skip"
    q = ds.dataset(str(tmp_path / "lake" / "quarantine" / "metrics"), partitioning="hive")
    q = q.to_table().to_pylist()
    assert stats.rows_landed + stats.rows_quarantined == 21 == len(good) + 1 + len(q)
    reasons = {}
    for row in q:
        reasons.setdefault(row["step"], []).append(row["quarantine_reason"])
        assert row["raw_row"] and row["run_id"] == "r1"
    expected = {
        3: "loss: column_values_to_not_be_null",
        4: "out of range: clip_coef>1",
        5: "out of range: clip_pct<0",
        6: "not finite: grad_norm",
        7: "not finite: lr",
        8: "out of range: cusum_alerts>15",
        9: "adaptive_batch_size: column_values_to_be_between [8",
        10: "unknown column 'not_a_column'",
        11: "loss: expected double, got str",
        12: "does not belong to this sink",
    }
    for step, fragment in expected.items():
        assert any(fragment in r for r in reasons[step]), (step, reasons[step])
    assert 20 not in reasons  # a repeated step is not bad data
    assert '"loss": "abc"' in next(r["raw_row"] for r in q if r["step"] == 11)


def test_gate_batch_bounds_come_from_the_symbio_run_row(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "s1", register_atexit=False)
    sink.write_run(
        {
            "status": "running",
            "symbio": 1,
            "symbio_config": '{"batchMin": 4, "batchMax": 16}',
            "train_config": '{"batch": 2}',  # the configured batch widens the range, as in symbio
        }
    )
    sink.put(_row(1, run_id="s1", adaptive_batch_size=16))
    sink.put(_row(2, run_id="s1", adaptive_batch_size=2))
    sink.put(_row(3, run_id="s1", adaptive_batch_size=17))
    sink.put(_row(4, run_id="s1", adaptive_batch_size=1))
    stats = sink.close()
    assert sink.batch_bounds == (2, 16)
    assert (stats.rows_landed, stats.rows_quarantined) == (2, 2)
    assert reader.run_metrics(sink.lake, "s1")["step"].to_list() == [1, 2]


def test_gate_cost_is_measured_and_small(tmp_path):
    gate = MetricsGate()
    rows = [_row(i) for i in range(1000)]
    gate.validate(rows, "r1")
    result = gate.validate(rows, "r1")
    assert result.valid.num_rows == 1000 and result.rejected.num_rows == 0
    assert result.seconds < 5.0  # ~0.15 s on an idle core; loose for a shared CI box


def test_reader_reads_only_committed_objects(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "r1", register_atexit=False)
    sink.put(_row(1))
    sink.close()
    part = tmp_path / "lake" / "metrics" / "run_id=r1"
    (part / ".half-written.parquet.123.tmp").write_bytes(b"PAR1 not finished")
    (part / ".hidden.parquet").write_bytes(b"garbage")
    assert reader.run_metrics(lake, "r1")["step"].to_list() == [1]
    assert ds.dataset(str(tmp_path / "lake" / "metrics"), partitioning="hive").count_rows() == 1
    assert os.listdir(part)


def test_any_fsspec_url_works_with_commit_markers():
    lake = open_lake("memory://alpha-test-lake")
    assert lake.protocol == "memory" and not lake.atomic_rename
    sink = MetricSink(lake, "m1", register_atexit=False)
    sink.write_run({"status": "completed"})
    for step in range(1, 11):
        sink.put(_row(step, run_id="m1"))
    sink.close()
    objects = [p for p in lake.fs.find(lake.root) if "/_commits/" not in p]
    markers = lake.fs.find(lake.path("_commits"))
    assert len(objects) == len(markers) == 2
    assert reader.run_metrics(lake, "m1")["step"].to_list() == list(range(1, 11))
    assert reader.list_runs(lake)["run_id"].to_list() == ["m1"]
    lake.fs.rm(markers[0])  # an uncommitted object is invisible to the reader
    visible = reader.run_metrics(lake, "m1").height + reader.list_runs(lake).height
    assert visible == 1
    lake.fs.rm(lake.root, recursive=True)


def test_gate_falls_back_to_in_process_gx_when_the_child_dies():
    gate = MetricsGate(in_process=False)
    rows = [_row(i) for i in range(1, 6)]
    rows[2]["clip_coef"] = 2.0
    assert gate.validate(rows, "r1").rejected.num_rows == 1  # validated by the child
    gate._worker._proc.kill()
    gate._worker._proc.join(10)
    result = gate.validate(rows, "r1")  # the child is gone: validated here, nothing skipped
    assert (result.valid.num_rows, result.rejected.num_rows) == (4, 1)
    assert gate._worker is None
    gate.close()
