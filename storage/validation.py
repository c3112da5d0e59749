"""The gate every metric batch passes before it lands: types, then Great Expectations.

Two stages, both row-precise so that a partly bad batch still lands its good
rows and every bad row goes to quarantine with its reason:

1. ``coerce_rows`` casts each row to the schema's types. Unknown columns and
   values that cannot be cast (``loss="abc"``) fail the row here.
2. A Great Expectations 1.x suite over the typed batch (as pandas): required
   columns non-null; numerics finite or null; ``clip_coef``/``clip_pct`` in
   [0, 1]; ``cusum_alerts`` in [0, 15]; ``(run_id, step)`` unique in the batch;
   ``adaptive_batch_size`` within the run's ``[batch_min, batch_max]`` for
   symbio runs; the column set and the dtypes of the key columns. Failed rows
   come from each expectation's ``unexpected_index_list``.

GX objects are built once per ``MetricsGate`` (about 25 ms after the ~3 s
import of GX). Validating costs 0.15-0.4 s per batch, mostly fixed per
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
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
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


#: Python types that need no conversion (timestamps need a tz check: no fast path).
_EXACT = {REAL: float, INT: int, TEXT: str, BOOL: bool}
_UNKNOWN = object()


def coerce_rows(
    table: str, rows: list[dict[str, Any]], run_id: str | None = None
) -> tuple[list[dict], dict[int, list[str]]]:
    """Typed copies of ``rows`` (all schema columns) and type failures by row index.

    ``run_id`` fills rows that lack one; a row naming another run fails.
    """
    types = {c.name: c.type for c in columns(table)}
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
                out[key] = value  # fast path: already the right Python type
                continue
            try:
                out[key] = coerce_value(value, types[key])
            except (TypeError, ValueError, OverflowError) as exc:
                failures[i].append(f"{key}: {exc}")
        if run_id is not None:
            if out["run_id"] is None:
                out["run_id"] = run_id
            elif out["run_id"] != run_id:
                failures[i].append(
                    f"run_id {out['run_id']!r} does not belong to this sink ({run_id!r})"
                )
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
        if ok_idx:
            table = pa.Table.from_pylist([typed[i] for i in ok_idx], schema=_nullable(self.schema))
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
        if er.expectation_config.kwargs.get("column") == NONFINITE and idx:
            for pos in idx:
                failures[int(pos)].append(f"not finite: {frame[NONFINITE].iat[int(pos)]}")
            continue
        targets = [int(i) for i in idx] if idx else range(n)  # table-level: whole batch
        for pos in targets:
            failures[pos].append(reason)
    return dict(failures)


class GxWorker:
    """The GX suite in a spawned child process.

    Batches go in as Arrow IPC bytes and failures come back as JSON (no
    pickle either way). The child builds the suite once and exits when the
    pipe closes or its parent dies.
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

    def run(self, table: pa.Table) -> dict[int, list[str]]:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self._conn.send_bytes(sink.getvalue().to_pybytes())
        if not self._conn.poll(self._timeout):
            raise TimeoutError("GX worker did not answer")
        status, payload = json.loads(self._conn.recv_bytes())
        if status != "ok":
            raise RuntimeError(payload)
        return {int(k): v for k, v in payload.items()}

    def close(self) -> None:
        try:
            self._conn.close()
        except OSError:
            pass
        self._proc.join(timeout=2)  # it exits when the pipe closes; it may still be importing GX
        if self._proc.is_alive():
            self._proc.terminate()


def _worker_main(conn: Any, batch_bounds: list[int] | None) -> None:
    definition = _build_validation(
        arrow_schema("metrics").names, tuple(batch_bounds) if batch_bounds else None
    )
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
    return pa.Table.from_pylist(out, schema=schema) if out else schema.empty_table()


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def _gx_frame(table: pa.Table):
    """Pandas view for GX, plus ``NONFINITE``: the names of the row's REAL
    columns holding NaN or +-inf ("" if none). One expectation on it replaces
    one per column (GX costs ~10 ms per expectation per batch), and it tells
    NaN from null, which pandas cannot."""
    names = [n for n, c in zip(table.column_names, table.columns, strict=True) if c.type == REAL]
    marks = [
        pc.if_else(pc.fill_null(pc.invert(pc.is_finite(table[n])), False), f"{n} ", "")
        for n in names
    ]
    nonfinite = pc.utf8_rtrim_whitespace(pc.binary_join_element_wise(*marks, "")) if marks else None
    frame = table.to_pandas()
    for name, col in zip(table.column_names, table.columns, strict=True):
        if col.type == TEXT:  # GX 1.24 does not know pandas 3's "str" dtype
            frame[name] = frame[name].astype(object)
    frame[NONFINITE] = nonfinite.to_pandas() if nonfinite is not None else ""
    return frame


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
        E.ExpectTableColumnsToMatchSet(column_set=[*names, NONFINITE], exact_match=True),
        E.ExpectColumnValuesToBeInTypeList(column="run_id", type_list=["str"]),
        E.ExpectColumnValuesToBeInTypeList(column="step", type_list=["int64"]),
        E.ExpectColumnValuesToBeInTypeList(column="loss", type_list=["float64"]),
    ]
    exps += [
        E.ExpectColumnValuesToNotBeNull(column=c.name) for c in columns("metrics") if not c.nullable
    ]
    # loss may be null only where the engine recorded a non-finite loss (a nan_skip step)
    exps.append(
        E.ExpectColumnValuesToNotBeNull(
            column="loss", row_condition=GxColumn("event").is_not_in(list(NAN_SKIP_EVENTS))
        )
    )
    exps.append(E.ExpectColumnValuesToBeInSet(column=NONFINITE, value_set=[""]))
    exps += [
        E.ExpectColumnValuesToBeBetween(column="clip_coef", min_value=0, max_value=1),
        E.ExpectColumnValuesToBeBetween(column="clip_pct", min_value=0, max_value=1),
        E.ExpectColumnValuesToBeBetween(column="cusum_alerts", min_value=0, max_value=15),
        E.ExpectCompoundColumnsToBeUnique(column_list=["run_id", "step"]),
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
    for i, row in enumerate(typed):
        for c in columns(table):
            value = row.get(c.name)
            if isinstance(value, float) and not math.isfinite(value):
                row[c.name] = None
            if not c.nullable and row.get(c.name) is None:
                failures.setdefault(i, []).append(f"{c.name}: must not be null")
    schema = arrow_schema(table)
    good = [typed[i] for i in range(len(rows)) if i not in failures]
    valid = pa.Table.from_pylist(good, schema=schema) if good else schema.empty_table()
    return GateResult(
        valid, quarantine_table(table, rows, typed, failures), time.perf_counter() - t0
    )
