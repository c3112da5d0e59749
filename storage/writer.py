"""Writing batches as Parquet objects that readers see whole or not at all.

Layout: ``<lake>/<table>/run_id=<id>/<name>.parquet`` where ``name`` is
``<time_ns>-<uuid4>``: unique, so appends never overwrite, and ordered by the
time the batch was formed, which is what "last write wins" means to readers.
Files omit ``run_id`` (it is the Hive partition) and carry the schema version
in their metadata.

Commit protocol:
- local disk: write ``.<name>.<pid>.<rand>.tmp`` in the partition folder,
  fsync, then ``os.replace``; a failed write (disk full) removes the temporary
  file. Dot-files are ignored by pyarrow, Polars and our reader.
- object stores: one PUT of the whole object, then an empty marker at
  ``<lake>/_commits/<key>``. Our reader only reads objects with a marker. A
  retried batch reuses its name, so a PUT that was in doubt is overwritten by
  the same bytes: every row lands exactly once.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.exceptions import FSTimeoutError

from storage.lake import COMMITS_DIR, QUARANTINE_DIR, Lake
from storage.schema import PARTITION_KEY

PARQUET_SUFFIX = ".parquet"


def object_name() -> str:
    """A new unique object name, ordered by creation time."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}{PARQUET_SUFFIX}"


def batch_key(table: str, run_id: str, name: str, *, quarantine: bool = False) -> str:
    """Lake-relative key of a batch object."""
    prefix = f"{QUARANTINE_DIR}/{table}" if quarantine else table
    return f"{prefix}/{PARTITION_KEY}={run_id}/{name}"


def encode_parquet(table: pa.Table) -> bytes:
    """Parquet bytes of ``table`` (its schema metadata carries the version)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


#: Most seconds one PUT to an object store may take. A stalled store (one that
#: accepts the connection and never answers: aiohttp then waits for its
#: ``100 Continue`` with no timeout at all) would otherwise hang the writer for
#: good; a timed-out PUT is spooled and retried under the same key, never lost.
PUT_TIMEOUT_S = 10.0


def put_object(lake: Lake, key: str, data: bytes, *, timeout: float | None = None) -> str:
    """Store ``data`` at lake-relative ``key`` atomically; returns its path.

    On an async object store (s3fs) each PUT is bounded by ``timeout``
    (default ``PUT_TIMEOUT_S``; ``fsspec.FSTimeoutError`` past it). Raises
    whatever the filesystem raises (the sink spools and retries).
    """
    path = lake.path(key)
    if lake.atomic_rename:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return path
    if not getattr(lake.fs, "async_impl", False):
        lake.fs.pipe_file(path, data)
        lake.fs.pipe_file(lake.commit_marker(key), b"")
        return path
    seconds = PUT_TIMEOUT_S if timeout is None else timeout
    try:  # the sync wrapper of an async filesystem takes ``timeout`` (and cancels the PUT)
        lake.fs.pipe_file(path, data, timeout=seconds)
        lake.fs.pipe_file(lake.commit_marker(key), b"", timeout=seconds)
    except FSTimeoutError:
        raise TimeoutError(f"the store did not answer a PUT within {seconds:g}s") from None
    return path


def committed_files(lake: Lake, table: str, run_id: str | None = None) -> list[str]:
    """Committed Parquet objects of ``table`` (one run, or all), oldest first."""
    base = lake.partition_path(table, run_id) if run_id else lake.table_path(table)
    if lake.is_local:
        root = Path(base)
        if not root.is_dir():
            return []
        pattern = "*.parquet" if run_id else f"{PARTITION_KEY}=*/*.parquet"
        files = [p.as_posix() for p in root.glob(pattern) if not p.name.startswith(".")]
        return sorted(files, key=_sort_key)
    files = [p for p in _find(lake, base) if p.endswith(PARQUET_SUFFIX)]
    rel_root = lake.root.rstrip("/") + "/"
    commits = lake.path(COMMITS_DIR) + "/"
    markers = {
        m[len(commits) :] for m in _find(lake, lake.path(COMMITS_DIR, base[len(rel_root) :]))
    }
    return sorted((f for f in files if f[len(rel_root) :] in markers), key=_sort_key)


def _find(lake: Lake, path: str) -> list[str]:
    try:
        return list(lake.fs.find(path))
    except FileNotFoundError:
        return []


def _sort_key(path: str) -> tuple[str, str]:
    """Write order: by object name (time-prefixed), then path."""
    return (path.rsplit("/", 1)[-1], path)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to a local ``target`` so readers see all of it or nothing.

    On any failure (disk full, ...) the temporary file is removed: a failed
    write leaves nothing behind. The temporary name is unique per call, so
    concurrent writers of one target never share it.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
