"""The metric sink: the trainer enqueues rows, a background thread lands them.

``MetricSink.put`` is a ``SimpleQueue.put`` of a shallow copy: no I/O, no
lock contention, never blocks. The writer thread batches rows (by count and by
age), runs the gate (``storage.validation``), lands valid rows as one Parquet
object per batch and quarantines failing rows with their reason. When the
store fails, the batch's objects go to the local spool (``storage.spool``)
and are retried with exponential backoff; the run goes on. On close (normal
end, Ctrl-C, crash via ``atexit``) the buffer is flushed, or left in the spool
for the next sink or ``alpha lake flush``. Nothing is silently dropped: the
last resort for rows the sink cannot even encode is a JSON-lines file in the
spool folder.
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
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.hooks import TrainerHook
from storage.lake import Lake, validate_run_id
from storage.schema import PARTITION_KEY, arrow_schema, quarantine_schema
from storage.spool import Spool
from storage.validation import GateResult, MetricsGate, check_rows
from storage.writer import batch_key, encode_parquet, object_name, put_object

log = logging.getLogger(__name__)

_FLUSH, _CLOSE = "__flush__", "__close__"
#: ``process`` (default): GX runs in a child process; ``thread``: in the writer thread.
ENV_GATE = "ALPHA_LAKE_GATE"
_TABLES = ("metrics", "runs", "candidates")


@dataclass
class SinkStats:
    """What a sink did; ``lost`` is always 0 unless rows were rescued to JSON."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricSink:
    """Background writer of one run's rows into a lake.

    Options: ``max_rows`` (batch size, default 2000), ``max_seconds`` (batch
    age, default 5), ``batch_bounds`` ((batch_min, batch_max) of a symbio run;
    default: read from ``symbio_config`` of the first run row written), ``spool_dir`` (default ``$ALPHA_SPOOL`` or ``~/.cache/alpha/spool``),
    ``retry_base``/``retry_max`` (backoff seconds), ``register_atexit``,
    ``gate_in_process`` (run GX in the writer thread instead of a child
    process; default from ``$ALPHA_LAKE_GATE``: ``thread`` or ``process``).
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
        self._q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._gate: MetricsGate | None = None
        if gate_in_process is None:
            gate_in_process = os.environ.get(ENV_GATE, "process") == "thread"
        self._gate_in_process = gate_in_process
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lake-sink-{run_id}", daemon=True)
        self._thread.start()
        self._atexit = register_atexit
        if register_atexit:
            atexit.register(self._close_at_exit)

    # -- producer side (training thread) ---------------------------------------
    def put(self, row: dict[str, Any]) -> None:
        """Enqueue one metric row. Never blocks, never does I/O (unless closed)."""
        if self._closed:  # misuse: keep the row rather than drop it
            self._rescue("metrics", [dict(row)], RuntimeError("put() after close()"))
            return
        self._q.put(("metrics", dict(row)))

    def write_run(self, run_row: dict[str, Any]) -> None:
        """Upsert the run row: a new object; readers take the newest ``updated_at``."""
        row = {"run_id": self.run_id, **run_row}
        row.setdefault("updated_at", _now())
        self._q.put(("runs", row))

    def write_candidates(self, rows: list[dict[str, Any]]) -> None:
        """Upsert search-candidate rows (newest ``updated_at`` per candidate wins)."""
        now = _now()
        for r in rows:
            self._q.put(("candidates", {"run_id": self.run_id, "updated_at": now, **r}))

    def flush(self, timeout: float = 30.0) -> bool:
        """Land (or spool) everything put so far; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._q.put((_FLUSH, done))
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> SinkStats:
        """Flush, try the spool once more, stop the thread; returns the stats."""
        if not self._closed:
            self._closed = True
            self._q.put((_CLOSE, None))
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "lake sink: close timed out after %.0fs; unflushed rows stay queued", timeout
                )
            if self._atexit:
                atexit.unregister(self._close_at_exit)
        self.stats.spool_left = len(self.spool.entries(self.lake.url))
        return self.stats

    def _close_at_exit(self) -> None:
        self.close(timeout=30.0)

    # -- writer thread -----------------------------------------------------------
    def _run(self) -> None:
        buffers: dict[str, list[dict]] = {t: [] for t in _TABLES}
        try:
            self._loop(buffers)
        except BaseException as exc:  # noqa: BLE001 - the writer must not take rows down with it
            self._drain_into(buffers)
            for table, rows in buffers.items():
                if rows:
                    self._rescue(table, rows, exc)

    def _loop(self, buffers: dict[str, list[dict]]) -> None:
        oldest: float | None = None
        self._retry_spool()  # leftovers of earlier runs on this lake
        while True:
            wait = self._wait_time(oldest)
            try:
                kind, payload = self._q.get(timeout=wait)
            except queue.Empty:
                kind, payload = "", None
            if kind in _TABLES:
                self.stats.rows_put += kind == "metrics"
                buffers[kind].append(payload)
                if kind != "metrics":  # run/candidate rows are rare: land at once
                    self._land(kind, buffers[kind])
                    buffers[kind] = []
                else:
                    if self._gate is None:  # GX loads while the first batch fills
                        self._build_gate()
                    oldest = oldest or time.monotonic()
            due = oldest is not None and time.monotonic() - oldest >= self.max_seconds
            if kind in (_FLUSH, _CLOSE):
                self._drain_into(buffers)
            if due or kind in (_FLUSH, _CLOSE) or len(buffers["metrics"]) >= self.max_rows:
                self._land_all(buffers)
                oldest = None
            if kind == _FLUSH:
                self._retry_spool(force=True)
                payload.set()
            elif kind == _CLOSE:
                self._retry_spool(force=True)
                if self._gate is not None:
                    self._gate.close()
                return
            elif self._failures and time.monotonic() >= self._next_retry:
                self._retry_spool()

    def _wait_time(self, oldest: float | None) -> float:
        horizon = (
            self.max_seconds if oldest is None else self.max_seconds - (time.monotonic() - oldest)
        )
        if self.spool_pending:
            horizon = min(horizon, max(0.0, self._next_retry - time.monotonic()))
        return min(max(horizon, 0.01), 1.0)

    def _drain_into(self, buffers: dict[str, list[dict]]) -> None:
        """Move rows already queued (before a flush/close marker) into the buffers."""
        pending: list[tuple[str, Any]] = []
        while True:
            try:
                kind, payload = self._q.get_nowait()
            except queue.Empty:
                break
            if kind in _TABLES:
                self.stats.rows_put += kind == "metrics"
                buffers[kind].append(payload)
            else:
                pending.append((kind, payload))
        for item in pending:  # markers put after ours: keep their order
            self._q.put(item)

    def _land_all(self, buffers: dict[str, list[dict]]) -> None:
        for table in _TABLES:
            rows = buffers[table]
            for i in range(0, len(rows), self.max_rows):
                self._land(table, rows[i : i + self.max_rows])
            buffers[table] = []

    def _land(self, table: str, rows: list[dict]) -> None:
        if not rows:
            return
        cpu0 = time.thread_time()
        try:
            result = self._validate(table, rows)
            self.stats.batches += 1
            self.stats.gate_seconds += result.seconds
            if result.valid.num_rows:
                valid = result.valid.drop_columns([PARTITION_KEY])
                data = encode_parquet(valid.cast(arrow_schema(table, with_partition=False)))
                self._store(batch_key(table, self.run_id, object_name()), data)
                self.stats.rows_landed += result.valid.num_rows if table == "metrics" else 0
            if result.rejected.num_rows:
                data = encode_parquet(result.rejected.cast(quarantine_schema(table)))
                self._store(batch_key(table, self.run_id, object_name(), quarantine=True), data)
                self.stats.rows_quarantined += result.rejected.num_rows
                log.warning(
                    "lake sink: %d %s row(s) quarantined: %s",
                    result.rejected.num_rows,
                    table,
                    result.reasons,
                )
        except Exception as exc:  # noqa: BLE001 - a bug here must not lose rows
            self._rescue(table, rows, exc)
        self.stats.writer_cpu_seconds += time.thread_time() - cpu0

    def _validate(self, table: str, rows: list[dict]) -> GateResult:
        if table == "runs" and self.batch_bounds is None:
            self.batch_bounds = _batch_bounds(rows[-1])
            if self.batch_bounds is not None and self._gate is not None:
                self._gate.close()  # rebuilt with the bounds at the next metric row
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

    # -- store, spool, retry -----------------------------------------------------
    @property
    def spool_pending(self) -> bool:
        return self._failures > 0

    def _store(self, key: str, data: bytes) -> None:
        if self._failures and time.monotonic() < self._next_retry:
            self._to_spool(key, data)
            return
        try:
            put_object(self.lake, key, data)
            self._store_ok()
        except Exception as exc:  # noqa: BLE001 - any store failure: spool and go on
            self._store_failed(exc)
            self._to_spool(key, data)

    def _to_spool(self, key: str, data: bytes) -> None:
        self.spool.add(self.lake.url, key, data)
        self.stats.objects_spooled += 1

    def _retry_spool(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_retry:
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
                self._store_ok()
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
                return
        self._failures = 0

    def _store_ok(self) -> None:
        if self._failures:
            log.info("lake sink: store reachable again")
        self._failures = 0
        self._next_retry = 0.0

    def _store_failed(self, exc: Exception) -> None:
        self._failures += 1
        self.stats.store_errors += 1
        delay = min(self._retry_max, self._retry_base * 2 ** (self._failures - 1))
        self._next_retry = time.monotonic() + delay
        log.warning(
            "lake sink: store unreachable (%s); spooling, retry in %.0fs", type(exc).__name__, delay
        )

    def _rescue(self, table: str, rows: list[dict], exc: BaseException) -> None:
        """Last resort: keep rows as JSON lines in the spool folder."""
        log.error(
            "lake sink: could not process %d %s row(s) (%s: %s); rescued to %s",
            len(rows),
            table,
            type(exc).__name__,
            exc,
            self.spool.dir,
            exc_info=exc if exc.__traceback__ is not None else None,  # a bug: show where
        )
        self.spool.dir.mkdir(parents=True, exist_ok=True)
        path = self.spool.dir / f"rescued-{table}-{self.run_id}-{uuid.uuid4().hex[:8]}.jsonl"
        with open(path, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str) + "\n")
        self.stats.rows_rescued += len(rows)


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


def _batch_bounds(run_row: dict[str, Any]) -> tuple[int, int] | None:
    """Range of ``adaptive_batch_size`` for a symbio run row with adaptive batching on.

    Like ``symbio.monitor.AdaptiveBatch``: ``[batchMin, batchMax]`` widened to
    hold the run's configured batch (``train_config.batch``).
    """
    if not run_row.get("symbio") or not run_row.get("symbio_config"):
        return None
    try:
        cfg = _as_dict(run_row["symbio_config"])
        if not cfg.get("adaptiveBatch", cfg.get("adaptive_batch", True)):
            return None
        lo = cfg.get("batchMin", cfg.get("batch_min"))
        hi = cfg.get("batchMax", cfg.get("batch_max"))
        if lo is None or hi is None:
            return None
        lo, hi = int(lo), int(hi)
        batch = _as_dict(run_row.get("train_config") or {}).get("batch")
        if batch is not None:
            lo, hi = min(lo, int(batch)), max(hi, int(batch))
        return lo, hi
    except (TypeError, ValueError):
        return None


def _as_dict(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


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
