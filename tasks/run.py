"""The one code path that trains a resolved run, used by ``alpha train`` and the flow.

Single run: ``hooks = [SymbioHook (symbio on, no search), LakeHook] + extra_hooks``;
a search gives every candidate ``[SymbioHook, LakeHook] + extra_hooks``.
The lake is opened before anything else, so a bad lake URL or missing
credentials fail with one line before training starts. Symbio with
``searchMode = "ffn-activation-search"`` hands over to the search runner.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import ConfigError
from tasks.resolve import ResolvedRun

if TYPE_CHECKING:  # pragma: no cover
    from model.hooks import TrainerHook
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

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "interrupted": 130}.get(self.status, 1)


def execute(
    resolved: ResolvedRun,
    *,
    lake_url: str | None = None,
    progress: bool = True,
    extra_hooks: Sequence[TrainerHook] = (),
    run_row_extra: dict[str, Any] | None = None,
    max_search_minutes: float | None = None,
) -> RunOutcome:
    """Train ``resolved`` (a single run or an FFN-activation search) into the lake.

    ``run_row_extra`` adds ``runs`` columns (e.g. ``flow_run_id`` from the flow);
    ``max_search_minutes`` is a search's budget (``tasks.search_runner.run_search``).
    Raises ``ConfigError`` for bad input found before training starts.
    """
    lake = open_lake_or_fail(lake_url)

    if resolved.symbio and resolved.search_mode == SEARCH_MODE:
        # ---- FFN activation search: symbio/search owns this branch -----------------
        from tasks.search_runner import run_search

        return run_search(
            resolved,
            lake_url=lake.url,
            progress=progress,
            extra_hooks=extra_hooks,
            max_search_minutes=max_search_minutes,
        )
        # ---- end of the search branch ----------------------------------------------

    from model.trainer import Trainer
    from storage.sink import LakeHook, MetricSink

    trainer = Trainer(
        resolved.train,
        run_id=resolved.run_id,
        progress=progress,
        run_meta=resolved.run_meta(),
    )
    run_row = build_run_row(resolved, trainer, extra=run_row_extra)
    sink = MetricSink(lake, resolved.run_id)
    hooks: list[TrainerHook] = []
    if resolved.symbio:
        from symbio.hook import SymbioHook

        hooks.append(SymbioHook(resolved.symbio_config))
    hooks.append(LakeHook(sink, run_row))
    hooks.extend(extra_hooks)
    trainer.hooks = tuple(hooks)
    try:
        result = trainer.fit()
    finally:
        stats = _close_sink(sink)
    return RunOutcome(
        run_id=resolved.run_id,
        run_dir=trainer.run_dir,
        status=result.status,
        lake_url=lake.url,
        result=result,
        sink_stats=stats,
        error=result.error,
    )


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
