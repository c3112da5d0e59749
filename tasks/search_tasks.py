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

Task states tell the truth: a candidate that failed is a **Failed** task run
whose data is its ``CandidateResult`` (so the loop still ranks it last and goes
on), a candidate stopped by a cancel is **Cancelled**. When the flow is
cancelled (Prefect's ``TerminationSignal`` in the flow's main thread) or
interrupted, ``map`` stops every running candidate at its next step and waits
for them (at most ``STOP_WAIT_S``) before the exception goes on, so no
training thread outlives the flow run and the sink closes after the last row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.runtime import task_run
from prefect.states import Cancelled, Failed, State

from symbio.search import loop
from symbio.search.candidate import Candidate, CandidateResult
from tasks.prefect_tasks import STOP_WAIT_S

TAGS = ("symbio-search",)


def _mutate_name() -> str:
    ranked = task_run.parameters.get("ranked")
    return f"mutate-g{ranked.generation + 1}" if ranked is not None else "mutate"


def _train_candidate(
    train_one: Callable[[Candidate, loop.PopulationInfo], CandidateResult],
    candidate: Candidate,
    info: loop.PopulationInfo,
) -> CandidateResult | State:
    """Train one candidate: its result, as a Failed state (data: the result) if it failed."""
    from tasks.search_runner import SearchInterrupted

    try:
        result = train_one(candidate, info)
    except SearchInterrupted:
        return Cancelled(message=f"candidate {candidate.candidate_id} stopped: search stopping")
    if not result.ok:
        return Failed(
            message=f"candidate {candidate.candidate_id}: {result.failure_reason}", data=result
        )
    return result


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
        futures: list[PrefectFuture] = []
        try:
            futures = [t.submit(fn, *item) for item in items]
            for f in futures:
                f.wait()
        except BaseException:
            stop_and_wait(fn, futures)
            raise
        return [task_result(f) for f in futures]


def stop_and_wait(fn: Any, futures: Sequence[PrefectFuture], timeout: float = STOP_WAIT_S) -> None:
    """Ask running candidates to stop (``fn.stop()``) and wait for them, bounded."""
    stop = getattr(fn, "stop", None)
    if callable(stop):
        stop()  # candidates not started yet end at once, running ones at their next step
    wait(list(futures), timeout=timeout)


def task_result(future: PrefectFuture) -> Any:
    """A task's return value; a Failed candidate's ``CandidateResult``; else the task's error.

    A candidate Cancelled because the search was stopping ends the search as
    an interrupt (``SearchInterrupted``), as Ctrl-C does without Prefect.
    """
    from tasks.search_runner import SearchInterrupted

    state = future.state
    if state.is_failed():
        value = state.result(raise_on_failure=False)
        if isinstance(value, CandidateResult):
            return value
    if state.is_cancelled():
        raise SearchInterrupted(state.message or "candidate cancelled")
    return future.result()


def _task_for(step: str, fn: Callable[..., Any]):
    t = STEP_TASKS.get(step)
    if t is None or t.fn is not fn:
        raise ValueError(f"no Prefect task for search step {step!r} ({fn!r})")
    return t
