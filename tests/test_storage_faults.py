"""The lake under real faults: bad rows, full disks (a real tmpfs), a store that is
down, corrupt objects, rescued rows, and how long rows wait before they land."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from s3_server import BUCKET, s3_server  # noqa: F401 - the fixture

from flows.cli import main as alpha
from storage import reader, writer
from storage.lake import open_lake
from storage.schema import columns
from storage.sink import MetricSink
from storage.spool import Spool
from storage.validation import RANGES, MetricsGate


@pytest.fixture(autouse=True)
def spool_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "spool"
    monkeypatch.setenv("ALPHA_SPOOL", str(path))
    monkeypatch.setenv("ALPHA_LAKE_GATE", "thread")  # one GX import per test process
    return path


def _row(step, **kw) -> dict:
    base = dict(
        step=step,
        loss=2.0,
        lr=1e-3,
        grad_norm=0.5,
        clip_coef=1.0,
        clip_pct=0.0,
        tokens_per_sec=1000.0,
        ms_per_iter=10.0,
        elapsed_ms=10.0 * (step or 0),
        batch_size=8,
        mfu=0.1,
        timestamp=dt.datetime.now(dt.UTC),
    )
    return {**base, **kw}


def _lake_rows(lake_dir: Path, run_id: str, *, quarantine: bool = False) -> list[dict]:
    base = lake_dir / ("quarantine/metrics" if quarantine else "metrics")
    if not base.exists():
        return []
    table = ds.dataset(str(base), partitioning="hive").to_table()
    return [r for r in table.to_pylist() if r["run_id"] == run_id]


# -- per-row gating -------------------------------------------------------------------


def test_one_bad_row_is_quarantined_alone_and_the_rest_of_its_batch_lands(tmp_path, spool_dir):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "g1", max_rows=1000, max_seconds=60, register_atexit=False)
    bad = {
        5: dict(step=None),
        9: dict(step=1 << 70),  # int64 overflow
        13: dict(loss=-0.5),
        17: dict(lr=-1e-4),
        21: dict(tokens_per_sec=-3.0),
        25: dict(batch_size=0),
        29: dict(ms_per_iter=-1.0),
        33: dict(grad_norm=-0.1),
        37: dict(mfu=-0.2),
        41: dict(elapsed_ms=-5.0, val_loss=-1.0),
    }
    for step in range(1, 50):
        sink.put({**_row(step, event=f"row-{step}"), **bad.get(step, {})})
    stats = sink.close()

    landed = sorted(r["step"] for r in _lake_rows(tmp_path / "lake", "g1"))
    assert landed == [s for s in range(1, 50) if s not in bad]
    assert (stats.rows_landed, stats.rows_quarantined, stats.rows_rescued) == (39, 10, 0)
    assert not list(spool_dir.glob("rescued-*"))  # no batch went to the last resort
    q = _lake_rows(tmp_path / "lake", "g1", quarantine=True)
    reasons = {int(r["event"][4:]): r["quarantine_reason"] for r in q}
    assert "step: must not be null" in reasons[5]
    assert "outside int64" in reasons[9]
    for step, col in ((13, "loss"), (17, "lr"), (21, "tokens_per_sec"), (29, "ms_per_iter")):
        assert f"out of range: {col}<0" in reasons[step]
    assert "batch_size<1" in reasons[25] and "grad_norm<0" in reasons[33] and "mfu<0" in reasons[37]
    assert "elapsed_ms<0" in reasons[41] and "val_loss<0" in reasons[41]
    assert stats.problem.startswith("10 row(s) failed the gate, quarantined in ")


def test_a_step_repeated_in_one_batch_lands_and_the_last_copy_wins(tmp_path):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "dup", max_seconds=60, register_atexit=False)
    for step, loss in ((1, 3.0), (2, 2.0), (2, 1.5), (3, 1.0)):
        sink.put(_row(step, loss=loss))
    stats = sink.close()
    assert (stats.rows_landed, stats.rows_quarantined, stats.problem) == (4, 0, None)
    df = reader.run_metrics(lake, "dup", ["loss"])
    assert df["step"].to_list() == [1, 2, 3] and df["loss"].to_list() == [3.0, 1.5, 1.0]


def test_every_declared_range_rejects_a_value_outside_it_and_nan_skip_rows_still_land():
    expected = {
        "step", "loss", "val_loss", "lr", "grad_norm", "tokens_per_sec", "ms_per_iter",
        "elapsed_ms", "batch_size", "clip_coef", "clip_pct", "mfu", "cusum_grad", "cusum_clip",
        "cusum_tps", "cusum_val", "cusum_alerts", "weight_entropy", "effective_rank",
        "population_entropy", "complexity_score", "adaptive_batch_size", "symbio_generation",
        "architecture_diversity",
    }  # fmt: skip
    assert {name for name, _, _ in RANGES} == expected
    types = {c.name: c.type for c in columns("metrics")}
    rows, want = [_row(1), _row(2, loss=None, grad_norm=None, event="nan_skip")], {}
    step = 10
    for name, lo, hi in RANGES:
        for value, delta, sign in ((lo, -1, "<"), (hi, 1, ">")):
            if value is None:
                continue
            label = f"{name}{sign}{value:g}"
            bad = value + delta if pa.types.is_integer(types[name]) else value + delta * 0.5
            row = _row(step, **{name: bad}) if name != "step" else _row(bad)
            rows.append(row)
            want[len(rows) - 1] = label
            step += 1
    result = MetricsGate().validate(rows, "ranges")
    assert result.valid["step"].to_pylist() == [1, 2]  # the good row and the NaN-skip row
    assert result.valid["loss"].to_pylist() == [2.0, None]
    reasons = result.rejected["quarantine_reason"].to_pylist()
    assert len(reasons) == len(want)
    for reason, label in zip(reasons, want.values(), strict=True):
        assert f"out of range: {label}" in reason


# -- disk full and a store that is down (a real, tiny tmpfs) ----------------------


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A real 256 KiB tmpfs, mounted for the test (needs root, as in CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the filler file (remove it to free space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_full_spool_with_the_store_down_counts_lost_rows_and_says_why(tmp_path, tiny_disk):
    blocker = tmp_path / "mnt"
    blocker.write_text("the lake's disk is gone")
    filler = _fill(tiny_disk)
    spool = tiny_disk / "spool"
    sink = MetricSink(
        open_lake(blocker / "lake"),
        "full-1",
        max_rows=20,
        spool_dir=spool,
        retry_base=0.05,
        retry_max=0.1,
        register_atexit=False,
    )
    for step in range(1, 101):
        sink.put(_row(step))
    assert sink.flush(timeout=60) and sink._thread.is_alive()  # the writer did not die
    stats = sink.close()
    sink.put(_row(101))  # late row: rescue file impossible too, and counted
    assert (stats.rows_put, stats.rows_landed, stats.rows_spooled) == (101, 0, 0)
    assert stats.rows_lost == 101
    assert stats.problem.startswith("100 row(s) lost:") and "\n" not in stats.problem
    assert "No space left on device" in stats.problem and "unreachable" in stats.problem
    assert _files(tiny_disk) == ["filler"]  # no partial spool entry or rescue file
    filler.unlink()


def test_rows_held_while_the_spool_is_full_are_spooled_when_space_returns(tmp_path, tiny_disk):
    blocker = tmp_path / "mnt"
    blocker.write_text("store down")
    filler = _fill(tiny_disk)
    sink = MetricSink(
        open_lake(blocker / "lake"),
        "full-2",
        max_rows=25,
        spool_dir=tiny_disk / "spool",
        retry_base=0.05,
        retry_max=0.1,
        register_atexit=False,
    )
    for step in range(1, 101):
        sink.put(_row(step))
    assert sink.flush(timeout=60)
    assert sink.stats.rows_spooled == 0 and sink._held  # in memory, not lost
    filler.unlink()  # space comes back
    deadline = time.monotonic() + 20
    while sink._held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.stats.rows_spooled == 100  # kept locally now
    blocker.unlink()  # and the store comes back
    stats = sink.close()
    assert (stats.rows_landed, stats.rows_spooled, stats.rows_lost) == (100, 0, 0)
    assert stats.problem is None
    assert sorted(r["step"] for r in _lake_rows(blocker / "lake", "full-2")) == list(range(1, 101))


def test_full_lake_disk_leaves_no_partial_tmp_and_spooled_rows_land_with_flush(
    tiny_disk, spool_dir
):
    filler = _fill(tiny_disk)
    lake = open_lake(tiny_disk / "lake")
    sink = MetricSink(lake, "full-3", max_rows=30, retry_base=60, register_atexit=False)
    sink.write_run({"status": "running"})
    for step in range(1, 91):
        sink.put(_row(step))
    stats = sink.close()
    assert (stats.rows_landed, stats.rows_spooled, stats.rows_lost) == (0, 91, 0)  # + run row
    assert "alpha lake flush" in stats.problem and "91 row(s) not in the lake" in stats.problem
    leftovers = [f for f in _files(tiny_disk) if f != "filler"]
    assert leftovers == [], leftovers  # no .tmp (nor anything else) in the lake
    filler.unlink()
    assert alpha(["lake", "flush", "--lake", str(tiny_disk / "lake")]) == 0
    assert sorted(r["step"] for r in _lake_rows(tiny_disk / "lake", "full-3")) == list(range(1, 91))
    assert reader.get_run(lake, "full-3")["status"] == "running"


@pytest.fixture
def stalled_store(monkeypatch) -> Iterator[str]:
    """A loopback endpoint that accepts connections and never answers (a hung S3)."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        srv.close()


