"""Local spool for rows the lake could not take yet.

Two kinds of entries live in the spool folder (``$ALPHA_SPOOL``, default
``~/.cache/alpha/spool``):

- a spooled batch: the exact object that was meant for the lake
  (``<id>.parquet``) plus a sidecar ``<id>.json`` naming the lake URL, the
  object's key, its table and row count. The sidecar is written last, so an
  entry without one is incomplete and ignored. Landing an entry PUTs the same
  bytes under the same key, so landing twice (two processes sharing a spool)
  stores it once.
- a rescued file ``rescued-<table>-<run_id>-<hex>.jsonl``: rows the sink could
  not process (a bug) or put after it closed, as JSON lines after a header
  line naming the lake. ``land_rescued`` passes them through the gate (good
  rows land, bad rows are quarantined with their reason) under object names
  derived from the file, so a retried landing overwrites rather than
  duplicates; the file is removed only once everything in it has landed.

``flush_spool`` (``alpha lake flush``) lands both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.lake import Lake, open_lake
from storage.writer import atomic_write_bytes, batch_key, encode_parquet, put_object

ENV_SPOOL = "ALPHA_SPOOL"
RESCUE_MARK = "alpha_rescued"
RESCUE_CHUNK = 2000
_RESCUED_RE = re.compile(r"^rescued-(metrics|runs|candidates)-(.+)-([0-9a-f]{8})\.jsonl$")
log = logging.getLogger(__name__)


def default_spool_dir() -> Path:
    """``$ALPHA_SPOOL``, else ``~/.cache/alpha/spool``."""
    env = os.environ.get(ENV_SPOOL)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alpha" / "spool"


@dataclass(frozen=True)
class SpoolEntry:
    meta_path: Path
    data_path: Path
    lake_url: str
    key: str
    table: str | None = None
    rows: int | None = None


@dataclass(frozen=True)
class RescuedFile:
    """A ``rescued-*.jsonl`` file; ``lake_url`` is None for files of the old format."""

    path: Path
    table: str
    run_id: str
    lake_url: str | None
    rescued_at: dt.datetime


class Spool:
    """A folder of batches (and rescued rows) waiting for their lake."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_spool_dir()

    def add(
        self,
        lake_url: str,
        key: str,
        data: bytes,
        *,
        table: str | None = None,
        rows: int | None = None,
    ) -> Path:
        """Keep ``data`` for ``key`` of ``lake_url``; returns the sidecar path.

        Raises ``OSError`` (disk full, ...) with nothing left behind.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        # Sort entries by the object name (time-prefixed), i.e. batch order.
        stem = f"{key.rsplit('/', 1)[-1].removesuffix('.parquet')}-{uuid.uuid4().hex[:8]}"
        data_path = self.dir / f"{stem}.parquet"
        meta_path = self.dir / f"{stem}.json"
        meta = {"lake": lake_url, "key": key, "table": table, "rows": rows}
        atomic_write_bytes(data_path, data)
        try:
            atomic_write_bytes(meta_path, json.dumps(meta).encode())
        except BaseException:
            data_path.unlink(missing_ok=True)
            raise
        return meta_path

    def entries(self, lake_url: str | None = None) -> list[SpoolEntry]:
        """Complete entries (for one lake, or all), oldest batch first."""
        if not self.dir.is_dir():
            return []
        out = []
        for meta_path in sorted(self.dir.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                entry = SpoolEntry(
                    meta_path,
                    meta_path.with_suffix(".parquet"),
                    meta["lake"],
                    meta["key"],
                    meta.get("table"),
                    meta.get("rows"),
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # removed by another process, or not ours
            if lake_url is None or entry.lake_url == lake_url:
                out.append(entry)
        return out

    def __len__(self) -> int:
        return len(self.entries())

    def land(
        self,
        entry: SpoolEntry,
        lake: Lake,
        put: Callable[[Lake, str, bytes], str] = put_object,
    ) -> bool:
        """PUT one entry into ``lake`` and remove it; False if another process took it."""
        try:
            data = entry.data_path.read_bytes()
        except FileNotFoundError:
            return False
        put(lake, entry.key, data)
        for path in (entry.meta_path, entry.data_path):
            path.unlink(missing_ok=True)
        return True

    # -- rescued rows ---------------------------------------------------------------

    def rescue(
        self, lake_url: str, table: str, run_id: str, rows: list[dict[str, Any]], reason: str
    ) -> Path:
        """Write ``rows`` as a rescued JSON-lines file; ``OSError`` leaves nothing behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"rescued-{table}-{run_id}-{uuid.uuid4().hex[:8]}.jsonl"
        head = {
            RESCUE_MARK: 1,
            "lake": lake_url,
            "table": table,
            "run_id": run_id,
            "reason": reason,
            "rescued_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        lines = [json.dumps(head)] + [json.dumps(r, default=_json_default) for r in rows]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        return path

    def rescued(self, lake_url: str | None = None) -> list[RescuedFile]:
        """Rescued files (for one lake, or all), oldest first.

        Files of the old format (no header line) carry no lake: they are
        listed only when ``lake_url`` is given, as belonging to it.
        """
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("rescued-*.jsonl"), key=_mtime):
            match = _RESCUED_RE.match(path.name)
            if match is None:
                continue
            head = _read_head(path)
            if head is None:
                continue
            lake = head.get("lake") if head.get(RESCUE_MARK) else None
            if lake is None and lake_url is None:
                log.warning("spool: %s names no lake; land it with --lake", path.name)
                continue
            if lake_url is not None and lake not in (None, lake_url):
                continue
            at = _parse_time(head.get("rescued_at")) or dt.datetime.fromtimestamp(
                _mtime(path), dt.UTC
            )
            out.append(RescuedFile(path, match[1], match[2], lake or lake_url, at))
        return out


