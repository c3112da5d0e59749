"""Local spool for batches the lake could not take yet.

A spooled batch is the exact object that was meant for the lake
(``<id>.parquet``) plus a sidecar ``<id>.json`` naming the lake URL and the
object's key. The sidecar is written last, so an entry without one is
incomplete and ignored. Landing an entry PUTs the same bytes under the same
key, so landing twice (two processes sharing a spool) stores it once.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.lake import Lake, open_lake
from storage.writer import atomic_write_bytes, put_object

ENV_SPOOL = "ALPHA_SPOOL"
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


class Spool:
    """A folder of batches waiting for their lake."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_spool_dir()

    def add(self, lake_url: str, key: str, data: bytes) -> Path:
        """Keep ``data`` for ``key`` of ``lake_url``; returns the sidecar path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # Sort entries by the object name (time-prefixed), i.e. batch order.
        stem = f"{key.rsplit('/', 1)[-1].removesuffix('.parquet')}-{uuid.uuid4().hex[:8]}"
        data_path = self.dir / f"{stem}.parquet"
        meta_path = self.dir / f"{stem}.json"
        atomic_write_bytes(data_path, data)
        atomic_write_bytes(meta_path, json.dumps({"lake": lake_url, "key": key}).encode())
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
                    meta_path, meta_path.with_suffix(".parquet"), meta["lake"], meta["key"]
                )
            except (OSError, ValueError, KeyError):
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


def flush_spool(
    lake_url: str | None = None, directory: str | os.PathLike[str] | None = None
) -> tuple[int, int]:
    """Land every spooled batch (of one lake, or of all); returns (landed, left).

    Entries whose lake is unreachable stay in the spool for a later try.
    """
    spool = Spool(directory)
    lakes: dict[str, Lake] = {}
    down: set[str] = set()
    landed = left = 0
    for entry in spool.entries(lake_url):
        if entry.lake_url in down:
            left += 1
            continue
        try:
            if entry.lake_url not in lakes:
                lakes[entry.lake_url] = open_lake(entry.lake_url)
            landed += spool.land(entry, lakes[entry.lake_url])
        except Exception as exc:  # noqa: BLE001 - keep the entry; skip the rest of that lake
            log.warning(
                "spool: could not land %s into %s: %s",
                entry.key,
                entry.lake_url,
                type(exc).__name__,
            )
            down.add(entry.lake_url)
            left += 1
    return landed, left