def test_a_stalled_store_bounds_each_put_and_its_rows_are_spooled_not_lost(
    s3_server, stalled_store, spool_dir, monkeypatch  # noqa: F811
):
    """aiohttp waits for ``100 Continue`` forever: without a bound the writer hung."""
    monkeypatch.setattr(writer, "PUT_TIMEOUT_S", 1.0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", stalled_store)
    url = f"s3://{BUCKET}/stalled"
    sink = MetricSink(open_lake(url), "stall-1", max_rows=10, register_atexit=False)
    for step in range(1, 31):
        sink.put(_row(step))
    stats = sink.close(timeout=30)
    assert not sink._thread.is_alive()  # the writer was not stuck in a PUT
    assert (stats.rows_landed, stats.rows_spooled, stats.rows_lost) == (0, 30, 0)
    assert "did not answer a PUT within 1s" in stats.problem and "timed out" not in stats.problem
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)  # the store answers again
    assert alpha(["lake", "flush"]) == 0
    assert reader.run_metrics(open_lake(url), "stall-1")["step"].to_list() == list(range(1, 31))


# -- rescued rows -------------------------------------------------------------------


def test_alpha_lake_flush_lands_rescued_rows_through_the_gate_once(tmp_path, spool_dir, capsys):
    lake = open_lake(tmp_path / "lake")
    sink = MetricSink(lake, "late-1", register_atexit=False)
    sink.close()
    for step in (1, 2, 3):
        sink.put(_row(step, loss=-1.0 if step == 2 else 1.0))  # after close: rescued
    files = list(spool_dir.glob("rescued-metrics-late-1-*.jsonl"))
    assert len(files) == 3 and sink.stats.rows_spooled == 3
    with open(files[0], "a") as fh:
        fh.write('{"step": 4, "loss": 1.0, "trunc\n')  # a line cut by a crash
    assert alpha(["lake", "flush"]) == 0
    assert "landed 3" in capsys.readouterr().out
    assert not list(spool_dir.glob("rescued-*"))  # removed once landed
    rows = _lake_rows(tmp_path / "lake", "late-1")
    assert sorted(r["step"] for r in rows) == [1, 3]
    assert isinstance(rows[0]["timestamp"], dt.datetime)  # typed again, not text
    q = _lake_rows(tmp_path / "lake", "late-1", quarantine=True)
    assert sorted(r["quarantine_reason"] for r in q) == [
        "out of range: loss<0",
        "rescued line is not JSON",
    ]


