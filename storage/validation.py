"""The gate every metric batch passes before it lands: types, then Great Expectations.

Two stages, both row-precise, so that one bad row is quarantined alone with
its reason and the rest of its batch lands:

1. ``coerce_rows`` (Python, per row) casts each row to the schema's types.
   Unknown columns, values that cannot be cast (``loss="abc"``), integers
   outside int64 and nulls in required columns (``step=None``) fail the row
   here; so does a row Arrow cannot encode.
2. A Great Expectations 1.x suite over the typed rows (as pandas): ``loss``
   non-null except on a NaN-skip step; numerics finite or null; every value
   inside its column's declared range (``storage.schema.Column.ge/le``: losses,
   rates, norms, times non-negative, ``batch_size >= 1``, fractions in [0, 1],
   ...); ``adaptive_batch_size`` within the run's ``[batch_min, batch_max]``
   for symbio runs; the column set and the dtypes of the key columns. Failed
   rows come from each expectation's ``unexpected_index_list``.

A step repeated inside a batch is not an error: "last write wins" per
``(run_id, step)``, so both copies land in write order and readers keep the
last, as they do across batches (a resumed run re-emits steps).

Finiteness and ranges are computed vectorised in Arrow into two helper columns
of the GX frame (the names of the row's offending columns), each checked by
one expectation: GX costs ~6 ms per expectation per 2000-row batch, so 21
per-column range expectations would have tripled the gate's time.

GX objects are built once per ``MetricsGate`` (about 25 ms after the ~3 s
import of GX). Validating costs ~0.1-0.4 s per batch, mostly fixed per
expectation, so the sink runs the suite in a child process (``GxWorker``)
where that Python work cannot hold the training process's GIL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import multiprocessing
import multiprocessing.util  # noqa: F401 - its atexit hook must run after the sinks'
import numbers
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage.schema import (
    INT,
    NAN_SKIP_EVENTS,
    REAL,
    TEXT,
    TS,
    arrow_schema,
    columns,
    quarantine_schema,
)

BOOL = pa.bool_()
_GATE_IDS = iter(range(1, 1 << 62))
log = logging.getLogger(__name__)
#: Helper column of the GX frame: names of the row's non-finite REAL values.
NONFINITE = "__nonfinite"
#: Helper column of the GX frame: the row's values outside their column's range.
OUT_OF_RANGE = "__out_of_range"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: (column, lower, upper) of every metric column with a declared range.
RANGES: tuple[tuple[str, float | None, float | None], ...] = tuple(
    (c.name, c.ge, c.le) for c in columns("metrics") if c.ge is not None or c.le is not None
)
_HELPER_REASONS = {NONFINITE: "not finite", OUT_OF_RANGE: "out of range"}
QUARANTINE_NAMES = ("quarantine_reason", "quarantined_at", "raw_row")


@dataclass
class GateResult:
    """Outcome of one batch: typed valid rows and quarantined rows with reasons."""

    valid: pa.Table
    rejected: pa.Table
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


def coerce_value(value: Any, type_: pa.DataType) -> Any:
    """Cast one value to the Python type Arrow expects for ``type_``; TypeError if impossible."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy / torch scalars
    if type_ == REAL:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif type_ == INT:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return _int64(int(value))
        if isinstance(value, float) and value.is_integer():
            return _int64(int(value))
    elif type_ == TEXT:
        if isinstance(value, str):
            return value
        if isinstance(value, dict | list):
            return json.dumps(value, sort_keys=True)
    elif type_ == TS:
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
    elif type_ == BOOL:
        if isinstance(value, bool):
            return value
    raise TypeError(f"expected {type_}, got {type(value).__name__}")


def _int64(value: int) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise OverflowError(f"{value} is outside int64")
    return value


#: Python types that need no conversion (timestamps need a tz check: no fast path).
_EXACT = {REAL: float, INT: int, TEXT: str, BOOL: bool}
_UNKNOWN = object()


