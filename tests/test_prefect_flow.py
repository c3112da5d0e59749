"""The ``alpha`` flow against a temporary Prefect API (one per test session)."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    iters=6,
    batch=4,
    block=16,
    dim=16,
    heads=2,
    layers=1,
    eval_interval=3,
    eval_iters=1,
    device="cpu",
    sample_tokens=0,
)


def _read(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts()
    mine = [a for a in artifacts if a.flow_run_id == flow_run.id]
    return flow_run, tasks, mine


def _artifact(artifacts, type_):
    (found,) = [a for a in artifacts if a.type == type_]
    return found


def test_flow_parameters_cover_every_train_flag() -> None:
    from flows.alpha_flow import alpha

    params = set(inspect.signature(alpha.fn).parameters)
    assert set(TrainConfig.model_fields) <= params
    assert {"symbio", "symbio_config", "lake"} <= params
    assert all(p.default is None for p in inspect.signature(alpha.fn).parameters.values())


def test_flow_trains_lands_and_writes_artifacts(prefect_harness: str, tmp_path: Path) -> None:
    from flows.alpha_flow import alpha
    from storage.reader import get_run, run_metrics

    lake = tmp_path / "lake"
    state = alpha(**TINY, run_dir=str(tmp_path / "run"), lake=str(lake), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    run_id = summary["run_id"]

    flow_run, tasks, artifacts = _read(state.state_details.flow_run_id)
    assert flow_run.name == f"{run_id}-gelu"
    # the parameters that were given, and only those, reached the config
    assert flow_run.parameters["iters"] == 6 and flow_run.parameters["data"] is None
    names = sorted(t.name for t in tasks)
    assert names == sorted(
        [
            "prepare",
            f"train-{run_id}",
            f"land-metrics-{run_id}",
            f"write-artifacts-{run_id}",
            f"notify-{run_id}",
        ]
    )
    assert all(t.state.is_completed() for t in tasks)

    by_type = {a.type: a for a in artifacts}
    assert f"/runs/{run_id}" in by_type["markdown"].data
    assert by_type["markdown"].key == f"alpha-run-{run_id}"
    table = json.loads(by_type["table"].data)
    metrics = {row["metric"]: row["value"] for row in table}
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["metric_rows"] == 6

    run = get_run(str(lake), run_id)
    assert run["status"] == "completed"
    assert run["flow_run_id"] == str(flow_run.id)
    assert run["ffn_activation"] == "gelu" and run["symbio"] == 0
    assert run_metrics(str(lake), run_id).height == 6


def test_dashboard_link_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.prefect_tasks import artifact_key, dashboard_url

    monkeypatch.setenv("ALPHA_DASHBOARD_URL", "https://dash.example.org/")
    assert dashboard_url("r-1") == "https://dash.example.org/runs/r-1"
    assert artifact_key("alpha-run", "Chat_2026.x") == "alpha-run-chat-2026-x"


def test_bad_config_fails_fast_and_is_not_retried(prefect_harness: str, tmp_path: Path) -> None:
    from flows.alpha_flow import alpha

    run_dir = tmp_path / "run"
    state = alpha(
        **{**TINY, "heads": 3}, run_dir=str(run_dir), lake=str(tmp_path / "lake"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ValueError, match="--dim: 16 is not divisible by heads"):
        state.result()
    _, tasks, _ = _read(state.state_details.flow_run_id)
    assert [(t.name, t.run_count) for t in tasks] == [("prepare", 1)]
    assert not run_dir.exists()


def test_symbio_search_flow(prefect_harness: str, tmp_path: Path) -> None:
    from flows.alpha_flow import alpha
    from storage.reader import get_run, search_candidates

    lake = tmp_path / "lake"
    search = {
        "searchMode": "ffn-activation-search",
        "activationPool": ["gelu", "relu"],
        "searchStrategy": "exhaustive",
        "populationSize": 2,
        "generations": 1,
        "stepsPerCandidate": 10,
        "metricsInterval": 2,
        "confirmSeeds": 1,
        "lr": 1e-2,  # the preset's 5e-5 would not move the loss: every candidate "stalled"
    }
    state = alpha(
        **{**TINY, "iters": None, "eval_interval": 2},
        symbio=True,
        symbio_config=search,
        run_dir=str(tmp_path / "run"),
        lake=str(lake),
        return_state=True,
    )
    assert state.is_completed(), state
    summary = state.result()
    run_id = summary["run_id"]
    assert summary["winner"]["activation"] in ("gelu", "relu")
    flow_run, _, artifacts = _read(state.state_details.flow_run_id)
    assert flow_run.name == f"{run_id}-search"
    assert {a.key for a in artifacts} == {f"alpha-metrics-{run_id}", f"alpha-run-{run_id}"}
    table = {r["metric"]: r["value"] for r in json.loads(_artifact(artifacts, "table").data)}
    assert table["winner_activation"] == summary["winner"]["activation"]
    # the search subflow publishes its report and candidates table
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts() if a.key}
    assert any(k.startswith("symbio-search-") and run_id in k for k in keys)
    run = get_run(str(lake), run_id)
    assert run["status"] == "completed" and run["symbio"] == 1
    assert run["flow_run_id"] == str(flow_run.id)
    # 2 candidates, then 1 confirmation seed of the pick, swiglu (baseline) and gelu
    assert search_candidates(str(lake), run_id).height in (4, 5)


def test_crashed_flow_marks_the_run_failed_and_a_rerun_resumes(
    prefect_harness: str, tmp_path: Path
) -> None:
    """A flow process killed mid-run (like a dead worker): the crash hook marks the
    lake row failed, and running the flow again on the same run dir resumes it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from flows.alpha_flow import alpha
    from model.checkpoint import read_meta
    from storage.reader import get_run, list_runs, run_metrics

    lake, run_dir = tmp_path / "lake", tmp_path / "run"
    params = {**TINY, "iters": 100_000, "eval_interval": 4, "run_dir": str(run_dir)}
    params["lake"] = str(lake)
    code = f"from flows.alpha_flow import alpha; alpha(**{params!r})"
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        ckpt = run_dir / "checkpoint.safetensors"
        while time.monotonic() < deadline and not (
            ckpt.exists() and lake.exists() and list_runs(str(lake), status="running").height
        ):
            assert proc.poll() is None, "the flow process ended early"
            time.sleep(0.5)
        assert ckpt.exists(), "no checkpoint and running run row within 180 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    running = list_runs(str(lake), status="running")
    assert running.height == 1
    run_id, flow_run_id = running["run_id"][0], running["flow_run_id"][0]
    # what the worker does when the flow process dies: run the on_crashed hooks
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    for hook in alpha.on_crashed_hooks:
        hook(alpha, flow_run, Crashed(message="flow process exited with signal 9"))
    row = get_run(str(lake), run_id)
    assert row["status"] == "failed" and "signal 9" in row["error"]

    step = read_meta(run_dir).step
    state = alpha(**{**params, "iters": step + 3}, return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["run_id"] == run_id and summary["resumed_from_step"] == step
    assert get_run(str(lake), run_id)["status"] == "completed"
    steps = run_metrics(str(lake), run_id)["step"].to_list()
    assert steps[-3:] == [step + 1, step + 2, step + 3]


def test_lake_marking_leaves_final_rows_alone(tmp_path: Path) -> None:
    from prefect.states import Cancelled

    from flows.alpha_flow import ACTIVE_RUNS, alpha
    from storage.lake import open_lake
    from storage.reader import get_run
    from storage.sink import MetricSink
    from tasks.prefect_tasks import mark_runs_ended

    lake = open_lake(tmp_path / "lake")
    for run_id, status in (("r-running", "running"), ("r-done", "completed")):
        sink = MetricSink(lake, run_id, register_atexit=False)
        sink.write_run({"status": status, "domain": "shakespeare", "flow_run_id": "fr-1"})
        sink.close()
    assert mark_runs_ended(lake.url, "failed", flow_run_id="fr-2") == []
    # the in-process registry path of the cancellation hook
    ACTIVE_RUNS["fr-1"] = (lake.url, "r-running")
    flow_run = SimpleNamespace(id="fr-1", parameters={})
    alpha.on_cancellation_hooks[0](alpha, flow_run, Cancelled(message="stopped by the user"))
    assert get_run(lake, "r-running")["status"] == "cancelled"
    assert get_run(lake, "r-running")["domain"] == "shakespeare"  # the rest of the row kept
    assert get_run(lake, "r-done")["status"] == "completed"
    assert mark_runs_ended(lake.url, "failed", flow_run_id="fr-1") == []


def test_only_transient_failures_are_retried() -> None:
    from prefect.states import Failed

    from model.errors import ConfigError
    from tasks.prefect_tasks import _not_bad_input, train_run

    assert train_run.retries == 1 and train_run.retry_condition_fn is _not_bad_input
    assert not _not_bad_input(None, None, Failed(data=ConfigError("--iters: bad")))
    assert _not_bad_input(None, None, Failed(data=OSError("connection reset")))


def test_a_retried_train_resumes_from_the_failed_attempts_checkpoint(tmp_path: Path) -> None:
    """The first attempt of a 6-step run died after its step-3 checkpoint: the retry
    (the task body run again) continues from step 3 under the same run id."""
    import dataclasses

    from storage.reader import run_metrics
    from tasks.prefect_tasks import train_run
    from tasks.resolve import resolve_run_config

    lake = str(tmp_path / "lake")
    first = resolve_run_config({**TINY, "iters": 3, "run_dir": str(tmp_path / "run")})
    assert train_run.fn(first, lake).status == "completed"  # leaves the step-3 checkpoint
    attempt = dataclasses.replace(
        first,
        train=first.train.model_copy(update={"iters": 6}),
        explicit={**first.explicit, "iters": 6},
    )
    outcome = train_run.fn(attempt, lake)
    assert outcome.status == "completed" and outcome.run_id == first.run_id
    assert outcome.result.steps == 6
    assert run_metrics(lake, first.run_id)["step"].to_list() == [1, 2, 3, 4, 5, 6]


def test_a_failed_training_is_a_failed_train_task_run(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that crashes in its first forward pass (a simulated OOM): the train task
    run is Failed, not a green Completed; the flow run fails; the lake says failed."""
    from flows.alpha_flow import alpha
    from storage.reader import list_runs

    def crash(self, x):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr("model.gpt.SwiGLU.forward", crash)
    lake = tmp_path / "lake"
    state = alpha(
        **TINY, activation="swiglu", run_dir=str(tmp_path / "run"), lake=str(lake),
        return_state=True,
    )  # fmt: skip
    assert state.is_failed() and "out of memory" in state.message
    _, tasks, _ = _read(state.state_details.flow_run_id)
    train = [t for t in tasks if t.name.startswith("train-")]
    assert [t.state.type.value for t in train] == ["FAILED"]
    assert "out of memory" in train[0].state.message
    assert list_runs(str(lake))["status"].to_list() == ["failed"]


def test_an_interrupt_of_the_flow_thread_stops_training_at_its_next_step(tmp_path: Path) -> None:
    """Prefect delivers a cancel as TerminationSignal in the main thread; here a real
    SIGALRM raises it while `train` runs: training stops at a step boundary, every row
    it produced is in the lake, the run is `cancelled`, and the signal goes on."""
    from prefect.exceptions import TerminationSignal

    from storage.reader import get_run, run_metrics
    from tasks.prefect_tasks import train_run
    from tasks.resolve import resolve_run_config

    def raise_termination(signum, frame):
        raise TerminationSignal(signal.SIGTERM)

    lake = str(tmp_path / "lake")
    resolved = resolve_run_config({**TINY, "iters": 100_000, "run_dir": str(tmp_path / "run")})
    previous = signal.signal(signal.SIGALRM, raise_termination)
    signal.setitimer(signal.ITIMER_REAL, 6.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(TerminationSignal):
            train_run.fn(resolved, lake)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - t0 < 30  # stopped, not run to 100k steps
    run = get_run(lake, resolved.run_id)
    assert run["status"] == "cancelled"
    steps = run_metrics(lake, resolved.run_id)["step"].to_list()
    assert steps and steps == list(range(1, len(steps) + 1))  # no gap, nothing lost
    assert len(steps) < 100_000