def test_a_rescued_file_stays_until_its_lake_is_reachable_and_lands_exactly_once(
    tmp_path, spool_dir
):
    blocker = tmp_path / "mnt"
    blocker.write_text("down")
    url = str(blocker / "lake")
    path = Spool(spool_dir).rescue(
        url, "metrics", "r-9", [_row(s) for s in range(1, 6)], "test: writer error"
    )
    assert alpha(["lake", "flush"]) == 1 and path.exists()  # lake down: kept
    blocker.unlink()
    assert alpha(["lake", "flush"]) == 0 and not path.exists()
    # a landing that stored its objects but died before removing the file, re-run:
    path = Spool(spool_dir).rescue(url, "metrics", "r-9", [_row(6)], "again")
    copy = path.read_bytes()
    assert alpha(["lake", "flush"]) == 0
    path.write_bytes(copy)
    assert alpha(["lake", "flush"]) == 0
    steps = sorted(r["step"] for r in _lake_rows(blocker / "lake", "r-9"))
    assert steps == [1, 2, 3, 4, 5, 6]  # the same object name: overwritten, not duplicated


def test_old_rescued_files_without_a_header_land_with_an_explicit_lake(tmp_path, spool_dir):
    spool_dir.mkdir()
    old = spool_dir / "rescued-metrics-old-run-0123abcd.jsonl"
    old.write_text(json.dumps({"run_id": "old-run", "step": 1, "loss": 0.5}) + "\n")
    assert alpha(["lake", "flush"]) == 0 and old.exists()  # no lake named: left alone
    assert alpha(["lake", "flush", "--lake", str(tmp_path / "lake")]) == 0
    assert not old.exists()
    assert [r["step"] for r in _lake_rows(tmp_path / "lake", "old-run")] == [1]


