"""Reading the lake for the dashboard and the CLI (Polars).

Every file is read through the *newest* schema (explicit ``schema=`` plus
``missing_columns="insert"``), so files written under an older version come
back with the new columns null. Only committed objects are read (see
``storage.writer``). A row is identified by ``(run_id, step)``; a resumed run
re-emits steps, so metrics are de-duplicated with the last write winning.
Run and candidate rows are versions: the newest ``updated_at`` wins.

Unreadable objects (corrupt, truncated, or of a schema that does not fit:
a required column missing, a column of another type) are skipped, not fatal:
the rest of the lake reads as usual. Each object's footer is checked once per
process (objects are immutable), and if a read still fails (corruption past
the footer), the files of that read are read one by one to find the culprit.
Skipped objects are logged once and reported: ``read_report()`` collects the
ones a block of reads skipped, ``skipped_objects()`` lists all seen so far.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import polars as pl

from storage.lake import Lake, open_lake, validate_run_id
from storage.schema import PARTITION_KEY, arrow_schema, columns
from storage.writer import committed_files

_ORDER = "__order"
log = logging.getLogger(__name__)

LakeLike = Lake | str | os.PathLike[str] | None


@dataclass(frozen=True)
class SkippedObject:
    """An object the reader could not read: its URL, table and why (one line)."""

    url: str
    table: str
    reason: str


@dataclass
class LakeReadReport:
    """Objects skipped by the reads inside one ``read_report()`` block."""

    skipped: list[SkippedObject] = field(default_factory=list)

    def add(self, obj: SkippedObject) -> None:
        if obj not in self.skipped:
            self.skipped.append(obj)

    def warning(self) -> str | None:
        """One line for a person, or None when nothing was skipped."""
        if not self.skipped:
            return None
        first = self.skipped[0]
        more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
        return (
            f"skipped {len(self.skipped)} unreadable lake object(s): {first.url}{more}: "
            f"{first.reason}"
        )


#: Objects known to be unreadable (by path), and objects whose footer passed.
_BAD: dict[str, SkippedObject] = {}
_GOOD: set[str] = set()
_REPORT: contextvars.ContextVar[LakeReadReport | None] = contextvars.ContextVar(
    "lake_read_report", default=None
)
#: What a Parquet object that cannot be read raises (local files may raise OSError).
_READ_ERRORS = (pl.exceptions.PolarsError, OSError, ValueError)


@contextmanager
def read_report() -> Iterator[LakeReadReport]:
    """Collect the objects skipped by reads inside the block (per thread/context)."""
    report = LakeReadReport()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def skipped_objects(lake: LakeLike = None) -> list[SkippedObject]:
    """Every object skipped so far in this process (of one lake, or all when ``lake`` is None)."""
    objs = list(_BAD.values())
    if lake is None:
        return objs
    root = _lake(lake).uri(_lake(lake).root).rstrip("/") + "/"
    return [o for o in objs if o.url.startswith(root)]


@cache
def polars_schema(table: str) -> pl.Schema:
    """Newest schema of ``table`` as Polars types, without the partition column."""
    return pl.from_arrow(arrow_schema(table, with_partition=False).empty_table()).schema


def scan_table(lake: LakeLike, table: str, run_id: str | None = None) -> pl.LazyFrame:
    """Lazy scan of a table's committed, readable files (one run or all) with ``run_id``.

    Rows come in write order (oldest file first) with an ``__order`` column
    that later steps use for "last write wins". Objects whose footer does not
    fit are left out; corruption further in fails only at ``collect()``, so
    prefer the functions below, which skip such objects too.
    """
    lake = _lake(lake)
    if run_id is not None:
        validate_run_id(run_id)
    files, blobs = _readable(lake, table, run_id)
    return _scan(lake, table, files, blobs)


def _scan(lake: Lake, table: str, files: list[str], blobs: dict[str, bytes]) -> pl.LazyFrame:
    schema = polars_schema(table)
    if not files:
        empty = pl.DataFrame(schema={PARTITION_KEY: pl.String, **schema, _ORDER: pl.UInt32})
        return empty.lazy()
    if lake.is_local:
        lf = pl.scan_parquet(
            files,
            schema=schema,
            missing_columns="insert",
            extra_columns="ignore",
            hive_partitioning=True,
            hive_schema={PARTITION_KEY: pl.String},
        )
    else:
        lf = pl.concat(
            [
                pl.scan_parquet(
                    blobs[f], schema=schema, missing_columns="insert", extra_columns="ignore"
                ).with_columns(pl.lit(_run_of(f), pl.String).alias(PARTITION_KEY))
                for f in files
            ],
            how="vertical",
        )
    lf = lf.with_row_index(_ORDER)
    return lf.select(PARTITION_KEY, *schema.names(), _ORDER)


def _read(
    lake: LakeLike,
    table: str,
    run_id: str | None,
    query: Callable[[pl.LazyFrame], pl.LazyFrame] = lambda lf: lf,
) -> pl.DataFrame:
    """``query`` over the table's readable objects, collected; unreadable objects skipped."""
    lake = _lake(lake)
    files, blobs = _readable(lake, table, run_id)
    try:
        return query(_scan(lake, table, files, blobs)).collect()
    except _READ_ERRORS as exc:
        bad = [f for f in files if _unreadable(lake, table, f, blobs)]
        if not bad:
            raise
        log.debug("read of %s failed (%s); skipped %d object(s)", table, exc, len(bad))
        good = [f for f in files if f not in set(bad)]
        return query(_scan(lake, table, good, blobs)).collect()


