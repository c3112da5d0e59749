"""The one code path that trains a resolved run, used by ``alpha train`` and the flow.

Single run: ``hooks = [SymbioHook (symbio on, no search), LakeHook] + extra_hooks``;
a search gives every candidate ``[SymbioHook, LakeHook] + extra_hooks``.
The lake is opened before anything else, so a bad lake URL or missing
credentials fail with one line before training starts. Symbio with
``searchMode = "ffn-activation-search"`` hands over to the search runner.

Order of a single run: build the ``Trainer`` (every check of the input, then it
locks and prepares the run dir) -> on ``--resume``, backfill the lake from the
resumed run's ``metrics.jsonl`` (``storage.backfill``) -> ``on_ready()`` (the CLI
prints the resolved config here, once nothing can be refused any more) ->
train -> close the sink. ``lake_verdict`` turns the sink's stats into the
truth about the lake that the CLI prints and exits with.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import ConfigError
from model.hooks import TrainerHook
from tasks.resolve import ResolvedRun

if TYPE_CHECKING:  # pragma: no cover
    from model.trainer import Trainer, TrainResult
    from storage.lake import Lake

SEARCH_MODE = "ffn-activation-search"


@dataclass
class RunOutcome:
    """How a run ended and where its results are."""

    run_id: str
    run_dir: Path
    status: str  # completed | failed | interrupted
    lake_url: str
    result: TrainResult | None = None
    sink_stats: Any = None
    search: Any = None  # the search runner's summary, in search mode
    error: str | None = None
    backfill: Any = None  # storage.backfill.BackfillStats of a resume, or None
    rows_produced: int | None = None  # rows handed to the lake hook by this process

    @property
    def lake(self) -> LakeVerdict:
        return lake_verdict(self.sink_stats, self.rows_produced)

    @property
    def exit_code(self) -> int:
        code = {"completed": 0, "interrupted": 130}.get(self.status, 1)
        return code or self.lake.exit_code


@dataclass(frozen=True)
class LakeVerdict:
    """What the lake got: a note for the status line, an error line, an exit code."""

    note: str | None = None  # e.g. "12 rows spooled, run alpha lake flush"
    error: str | None = None  # rows were lost: say so on stderr
    exit_code: int = 0  # 1 when rows were lost


def lake_verdict(stats: Any, rows_produced: int | None) -> LakeVerdict:
    """The truth about a run's rows, from its ``SinkStats`` (fields read with getattr).

    Lost rows (kept nowhere: not landed, quarantined, spooled or rescued) -> exit 1;
    rows only spooled or rescued -> a note that ``alpha lake flush`` lands them.
    """
    if stats is None:
        return LakeVerdict(
            note="lake state unknown",
            error="the metric sink did not close: the lake may lack rows; metrics.jsonl has "
            "them all (alpha lake flush --run-dir DIR)",
            exit_code=1,
        )
    landed = int(getattr(stats, "rows_landed", 0) or 0)
    quarantined = int(getattr(stats, "rows_quarantined", 0) or 0)
    rescued = int(getattr(stats, "rows_rescued", 0) or 0)
    lost = int(getattr(stats, "rows_lost", 0) or 0)
    spooled = getattr(stats, "rows_spooled", None)
    if spooled is None:  # a sink that does not count spooled rows (counts them as landed)
        spooled = landed if getattr(stats, "spool_left", 0) else 0
        landed -= spooled
    spooled = int(spooled)
    if rows_produced is not None:
        lost = max(lost, rows_produced - (landed + quarantined + spooled + rescued))
    notes = []
    if spooled or rescued:
        notes.append(f"{spooled + rescued} rows spooled, run alpha lake flush")
    if quarantined:
        notes.append(f"{quarantined} rows quarantined")
    if lost:
        return LakeVerdict(
            note="; ".join([f"{lost} rows lost", *notes]),
            error=f"{lost} rows lost, kept neither in the lake nor in the spool"
            f"{_causes(getattr(stats, 'problem', None))}; metrics.jsonl in the run dir still "
            "has the metric rows (alpha lake flush --run-dir DIR)",
            exit_code=1,
        )
    if rows_produced and landed == 0 and not notes:
        notes.append("the lake got no rows")
    return LakeVerdict(note="; ".join(notes) or None)


def _causes(problem: str | None) -> str:
    """`` (why)`` from a sink's problem line ``"N row(s) lost: why"``, or ``""``."""
    if not problem:
        return ""
    head, sep, why = problem.partition(" lost: ")
    return f" ({why if sep and head.endswith('row(s)') else problem})"


