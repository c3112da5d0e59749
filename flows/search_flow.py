"""The FFN activation search as a Prefect flow: generations of tasks, plus artifacts.

``run_search_flow`` is what the ``alpha`` flow calls when a run is a search.
It runs the ``symbio-search`` flow (a subflow when called from inside
``alpha``) whose task runner trains up to ``slots`` candidates at once. The
search itself is ``tasks.search_runner.run_search`` with a
``PrefectExecutor``: spawn, train (one task run per candidate), rank and
mutate are task runs, and the loop is the same one ``alpha train`` runs
without a server. The report and the candidates table are published as
Prefect artifacts (and a table per generation as it finishes).

``dispatch="deployment"`` trains each candidate as a flow run of the
``alpha-candidate/candidate`` deployment instead of a thread of this process
(``tasks.search_remote``): ``parallel`` candidates in flight, on whatever
workers the candidate deployment's pool has.

States: a failed candidate is a Failed task run, a failed search (nothing
trained, a refused budget, an error) a Failed ``symbio-search`` flow run; a
cancel stops every candidate (threads or flow runs) before the flow ends, and
the lake's run row says ``cancelled``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from model.errors import ConfigError
from symbio.search.loop import GenerationResult
from tasks.notify import NotifyHook, notifier_from_env
from tasks.resolve import ResolvedRun
from tasks.search_remote import DEFAULT_PARALLEL, DeploymentExecutor, check_dispatch
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
    max_search_minutes: float | None = None,
    dispatch: str | None = None,
    parallel: int | None = None,
) -> SearchOutcome:
    """Run the search of ``resolved`` as the ``symbio-search`` flow; returns its outcome.

    ``run_id`` overrides the resolved run id (the ``alpha`` flow may have named
    the run already). ``flow_run_id`` is recorded in ``runs.flow_run_id``;
    by default the calling flow run's id (the ``alpha`` flow's), else the
    search flow's own. ``slots`` (default ``ALPHA_SEARCH_SLOTS``, else 1 on
    CPU / 2 on CUDA) bounds the candidates trained at once. ``dispatch``:
    ``local`` (default) or ``deployment`` (``parallel`` candidate flow runs in
    flight, default ``DEFAULT_PARALLEL``, at most the population).
    ``max_search_minutes``: the budget (``tasks.search_runner.run_search``).
    Returns the outcome of a failed search too; raises what stopped it otherwise.
    """
    if run_id and run_id != resolved.run_id:
        resolved = dataclasses.replace(resolved, run_id=run_id)
    dispatch = check_dispatch(dispatch)
    if dispatch == "deployment":
        pop = resolved.symbio_config.population_size
        slots = parallel if parallel is not None else min(DEFAULT_PARALLEL, pop)
    else:
        slots = resolve_slots(device_type(resolved.train), slots)
    if slots < 1:
        raise ConfigError(f"search_parallel: must be >= 1 (got {slots})")
    flow_run_id = flow_run_id or flow_run.get_id()
    configured = search_flow.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=slots),
        flow_run_name=f"search-{resolved.run_id}",
    )
    state = configured(
        resolved, lake_url=lake_url, slots=slots, flow_run_id=flow_run_id, use_lake=use_lake,
        max_search_minutes=max_search_minutes, dispatch=dispatch, return_state=True,
    )  # fmt: skip
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value


@flow(name=FLOW_NAME, validate_parameters=False, log_prints=True)
def search_flow(
    resolved: ResolvedRun,
    lake_url: str | None = None,
    slots: int = 1,
    flow_run_id: str | None = None,
    use_lake: bool = True,
    max_search_minutes: float | None = None,
    dispatch: str = "local",
) -> Any:
    """Generations of spawn -> train (per candidate) -> rank -> mutate, as task runs.

    Returns the ``SearchOutcome``, as a Failed state (same data) when the search failed.
    """
    key = artifact_key(resolved.run_id)
    notifier = notifier_from_env()  # CUSUM alerts of every candidate, throttled per signal
    executor = (
        DeploymentExecutor(slots, lake_url=lake_url)
        if dispatch == "deployment"
        else PrefectExecutor(slots)
    )
    try:
        outcome = run_search(
            resolved,
            lake_url=lake_url,
            progress=False,
            executor=executor,
            max_search_minutes=max_search_minutes,
            flow_run_id=flow_run_id or flow_run.get_id(),
            use_lake=use_lake,
            on_generation=lambda gen: _publish_generation(gen),
            extra_hooks=(NotifyHook(notifier),) if notifier is not None else (),
        )
    finally:
        if notifier is not None:
            notifier.close()
    publish_artifacts(outcome, key)
    if outcome.status == "failed":
        return Failed(message=f"search {outcome.run_id} failed: {outcome.error}", data=outcome)
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