# -- time-bounded batches ----------------------------------------------------------


def test_batches_are_time_bounded_by_put_time_even_behind_a_slow_gate(tmp_path, monkeypatch):
    """The GX child needs seconds to start: rows queued meanwhile land right
    after it is ready (not max_seconds later), then objects land about every
    max_seconds, and no row waits much longer than that."""
    monkeypatch.delenv("ALPHA_LAKE_GATE")  # the production gate: GX in a child process
    lake = open_lake(tmp_path / "lake")
    max_s, rate = 1.0, 100
    sink = MetricSink(lake, "timed", max_seconds=max_s, register_atexit=False)
    t0, step = time.monotonic(), 0
    part = tmp_path / "lake" / "metrics" / "run_id=timed"
    landed: dict[str, float] = {}  # object -> when first seen
    while time.monotonic() - t0 < 60:
        step += 1
        sink.put(_row(step))
        now = time.monotonic()
        for p in part.glob("*.parquet") if part.is_dir() else ():
            landed.setdefault(p.name, now)
        if len(landed) >= 6:
            break
        time.sleep(max(0.0, t0 + step / rate - time.monotonic()))
    stats = sink.close()
    assert stats.rows_landed == step and len(landed) >= 6
    names = sorted(landed)
    seen = [landed[n] for n in names]
    oldest_put = [  # wall clock -> monotonic
        min(pq.read_table(part / n, columns=["timestamp"])["timestamp"].to_pylist())
        for n in names[:6]
    ]
    offset = time.time() - time.monotonic()
    # 1. the backlog behind the slow start lands at once, not max_seconds later
    if seen[0] - t0 > 2 * max_s:  # (GX took longer to start than one batch: ~3 s here)
        assert seen[1] - seen[0] < 0.6 * max_s, seen
    # 2. then an object about every max_seconds
    gaps = [b - a for a, b in zip(seen[1:5], seen[2:6], strict=True)]
    assert all(g < max_s + 0.6 for g in gaps), gaps
    # 3. and no row of those objects waited much more than max_seconds
    waits = [seen[i] - (oldest_put[i].timestamp() - offset) for i in range(2, 6)]
    assert all(w < max_s + 0.7 for w in waits), waits


# -- unreadable objects ---------------------------------------------------------------


