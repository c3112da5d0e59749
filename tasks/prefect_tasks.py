"""Prefect tasks of the ``alpha`` flow: thin wrappers over ``tasks.resolve``/``tasks.run``.

One task per pipeline step, so each shows up in the Prefect UI: ``prepare``
(resolve the config, check data and lake), ``train``, ``land-metrics``
(confirm the rows are in the lake), ``write-artifacts`` and ``notify``.

Retries are for transient failures only: a ``ConfigError`` (bad input) is
never retried, a lake that does not answer is. A retried ``train`` resumes
from the checkpoint the failed attempt left in the run directory.

States match outcomes: a run whose training ended ``failed`` is a Failed
``train`` task run (its data the ``RunOutcome``). Training runs in a worker
thread (``run_in_thread``) while the flow's main thread waits, so Prefect's
cancel (``TerminationSignal``, raised in the main thread) stops the run at its
next step: its rows land and the lake says ``cancelled`` before the flow ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from prefect.tasks import exponential_backoff

from model.errors import ConfigError
from model.hooks import TrainerHook
from tasks.notify import DiscordNotifier, run_end_message, winner_message
from tasks.resolve import ResolvedRun, resolve_run_config

log = logging.getLogger("alpha.flow")

SEARCH_MODE = "ffn-activation-search"
ENV_DASHBOARD = "ALPHA_DASHBOARD_URL"
DEFAULT_DASHBOARD = "http://127.0.0.1:8050"
CHECKPOINT_FILE = "checkpoint.safetensors"


#: How long a stopping run waits for its training thread(s): Prefect's process worker
#: kills a cancelled flow run's process 30 s after its SIGTERM.
STOP_WAIT_S = 25.0


class LandingIncomplete(RuntimeError):
    """The run's rows are not (all) in the lake yet; retried with backoff."""


def _not_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry anything but bad user input (and a run that ended failed)."""
    if getattr(state.result(raise_on_failure=False), "status", None) is not None:
        return False  # the training ran and recorded its failure: not transient
    try:
        state.result()
    except ConfigError:
        return False
    except Exception:  # noqa: BLE001 - any other failure may be transient
        return True
    return True


# -- helpers ---------------------------------------------------------------------


class StopHook(TrainerHook):
    """Raises ``KeyboardInterrupt`` in the training thread once ``event`` is set: the
    trainer ends the run ``interrupted`` at that step, hooks and sink intact."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt


def run_in_thread(
    fn: Callable[[], Any], stop: Callable[[], None], *, wait_s: float = STOP_WAIT_S
) -> Any:
    """``fn()`` in a worker thread; if this (main) thread is interrupted, ``stop()`` it.

    Prefect delivers a cancel as ``TerminationSignal`` in the main thread, anywhere
    in its code; training there would be torn down mid-step. Here the main
    thread only waits: on any interrupt it calls ``stop()``, waits up to
    ``wait_s`` for ``fn`` to return, then re-raises the interrupt.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alpha-train")
    future = pool.submit(fn)
    try:
        while True:
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                continue
    except BaseException:
        stop()
        try:
            future.exception(timeout=wait_s)
        except BaseException:  # noqa: BLE001 - the original interrupt is what matters
            pass
        raise
    finally:
        pool.shutdown(wait=False)


def dashboard_url(run_id: str) -> str:
    """Link to the run's page on the Dash dashboard (``$ALPHA_DASHBOARD_URL``)."""
    base = os.environ.get(ENV_DASHBOARD, "").strip() or DEFAULT_DASHBOARD
    return f"{base.rstrip('/')}/runs/{run_id}"


