"""Where the metric lake lives: a local folder or any fsspec URL (``s3://...``).

``open_lake`` checks the URL and, for S3, that credentials exist, without any
network I/O, so that ``alpha train --lake ...`` fails before training starts
with one clear line. S3 is configured only by the standard AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``); keys never appear in URLs, messages or logs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.schema import PARTITION_KEY

ENV_LAKE = "ALPHA_LAKE"
DEFAULT_LAKE = "./lake"
LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")
#: Objects whose commit marker exists under ``<lake>/_commits/`` (object stores only).
COMMITS_DIR = "_commits"
QUARANTINE_DIR = "quarantine"

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PROTOCOL_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class LakeError(ValueError):
    """A bad lake URL or missing credentials; the message is one line."""


@dataclass(frozen=True)
class Lake:
    """An opened lake: its filesystem, root path in that filesystem and URL.

    ``atomic_rename`` is true on local disk, where a batch becomes visible by
    ``os.replace``; object stores instead get one PUT per object plus a commit
    marker, and readers ignore objects without one.
    """

    url: str
    protocol: str
    root: str
    fs: fsspec.AbstractFileSystem = field(repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.protocol in LOCAL_PROTOCOLS

    @property
    def atomic_rename(self) -> bool:
        return self.is_local

    def path(self, *parts: str) -> str:
        """Filesystem path of ``parts`` joined under the lake root."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def table_path(self, table: str) -> str:
        return self.path(table)

    def partition_path(self, table: str, run_id: str) -> str:
        return self.path(table, f"{PARTITION_KEY}={run_id}")

    def quarantine_path(self, table: str) -> str:
        return self.path(QUARANTINE_DIR, table)

    def commit_marker(self, key: str) -> str:
        """Marker path that commits the object at lake-relative ``key``."""
        return self.path(COMMITS_DIR, key)

    def uri(self, path: str) -> str:
        """Full URL of a filesystem path, for tools outside fsspec."""
        return path if self.is_local else f"{self.protocol}://{path}"


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe identifier, else raise ``ValueError``.

    Letters, digits, ``_ . -``; 1-128 characters; starts with a letter or
    digit; no ``..``. Run ids from URLs go through this before they touch a path.
    """
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {str(run_id)[:80]!r}")
    return run_id


def open_lake(url: str | os.PathLike[str] | None = None) -> Lake:
    """Open the lake at ``url`` (None: ``$ALPHA_LAKE``, else ``./lake``).

    Raises ``LakeError`` (one line) for malformed URLs, unknown protocols and
    S3 lakes without credentials. Does no network I/O.
    """
    if url is None:
        url = os.environ.get(ENV_LAKE) or DEFAULT_LAKE
    url = os.fspath(url).strip()
    if not url:
        raise LakeError("empty lake URL")
    if any(ch in url for ch in "\n\r\t\0"):
        raise LakeError("lake URL contains control characters")
    match = _PROTOCOL_RE.match(url)
    if match is None:
        if "://" in url or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", url):
            raise LakeError(f"malformed lake URL {url!r}: expected a path or <protocol>://...")
        return _local_lake(url)
    protocol, rest = match.group(1).lower(), match.group(2)
    if protocol in LOCAL_PROTOCOLS:
        return _local_lake(rest)
    if protocol in S3_PROTOCOLS:
        return _s3_lake(protocol, rest)
    return _fsspec_lake(protocol, rest, url)


def _local_lake(path: str) -> Lake:
    if not path:
        raise LakeError("malformed lake URL: empty path")
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise LakeError(f"lake path {str(root)!r} exists and is not a directory")
    return Lake(url=str(root), protocol="file", root=root.as_posix(), fs=LocalFileSystem())


def _s3_lake(protocol: str, rest: str) -> Lake:
    rest = rest.strip("/")
    bucket = rest.split("/", 1)[0]
    if "@" in bucket or ":" in bucket:
        raise LakeError("malformed s3 lake URL: put credentials in AWS_* variables, not the URL")
    if not _BUCKET_RE.match(bucket) or ".." in rest or "//" in rest:
        raise LakeError(
            f"malformed s3 lake URL {protocol}://{rest}: expected s3://<bucket>[/prefix]"
        )
    _require_aws_credentials()
    fs = s3_filesystem()
    return Lake(url=f"s3://{rest}", protocol="s3", root=rest, fs=fs)


def _fsspec_lake(protocol: str, rest: str, url: str) -> Lake:
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise LakeError(f"unknown lake protocol {protocol!r} in {url!r}") from None
    except ImportError as exc:
        raise LakeError(
            f"lake protocol {protocol!r} needs a package that is not installed: {exc}"
        ) from None
    if not rest.strip("/"):
        raise LakeError(f"malformed lake URL {url!r}: no path after {protocol}://")
    try:
        fs = fsspec.filesystem(protocol)
    except Exception as exc:  # noqa: BLE001 - any backend error is a bad lake
        raise LakeError(f"cannot open lake {url!r}: {type(exc).__name__}") from None
    root = cls._strip_protocol(url).rstrip("/")
    return Lake(url=f"{protocol}://{root.lstrip('/')}", protocol=protocol, root=root, fs=fs)


def _require_aws_credentials() -> None:
    """Fail fast when no AWS credentials can be found (env, profile or config)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SECRET_ACCESS_KEY"):
        raise LakeError("s3 lake: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    try:
        import botocore.session

        session = botocore.session.Session()
        # Profiles and shared files only: no instance-metadata probing here.
        provider = session.get_component("credential_provider")
        for name in ("env", "shared-credentials-file", "config-file"):
            method = provider.get_provider(name)
            if method is not None and method.load() is not None:
                return
    except Exception:  # noqa: BLE001 - a broken profile counts as missing
        pass
    raise LakeError(
        "s3 lake: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for non-AWS stores)"
    )


def s3_filesystem() -> fsspec.AbstractFileSystem:
    """An s3fs filesystem from the standard AWS environment, with short timeouts.

    Short connect timeouts and few retries keep an outage cheap: the sink
    spools and retries on its own schedule.
    """
    import s3fs

    client_kwargs: dict[str, str] = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL"):
        client_kwargs["endpoint_url"] = endpoint
    # The region comes from AWS_DEFAULT_REGION through botocore itself (passing
    # region_name here would make s3fs send it as a bucket LocationConstraint).
    fs = s3fs.S3FileSystem(
        client_kwargs=client_kwargs,
        config_kwargs={
            "connect_timeout": 2,
            "read_timeout": 15,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    fs.retries = 2  # s3fs's own retry loop (class default 5)
    return fs