def _two_runs(tmp_path) -> tuple:
    lake = open_lake(tmp_path / "lake")
    for rid in ("good-1", "hurt-1"):
        sink = MetricSink(lake, rid, max_rows=5, register_atexit=False)
        sink.write_run({"status": "completed", "latest_step": 10})
        for step in range(1, 11):
            sink.put(_row(step))
        sink.close()
    metrics = sorted((tmp_path / "lake" / "metrics" / "run_id=hurt-1").glob("*.parquet"))
    runs = sorted((tmp_path / "lake" / "runs" / "run_id=hurt-1").glob("*.parquet"))
    return lake, metrics, runs


def test_readers_skip_corrupt_and_wrong_schema_objects_and_report_them(tmp_path):
    lake, metrics, _ = _two_runs(tmp_path)
    data = metrics[0].read_bytes()
    metrics[0].write_bytes(data[:100] + b"\0" * 200 + data[300:])  # corrupt pages, footer intact
    wrong = pa.table({"step": pa.array(["a", "b"]), "loss": pa.array([1.0, 2.0])})
    pq.write_table(wrong, metrics[0].with_name("99999999999999999999-wrong.parquet"))
    with reader.read_report() as report:
        df = reader.run_metrics(lake, "hurt-1")
        again = reader.run_metrics(lake, "hurt-1", ["loss"], since_step=7)
    assert df["step"].to_list() == [6, 7, 8, 9, 10]  # the other batch of the run
    assert again["step"].to_list() == [8, 9, 10]
    assert sorted(Path(o.url).name for o in report.skipped) == sorted(
        [metrics[0].name, "99999999999999999999-wrong.parquet"]
    )
    assert "step is String, expected Int64" in " ".join(o.reason for o in report.skipped)
    assert report.warning().startswith("skipped 2 unreadable lake object(s): ")
    assert reader.run_metrics(lake, "good-1").height == 10
    assert {Path(o.url).name for o in reader.skipped_objects(lake)} >= {metrics[0].name}


def test_alpha_runs_lists_the_rest_and_warns_in_one_line_on_a_corrupt_object(tmp_path, capsys):
    lake, _, runs = _two_runs(tmp_path)
    for path in runs:
        path.write_bytes(b"PAR1 this is not parquet")
    assert alpha(["runs", "--lake", str(tmp_path / "lake")]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["RUN", "good-1"]
    assert err.count("\n") == 1 and err.startswith("warning: skipped 1 unreadable lake object")
    assert runs[0].name in err and "Traceback" not in err


def test_s3_reader_skips_a_corrupt_committed_object(s3_server):  # noqa: F811
    lake = open_lake(f"s3://{BUCKET}/lake")
    sink = MetricSink(lake, "s3-hurt", max_rows=5, register_atexit=False)
    for step in range(1, 11):
        sink.put(_row(step))
    sink.close()
    first = sorted(lake.fs.find(f"{BUCKET}/lake/metrics/run_id=s3-hurt"))[0]
    lake.fs.pipe_file(first, b"garbage, committed")  # the marker stays: a committed object
    with reader.read_report() as report:
        df = reader.run_metrics(lake, "s3-hurt")
    assert df["step"].to_list() == [6, 7, 8, 9, 10]
    assert [o.url for o in report.skipped] == [f"s3://{first}"]


def test_nan_and_inf_in_stage_one_cannot_hide_from_the_range_check():
    rows = [_row(1, loss=-math.inf), _row(2, lr=math.nan)]
    result = MetricsGate().validate(rows, "x")
    reasons = result.rejected["quarantine_reason"].to_pylist()
    assert result.valid.num_rows == 0
    assert "not finite: loss" in reasons[0] and "loss<0" in reasons[0]
    assert "not finite: lr" in reasons[1]


def test_spool_add_failure_leaves_no_half_entry(tiny_disk):
    filler = _fill(tiny_disk)
    with pytest.raises(OSError):
        Spool(tiny_disk / "spool").add("/lake", "metrics/run_id=x/a.parquet", b"x" * 10_000)
    assert os.listdir(tiny_disk / "spool") == []
    filler.unlink()