def artifact_key(prefix: str, run_id: str) -> str:
    """An artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{run_id}".lower()).strip("-")[:200]


def has_checkpoint(run_dir: str | os.PathLike[str] | None) -> bool:
    if not run_dir:
        return False
    from model.checkpoint import FILENAME

    return (Path(run_dir).expanduser() / FILENAME).is_file()


def is_search(resolved: ResolvedRun) -> bool:
    return resolved.symbio and resolved.search_mode == SEARCH_MODE


def flow_run_label(resolved: ResolvedRun) -> str:
    """The flow run's name: the lake's run id plus the activation (or "search")."""
    return f"{resolved.run_id}-{'search' if is_search(resolved) else resolved.ffn_activation}"


# -- prepare -----------------------------------------------------------------------


@task(name="prepare", cache_policy=NO_CACHE, task_run_name="prepare")
def prepare_run(explicit: dict[str, Any], lake_url: str | None) -> tuple[ResolvedRun, str]:
    """Resolve the config (same code path as ``alpha train``) and open the lake.

    A ``run_dir`` that already holds a checkpoint is resumed (``--resume``):
    re-running a flow whose worker died continues where it stopped.
    Returns the resolved run and the lake's absolute URL.
    """
    from tasks.run import open_lake_or_fail

    explicit = dict(explicit)
    if (
        explicit.get("run_dir")
        and not explicit.get("resume")
        and has_checkpoint(explicit["run_dir"])
    ):
        explicit["resume"] = explicit["run_dir"]
        log.info("run dir %s holds a checkpoint: resuming", explicit["run_dir"])
    resolved = resolve_run_config(explicit)
    lake = open_lake_or_fail(lake_url)
    return resolved, lake.url


# -- train -------------------------------------------------------------------------


@task(
    name="train",
    cache_policy=NO_CACHE,
    task_run_name="train-{resolved.run_id}",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=_not_bad_input,
)
def train_run(
    resolved: ResolvedRun,
    lake_url: str,
    *,
    flow_run_id: str | None = None,
    extra_hooks: Sequence[TrainerHook] = (),
) -> Any:
    """Train one run (``tasks.run.execute``); returns its ``RunOutcome``.

    A Failed state (data: the outcome) when the training ended ``failed``.
    The FFN activation search is not a task: the flow runs it as the
    ``symbio-search`` subflow (``flows.search_flow``), one task per candidate.
    """
    resolved = _resume_if_retried(resolved)
    from tasks.run import execute

    extra = {"flow_run_id": flow_run_id} if flow_run_id else None
    stop = threading.Event()
    outcome = run_in_thread(
        lambda: execute(
            resolved,
            lake_url=lake_url,
            progress=False,
            extra_hooks=(StopHook(stop), *extra_hooks),
            run_row_extra=extra,
        ),
        stop.set,
    )
    if outcome.status == "failed":
        return Failed(message=f"run {outcome.run_id} failed: {outcome.error}", data=outcome)
    return outcome


def _resume_if_retried(resolved: ResolvedRun) -> ResolvedRun:
    """On a retry, continue from the checkpoint the failed attempt left behind."""
    if not has_checkpoint(resolved.run_dir) or resolved.train.resume:
        return resolved
    explicit = {**resolved.explicit, "resume": str(resolved.run_dir)}
    explicit.setdefault("run_dir", str(resolved.run_dir))
    if resolved.symbio:
        explicit["symbio"] = True
        explicit.setdefault("symbio_config", resolved.symbio_config.to_camel_dict())
    again = resolve_run_config(explicit)
    log.info("retrying run %s from step %s", again.run_id, again.resumed_step)
    return again


# -- land metrics ------------------------------------------------------------------


@task(
    name="land-metrics",
    cache_policy=NO_CACHE,
    task_run_name="land-metrics-{outcome.run_id}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
)
def land_metrics(outcome: Any) -> dict[str, Any]:
    """Confirm the run's rows reached the lake; land spooled batches first.

    The sink was closed by the engine; batches it could not store wait in the
    local spool. Raises ``LandingIncomplete`` (retried) while rows are missing.
    """
    from storage.lake import open_lake
    from storage.reader import get_run, run_metrics
    from storage.spool import flush_spool

    lake = open_lake(outcome.lake_url)
    landed, left = flush_spool(lake.url)
    run = get_run(lake, outcome.run_id)
    rows = run_metrics(lake, outcome.run_id, columns=["step"]).height
    stats = getattr(outcome, "sink_stats", None)
    report = {
        "lake": lake.url,
        "run_status": run.get("status") if run else None,
        "metric_rows": rows,
        "spool_landed": landed,
        "spool_left": left,
        "rows_quarantined": getattr(stats, "rows_quarantined", 0) if stats else 0,
    }
    if left or run is None:
        raise LandingIncomplete(
            f"run {outcome.run_id}: {left} spooled batch(es) not landed"
            if left
            else f"run {outcome.run_id}: no run row in the lake yet"
        )
    return report


# -- artifacts ---------------------------------------------------------------------


@task(
    name="write-artifacts",
    cache_policy=NO_CACHE,
    task_run_name="write-artifacts-{outcome.run_id}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
)
def write_artifacts(
    resolved: ResolvedRun, outcome: Any, landed: dict[str, Any] | None
) -> dict[str, Any]:
    """A markdown summary (with the dashboard link) and a table of final metrics."""
    summary = run_summary(resolved, outcome, landed)
    create_markdown_artifact(
        markdown=summary_markdown(summary, outcome),
        key=artifact_key("alpha-run", outcome.run_id),
        description=f"Alpha run {outcome.run_id}: summary",
    )
    create_table_artifact(
        table=[{"metric": k, "value": _cell(v)} for k, v in final_metrics(summary).items()],
        key=artifact_key("alpha-metrics", outcome.run_id),
        description=f"Alpha run {outcome.run_id}: final metrics",
    )
    return summary


def run_summary(
    resolved: ResolvedRun, outcome: Any, landed: dict[str, Any] | None
) -> dict[str, Any]:
    """Everything the artifacts and the notification say about a finished run."""
    result = getattr(outcome, "result", None)
    winner = getattr(outcome, "winner", None)
    summary: dict[str, Any] = {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "mode": _mode(resolved),
        "activation": (
            "search: " + ", ".join(resolved.symbio_config.activation_pool)
            if is_search(resolved)
            else resolved.ffn_activation
        ),
        "domain": resolved.train.domain,
        "device": resolved.train.device,
        "iters": resolved.train.iters,
        "resumed_from_step": resolved.resumed_step,
        "run_dir": str(Path(outcome.run_dir).resolve()),
        "lake": getattr(outcome, "lake_url", None),
        "url": dashboard_url(outcome.run_id),
        "error": getattr(outcome, "error", None),
    }
    if result is not None:
        for key in _RESULT_KEYS:
            summary[key] = getattr(result, key, None)
    if winner:
        summary["winner"] = dict(winner)
        summary["best_val_loss"] = winner.get("best_val_loss")
        summary["elapsed_s"] = getattr(outcome, "elapsed_s", None)
        summary["recommendation"] = (getattr(outcome, "summary", None) or {}).get("recommendation")
    if landed:
        summary["metric_rows"] = landed.get("metric_rows")
        summary["rows_quarantined"] = landed.get("rows_quarantined")
    return summary


def _mode(resolved: ResolvedRun) -> str:
    if not resolved.symbio:
        return "standard"
    return f"symbio ({resolved.search_mode})" if is_search(resolved) else "symbio"


#: TrainResult attributes copied into the run summary.
_RESULT_KEYS = (
    "steps",
    "last_loss",
    "best_val_loss",
    "final_val_loss",
    "tokens_per_sec_mean",
    "ms_per_iter_median",
    "mfu",
    "param_count",
    "n_spike_skips",
    "n_nan_skips",
    "elapsed_s",
)
_FINAL_KEYS = ("status", *_RESULT_KEYS, "metric_rows", "rows_quarantined")


def final_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: summary[k] for k in _FINAL_KEYS if summary.get(k) is not None}
    winner = summary.get("winner") or {}
    for k in ("activation", "candidate_id", "fitness", "tokens_per_sec"):
        if winner.get(k) is not None:
            out[f"winner_{k}"] = winner[k]
    return out


def summary_markdown(summary: dict[str, Any], outcome: Any) -> str:
    lines = [
        f"# Alpha run `{summary['run_id']}`: {summary['status']}",
        "",
        f"**[Open the run in the dashboard]({summary['url']})**",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("mode", "activation", "domain", "device", "iters", "resumed_from_step"):
        if summary.get(key) is not None:
            lines.append(f"| {key.replace('_', ' ')} | `{summary[key]}` |")
    for key, value in final_metrics(summary).items():
        lines.append(f"| {key.replace('_', ' ')} | {_cell(value)} |")
    lines += [f"| run dir | `{summary['run_dir']}` |", f"| lake | `{summary['lake']}` |"]
    if summary.get("error"):
        lines += ["", f"**Error:** `{str(summary['error'])[:500]}`"]
    if summary.get("recommendation"):
        lines += ["", "## Search", "", str(summary["recommendation"])]
    report = Path(outcome.run_dir) / "symbio-report.md"
    if report.is_file():
        lines += ["", f"Full search report: `{report.resolve()}`"]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return value


# -- notify ------------------------------------------------------------------------


@task(name="notify", cache_policy=NO_CACHE, task_run_name="notify-{summary[run_id]}")
def notify_run_end(notifier: DiscordNotifier | None, summary: dict[str, Any]) -> bool:
    """Send the run-end (and search-winner) message; never fails the flow."""
    if notifier is None:
        return False
    try:
        if summary.get("winner"):
            notifier.send(winner_message(summary["run_id"], summary["winner"]))
        return notifier.send(run_end_message(summary["run_id"], summary))
    except Exception as exc:  # noqa: BLE001 - notifications never fail a run
        log.warning("notification skipped: %s", type(exc).__name__)
        return False


# -- lake status from flow-run state hooks ------------------------------------------


def mark_runs_ended(
    lake_url: str | None,
    status: str,
    *,
    run_ids: Sequence[str] = (),
    flow_run_id: str | None = None,
    error: str | None = None,
) -> list[str]:
    """Mark still-``running`` runs of this flow run ``failed``/``cancelled`` in the lake.

    Runs are ``run_ids`` plus every run whose row names ``flow_run_id`` (hooks
    that run in the worker after the flow process died know only the flow
    run). Rows already final are left alone. Returns the run ids marked.
    """
    from storage.lake import open_lake
    from storage.reader import get_run, list_runs
    from storage.sink import MetricSink

    lake = open_lake(lake_url)
    ids = list(dict.fromkeys(run_ids))
    if flow_run_id:
        runs = list_runs(lake, status="running")
        if "flow_run_id" in runs.columns:
            ids += [r for r in runs.filter(runs["flow_run_id"] == flow_run_id)["run_id"]]
    marked = []
    for run_id in dict.fromkeys(ids):
        row = get_run(lake, run_id)
        if row is None or row.get("status") != "running":
            continue
        now = datetime.now(UTC)
        row = {k: v for k, v in row.items() if v is not None}
        row.update(status=status, finished_at=now, updated_at=now)
        if error:
            row["error"] = error.splitlines()[0][:500] if error.strip() else error
        sink = MetricSink(lake, run_id, register_atexit=False)
        sink.write_run(row)
        sink.close(timeout=30.0)
        marked.append(run_id)
    return marked
