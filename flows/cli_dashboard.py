"""``alpha dashboard``: serve the Dash dashboard over a metric lake.

    alpha dashboard --lake ./lake                 # http://127.0.0.1:8050/
    alpha dashboard --lake s3://bucket/lake --host 0.0.0.0 --port 9000

Listens on 127.0.0.1 unless told otherwise, never in debug mode. Set
``ALPHA_DASH_USER`` and ``ALPHA_DASH_PASSWORD`` to require HTTP basic auth.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from flows.cli import CliError

DEFAULT_PORT = 8050


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lake",
        default=None,
        help="lake path or URL (s3://bucket/prefix); default $ALPHA_LAKE or ./lake",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=3.0,
        help="how often live pages poll the lake (default 3)",
    )


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be 1-65535 (got {args.port})")
    if not 0.5 <= args.poll_seconds <= 3600:
        raise CliError(f"--poll-seconds must be 0.5-3600 (got {args.poll_seconds:g})")
    host = args.host.strip()
    if not host or any(ch.isspace() for ch in host) or "/" in host:
        raise CliError(f"--host must be a host name or IP address (got {args.host!r})")
    try:
        wide = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wide = False
    if wide:
        print(
            f"alpha dashboard: warning: listening on all interfaces ({host}); "
            "set ALPHA_DASH_USER/ALPHA_DASH_PASSWORD and put TLS in front",
            file=sys.stderr,
        )


def run(name: str, args: argparse.Namespace) -> int:
    _check(args)
    from dash_app.auth import credentials_from_env
    from storage.lake import LakeError, open_lake

    try:
        lake = open_lake(args.lake)
    except LakeError as exc:
        raise CliError(str(exc)) from None
    if lake.is_local and not lake.fs.isdir(lake.root):
        raise CliError(
            f"no lake at {lake.root} (train with --lake {lake.root} first, or pass --lake)"
        )
    try:
        credentials = credentials_from_env()
    except ValueError as exc:
        raise CliError(str(exc)) from None

    from dash_app.app import create_app
    from dash_app.server import serve

    app = create_app(lake, poll_ms=int(args.poll_seconds * 1000), credentials=credentials)
    if credentials:
        print("alpha dashboard: basic auth on", file=sys.stderr)
    try:
        serve(app, args.host.strip(), args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
