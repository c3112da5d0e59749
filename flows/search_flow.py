"""The FFN activation search as a Prefect flow: generations of tasks, plus artifacts.

``run_search_flow`` is what the ``alpha`` flow calls when a run is a search.
It runs the ``symbio-search`` flow (a subflow when called from inside
``alpha``) whose task runner trains up to ``slots`` candidates at once. The
search itself is ``tasks.search_runner.run_search`` with a
``PrefectExecutor``: spawn, train (one task run per candidate), rank and
mutate are task runs, and the loop is the same one ``alpha train`` runs
without a server. The report and the candidates table are published as
Prefect artifacts (and a table per generation as it finishes).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from symbio.search.loop import GenerationResult
from tasks.notify import NotifyHook, notifier_from_env
from tasks.resolve import ResolvedRun
from tasks.search_runner import (
    SearchOutcome,
    device_type,
    resolve_slots,
    run_search,
)
from tasks.search_tasks import PrefectExecutor

FLOW_NAME = "symbio-search"


def run_search_flow(
    resolved: ResolvedRun,
    *,
    lake_url: str | None = None,
    run_id: str | None = None,
    flow_run_id: str | None = None,
    use_lake: bool = True,
    slots: int | None = None,
) -> SearchOutcome:
    """Run the search of ``resolved`` as the ``symbio-search`` flow; returns its outcome.

    ``run_id`` overrides the resolved run id (the ``alpha`` flow may have named
    the run already). ``flow_run_id`` is recorded in ``runs.flow_run_id``;
    by default the calling flow run's id (the ``alpha`` flow's), else the
    search flow's own. ``slots`` (default ``ALPHA_SEARCH_SLOTS``, else 1 on
    CPU / 2 on CUDA) bounds the candidates trained at once.
    """
    if run_id and run_id != resolved.run_id:
        resolved = dataclasses.replace(resolved, run_id=run_id)
    slots = resolve_slots(device_type(resolved.train), slots)
    flow_run_id = flow_run_id or flow_run.get_id()
    configured = search_flow.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=slots),
        flow_run_name=f"search-{resolved.run_id}",
    )
    return configured(resolved, lake_url=lake_url, slots=slots, flow_run_id=flow_run_id,
                      use_lake=use_lake)  # fmt: skip


@flow(name=FLOW_NAME, validate_parameters=False, log_prints=True)
def search_flow(
    resolved: ResolvedRun,
    lake_url: str | None = None,
    slots: int = 1,
    flow_run_id: str | None = None,
    use_lake: bool = True,
) -> SearchOutcome:
    """Generations of spawn -> train (per candidate) -> rank -> mutate, as task runs."""
    key = artifact_key(resolved.run_id)
    notifier = notifier_from_env()  # CUSUM alerts of every candidate, throttled per signal
    try:
        outcome = run_search(
            resolved,
            lake_url=lake_url,
            progress=False,
            executor=PrefectExecutor(slots),
            flow_run_id=flow_run_id or flow_run.get_id(),
            use_lake=use_lake,
            on_generation=lambda gen: _publish_generation(gen),
            extra_hooks=(NotifyHook(notifier),) if notifier is not None else (),
        )
    finally:
        if notifier is not None:
            notifier.close()
    publish_artifacts(outcome, key)
    return outcome


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return f"symbio-search-{slug}"[:120]


def candidate_table(generations: list[GenerationResult]) -> list[dict[str, Any]]:
    """One row per candidate per generation, rounded for display."""
    rows = []
    for gen in generations:
        for r in gen.ranked:
            c = r.candidate
            rows.append(
                {
                    "generation": c.generation,
                    "rank": r.rank,
                    "candidate_id": c.candidate_id,
                    "activation": c.activation,
                    "parents": ", ".join(c.parent_ids),
                    "mutation": ", ".join(c.mutation_ops),
                    "best_val_loss": _round(r.best_val_loss, 4),
                    "fitness": _round(r.fitness, 4),
                    "tokens_per_sec": _round(r.tokens_per_sec, 0),
                    "status": r.status,
                    "failure_reason": r.failure_reason or "",
                }
            )
    return rows


def publish_artifacts(outcome: SearchOutcome, key: str) -> None:
    """The report (markdown) and the candidates table, keyed by the run."""
    report = outcome.artifacts.get("report")
    text = report.read_text(encoding="utf-8") if report else _short_report(outcome)
    create_markdown_artifact(text, key=key, description=f"Symbio search {outcome.run_id}")
    create_table_artifact(
        candidate_table(outcome.generations),
        key=f"{key}-candidates",
        description=f"Candidates of symbio search {outcome.run_id}",
    )


def _publish_generation(gen: GenerationResult) -> None:
    create_table_artifact(
        candidate_table([gen]), description=f"Generation {gen.generation}, ranked"
    )


def _short_report(outcome: SearchOutcome) -> str:
    w = outcome.winner
    win = f"**{w['activation']}** (`{w['candidate_id']}`)" if w else "none"
    return f"# Symbio search `{outcome.run_id}`\n\nStatus {outcome.status}; winner {win}.\n"


def _round(x: float | None, digits: int) -> float | None:
    if x is None or x != x:
        return None
    return round(x, digits)
