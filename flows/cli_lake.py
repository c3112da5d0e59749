"""``alpha runs`` (list runs in the lake) and ``alpha lake flush`` (land the spool).

``alpha runs`` lists what it can read: unreadable lake objects are skipped and
named in one warning line on stderr. ``alpha lake flush`` lands spooled batches
and rescued rows (through the gate); it exits 1 while anything is left.

Imports neither Prefect nor Dash nor Great Expectations.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from flows.cli import CliError

LAKE_HELP = "lake path or URL (default $ALPHA_LAKE, else ./lake)"
RUN_COLUMNS = (
    ("run_id", "RUN", 12),  # widened to the longest run id
    ("status", "STATUS", 9),
    ("symbio", "SYMBIO", 6),
    ("domain", "DOMAIN", 12),
    ("ffn_activation", "ACT", 6),
    ("latest_step", "STEP", 7),
    ("last_loss", "LOSS", 7),
    ("best_val_loss", "BEST VAL", 8),
    ("started_at", "STARTED (UTC)", 16),
)


def register(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "runs":
        parser.add_argument("--lake", default=None, help=LAKE_HELP)
        parser.add_argument("--status", default=None, help="only runs with this status")
        parser.add_argument("--symbio", action="store_true", help="only symbio runs")
        parser.add_argument("--domain", default=None, help="only runs of this domain")
        parser.add_argument(
            "--search", default=None, help="text to find in run id, domain, activation"
        )
        parser.add_argument(
            "--limit", type=int, default=50, help="at most this many runs (default 50)"
        )
        return
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    flush = sub.add_parser(
        "flush", help="land batches spooled while the lake was unreachable, and rescued rows"
    )
    flush.add_argument("--lake", default=None, help="only batches for this lake (default: all)")
    flush.add_argument(
        "--spool",
        default=None,
        help="spool folder (default $ALPHA_SPOOL, else ~/.cache/alpha/spool)",
    )
    flush.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="also land the rows of DIR/metrics.jsonl that the lake lacks (--lake, default "
        "$ALPHA_LAKE, else ./lake)",
    )


def run(name: str, args: argparse.Namespace) -> int:
    return _runs(args) if name == "runs" else _flush(args)


def _runs(args: argparse.Namespace) -> int:
    from storage.lake import LakeError, open_lake
    from storage.reader import list_runs, read_report
    from storage.schema import RUN_STATUSES

    if args.status is not None and args.status not in RUN_STATUSES:
        raise CliError(f"--status must be one of {', '.join(RUN_STATUSES)}")
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    try:
        lake = open_lake(args.lake)
        with read_report() as report:
            df = list_runs(
                lake,
                status=args.status,
                symbio=True if args.symbio else None,
                domain=args.domain,
                search=args.search,
                limit=min(args.limit, 1 << 31),  # more than any lake holds: all of them
            )
    except LakeError as exc:
        raise CliError(f"--lake: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read the lake: {type(exc).__name__}: {exc}") from None
    if (warning := report.warning()) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    if df.height == 0:
        print(f"no runs in {lake.url}", file=sys.stderr)
        return 0
    print(format_runs(df.to_dicts()))
    return 0


def format_runs(rows: list[dict[str, Any]]) -> str:
    """A plain fixed-width table (no colour: safe for pipes and logs)."""
    run_width = max([len(str(r.get("run_id", ""))) for r in rows] + [RUN_COLUMNS[0][2]])
    cols = [("run_id", "RUN", run_width), *RUN_COLUMNS[1:]]
    lines = ["  ".join(f"{title:<{width}}" for _, title, width in cols).rstrip()]
    for row in rows:
        cells = [_cell(row.get(key), key)[:width].ljust(width) for key, _, width in cols]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "symbio":
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _flush(args: argparse.Namespace) -> int:
    from storage.lake import LakeError, open_lake
    from storage.spool import Spool, flush_spool

    lake_url = None
    if args.lake is not None:
        try:
            lake_url = open_lake(args.lake).url
        except LakeError as exc:
            raise CliError(f"--lake: {exc}") from None
    run_dir = _finished_run_dir(args.run_dir) if args.run_dir is not None else None
    spool = Spool(args.spool)
    landed, left = flush_spool(lake_url, spool.dir)
    print(f"landed {landed} batch(es) or rescued file(s) from {spool.dir}; {left} left")
    if run_dir is not None:
        left += _backfill(args, run_dir)
    return 0 if left == 0 else 1


def _finished_run_dir(path: str) -> Any:
    """``--run-dir``, checked before anything is flushed; a live run lands its own rows."""
    from model.errors import ConfigError
    from model.rundir import check_not_in_use
    from storage.backfill import BackfillError, check_run_dir

    try:
        return check_not_in_use(check_run_dir(path))
    except (ConfigError, BackfillError) as exc:
        raise CliError(str(exc)) from None


def _backfill(args: argparse.Namespace, run_dir: Any) -> int:
    """Land what metrics.jsonl has and the lake lacks; returns the rows still not in it."""
    from storage.backfill import BackfillError, backfill_run_dir
    from storage.lake import LakeError, open_lake

    try:
        run_id, st = backfill_run_dir(open_lake(args.lake), run_dir, spool_dir=args.spool)
    except (BackfillError, LakeError) as exc:
        raise CliError(str(exc)) from None
    print(f"run {run_id}: {st.summary()}")
    return st.rows_spooled + st.rows_lost
