"""Backfill: land the rows of ``metrics.jsonl`` that the lake lacks.

``metrics.jsonl`` in the run dir is the engine's own record of every step (the
row of a step is written there before that step's checkpoint). The lake can
lack some of them: rows batched in the sink when the process was killed, an
outage longer than the spool could cover. ``backfill_run`` compares the two by
``(run_id, step)`` and puts every missing row through the normal gate
(``storage.sink.MetricSink``): valid rows land, bad rows go to quarantine with
their reason, an unreachable store spools. Steps that are already in the lake
or its quarantine are not sent again, so running it twice lands nothing the
second time.

Called by ``tasks.run.execute`` when a run is resumed (for the run being
resumed, before training continues) and by ``alpha lake flush --run-dir``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from storage.lake import Lake, validate_run_id
from storage.writer import committed_files

log = logging.getLogger(__name__)
JSONL_NAME = "metrics.jsonl"


class BackfillError(ValueError):
    """The file cannot be read, or the lake's steps cannot be; the message is one line."""


@dataclass
class BackfillStats:
    """What a backfill found and did (``rows_*`` count metric rows)."""

    rows_in_file: int = 0  # distinct steps of the run in the file (after max_step)
    rows_present: int = 0  # of those, already in the lake (or its quarantine)
    rows_missing: int = 0  # sent through the gate
    rows_landed: int = 0
    rows_quarantined: int = 0
    rows_spooled: int = 0
    rows_lost: int = 0
    bad_lines: int = 0  # unparsable lines (e.g. a line torn by a crash), skipped
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        text = (
            f"{self.rows_in_file} steps in {JSONL_NAME}, {self.rows_present} already in the "
            f"lake; landed {self.rows_landed}, quarantined {self.rows_quarantined}, "
            f"spooled {self.rows_spooled}, lost {self.rows_lost}"
        )
        return text + (f" ({self.problem})" if self.problem else "")


def backfill_run(
    lake: Lake,
    run_id: str,
    jsonl_path: Path,
    *,
    max_step: int | None = None,
    spool_dir: str | Path | None = None,
    close_timeout: float = 120.0,
) -> BackfillStats:
    """Land every ``(run_id, step)`` of ``jsonl_path`` that ``lake`` lacks.

    ``max_step``: ignore rows after it (a resume re-does them). Raises
    ``BackfillError`` when the file or the lake's step list cannot be read.
    """
    from storage.sink import MetricSink

    validate_run_id(run_id)
    rows, bad = read_jsonl_rows(jsonl_path, run_id, max_step=max_step)
    stats = BackfillStats(rows_in_file=len(rows), bad_lines=bad)
    present = lake_steps(lake, run_id)
    missing = [row for step, row in sorted(rows.items()) if step not in present]
    stats.rows_present = len(rows) - len(missing)
    stats.rows_missing = len(missing)
    if not missing:
        return stats
    sink = MetricSink(lake, run_id, spool_dir=spool_dir, register_atexit=False)
    for row in missing:
        sink.put(row)
    sink_stats = sink.close(timeout=close_timeout)
    stats.rows_quarantined = sink_stats.rows_quarantined
    stats.rows_spooled = _rows_spooled(sink_stats, len(missing))
    stats.rows_landed = min(sink_stats.rows_landed, len(missing) - stats.rows_spooled)
    stats.rows_lost = int(getattr(sink_stats, "rows_lost", 0) or 0)
    stats.problem = getattr(sink_stats, "problem", None)
    unaccounted = len(missing) - (
        stats.rows_landed
        + stats.rows_quarantined
        + stats.rows_spooled
        + stats.rows_lost
        + sink_stats.rows_rescued
    )
    if unaccounted > 0:  # the writer did not finish within the timeout
        stats.rows_lost += unaccounted
        stats.problem = stats.problem or f"the lake writer did not finish in {close_timeout:.0f}s"
    return stats


def read_jsonl_rows(
    path: Path, run_id: str, *, max_step: int | None = None
) -> tuple[dict[int, dict[str, Any]], int]:
    """Rows of ``run_id`` by step (the last line of a step wins) and the unparsable-line count."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise BackfillError(f"no {path.name} in {path.parent}") from None
    except OSError as exc:
        raise BackfillError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: dict[int, dict[str, Any]] = {}
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = row["step"]
            if not isinstance(step, int) or isinstance(step, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if row.get("run_id", run_id) != run_id or (max_step is not None and step > max_step):
            continue
        row["run_id"] = run_id
        if isinstance(row.get("timestamp"), str):
            row["timestamp"] = _parse_ts(row["timestamp"])
        rows[step] = row
    return rows, bad


def lake_steps(lake: Lake, run_id: str) -> set[int]:
    """Steps of ``run_id`` in the lake's metrics and in its metric quarantine."""
    from storage.reader import run_metrics

    try:
        steps = set(run_metrics(lake, run_id, ["step"])["step"].drop_nulls().to_list())
    except Exception as exc:  # noqa: BLE001 - unreadable lake: backfilling blind would duplicate
        raise BackfillError(
            f"cannot read the steps of run {run_id} in {lake.url}: {type(exc).__name__}: {exc}"
        ) from None
    for path in committed_files(lake, "quarantine/metrics", run_id):
        try:
            with lake.fs.open(path, "rb") as f:
                col = pq.read_table(f, columns=["step"]).column("step").to_pylist()
        except Exception as exc:  # noqa: BLE001 - a damaged quarantine object: not a reason to stop
            log.warning("backfill: skipping unreadable quarantine object %s: %s", path, exc)
            continue
        steps.update(s for s in col if isinstance(s, int))
    return steps