def land_rescued(rescued: RescuedFile, lake: Lake) -> tuple[int, int]:
    """Pass a rescued file's rows through the gate into ``lake``; returns (landed, quarantined).

    Good rows land, bad ones (and lines that are not JSON) are quarantined
    with their reason. Object names derive from the file, so landing it again
    after a failure overwrites instead of duplicating. The file is removed
    once every object is stored; any store error propagates and keeps it.
    """
    from storage.validation import MetricsGate, batch_bounds, check_rows, quarantine_table

    rows, broken = _read_rows(rescued)
    gate = None
    if rescued.table == "metrics" and rows:
        from storage.reader import get_run

        run = get_run(lake, rescued.run_id)
        gate = MetricsGate(batch_bounds(run) if run else None, in_process=True)
    landed = quarantined = 0
    objects: list[tuple[str, bytes]] = []
    for part, start in enumerate(range(0, max(len(rows), 1), RESCUE_CHUNK)):
        chunk = rows[start : start + RESCUE_CHUNK]
        if gate is not None:
            result = gate.validate(chunk, rescued.run_id)
        else:
            result = check_rows(rescued.table, chunk, rescued.run_id)
        if result.valid.num_rows:
            valid = result.valid.drop_columns(["run_id"])
            objects.append((_rescue_key(rescued, part, False), _encode(rescued.table, valid)))
            landed += valid.num_rows
        if result.rejected.num_rows:
            objects.append(
                (_rescue_key(rescued, part, True), _encode(rescued.table, result.rejected, True))
            )
            quarantined += result.rejected.num_rows
    if broken:
        failures = {i: ["rescued line is not JSON"] for i in range(len(broken))}
        raw = [{"line": line} for line in broken]
        table = quarantine_table(rescued.table, raw, [{} for _ in broken], failures)
        objects.append((_rescue_key(rescued, -1, True), _encode(rescued.table, table, True)))
        quarantined += len(broken)
    for key, data in objects:
        put_object(lake, key, data)
    rescued.path.unlink(missing_ok=True)
    return landed, quarantined


def flush_spool(
    lake_url: str | None = None, directory: str | os.PathLike[str] | None = None
) -> tuple[int, int]:
    """Land every spooled batch and rescued file (of one lake, or of all); returns (landed, left).

    Entries whose lake is unreachable stay in the spool for a later try.
    """
    spool = Spool(directory)
    lakes: dict[str, Lake] = {}
    down: set[str] = set()
    landed = left = 0

    def lake_of(url: str) -> Lake:
        if url not in lakes:
            lakes[url] = open_lake(url)
        return lakes[url]

    for entry in spool.entries(lake_url):
        if entry.lake_url in down:
            left += 1
            continue
        try:
            landed += spool.land(entry, lake_of(entry.lake_url))
        except Exception as exc:  # noqa: BLE001 - keep the entry; skip the rest of that lake
            _warn_kept(entry.key, entry.lake_url, exc)
            down.add(entry.lake_url)
            left += 1
    for rescued in spool.rescued(lake_url):
        url = rescued.lake_url or ""
        if url in down:
            left += 1
            continue
        try:
            rows, bad = land_rescued(rescued, lake_of(url))
            log.info("spool: %s: %d row(s) landed, %d quarantined", rescued.path.name, rows, bad)
            landed += 1
        except Exception as exc:  # noqa: BLE001 - keep the file for a later try
            _warn_kept(rescued.path.name, url, exc)
            down.add(url)
            left += 1
    return landed, left


def _warn_kept(what: str, url: str, exc: Exception) -> None:
    log.warning("spool: could not land %s into %s: %s", what, url, type(exc).__name__)


def _encode(table: str, data: Any, quarantine: bool = False) -> bytes:
    from storage.schema import arrow_schema, quarantine_schema

    schema = quarantine_schema(table) if quarantine else arrow_schema(table, with_partition=False)
    return encode_parquet(data.cast(schema))


def _rescue_key(rescued: RescuedFile, part: int, quarantine: bool) -> str:
    digest = hashlib.sha1(f"{rescued.path.name}:{part}:{quarantine}".encode()).hexdigest()[:32]
    ns = int(rescued.rescued_at.timestamp() * 1e9)
    return batch_key(
        rescued.table, rescued.run_id, f"{ns:020d}-{digest}.parquet", quarantine=quarantine
    )


def _read_head(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return None
    try:
        head = json.loads(first)
    except ValueError:
        return {}
    return head if isinstance(head, dict) else {}


def _read_rows(rescued: RescuedFile) -> tuple[list[dict[str, Any]], list[str]]:
    """The file's rows (timestamps parsed back) and the lines that are not JSON objects."""
    from storage.schema import TS, columns

    ts_cols = [c.name for c in columns(rescued.table) if c.type == TS]
    rows, broken = [], []
    with open(rescued.path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                broken.append(line)
                continue
            if not isinstance(row, dict):
                broken.append(line)
                continue
            if row.get(RESCUE_MARK):
                continue  # the header
            for name in ts_cols:
                if isinstance(row.get(name), str):
                    row[name] = _parse_time(row[name]) or row[name]
            rows.append(row)
    return rows, broken


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _json_default(value: Any) -> Any:
    """JSON for values ``json`` does not know: datetimes as ISO text, numpy/torch scalars as numbers."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
