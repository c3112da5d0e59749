"""End to end, as the user runs it: a real ``prefect server``, the ``alpha-local``
process pool, ``prefect deploy`` of deployments/prefect.yaml, a worker, and
``prefect deployment run alpha/symbio``; the run must land in the lake."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_START_S = 120
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group we started: SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


class Prefect:
    """Runs ``prefect`` commands against one server with its own PREFECT_HOME."""

    def __init__(self, home: Path, port: int, logs: Path) -> None:
        self.api = f"http://127.0.0.1:{port}/api"
        self.port = port
        self.logs = logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ALPHA_"))}
        self.env.update(
            PREFECT_HOME=str(home),
            PREFECT_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        out = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [str(BIN / "prefect"), *args],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wait_healthy(self, server: subprocess.Popen) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            assert server.poll() is None, self.tail("server")
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"prefect server not healthy in {SERVER_START_S}s\n{self.tail('server')}")

    def flow_run(self, flow_run_id: str) -> dict:
        return httpx.get(f"{self.api}/flow_runs/{flow_run_id}", timeout=10).json()

    def tail(self, name: str, n: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _wait_final(p: Prefect, worker: subprocess.Popen, flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = p.flow_run(flow_run_id)["state"]
        if state["type"] in FINAL or time.monotonic() > deadline:
            return state
        assert worker.poll() is None, p.tail("worker")
        time.sleep(1)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[Prefect]:
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Prefect(tmp_path / "prefect-home", _free_port(), logs)
    try:
        server = p.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(p.port))
        p.wait_healthy(server)
        yield p
    finally:
        for proc in reversed(p.procs):
            _stop(proc)


def test_deployment_run_alpha_symbio_end_to_end(prefect_server: Prefect, tmp_path: Path) -> None:
    p = prefect_server
    p.run("work-pool", "create", "alpha-local", "--type", "process")
    out = p.run("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    for name in ("alpha/train", "alpha/symbio", "alpha/symbio-nightly"):
        assert name in out, out
    schedules = p.run("deployment", "schedule", "ls", "alpha/symbio-nightly")
    assert "0 2 * * *" in schedules and "False" in schedules  # created paused

    worker = p.start("worker", "worker", "start", "--pool", "alpha-local", "--limit", "1")
    lake = tmp_path / "lake"
    params = {
        "iters": 20,
        "batch": 8,
        "block": 16,
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "eval_interval": 10,
        "eval_iters": 1,
        "sample_tokens": 0,
        "device": "cpu",
        "lake": str(lake),
        "run_dir": str(tmp_path / "run"),
        "symbio_config": {"searchMode": "none", "metricsInterval": 5},
    }
    out = p.run("deployment", "run", "alpha/symbio", "--params", json.dumps(params))
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    try:
        state = _wait_final(p, worker, flow_run_id, RUN_TIMEOUT_S)
    finally:
        if (state := p.flow_run(flow_run_id)["state"])["type"] not in FINAL:
            # let the worker kill the flow process (it may run in its own session)
            subprocess.run([str(BIN / "prefect"), "flow-run", "cancel", flow_run_id],
                           cwd=ROOT, env=p.env, capture_output=True, timeout=60)  # fmt: skip
            _wait_final(p, worker, flow_run_id, 30)
    assert state and state["type"] == "COMPLETED", f"{state}\n{p.tail('worker')}"

    from storage.reader import get_run, run_metrics

    flow_run = p.flow_run(flow_run_id)
    run_id = flow_run["name"].removesuffix("-swiglu")
    assert flow_run["name"] == f"{run_id}-swiglu"  # symbio's default activation
    run = get_run(str(lake), run_id)
    assert run["status"] == "completed" and run["symbio"] == 1
    assert run["flow_run_id"] == flow_run_id
    metrics = run_metrics(str(lake), run_id)
    assert metrics.height == 20
    assert metrics["cusum_grad"].drop_nulls().len() == 20  # symbio metrics landed too

    artifacts = httpx.post(
        f"{p.api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    ).json()
    assert {a["type"] for a in artifacts} >= {"markdown", "table"}
