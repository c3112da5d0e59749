"""The ``alpha`` Prefect flow: one training run (or FFN activation search) as tasks.

    prepare -> train -> land-metrics -> write-artifacts -> notify

Parameters are the ``alpha train`` flags in snake_case, all optional: ``None``
means "not given", and only given parameters reach
``tasks.resolve.resolve_run_config``, the code path ``alpha train`` uses, so
domain defaults < symbio preset < symbio config < parameters layer exactly as
on the command line. With no parameters the flow trains the default model on
the shipped corpus. ``symbio_config`` takes a path (on the worker) or the JSON
object itself (what ``alpha submit`` sends).

The flow run is renamed ``<run id>-<activation>`` once the run id is known.
If the flow run fails, crashes or is cancelled, the lake's run row is marked
``failed``/``cancelled`` instead of staying ``running`` forever; a run whose
worker died leaves its last checkpoint (written at every eval) in ``run_dir``,
and running the flow again with the same ``run_dir`` resumes it.

Run it locally without a server: ``python -m flows.alpha_flow`` (Prefect starts
a temporary API), or deploy it: see ``deployments/prefect.yaml``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Failed

from flows.search_flow import run_search_flow
from tasks.notify import NotifyHook, notifier_from_env
from tasks.prefect_tasks import (
    flow_run_label,
    is_search,
    land_metrics,
    mark_runs_ended,
    notify_run_end,
    prepare_run,
    train_run,
    write_artifacts,
)
from tasks.search_remote import check_dispatch

log = logging.getLogger("alpha.flow")

#: Runs this process is training, per flow run id: ``(lake_url, run_id)``; the
#: state hooks use it, and fall back to a lake lookup by ``flow_run_id``.
ACTIVE_RUNS: dict[str, tuple[str, str]] = {}

#: Flow parameters that are not ``TrainConfig`` settings (the search's options, the lake).
NON_TRAIN_PARAMS = ("lake", "max_search_minutes", "search_dispatch", "search_parallel")


def _flow_run_name() -> str:
    """Provisional name until ``prepare`` knows the run id (then it is renamed)."""
    params = current_flow_run.parameters or {}
    mode = "symbio" if params.get("symbio") else "train"
    return f"alpha-{mode}-{params.get('activation') or 'default'}-starting"


def _mark_lake(status: str):
    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        flow_run_id = str(flow_run.id)
        lake_url, run_id = ACTIVE_RUNS.pop(flow_run_id, (None, None))
        if lake_url is None:
            lake_url = (flow_run.parameters or {}).get("lake") or os.environ.get("ALPHA_LAKE")
        message = getattr(state, "message", None) or state.type.value.lower()
        try:
            marked = mark_runs_ended(
                lake_url,
                status,
                run_ids=[run_id] if run_id else [],
                flow_run_id=flow_run_id,
                error=f"flow run {state.name.lower()}: {message}",
            )
        except Exception as exc:  # noqa: BLE001 - a hook must not mask the real failure
            log.warning("could not mark the lake run %s: %s", status, exc)
            return
        if marked:
            log.warning("marked run(s) %s %s in the lake", ", ".join(marked), status)

    hook.__name__ = f"mark_lake_run_{status}"
    return hook


@flow(
    name="alpha",
    flow_run_name=_flow_run_name,
    description="Train an Alpha GPT (add symbio=true for Symbio mode and its activation search).",
    log_prints=True,
    on_failure=[_mark_lake("failed")],
    on_crashed=[_mark_lake("failed")],
    on_cancellation=[_mark_lake("cancelled")],
)
def alpha(
    data: str | None = None,
    val_data: str | None = None,
    domain: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    tokenizer: str | None = None,
    vocab_size: int | None = None,
    iters: int | None = None,
    batch: int | None = None,
    grad_accum: int | None = None,
    block: int | None = None,
    dim: int | None = None,
    heads: int | None = None,
    layers: int | None = None,
    dropout: float | None = None,
    activation: str | None = None,
    ffn_dim: int | None = None,
    lr: float | None = None,
    lr_min: float | None = None,
    warmup_iters: int | None = None,
    lr_decay_iters: int | None = None,
    grad_clip: float | None = None,
    spike_threshold: float | None = None,
    spike_patience: int | None = None,
    weight_decay: float | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    eval_interval: int | None = None,
    eval_iters: int | None = None,
    log_interval: int | None = None,
    checkpoint_interval: int | None = None,
    sample_tokens: int | None = None,
    seed: int | None = None,
    data_seed: int | None = None,
    test_fraction: float | None = None,
    run_dir: str | None = None,
    resume: str | None = None,
    compile: bool | None = None,
    symbio: bool | None = None,
    symbio_config: str | dict[str, Any] | None = None,
    lake: str | None = None,
    max_search_minutes: float | None = None,
    search_dispatch: str | None = None,
    search_parallel: int | None = None,
) -> dict[str, Any]:
    """Train one Alpha run; parameters are ``alpha train``'s flags (None: not given).

    A search's own options: ``max_search_minutes`` (budget, default 60, 0 = no
    limit: the search is scaled down to fit), ``search_dispatch`` (``local``
    threads, the default, or ``deployment``: one flow run of
    ``alpha-candidate/candidate`` per candidate) and ``search_parallel``
    (candidates in flight with ``deployment``).
    """
    given = {k: v for k, v in locals().items() if v is not None}
    explicit = {k: v for k, v in given.items() if k not in NON_TRAIN_PARAMS}
    search = {
        "max_search_minutes": max_search_minutes,
        "dispatch": check_dispatch(search_dispatch),
        "parallel": search_parallel,
    }
    return run_pipeline(explicit, lake_url=given.get("lake"), search=search)


def run_pipeline(
    explicit: dict[str, Any], *, lake_url: str | None = None, search: dict[str, Any] | None = None
) -> Any:
    """The flow body: prepare, train, land, artifacts, notify."""
    logger = get_run_logger()
    flow_run_id = current_flow_run.id
    resolved, lake_url = prepare_run(explicit, lake_url)
    _rename_flow_run(flow_run_id, flow_run_label(resolved))
    if flow_run_id:
        ACTIVE_RUNS[flow_run_id] = (lake_url, resolved.run_id)
    notifier = notifier_from_env()
    hooks = (NotifyHook(notifier),) if notifier is not None and not is_search(resolved) else ()
    try:
        if is_search(resolved):
            # the FFN activation search: the `symbio-search` subflow (flows/search_flow.py)
            outcome = run_search_flow(
                resolved, lake_url=lake_url, flow_run_id=flow_run_id, **(search or {})
            )
        else:
            trained = train_run(
                resolved, lake_url, flow_run_id=flow_run_id, extra_hooks=hooks, return_state=True
            )
            outcome = trained.result(raise_on_failure=False)  # a failed run's outcome too
            if isinstance(outcome, BaseException):
                raise outcome
        landed = land_metrics(outcome, return_state=True)
        landed_report = landed.result() if landed.is_completed() else None
        summary = write_artifacts(resolved, outcome, landed_report)
        notify_run_end(notifier, summary)
    finally:
        if notifier is not None:
            notifier.close()
    if outcome.status in ("interrupted", "cancelled"):
        return Cancelled(message=f"run {outcome.run_id} was interrupted")
    if outcome.status != "completed":
        return Failed(message=f"run {outcome.run_id} {outcome.status}: {outcome.error}")
    if landed_report is None:
        return Failed(
            message=f"run {outcome.run_id} trained but its metrics did not land in {lake_url}; "
            "spooled rows land with `alpha lake flush`"
        )
    ACTIVE_RUNS.pop(flow_run_id or "", None)
    logger.info("run %s completed: %s", outcome.run_id, summary["url"])
    return summary


def _rename_flow_run(flow_run_id: str | None, name: str) -> None:
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, name=name)
    except Exception as exc:  # noqa: BLE001 - a name is cosmetic
        log.warning("could not rename the flow run: %s", exc)


if __name__ == "__main__":
    alpha()