def _readable(lake: Lake, table: str, run_id: str | None) -> tuple[list[str], dict[str, bytes]]:
    """Committed files whose footer fits the schema (checked once each), and their bytes (object stores)."""
    files = committed_files(lake, table, run_id)
    known_bad = [f for f in files if f in _BAD]
    for f in known_bad:
        _skip(_BAD[f])
    files = [f for f in files if f not in _BAD]
    blobs: dict[str, bytes] = {} if lake.is_local or not files else lake.fs.cat(files)
    out = []
    for f in files:
        if f not in _GOOD:
            reason = _footer_problem(table, blobs.get(f, f))
            if reason is not None:
                _skip(_register(lake, table, f, reason))
                continue
            _GOOD.add(f)
        out.append(f)
    return out, blobs


def _footer_problem(table: str, source: str | bytes) -> str | None:
    """Why an object's footer does not fit the table's schema, or None."""
    try:
        found = pl.read_parquet_schema(source)
    except _READ_ERRORS as exc:
        return _reason(exc)
    schema = polars_schema(table)
    for name, dtype in found.items():
        if name in schema and dtype != schema[name]:
            return f"column {name} is {dtype}, expected {schema[name]}"
    for c in columns(table):
        if not c.nullable and c.name != PARTITION_KEY and c.name not in found:
            return f"required column {c.name} is missing"
    return None


def _unreadable(lake: Lake, table: str, path: str, blobs: dict[str, bytes]) -> bool:
    """Read one object in full; register it as skipped if that fails."""
    try:
        pl.scan_parquet(
            blobs.get(path, path),
            schema=polars_schema(table),
            missing_columns="insert",
            extra_columns="ignore",
        ).collect()
        return False
    except _READ_ERRORS as exc:
        _skip(_register(lake, table, path, _reason(exc)))
        return True


def _register(lake: Lake, table: str, path: str, reason: str) -> SkippedObject:
    obj = SkippedObject(lake.uri(path), table, reason)
    if path not in _BAD:  # a caller with a read_report() tells the user itself
        level = logging.INFO if _REPORT.get() is not None else logging.WARNING
        log.log(level, "lake: skipping unreadable object %s: %s", obj.url, reason)
    _BAD[path] = obj
    _GOOD.discard(path)
    return obj