def coerce_rows(
    table: str, rows: list[dict[str, Any]], run_id: str | None = None
) -> tuple[list[dict], dict[int, list[str]]]:
    """Typed copies of ``rows`` (all schema columns) and type failures by row index.

    ``run_id`` fills rows that lack one; a row naming another run fails, and
    so does a null in a required column.
    """
    types = {c.name: c.type for c in columns(table)}
    required = [c.name for c in columns(table) if not c.nullable]
    exact = {name: _EXACT.get(t) for name, t in types.items()}
    typed: list[dict] = []
    failures: dict[int, list[str]] = defaultdict(list)
    for i, row in enumerate(rows):
        out = dict.fromkeys(types)
        for key, value in row.items():
            fast = exact.get(key, _UNKNOWN)
            if fast is _UNKNOWN:
                failures[i].append(f"unknown column {key!r}")
                continue
            if value is None or type(value) is fast:
                if fast is int and value is not None and not INT64_MIN <= value <= INT64_MAX:
                    failures[i].append(f"{key}: {value} is outside int64")
                    continue
                out[key] = value  # fast path: already the right Python type
                continue
            try:
                out[key] = coerce_value(value, types[key])
            except (TypeError, ValueError, OverflowError, OSError) as exc:
                failures[i].append(f"{key}: {exc}")
        if run_id is not None:
            if out["run_id"] is None:
                out["run_id"] = run_id
            elif out["run_id"] != run_id:
                failures[i].append(
                    f"run_id {out['run_id']!r} does not belong to this sink ({run_id!r})"
                )
        for name in required:
            if out[name] is None and not any(r.startswith(f"{name}:") for r in failures.get(i, ())):
                failures[i].append(f"{name}: must not be null")
        typed.append(out)
    return typed, dict(failures)


class MetricsGate:
    """Validates metric batches; build once per sink, call ``validate`` per batch.

    ``batch_bounds``: ``(batch_min, batch_max)`` of a symbio run's adaptive
    batching; ``adaptive_batch_size`` must stay inside it.

    ``in_process=False`` (the sink's default) runs the GX suite in a child
    process (``GxWorker``): GX spends ~0.2-0.4 s of pure Python per batch,
    and in a thread of the training process that time would hold the GIL the
    training loop needs. If the child fails, the gate falls back to running
    GX in the calling thread; rows are never skipped.
    """

    def __init__(
        self, batch_bounds: tuple[int, int] | None = None, *, in_process: bool = True
    ) -> None:
        self.batch_bounds = batch_bounds
        self.schema = arrow_schema("metrics")  # with run_id, as validated in memory
        self._names = self.schema.names
        self._worker = None if in_process else GxWorker(batch_bounds)
        self._definition = _build_validation(self._names, batch_bounds) if in_process else None

    def validate(self, rows: list[dict[str, Any]], run_id: str | None = None) -> GateResult:
        t0 = time.perf_counter()
        typed, failures = coerce_rows("metrics", rows, run_id)
        ok_idx = [i for i in range(len(rows)) if i not in failures]
        valid = self.schema.empty_table()
        table, bad = arrow_rows([typed[i] for i in ok_idx], _nullable(self.schema))
        for pos, reason in bad.items():
            failures[ok_idx[pos]] = [reason]
        ok_idx = [i for pos, i in enumerate(ok_idx) if pos not in bad]
        if ok_idx:
            gx_failures = self._run_gx(table)
            for pos, reasons in gx_failures.items():
                failures.setdefault(ok_idx[pos], []).extend(reasons)
            keep = pa.array([pos not in gx_failures for pos in range(len(ok_idx))])
            valid = table.filter(keep).cast(self.schema)
        rejected = quarantine_table("metrics", rows, typed, failures)
        counts: dict[str, int] = defaultdict(int)
        for reasons in failures.values():
            for r in reasons:
                counts[r.split(":", 1)[0]] += 1
        return GateResult(valid, rejected, time.perf_counter() - t0, dict(counts))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()

    def _run_gx(self, table: pa.Table) -> dict[int, list[str]]:
        if self._worker is not None:
            try:
                return self._worker.run(table)
            except Exception as exc:  # noqa: BLE001 - fall back to validating here
                log.warning("GX worker failed (%s); validating in-process", type(exc).__name__)
                self._worker.close()
                self._worker = None
        if self._definition is None:
            self._definition = _build_validation(self._names, self.batch_bounds)
        return gx_failures(self._definition, table)


def arrow_rows(rows: list[dict], schema: pa.Schema) -> tuple[pa.Table, dict[int, str]]:
    """``rows`` as one Arrow table, and the positions of rows Arrow cannot encode.

    The whole batch is converted at once; only if that fails (a value stage 1
    let through but Arrow refuses, e.g. a lone surrogate in a string) are the
    rows converted one by one to find the culprits, which are left out.
    """
    try:
        return pa.Table.from_pylist(rows, schema=schema), {}
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        log.debug("batch does not encode (%s); converting row by row", exc)
    good, bad = [], {}
    for pos, row in enumerate(rows):
        try:
            pa.Table.from_pylist([row], schema=schema)
            good.append(row)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            bad[pos] = f"arrow: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return pa.Table.from_pylist(good, schema=schema), bad


def gx_failures(definition: Any, table: pa.Table) -> dict[int, list[str]]:
    """Row position -> reasons, from the GX suite over ``table``."""
    frame = _gx_frame(table)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
    failures: dict[int, list[str]] = defaultdict(list)
    n = table.num_rows
    for er in result.results:
        if er.success:
            continue
        reason = _describe(er.expectation_config)
        idx = (er.result or {}).get("unexpected_index_list")
        helper = er.expectation_config.kwargs.get("column")
        if helper in _HELPER_REASONS and idx:
            for pos in idx:
                failures[int(pos)].append(
                    f"{_HELPER_REASONS[helper]}: {frame[helper].iat[int(pos)]}"
                )
            continue
        targets = [int(i) for i in idx] if idx else range(n)  # table-level: whole batch
        for pos in targets:
            failures[pos].append(reason)
    return dict(failures)


class GxWorker:
    """The GX suite in a spawned child process.

    Batches go in as Arrow IPC bytes and failures come back as JSON (no
    pickle either way). The child builds the suite once, says ``ready``, and
    exits when the pipe closes or its parent dies. A worker closed before it
    is ready (a sink that only wrote a run row) is terminated at once.
    """

    def __init__(self, batch_bounds: tuple[int, int] | None, timeout: float = 300.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._timeout = timeout
        self._proc = ctx.Process(
            target=_worker_main,
            args=(child, list(batch_bounds) if batch_bounds else None),
            name="alpha-lake-gx",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._ready = False

    @property
    def ready(self) -> bool:
        """True once the child has built its suite (never blocks)."""
        try:
            if not self._ready and self._conn.poll(0):
                self._receive()
        except (EOFError, OSError, ValueError):  # the child died
            pass
        return self._ready

    def run(self, table: pa.Table) -> dict[int, list[str]]:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self._conn.send_bytes(sink.getvalue().to_pybytes())
        while True:
            if not self._conn.poll(self._timeout):
                raise TimeoutError("GX worker did not answer")
            status, payload = self._receive()
            if status != "ready":
                break
        if status != "ok":
            raise RuntimeError(payload)
        return {int(k): v for k, v in payload.items()}

    def _receive(self) -> tuple[str, Any]:
        status, payload = json.loads(self._conn.recv_bytes())
        if status == "ready":
            self._ready = True
        return status, payload

    def close(self) -> None:
        ready = self.ready if not self._conn.closed else True
        try:
            self._conn.close()
        except OSError:
            pass
        if ready:  # it exits when the pipe closes
            self._proc.join(timeout=2)
        if self._proc.is_alive():  # still importing GX: nothing to finish
            self._proc.terminate()
            self._proc.join(timeout=2)


def _worker_main(conn: Any, batch_bounds: list[int] | None) -> None:
    definition = _build_validation(
        arrow_schema("metrics").names, tuple(batch_bounds) if batch_bounds else None
    )
    try:
        conn.send_bytes(json.dumps(["ready", None]).encode())
    except OSError:
        return
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            table = pa.ipc.open_stream(data).read_all()
            reply = ["ok", {str(k): v for k, v in gx_failures(definition, table).items()}]
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            reply = ["error", f"{type(exc).__name__}: {exc}"]
        conn.send_bytes(json.dumps(reply).encode())


def quarantine_table(
    table: str, rows: list[dict], typed: list[dict], failures: dict[int, list[str]]
) -> pa.Table:
    """Quarantine rows of ``table``: typed values where they cast, the raw row as JSON, the reason."""
    schema = quarantine_schema(table)
    now = dt.datetime.now(dt.UTC)
    names = set(schema.names)
    out = []
    for i in sorted(failures):
        row = {
            k: v for k, v in typed[i].items() if k in names
        }  # values that failed to cast are None
        row.update(
            quarantine_reason="; ".join(failures[i]),
            quarantined_at=now,
            raw_row=json.dumps(rows[i], default=str, sort_keys=True, allow_nan=True),
        )
        out.append(row)
    if not out:
        return schema.empty_table()
    try:
        return pa.Table.from_pylist(out, schema=schema)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # a typed value Arrow refuses: keep such rows' reason and raw JSON only
        keep = set(QUARANTINE_NAMES)
        safe = []
        for row in out:
            try:
                pa.Table.from_pylist([row], schema=schema)
                safe.append(row)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                safe.append({k: v for k, v in row.items() if k in keep})
        return pa.Table.from_pylist(safe, schema=schema)


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def _gx_frame(table: pa.Table):
    """Pandas view for GX, plus two helper columns (see the module docstring).

    ``NONFINITE``: the names of the row's REAL columns holding NaN or +-inf
    ("" if none); it also tells NaN from null, which pandas cannot.
    ``OUT_OF_RANGE``: the row's values outside their column's declared range,
    as ``"loss<0 clip_coef>1"`` ("" if none).
    """
    names = [n for n, c in zip(table.column_names, table.columns, strict=True) if c.type == REAL]
    nonfinite = _marks(table, [(n, pc.invert(pc.is_finite(table[n])), n) for n in names])
    checks = []
    for n, lo, hi in RANGES:
        if n not in table.column_names:
            continue
        if lo is not None:
            checks.append((n, pc.less(table[n], lo), f"{n}<{lo:g}"))
        if hi is not None:
            checks.append((n, pc.greater(table[n], hi), f"{n}>{hi:g}"))
    out_of_range = _marks(table, checks)
    frame = table.to_pandas()
    for name, col in zip(table.column_names, table.columns, strict=True):
        if col.type == TEXT:  # GX 1.24 does not know pandas 3's "str" dtype
            frame[name] = frame[name].astype(object)
    frame[NONFINITE] = nonfinite
    frame[OUT_OF_RANGE] = out_of_range
    return frame


def _marks(table: pa.Table, checks: list[tuple[str, Any, str]]) -> Any:
    """Per row, the space-joined labels of the ``checks`` that are true (nulls: false)."""
    if not checks:
        return ""
    marks = [pc.if_else(pc.fill_null(cond, False), f"{label} ", "") for _, cond, label in checks]
    joined = pc.binary_join_element_wise(*marks, "") if len(marks) > 1 else marks[0]
    return pc.utf8_rtrim_whitespace(joined).to_pandas()


def _describe(cfg: Any) -> str:
    kw = cfg.kwargs
    name = cfg.type.removeprefix("expect_")
    if "column" in kw:
        bounds = ""
        if "min_value" in kw or "max_value" in kw:
            bounds = f" [{kw.get('min_value')}, {kw.get('max_value')}]"
        return f"{kw['column']}: {name}{bounds}"
    if "column_list" in kw:
        return f"({', '.join(kw['column_list'])}): {name}"
    return f"batch: {name}"


def _build_validation(names: list[str], batch_bounds: tuple[int, int] | None):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gid = next(_GATE_IDS)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas(f"lake-{gid}").add_dataframe_asset("metrics")
    batch = asset.add_batch_definition_whole_dataframe("batch")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"metrics-{gid}"))
    for exp in _expectations(gx, names, batch_bounds):
        suite.add_expectation(exp)
    return ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"metrics-{gid}", data=batch, suite=suite)
    )


