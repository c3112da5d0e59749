"""The metric sink: the trainer enqueues rows, a background thread lands them.

``MetricSink.put`` is a ``SimpleQueue.put`` of a shallow copy: no I/O, no
lock contention, never blocks. The writer thread batches rows (by count, and
by the age of the oldest row since it was *put*), runs the gate
(``storage.validation``), lands valid rows as one Parquet object per batch
and quarantines failing rows with their reason. When the store fails, the
batch's objects go to the local spool (``storage.spool``) and are retried
with exponential backoff; the run goes on. When the spool cannot take them
either (disk full), they are held in memory (up to ``max_held_bytes``) and
retried; only past that, or still held at close, are rows lost, and
``SinkStats.rows_lost`` / ``SinkStats.problem`` say so. On close (normal end,
Ctrl-C, crash via ``atexit``) the buffer is flushed, or left in the spool for
the next sink or ``alpha lake flush``. The writer thread never dies silently:
an unexpected error rescues its rows to a JSON-lines file, is recorded in
``SinkStats.problem``, and the loop goes on.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.hooks import TrainerHook
from storage.lake import Lake, validate_run_id
from storage.schema import PARTITION_KEY, arrow_schema, quarantine_schema
from storage.spool import Spool
from storage.validation import GateResult, MetricsGate, batch_bounds, check_rows
from storage.writer import batch_key, encode_parquet, object_name, put_object

log = logging.getLogger(__name__)

_FLUSH, _CLOSE = "__flush__", "__close__"
#: ``process`` (default): GX runs in a child process; ``thread``: in the writer thread.
ENV_GATE = "ALPHA_LAKE_GATE"
_TABLES = ("metrics", "runs", "candidates")
#: Objects the store and the spool both refused are held in memory up to this size.
MAX_HELD_BYTES = 64 << 20


@dataclass
class SinkStats:
    """What a sink did.

    Metric rows: ``rows_put`` (given to ``put``), ``rows_landed`` (in the lake),
    ``rows_quarantined`` (rejected by the gate and kept, in the lake's
    quarantine or the spool). Rows of every table: ``rows_spooled`` (kept
    locally, in spool entries or rescued files, not in the lake yet: ``alpha
    lake flush`` lands them) and ``rows_lost`` (kept nowhere). For a sink of
    metric rows only, after ``close``: ``rows_put == rows_landed +
    rows_quarantined + rows_spooled + rows_lost``. ``problem`` is one line
    about the worst thing that happened (lost > spooled > quarantined), or
    None when every row landed.
    """

    rows_put: int = 0
    rows_landed: int = 0
    rows_quarantined: int = 0
    batches: int = 0
    objects_spooled: int = 0
    spool_landed: int = 0
    spool_left: int = 0
    rows_rescued: int = 0
    gate_seconds: float = 0.0
    store_errors: int = 0
    #: CPU time of the writer thread: the most it can take from the trainer's GIL.
    writer_cpu_seconds: float = 0.0
    rows_spooled: int = 0
    rows_lost: int = 0
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Object:
    """One object on its way to the lake: where it goes and how many rows it holds."""

    key: str
    data: bytes
    table: str
    rows: int
    quarantine: bool = False


class MetricSink:
    """Background writer of one run's rows into a lake.

    Options: ``max_rows`` (batch size, default 2000), ``max_seconds`` (most
    time a row waits in memory before its batch is formed, default 5),
    ``batch_bounds`` ((batch_min, batch_max) of a symbio run;
    default: read from ``symbio_config`` of the first run row written), ``spool_dir`` (default ``$ALPHA_SPOOL`` or ``~/.cache/alpha/spool``),
    ``retry_base``/``retry_max`` (backoff seconds), ``register_atexit``,
    ``gate_in_process`` (run GX in the writer thread instead of a child
    process; default from ``$ALPHA_LAKE_GATE``: ``thread`` or ``process``),
    ``max_held_bytes`` (memory for objects neither the store nor the spool took).
    """

    def __init__(
        self,
        lake: Lake,
        run_id: str,
        *,
        max_rows: int = 2000,
        max_seconds: float = 5.0,
        batch_bounds: tuple[int, int] | None = None,
        spool_dir: str | Path | None = None,
        retry_base: float = 1.0,
        retry_max: float = 30.0,
        register_atexit: bool = True,
        gate_in_process: bool | None = None,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.lake = lake
        self.run_id = validate_run_id(run_id)
        self.max_rows = max(1, int(max_rows))
        self.max_seconds = float(max_seconds)
        self.batch_bounds = batch_bounds
        self.spool = Spool(spool_dir)
        self.stats = SinkStats()
        self._retry_base, self._retry_max = retry_base, retry_max
        self._failures = 0
        self._next_retry = 0.0  # monotonic time before which the store is not tried
        self._q: queue.SimpleQueue[tuple[str, Any, float]] = queue.SimpleQueue()
        self._gate: MetricsGate | None = None
        if gate_in_process is None:
            gate_in_process = os.environ.get(ENV_GATE, "process") == "thread"
        self._gate_in_process = gate_in_process
        self._held: deque[_Object] = deque()  # refused by the store and the spool
        self._held_bytes, self._max_held_bytes = 0, int(max_held_bytes)
        self._spooled: dict[str, _Object] = {}  # our spool entries (without data), by key
        self._store_error: str | None = None  # last store failure, one line
        self._spool_error: str | None = None  # last spool failure, one line
        self._writer_error: str | None = None  # last unexpected writer error, one line
        self._reasons: Counter[str] = Counter()  # quarantine reasons
        self._metric_tally: Counter[str] = Counter()  # rows_spooled/rows_lost of metric rows
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lake-sink-{run_id}", daemon=True)
        self._thread.start()
        self._atexit = register_atexit
        if register_atexit:
            atexit.register(self._close_at_exit)

    # -- producer side (training thread) ---------------------------------------
    def put(self, row: dict[str, Any]) -> None:
        """Enqueue one metric row. Never blocks, never does I/O (unless closed)."""
        self.stats.rows_put += 1
        if self._closed:  # misuse: keep the row rather than drop it
            self._rescue("metrics", [dict(row)], RuntimeError("put() after close()"))
            return
        self._q.put(("metrics", dict(row), time.monotonic()))

    def write_run(self, run_row: dict[str, Any]) -> None:
        """Upsert the run row: a new object; readers take the newest ``updated_at``."""
        row = {"run_id": self.run_id, **run_row}
        row.setdefault("updated_at", _now())
        self._q.put(("runs", row, 0.0))

    def write_candidates(self, rows: list[dict[str, Any]]) -> None:
        """Upsert search-candidate rows (newest ``updated_at`` per candidate wins)."""
        now = _now()
        for r in rows:
            self._q.put(("candidates", {"run_id": self.run_id, "updated_at": now, **r}, 0.0))

    def flush(self, timeout: float = 30.0) -> bool:
        """Land (or spool) everything put so far; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._q.put((_FLUSH, done, 0.0))
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> SinkStats:
        """Flush, try the spool once more, stop the thread; returns the stats.

        Rows the writer could not finish within ``timeout`` are counted in
        ``rows_lost`` (they would die with the process).
        """
        if not self._closed:
            self._closed = True
            self._q.put((_CLOSE, None, 0.0))
            self._thread.join(timeout)
            if self._thread.is_alive():
                pending = self._unaccounted()
                log.error(
                    "lake sink: close timed out after %.0fs; %d row(s) not written",
                    timeout,
                    pending,
                )
                self._tally("rows_lost", "metrics", pending)
                self._writer_error = f"close() timed out after {timeout:.0f}s"
            if self._atexit:
                atexit.unregister(self._close_at_exit)
        try:
            self.stats.spool_left = len(self.spool.entries(self.lake.url))
        except OSError:
            pass
        self.stats.problem = self._problem()
        return self.stats

    def _close_at_exit(self) -> None:
        self.close(timeout=30.0)

    def _unaccounted(self) -> int:
        """Metric rows put but neither landed, quarantined, spooled nor counted lost."""
        s, m = self.stats, self._metric_tally
        return max(
            0, s.rows_put - s.rows_landed - s.rows_quarantined - m["rows_spooled"] - m["rows_lost"]
        )

    def _tally(self, field: str, table: str, n: int) -> None:
        """Add ``n`` to ``stats.<field>`` (rows of any table) and to the metric-row tally."""
        setattr(self.stats, field, getattr(self.stats, field) + n)
        if table == "metrics":
            self._metric_tally[field] += n

    # -- writer thread -----------------------------------------------------------
    def _run(self) -> None:
        buffers: dict[str, list[dict]] = {t: [] for t in _TABLES}
        crashes = 0
        while True:
            try:
                self._loop(buffers)
                return
            except BaseException as exc:  # noqa: BLE001 - the writer must not take rows down with it
                crashes += 1
                self._writer_error = f"writer error {type(exc).__name__}: {_line(exc)}"
                log.exception("lake sink: writer error; its rows are rescued, writing goes on")
                self._drain_into(buffers)
                for table, rows in buffers.items():
                    if rows:
                        self._rescue(table, rows, exc)
                    buffers[table] = []
                if self._closed and self._q.empty():
                    self._finish()
                    return
                time.sleep(min(1.0, 0.01 * 2 ** min(crashes, 7)))

    def _loop(self, buffers: dict[str, list[dict]]) -> None:
        oldest: float | None = None  # put() time of the oldest buffered metric row
        # GX loads (in its child, ~3-15 s) while the trainer starts and the first batch fills
        self._build_gate()
        self._retry_spool()  # leftovers of earlier runs on this lake
        while True:
            try:
                kind, payload, put_at = self._q.get(timeout=self._wait_time(oldest))
            except queue.Empty:
                kind, payload, put_at = "", None, 0.0
            if kind in _TABLES:
                buffers[kind].append(payload)
                if kind != "metrics":  # run/candidate rows are rare: land at once
                    self._land(kind, buffers[kind])
                    buffers[kind] = []
                elif oldest is None:
                    oldest = put_at
            due = oldest is not None and time.monotonic() - oldest >= self.max_seconds
            if due or kind in (_FLUSH, _CLOSE):
                # rows queued meanwhile (e.g. while the last batch landed) join this batch
                self._drain_into(buffers)
            if due or kind in (_FLUSH, _CLOSE) or len(buffers["metrics"]) >= self.max_rows:
                self._land_all(buffers)
                oldest = None
            if kind == _FLUSH:
                self._retry_spool(force=True)
                payload.set()
            elif kind == _CLOSE:
                self._finish()
                return
            elif (self._failures or self._held) and time.monotonic() >= self._next_retry:
                self._retry_spool()

    def _finish(self) -> None:
        """Last landing attempts at close; what is still held in memory is lost."""
        self._retry_spool(force=True)
        while self._held:
            obj = self._held.popleft()
            self._lose(obj, "still held in memory at close")
        self._held_bytes = 0
        if self._gate is not None:
            self._gate.close()

    def _wait_time(self, oldest: float | None) -> float:
        horizon = (
            self.max_seconds if oldest is None else self.max_seconds - (time.monotonic() - oldest)
        )
        if self.spool_pending:
            horizon = min(horizon, max(0.0, self._next_retry - time.monotonic()))
        return min(max(horizon, 0.01), 1.0)

    def _drain_into(self, buffers: dict[str, list[dict]]) -> None:
        """Move rows already queued (before a flush/close marker) into the buffers."""
        pending: list[tuple[str, Any, float]] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item[0] in _TABLES:
                buffers[item[0]].append(item[1])
            else:
                pending.append(item)
        for item in pending:  # markers put after ours: keep their order
            self._q.put(item)

    def _land_all(self, buffers: dict[str, list[dict]]) -> None:
        for table in _TABLES:
            rows = buffers[table]
            buffers[table] = []
            for i in range(0, len(rows), self.max_rows):
                self._land(table, rows[i : i + self.max_rows])

    def _land(self, table: str, rows: list[dict]) -> None:
        if not rows:
            return
        cpu0 = time.thread_time()
        try:
            objects = self._objects(table, rows)
        except Exception as exc:  # noqa: BLE001 - a bug here must not lose rows
            self._rescue(table, rows, exc)
            objects = []
        for obj in objects:
            self._store(obj)
        self.stats.writer_cpu_seconds += time.thread_time() - cpu0

    def _objects(self, table: str, rows: list[dict]) -> list[_Object]:
        """Validate one batch and encode its objects (valid rows, quarantined rows)."""
        result = self._validate(table, rows)
        self.stats.batches += 1
        self.stats.gate_seconds += result.seconds
        out = []
        if result.valid.num_rows:
            valid = result.valid.drop_columns([PARTITION_KEY])
            data = encode_parquet(valid.cast(arrow_schema(table, with_partition=False)))
            key = batch_key(table, self.run_id, object_name())
            out.append(_Object(key, data, table, valid.num_rows))
        if result.rejected.num_rows:
            data = encode_parquet(result.rejected.cast(quarantine_schema(table)))
            key = batch_key(table, self.run_id, object_name(), quarantine=True)
            out.append(_Object(key, data, table, result.rejected.num_rows, quarantine=True))
            if table == "metrics":
                self.stats.rows_quarantined += result.rejected.num_rows
            self._reasons.update(result.reasons)
            log.warning(
                "lake sink: %d %s row(s) quarantined: %s",
                result.rejected.num_rows,
                table,
                result.reasons,
            )
        return out

    def _validate(self, table: str, rows: list[dict]) -> GateResult:
        if table == "runs" and self.batch_bounds is None:
            self.batch_bounds = batch_bounds(rows[-1])
            if self.batch_bounds is not None and self._gate is not None:
                self._gate.close()  # rebuilt with the bounds for the next batch
                self._gate = None
        if table != "metrics":
            return check_rows(table, rows, self.run_id)
        if self._gate is None:
            self._build_gate()
        if self._gate is None:
            raise RuntimeError("no validation suite")
        return self._gate.validate(rows, self.run_id)

    def _build_gate(self) -> None:
        if self._gate is not None:
            self._gate.close()
        try:
            self._gate = MetricsGate(self.batch_bounds, in_process=self._gate_in_process)
        except Exception:  # noqa: BLE001 - retried at the first batch; rows are never lost
            log.exception("lake sink: could not build the validation suite")

    # -- store, spool, memory, retry ---------------------------------------------
    @property
    def spool_pending(self) -> bool:
        return self._failures > 0 or bool(self._held)

    def _store(self, obj: _Object) -> None:
        if self._held or (self._failures and time.monotonic() < self._next_retry):
            self._keep(obj)  # behind objects already waiting: keep their order
            return
        try:
            put_object(self.lake, obj.key, obj.data)
        except Exception as exc:  # noqa: BLE001 - any store failure: spool and go on
            self._store_failed(exc)
            self._keep(obj)
            return
        self._store_ok()
        self._landed(obj)

    def _landed(self, obj: _Object) -> None:
        if obj.table == "metrics" and not obj.quarantine:
            self.stats.rows_landed += obj.rows

    def _counted(self, obj: _Object) -> int:
        """Rows of ``obj`` that ``rows_spooled``/``rows_lost`` count (quarantined: once)."""
        return 0 if obj.quarantine else obj.rows

    def _keep(self, obj: _Object) -> None:
        """Spool ``obj``; if the spool refuses it too (disk full), hold it in memory."""
        if not self._held:
            try:
                self.spool.add(self.lake.url, obj.key, obj.data, table=obj.table, rows=obj.rows)
            except OSError as exc:
                self._spool_failed(exc)
            else:
                self._spooled[obj.key] = _Object(obj.key, b"", obj.table, obj.rows, obj.quarantine)
                self.stats.objects_spooled += 1
                self._tally("rows_spooled", obj.table, self._counted(obj))
                return
        self._held.append(obj)
        self._held_bytes += len(obj.data)
        while self._held_bytes > self._max_held_bytes and len(self._held) > 1:
            old = self._held.popleft()
            self._held_bytes -= len(old.data)
            self._lose(old, f"more than {self._max_held_bytes >> 20} MiB held in memory")

    def _lose(self, obj: _Object, why: str) -> None:
        if obj.quarantine and obj.table == "metrics":
            self.stats.rows_quarantined -= obj.rows  # no longer kept anywhere
        self._tally("rows_lost", obj.table, obj.rows)
        log.error("lake sink: %d %s row(s) lost: %s", obj.rows, obj.table, why)

    def _retry_held(self) -> bool:
        """Store (or else spool) held objects in order; False while none can go."""
        while self._held:
            obj = self._held[0]
            try:
                put_object(self.lake, obj.key, obj.data)
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
                try:
                    self.spool.add(self.lake.url, obj.key, obj.data, table=obj.table, rows=obj.rows)
                except OSError as spool_exc:
                    self._spool_failed(spool_exc)
                    return False
                self._spooled[obj.key] = _Object(obj.key, b"", obj.table, obj.rows, obj.quarantine)
                self.stats.objects_spooled += 1
                self._tally("rows_spooled", obj.table, self._counted(obj))
            else:
                self._store_ok()
                self._landed(obj)
            self._held.popleft()
            self._held_bytes -= len(obj.data)
        return True

    def _retry_spool(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_retry:
            return
        if not self._retry_held():
            return
        try:
            entries = self.spool.entries(self.lake.url)
        except OSError as exc:
            log.warning("lake sink: cannot read the spool %s: %s", self.spool.dir, exc)
            return
        for entry in entries:
            try:
                if self.spool.land(entry, self.lake):
                    self.stats.spool_landed += 1
                    self._spool_entry_landed(entry.key)
                self._store_ok()
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
                return
        self._failures = 0

    def _spool_entry_landed(self, key: str) -> None:
        obj = self._spooled.pop(key, None)
        if obj is not None:
            self._tally("rows_spooled", obj.table, -self._counted(obj))
            self._landed(obj)

    def _store_ok(self) -> None:
        if self._failures:
            log.info("lake sink: store reachable again")
        self._failures = 0
        self._next_retry = 0.0

    def _store_failed(self, exc: Exception) -> None:
        self._failures += 1
        self.stats.store_errors += 1
        self._store_error = f"{type(exc).__name__}: {_line(exc)}"
        delay = min(self._retry_max, self._retry_base * 2 ** (self._failures - 1))
        self._next_retry = time.monotonic() + delay
        log.warning(
            "lake sink: store unreachable (%s); spooling, retry in %.0fs", type(exc).__name__, delay
        )

    def _spool_failed(self, exc: OSError) -> None:
        first = self._spool_error is None
        self._spool_error = f"{type(exc).__name__}: {_line(exc)}"
        (log.error if first else log.debug)(
            "lake sink: the spool %s refused a batch (%s); holding it in memory",
            self.spool.dir,
            self._spool_error,
        )

    def _rescue(self, table: str, rows: list[dict], exc: BaseException) -> None:
        """Last resort: keep rows as JSON lines in the spool folder (never raises)."""
        log.error(
            "lake sink: could not process %d %s row(s) (%s: %s); rescuing to %s",
            len(rows),
            table,
            type(exc).__name__,
            exc,
            self.spool.dir,
            exc_info=exc if exc.__traceback__ is not None else None,  # a bug: show where
        )
        reason = f"{type(exc).__name__}: {_line(exc)}"
        try:
            self.spool.rescue(self.lake.url, table, self.run_id, rows, reason)
        except Exception as write_exc:  # noqa: BLE001 - disk full: count, never raise
            self._spool_failed(write_exc if isinstance(write_exc, OSError) else OSError(write_exc))
            self._tally("rows_lost", table, len(rows))
            log.error("lake sink: %d %s row(s) lost: could not rescue them", len(rows), table)
            return
        self.stats.rows_rescued += len(rows)
        self._tally("rows_spooled", table, len(rows))

    # -- reporting -----------------------------------------------------------------
    def _problem(self) -> str | None:
        """One line: the worst thing that happened to this sink's rows, or None."""
        s = self.stats
        store = f"the lake was unreachable ({self._store_error})" if self._store_error else None
        spool = (
            f"the spool {self.spool.dir} refused them ({self._spool_error})"
            if self._spool_error
            else None
        )
        if s.rows_lost:
            causes = [c for c in (store, spool, self._writer_error) if c]
            return _line(f"{s.rows_lost} row(s) lost: " + ("; ".join(causes) or "unknown cause"))
        if s.rows_spooled:
            cause = store or self._writer_error or "rows could not be processed"
            return _line(
                f"{s.rows_spooled} row(s) not in the lake yet, kept in {self.spool.dir} "
                f"({cause}): run `alpha lake flush`"
            )
        if s.rows_quarantined:
            top = ", ".join(f"{r} x{n}" for r, n in self._reasons.most_common(3))
            return _line(
                f"{s.rows_quarantined} row(s) failed the gate, quarantined in "
                f"{self.lake.url}/quarantine/metrics ({top})"
            )
        return None


def _line(value: Any, limit: int = 400) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LakeHook(TrainerHook):
    """Trainer hook: every step row to the sink; the run row at start and end.

    With ``run_row`` (PRD run metadata: domain, symbio, symbio_config, ...),
    the hook writes the run row at start (status ``running``, filled with what
    the trainer knows) and again at the end with status, ``latest_step``,
    ``last_loss``, ``best_val_loss``, ``finished_at`` and anything given to
    ``update_run`` (e.g. ``symbio_winner``). Without it (search candidates),
    only metric rows are written. The sink is flushed at the end, not closed.
    """

    _STATUS = {"completed": "completed", "failed": "failed", "interrupted": "cancelled"}

    def __init__(self, sink: MetricSink, run_row: dict[str, Any] | None = None) -> None:
        self.sink = sink
        self.run_row = None if run_row is None else dict(run_row)
        self.latest_step: int | None = None
        self.last_loss: float | None = None
        self.best_val_loss: float | None = None

    def on_train_start(self, trainer: Any) -> None:
        if self.run_row is None:
            return
        now = _now()
        self.run_row = {**_trainer_facts(trainer), **self.run_row}
        self.run_row.update(run_id=self.sink.run_id, status="running", updated_at=now)
        self.run_row.setdefault("started_at", now)
        self.sink.write_run(self.run_row)

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        self.sink.put(row)
        self.latest_step = row.get("step", self.latest_step)
        loss = row.get("loss")
        if loss is not None and loss == loss:  # NaN-loss steps are skipped steps
            self.last_loss = loss
        val = row.get("val_loss")
        if (
            val is not None
            and val == val
            and (self.best_val_loss is None or val < self.best_val_loss)
        ):
            self.best_val_loss = val

    def update_run(self, **fields: Any) -> None:
        """Fields for the end-of-run row (e.g. ``symbio_winner=json``)."""
        if self.run_row is not None:
            self.run_row.update(fields)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        try:
            if self.run_row is not None:
                self.sink.write_run(self._final_row(result))
            self.sink.flush(timeout=60.0)
        except Exception:  # noqa: BLE001 - hooks must not raise at the end
            log.exception("lake hook: could not finish the run row")

    def _final_row(self, result: Any) -> dict[str, Any]:
        row = dict(self.run_row or {})
        status = getattr(result, "status", "completed")
        best = _finite(getattr(result, "best_val_loss", None))
        if best is None or (self.best_val_loss is not None and self.best_val_loss < best):
            best = _finite(self.best_val_loss)
        row.update(
            status=self._STATUS.get(status, status),
            finished_at=_now(),
            updated_at=_now(),
            latest_step=self.latest_step
            if self.latest_step is not None
            else getattr(result, "steps", None),
            last_loss=_finite(
                self.last_loss if self.last_loss is not None else getattr(result, "last_loss", None)
            ),
            best_val_loss=best,
        )
        if getattr(result, "error", None):
            row["error"] = str(result.error).splitlines()[0][:500]
        return row


#: Kept for callers of the old private name.
_batch_bounds = batch_bounds


def _trainer_facts(trainer: Any) -> dict[str, Any]:
    """Run-row fields the trainer knows (every attribute optional)."""
    cfg = getattr(trainer, "cfg", None)
    mcfg = getattr(trainer, "model_config", None)
    device = getattr(trainer, "device", None)
    facts = {
        "host": socket.gethostname(),
        "device": getattr(device, "type", None) if device is not None else None,
        "param_count": getattr(trainer, "param_count", None),
        "run_dir": str(getattr(trainer, "run_dir", "") or "") or None,
        "domain": getattr(cfg, "domain", None),
        "total_iters": getattr(cfg, "iters", None),
        "ffn_activation": getattr(mcfg, "ffn_activation", None) or getattr(cfg, "activation", None),
        "model_config": _json(mcfg),
        "train_config": _json(cfg),
        "symbio": 0,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _json(obj: Any) -> str | None:
    if obj is None:
        return None
    if hasattr(obj, "model_dump_json"):
        return obj.model_dump_json()
    try:
        return json.dumps(obj, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return None


def _finite(x: Any) -> float | None:
    try:
        return float(x) if x is not None and math.isfinite(float(x)) else None
    except (TypeError, ValueError):
        return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