def _rows_spooled(sink_stats: Any, sent: int) -> int:
    """``SinkStats.rows_spooled`` where the sink counts it; else all rows of a sink that
    left batches in the spool (older sinks count spooled rows as landed)."""
    value = getattr(sink_stats, "rows_spooled", None)
    if value is not None:
        return int(value)
    return sent if sink_stats.spool_left else 0


def _parse_ts(text: str) -> dt.datetime | str:
    try:
        ts = dt.datetime.fromisoformat(text)
    except ValueError:
        return text  # the gate quarantines it with its reason
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def _row_from_config(run_dir: Path, run_id: str) -> dict[str, Any] | None:
    """A ``running`` run row rebuilt from the run dir's ``config.json`` (None if unreadable)."""
    try:
        cfg = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        started = dt.datetime.fromtimestamp(
            (Path(run_dir) / "config.json").stat().st_mtime, dt.UTC
        )
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    return {
        "run_id": run_id,
        "status": "running",
        "domain": cfg.get("domain"),
        "model_config": json.dumps(cfg.get("model_config")),
        "train_config": json.dumps(cfg, default=str),
        "started_at": started,
        "total_iters": cfg.get("iters"),
        "param_count": cfg.get("param_count"),
        "device": cfg.get("device"),
        "run_dir": str(Path(run_dir).resolve()),
        "ffn_activation": cfg.get("ffn_activation"),
        "symbio": int(bool(cfg.get("symbio"))),
    }


def run_id_of(run_dir: Path) -> str:
    """The run id of a run dir: ``config.json``, else the first row of ``metrics.jsonl``."""
    for name, key in (("config.json", None), (JSONL_NAME, "first row")):
        path = Path(run_dir) / name
        try:
            with path.open(encoding="utf-8") as f:
                obj = json.load(f) if key is None else json.loads(f.readline() or "{}")
            run_id = obj.get("run_id") if isinstance(obj, dict) else None
        except (OSError, ValueError):
            continue
        if isinstance(run_id, str):
            try:
                return validate_run_id(run_id)
            except ValueError:
                break
    raise BackfillError(f"--run-dir: {run_dir} has no run id (no readable config.json)")


def check_run_dir(path: str | Path) -> Path:
    """A folder with a ``metrics.jsonl`` and a run id, or a one-line ``BackfillError``."""
    run_dir = Path(path).expanduser()
    if not run_dir.is_dir():
        raise BackfillError(f"--run-dir: not a directory: {run_dir}")
    if not (run_dir / JSONL_NAME).is_file():
        raise BackfillError(f"--run-dir: no {JSONL_NAME} in {run_dir}")
    run_id_of(run_dir)
    return run_dir


def backfill_run_dir(
    lake: Lake, run_dir: Path, *, spool_dir: str | Path | None = None
) -> tuple[str, BackfillStats]:
    """``alpha lake flush --run-dir``: backfill a run dir whose process has ended, then make
    its run row tell the truth (a row still saying ``running`` becomes ``failed``).

    The caller checks that no live process holds the run dir.
    """
    run_dir = check_run_dir(run_dir)
    run_id = run_id_of(run_dir)
    stats = backfill_run(lake, run_id, run_dir / JSONL_NAME, spool_dir=spool_dir)
    settle_run_row(lake, run_id, spool_dir=spool_dir, run_dir=run_dir)
    return run_id, stats


def settle_run_row(
    lake: Lake,
    run_id: str,
    *,
    spool_dir: str | Path | None = None,
    run_dir: Path | None = None,
) -> bool:
    """A run row left ``running`` by a dead process becomes ``failed`` with the lake's
    latest step; returns whether a new version was written.

    A process killed before its first run row landed (the sink lands it once the gate
    is up) left none: with ``run_dir`` one is made from its ``config.json``.
    """
    from storage.reader import get_run
    from storage.sink import MetricSink

    try:
        row = get_run(lake, run_id)
    except Exception as exc:  # noqa: BLE001 - an unreadable runs table: leave it
        log.warning("backfill: cannot read the run row of %s: %s", run_id, exc)
        return False
    if row is None and run_dir is not None:
        row = _row_from_config(run_dir, run_id)
    if row is None or row.get("status") != "running":
        return False
    steps = lake_steps(lake, run_id)
    now = dt.datetime.now(dt.UTC)
    row.update(
        status="failed",
        error="the run's process ended without finishing (found by alpha lake flush)",
        latest_step=max(steps) if steps else row.get("latest_step"),
        finished_at=now,
        updated_at=now,
    )
    sink = MetricSink(lake, run_id, spool_dir=spool_dir, register_atexit=False)
    sink.write_run(row)
    sink.close()
    return True
