"""Prefect tasks of the FFN activation search: one task per step of a generation.

The tasks wrap the pure step functions of ``symbio.search.loop`` (nothing is
re-implemented here). ``PrefectExecutor`` plugs them into the shared
generation loop, so a search run through Prefect shows, per generation::

    spawn-candidates (generation 0) | mutate-g<N>   (selection + mutation)
    train-g<N>-c<i>-<activation>    (one task run per candidate, concurrent)
    rank-generation-<N>

Candidates of a generation are submitted together; the flow's
``ThreadPoolTaskRunner(max_workers=slots)`` bounds how many train at once.
Caching is off: every task run must really train.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from symbio.search import loop
from symbio.search.candidate import Candidate, CandidateResult

TAGS = ("symbio-search",)


def _mutate_name() -> str:
    ranked = task_run.parameters.get("ranked")
    return f"mutate-g{ranked.generation + 1}" if ranked is not None else "mutate"


def _train_candidate(
    train_one: Callable[[Candidate, loop.PopulationInfo], CandidateResult],
    candidate: Candidate,
    info: loop.PopulationInfo,
) -> CandidateResult:
    """Train one candidate; a failing candidate comes back as a failed result."""
    return train_one(candidate, info)


spawn_candidates = task(
    loop.spawn_candidates,
    name="spawn-candidates",
    task_run_name="spawn-candidates-g0",
    cache_policy=NO_CACHE,
    tags=TAGS,
)
train_candidate = task(
    _train_candidate,
    name="train-candidate",
    task_run_name="train-{candidate.candidate_id}-{candidate.activation}",
    cache_policy=NO_CACHE,
    tags=TAGS,
)
rank_generation = task(
    loop.rank_generation,
    name="rank-generation",
    task_run_name="rank-generation-{generation}",
    cache_policy=NO_CACHE,
    tags=TAGS,
)
mutate = task(
    loop.mutate_generation,
    name="mutate",
    task_run_name=_mutate_name,
    cache_policy=NO_CACHE,
    tags=TAGS,
)

#: Loop step name -> the task that runs it.
STEP_TASKS = {
    "spawn_candidates": spawn_candidates,
    "rank_generation": rank_generation,
    "mutate": mutate,
    "train_candidate": train_candidate,
}


class PrefectExecutor:
    """Runs the generation loop's steps as Prefect tasks (must be used inside a flow)."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return _task_for(step, fn)(*args, **kwargs)

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]:
        t = STEP_TASKS[step]
        futures = [t.submit(fn, *item) for item in items]
        return [f.result() for f in futures]


def _task_for(step: str, fn: Callable[..., Any]):
    t = STEP_TASKS.get(step)
    if t is None or t.fn is not fn:
        raise ValueError(f"no Prefect task for search step {step!r} ({fn!r})")
    return t