def execute(
    resolved: ResolvedRun,
    *,
    lake_url: str | None = None,
    progress: bool = True,
    extra_hooks: Sequence[TrainerHook] = (),
    run_row_extra: dict[str, Any] | None = None,
    on_ready: Callable[[], None] | None = None,
    max_search_minutes: float | None = None,
) -> RunOutcome:
    """Train ``resolved`` (a single run or an FFN-activation search) into the lake.

    ``run_row_extra`` adds ``runs`` columns (e.g. ``flow_run_id`` from the flow).
    ``on_ready`` is called once every input check has passed, before training.
    ``max_search_minutes`` is a search's budget (``tasks.search_runner.run_search``).
    Raises ``ConfigError`` for bad input found before training starts.
    """
    lake = open_lake_or_fail(lake_url)

    if resolved.symbio and resolved.search_mode == SEARCH_MODE:
        # ---- FFN activation search: symbio/search owns this branch -----------------
        from model.rundir import lock_run_dir
        from tasks.search_runner import run_search

        run_dir = Path(resolved.run_dir)
        existed = run_dir.exists()
        try:
            with lock_run_dir(run_dir, fresh=resolved.resumed_step is None):
                if on_ready is not None:
                    on_ready()
                return run_search(
                    resolved,
                    lake_url=lake.url,
                    progress=progress,
                    extra_hooks=extra_hooks,
                    max_search_minutes=max_search_minutes,
                )
        except ConfigError:
            if not existed:
                _remove_if_only_lock(run_dir)  # refused before anything was written
            raise
        # ---- end of the search branch ----------------------------------------------

    from model.trainer import Trainer
    from storage.sink import LakeHook, MetricSink

    trainer = Trainer(
        resolved.train,
        run_id=resolved.run_id,
        progress=progress,
        run_meta=resolved.run_meta(),
    )
    try:
        backfill = _backfill_resumed(lake, trainer)
        run_row = build_run_row(resolved, trainer, extra=run_row_extra)
        sink = MetricSink(lake, resolved.run_id)
    except BaseException:
        trainer.release_lock()
        raise
    hooks: list[TrainerHook] = []
    if resolved.symbio:
        from symbio.hook import SymbioHook

        hooks.append(SymbioHook(resolved.symbio_config))
    counter = _RowCounter()
    hooks += [LakeHook(sink, run_row), counter]
    hooks.extend(extra_hooks)
    trainer.hooks = tuple(hooks)
    try:
        if on_ready is not None:
            on_ready()
        result = trainer.fit()
    finally:
        trainer.release_lock()
        stats = _close_sink(sink)
    return RunOutcome(
        run_id=resolved.run_id,
        run_dir=trainer.run_dir,
        status=result.status,
        lake_url=lake.url,
        result=result,
        sink_stats=stats,
        error=result.error,
        backfill=backfill,
        rows_produced=counter.rows,
    )


class _RowCounter(TrainerHook):
    """Counts the rows the lake hook was given (to tell lost rows from unproduced ones)."""

    def __init__(self) -> None:
        self.rows = 0

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        self.rows += 1


def _backfill_resumed(lake: Lake, trainer: Trainer) -> Any:
    """On resume: land the resumed run's rows (up to its checkpoint) that the lake lacks."""
    if trainer.ckpt is None:
        return None
    from storage.backfill import BackfillError, backfill_run

    jsonl = trainer.ckpt.path.parent / "metrics.jsonl"
    if not jsonl.exists():
        return None
    try:
        return backfill_run(lake, trainer.run_id, jsonl, max_step=trainer.step)
    except BackfillError as exc:  # the lake is unreadable: train anyway, say so
        print(f"warning: no backfill of run {trainer.run_id}: {exc}", file=sys.stderr)
        return None


def open_lake_or_fail(lake_url: str | None) -> Lake:
    """Open the lake, turning a bad URL or missing credentials into a ``ConfigError``."""
    from storage.lake import LakeError, open_lake

    try:
        return open_lake(lake_url)
    except LakeError as exc:
        raise ConfigError(f"--lake: {exc}") from None


def build_run_row(
    resolved: ResolvedRun, trainer: Trainer, *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``runs`` row at start (status ``running``); keys are ``storage.schema`` columns."""
    from storage.schema import column_names

    now = datetime.now(UTC)
    sc = resolved.symbio_config
    row: dict[str, Any] = {
        "run_id": resolved.run_id,
        "status": "running",
        "domain": resolved.train.domain,
        "model_config": json.dumps(trainer.model_config.model_dump()),
        "train_config": json.dumps(trainer.config_dict(), default=str),
        "started_at": now,
        "updated_at": now,
        "total_iters": resolved.train.iters,
        "latest_step": trainer.step,
        "param_count": trainer.param_count,
        "host": socket.gethostname(),
        "device": trainer.device.type,
        "gpu_name": _gpu_name(trainer),
        "run_dir": str(trainer.run_dir.resolve()),
        "symbio": int(resolved.symbio),
        "symbio_config": sc.to_camel_json() if resolved.symbio and sc is not None else None,
        "ffn_activation": trainer.model_config.ffn_activation,
        "symbio_mode": resolved.search_mode if resolved.symbio else None,
        **(extra or {}),
    }
    unknown = set(row) - set(column_names("runs"))
    if unknown:
        raise ValueError(f"run row keys not in the lake schema: {sorted(unknown)}")
    return row


def _gpu_name(trainer: Trainer) -> str | None:
    if trainer.device.type != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(trainer.device)


def _close_sink(sink) -> Any:
    try:
        return sink.close()
    except Exception as exc:  # noqa: BLE001 - the run itself is done; report, don't crash
        print(f"warning: the metric sink did not close cleanly: {exc}", file=sys.stderr)
        return None


def _remove_if_only_lock(run_dir: Path) -> None:
    """Remove a run dir this call created when it holds nothing but the lock file."""
    from model.rundir import LOCK_NAME, is_empty_run_dir

    try:
        if run_dir.is_dir() and is_empty_run_dir(run_dir):
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass
