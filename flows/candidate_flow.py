"""The ``alpha-candidate`` flow: train one candidate (or a batch) of an activation search.

A search with ``search_dispatch="deployment"`` (``flows.search_flow``) runs
each candidate as a flow run of this flow's ``candidate`` deployment
(``deployments/prefect.yaml``), so whichever worker of the pool picks it up
trains it. Parameters are plain data (``tasks.search_remote`` documents the
contract): ``search`` (the search's spec), ``candidates`` (each candidate,
its generation's fields and the checkpoint it starts from) and ``lake``.
Metric rows, the result record and the checkpoint go to the lake.

One task run per candidate, ``train-<candidate id>-<activation>``: Failed when
the candidate failed (the flow run is then Failed too, its data the result
records), Cancelled/Crashed when the run was stopped. A cancel of this flow
run stops the candidate at its next step and lands its rows before the run ends.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed

from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.loop import PopulationInfo
from tasks.notify import NotifyHook, notifier_from_env
from tasks.search_remote import TAGS, run_stoppable, train_candidates
from tasks.search_runner import SearchInterrupted

# Before torch loads OpenMP (as `alpha train` does): spinning threads collapse on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@task(
    name="train-candidate",
    task_run_name="train-{candidate.candidate_id}-{candidate.activation}",
    cache_policy=NO_CACHE,
    tags=TAGS,
)
def train_candidate(trainer: Any, candidate: Candidate, info: PopulationInfo) -> Any:
    """Train one candidate; a failed one is a Failed task run whose data is its result,
    one stopped by a cancel of the flow run a Cancelled one."""
    try:
        result = run_stoppable(trainer, candidate, info)
    except TerminationSignal:  # the worker's cancel: stopped, its rows queued
        _SIGNALLED.set()
        return Cancelled(message=f"candidate {candidate.candidate_id} stopped: flow run cancelled")
    except SearchInterrupted:  # our own watch saw the cancel first
        return Cancelled(message=f"candidate {candidate.candidate_id} stopped: flow run cancelled")
    if not result.ok:
        return Failed(
            message=f"candidate {candidate.candidate_id}: {result.failure_reason}", data=result
        )
    return result


#: Set when Prefect's SIGTERM (the worker's cancel) reached a candidate of this process.
_SIGNALLED = threading.Event()


def _being_cancelled(flow_run_id: str | None):
    """``() -> bool``: is this flow run Cancelling/Cancelled (asked of the API)?"""
    if not flow_run_id:
        return None

    def cancelled() -> bool:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        return state is not None and (state.is_cancelling() or state.is_cancelled())

    return cancelled


def _train_in_task(trainer: Any, candidate: Candidate, info: PopulationInfo) -> CandidateResult:
    state = train_candidate(trainer, candidate, info, return_state=True)
    if state.is_cancelled():  # hand the cancel on: to the flow engine (a signal) or the flow
        raise TerminationSignal(signal.SIGTERM) if _SIGNALLED.is_set() else SearchInterrupted()
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value


@flow(
    name="alpha-candidate",
    description="Train candidates of an Alpha FFN activation search (dispatched by the search).",
    log_prints=True,
)
def alpha_candidate(
    search: dict[str, Any], candidates: list[dict[str, Any]], lake: str | None = None
) -> Any:
    """Train ``candidates`` of ``search``; returns their result records (also in the lake)."""
    notifier = notifier_from_env()  # the worker's own Discord settings, if any
    hooks = (NotifyHook(notifier),) if notifier is not None else ()
    try:
        records = train_candidates(
            search, candidates, lake, train_one=_train_in_task, extra_hooks=hooks,
            cancelled=_being_cancelled(flow_run.get_id()),
        )  # fmt: skip
    except SearchInterrupted:
        return Cancelled(message="cancelled: every candidate stopped and its rows landed")
    finally:
        if notifier is not None:
            notifier.close()
    failed = [r["candidate_id"] for r in records if (r.get("result") or {}).get("status") != "ok"]
    if failed:
        return Failed(message=f"candidate(s) failed: {', '.join(failed)}", data=records)
    return records