def _expectations(gx: Any, names: list[str], batch_bounds: tuple[int, int] | None) -> list:
    from great_expectations.expectations.row_conditions import Column as GxColumn

    E = gx.expectations
    exps = [
        E.ExpectTableColumnsToMatchSet(
            column_set=[*names, NONFINITE, OUT_OF_RANGE], exact_match=True
        ),
        E.ExpectColumnValuesToBeInTypeList(column="run_id", type_list=["str"]),
        E.ExpectColumnValuesToBeInTypeList(column="step", type_list=["int64"]),
        E.ExpectColumnValuesToBeInTypeList(column="loss", type_list=["float64"]),
        # loss may be null only where the engine recorded a non-finite loss (a nan_skip step)
        E.ExpectColumnValuesToNotBeNull(
            column="loss", row_condition=GxColumn("event").is_not_in(list(NAN_SKIP_EVENTS))
        ),
        E.ExpectColumnValuesToBeInSet(column=NONFINITE, value_set=[""]),
        E.ExpectColumnValuesToBeInSet(column=OUT_OF_RANGE, value_set=[""]),
    ]
    if batch_bounds is not None:
        lo, hi = batch_bounds
        exps.append(
            E.ExpectColumnValuesToBeBetween(
                column="adaptive_batch_size", min_value=lo, max_value=hi
            )
        )
    return exps


def check_rows(table: str, rows: list[dict[str, Any]], run_id: str | None = None) -> GateResult:
    """Type-and-required check for ``runs``/``candidates`` rows (few, no GX).

    Non-finite summary values (``best_val_loss=inf`` before any eval) mean
    "no value" and are stored as null.
    """
    t0 = time.perf_counter()
    typed, failures = coerce_rows(table, rows, run_id)
    for row in typed:
        for name, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[name] = None
    ok_idx = [i for i in range(len(rows)) if i not in failures]
    valid, bad = arrow_rows([typed[i] for i in ok_idx], arrow_schema(table))
    for pos, reason in bad.items():
        failures[ok_idx[pos]] = [reason]
    return GateResult(
        valid, quarantine_table(table, rows, typed, failures), time.perf_counter() - t0
    )


def batch_bounds(run_row: dict[str, Any]) -> tuple[int, int] | None:
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
    except (TypeError, ValueError, AttributeError):
        return None


def _as_dict(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)