def _skip(obj: SkippedObject) -> None:
    report = _REPORT.get()
    if report is not None:
        report.add(obj)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def list_runs(
    lake: LakeLike = None,
    *,
    status: str | Sequence[str] | None = None,
    symbio: bool | None = None,
    domain: str | None = None,
    search: str | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """The newest version of every run row, newest run first, filtered.

    ``search`` matches run id, domain, activation or symbio mode (case-insensitive).
    """

    def query(lf: pl.LazyFrame) -> pl.LazyFrame:
        return _filter_runs(_newest(lf, ["run_id"]), status, symbio, domain, search, limit)

    return _read(lake, "runs", None, query)


def _filter_runs(
    lf: pl.LazyFrame,
    status: str | Sequence[str] | None,
    symbio: bool | None,
    domain: str | None,
    search: str | None,
    limit: int | None,
) -> pl.LazyFrame:
    if status is not None:
        lf = lf.filter(
            pl.col("status").is_in([status] if isinstance(status, str) else list(status))
        )
    if symbio is not None:
        lf = lf.filter(pl.col("symbio").fill_null(0) == int(symbio))
    if domain is not None:
        lf = lf.filter(pl.col("domain") == domain)
    if search:
        needle = re.escape(search.lower())
        hay = pl.concat_str(
            [
                pl.col(c).fill_null("")
                for c in ("run_id", "domain", "ffn_activation", "symbio_mode")
            ],
            separator=" ",
        ).str.to_lowercase()
        lf = lf.filter(hay.str.contains(needle))
    lf = lf.sort(["started_at", "updated_at"], descending=True, nulls_last=True)
    if limit is not None:
        lf = lf.head(limit)
    return lf


def get_run(lake: LakeLike, run_id: str) -> dict[str, Any] | None:
    """The newest version of one run row, or None."""
    df = _read(lake, "runs", validate_run_id(run_id), lambda lf: _newest(lf, ["run_id"]))
    return df.row(0, named=True) if df.height else None


def run_metrics(
    lake: LakeLike,
    run_id: str,
    columns: Sequence[str] | None = None,
    *,
    since_step: int | None = None,
    max_points: int | None = None,
) -> pl.DataFrame:
    """One run's metric rows sorted by step, de-duplicated (last write wins).

    ``columns``: metric columns to return (``step`` is always included).
    ``since_step``: only rows with ``step > since_step`` (live updates).
    ``max_points``: when there are more rows, downsample keeping spikes
    (see ``downsample``).
    """
    schema = polars_schema("metrics")
    cols = _metric_columns(columns, schema)

    def query(lf: pl.LazyFrame) -> pl.LazyFrame:
        if since_step is not None:
            lf = lf.filter(pl.col("step") > since_step)
        return lf.select(cols + ([_ORDER] if _ORDER not in cols else []))

    df = _read(lake, "metrics", validate_run_id(run_id), query)
    # Last write wins. Deciding on the narrow (step, order) pair and filtering
    # is ~5x cheaper than sorting and de-duplicating the wide rows (100k steps).
    if df["step"].n_unique() < df.height:
        newest = df.group_by("step").agg(pl.col(_ORDER).max()).get_column(_ORDER)
        df = df.filter(pl.col(_ORDER).is_in(newest.implode()))
    df = df.sort("step").drop(_ORDER)
    if max_points is not None and df.height > max_points:
        df = downsample(df, max_points)
    return df


def downsample(df: pl.DataFrame, max_points: int, x: str = "step") -> pl.DataFrame:
    """Keep at most ``max_points`` real rows of ``df`` (sorted by ``x``), spikes included.

    The rows are split into equal buckets; each bucket keeps its first and last
    row and, for every numeric column, the rows holding that column's minimum
    and maximum (nulls ignored, so sparse columns such as ``val_loss`` keep
    their values). The bucket count is the largest power-of-two multiple that
    stays within ``max_points``.
    """
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    n = df.height
    if n <= max_points:
        return df
    numeric = [c for c, t in df.schema.items() if c != x and t.is_numeric()]
    per_bucket = 2 + 2 * len(numeric)
    buckets = max(1, max_points // per_bucket)
    indexed = df.with_row_index("__i")
    best = _pick_rows(indexed, numeric, buckets)
    while buckets * 2 <= max_points:
        trial = _pick_rows(indexed, numeric, buckets * 2)
        if trial.len() > max_points:
            break
        buckets, best = buckets * 2, trial
    if best.len() > max_points:  # fewer buckets than one per point: keep the extremes
        best = best.head(max_points)
    return indexed.filter(pl.col("__i").is_in(best.implode())).drop("__i")


def _pick_rows(indexed: pl.DataFrame, numeric: list[str], buckets: int) -> pl.Series:
    n = indexed.height
    bucket = (pl.col("__i").cast(pl.Int64) * buckets // n).alias("__b")
    aggs = [pl.col("__i").first().alias("__first"), pl.col("__i").last().alias("__last")]
    for c in numeric:
        ok = (
            pl.col(c).is_not_null() & pl.col(c).is_not_nan()
            if _is_float(indexed, c)
            else pl.col(c).is_not_null()
        )
        idx, val = pl.col("__i").filter(ok), pl.col(c).filter(ok)
        aggs.append(idx.sort_by(val).first().alias(f"__min_{c}"))
        aggs.append(idx.sort_by(val).last().alias(f"__max_{c}"))
    picked = indexed.group_by(bucket).agg(aggs).drop("__b")
    return picked.unpivot().get_column("value").drop_nulls().unique().sort()


def _is_float(df: pl.DataFrame, c: str) -> bool:
    return df.schema[c].is_float()


def search_candidates(lake: LakeLike, run_id: str) -> pl.DataFrame:
    """The newest version of each search candidate of a run, by generation and rank."""

    def query(lf: pl.LazyFrame) -> pl.LazyFrame:
        lf = _newest(lf, ["run_id", "candidate_id"])
        return lf.sort(["generation", "rank", "candidate_id"], nulls_last=True)

    return _read(lake, "candidates", validate_run_id(run_id), query)


def _newest(lf: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """Newest version per key: greatest ``updated_at``, ties to the last write."""
    return (
        lf.sort(["updated_at", _ORDER], nulls_last=False)
        .unique(subset=keys, keep="last", maintain_order=True)
        .drop(_ORDER)
    )


def _metric_columns(columns: Sequence[str] | None, schema: pl.Schema) -> list[str]:
    if columns is None:
        return [PARTITION_KEY, *schema.names()]
    unknown = [c for c in columns if c != PARTITION_KEY and c not in schema]
    if unknown:
        raise ValueError(f"unknown metric column(s): {', '.join(map(str, unknown[:5]))}")
    return list(dict.fromkeys(["step", *columns]))


def _run_of(path: str) -> str:
    part = path.rsplit("/", 2)[-2]
    return part.split("=", 1)[1]


def _lake(lake: LakeLike) -> Lake:
    return lake if isinstance(lake, Lake) else open_lake(lake)
