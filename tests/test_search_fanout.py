"""A search across Prefect workers, a budget that finishes, and a cancel that stops everything.

Pure parts first (the budget fit, the plain-data contract). Then, on one real
``prefect server`` for the module (its own PREFECT_HOME): the ``alpha-local``
process pool, ``prefect deploy --all`` of deployments/prefect.yaml, and three
worker processes: two on the ``candidates`` queue (one flow run at a time
each) train candidates, one on ``default`` runs the search flow runs themselves.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from s3_server import s3_server  # noqa: F401 - the fixture
from test_prefect_e2e import BIN, FINAL, ROOT, Prefect, _free_port, _stop

from model.config import SHIPPED_CORPUS
from symbio.search.estimate import (
    CANDIDATE_OVERHEAD_S,
    MIN_STEPS,
    Probe,
    candidate_seconds,
    fit_budget,
)

# -- the budget (pure) -------------------------------------------------------------

PROBE = Probe("swiglu", 8, ms_per_iter=460.0, eval_s=1.0, setup_s=2.0)  # this box, loaded


def _cost(p: int, g: int, s: int) -> float:
    """The pre-halving plan shape: ``p`` candidates in each of ``g`` generations."""
    return p * g * candidate_seconds(PROBE, s, 250)


def _fit(budget_s: float, **plan):
    args = dict(population_size=6, generations=4, steps=1000, min_population=4)
    return fit_budget(_cost, budget_s=budget_s, **{**args, **plan})


def test_a_search_within_budget_is_left_alone() -> None:
    fit = _fit(10 * 3600)
    assert fit.fits and not fit.changed
    assert (fit.population_size, fit.generations, fit.steps) == (6, 4, 1000)
    assert fit.estimate_s == pytest.approx(24 * (2.0 + CANDIDATE_OVERHEAD_S + 460.0 + 4 * 1.0))


def test_the_default_cpu_search_is_scaled_to_the_hour() -> None:
    """24 x 1000 steps at 460 ms/step is ~3 h: one generation of 6 (~47 min) fits."""
    fit = _fit(0.9 * 3600)
    assert fit.fits and fit.changed
    assert (fit.population_size, fit.generations, fit.steps) == (6, 1, 1000)
    assert fit.estimate_s <= 0.9 * 3600
    # then candidates (down to one per activation), then steps
    fit = _fit(4 * candidate_seconds(PROBE, 1000, 250))
    assert (fit.population_size, fit.generations, fit.steps) == (4, 1, 1000)
    fit = _fit(600)
    assert (fit.population_size, fit.generations) == (4, 1) and MIN_STEPS <= fit.steps < 1000
    assert fit.estimate_s <= 600 < 4 * candidate_seconds(PROBE, fit.steps + 1, 250)


def test_a_search_that_cannot_fit_is_refused_in_one_line() -> None:
    fit = _fit(30)
    assert not fit.fits and fit.steps == MIN_STEPS and fit.population_size == 4
    line = fit.describe((6, 4, 1000), 0.5)
    assert line.startswith("search refused:") and "\n" not in line
    assert "--max-search-minutes 0.5" in line
    scaled = _fit(600).describe((6, 4, 1000), 10)
    assert "4 generation(s) x 6 candidates x 1000 steps -> 1 x 4 x" in scaled


@pytest.mark.slow
def test_cli_refuses_a_search_that_cannot_fit(tmp_path: Path) -> None:
    """`alpha train --symbio` (the default search, default model) with a budget no CPU
    can meet: one line on stderr, exit 2, no run dir, nothing in the lake."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run_dir, lake = tmp_path / "run", tmp_path / "lake"
    done = subprocess.run(
        [str(BIN / "alpha"), "train", "--symbio", "--max-search-minutes", "0.02",
         "--run-dir", str(run_dir), "--lake", str(lake)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alpha train: error: search refused:"), lines
    assert not run_dir.exists()
    assert not (lake / "runs").exists()
    bad = subprocess.run(
        [str(BIN / "alpha"), "train", "--symbio", "--max-search-minutes", "-1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--max-search-minutes: must be a number >= 0" in bad.stderr


# -- the plain-data contract (pure) ----------------------------------------------------


def test_candidate_parameters_and_results_are_plain_json(tmp_path: Path) -> None:
    from symbio.search.candidate import Candidate, CandidateResult
    from symbio.search.loop import population_info
    from tasks.search_remote import (
        candidate_from_params,
        candidate_params,
        check_dispatch,
        result_from_record,
        result_record,
    )

    c = Candidate("g1-c02", "silu", 1, 2, 8, 1345, ("g0-c01",), ("swap:gelu->silu",))
    info = population_info(1, [c], 0.5)
    params = json.loads(json.dumps(candidate_params(c, info, "g0-c01")))
    assert candidate_from_params(params) == (c, info, "g0-c01")
    r = CandidateResult(c, steps=10, step_offset=80, best_val_loss=1.25, final_loss=math.nan)
    r.instability_terms = {"spike_rate": 0.1}
    rec = json.loads(json.dumps(result_record(r, worker={"pid": 1}), allow_nan=False))
    back = result_from_record(c, rec)
    assert back.best_val_loss == 1.25 and back.final_loss is None and back.steps == 10
    assert back.instability_terms == {"spike_rate": 0.1} and back.candidate == c
    assert check_dispatch(None) == "local" and check_dispatch("Deployment") == "deployment"
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="search_dispatch: must be local or deployment"):
        check_dispatch("ray")


# -- a real server, pool and workers ---------------------------------------------------

WAIT_S = 240  # every wait on the server is bounded
TINY = {
    "device": "cpu", "dim": 32, "heads": 2, "layers": 1, "block": 32, "batch": 8,
    "lr": 1e-3, "eval_iters": 2, "sample_tokens": 0, "seed": 11,
}  # fmt: skip


@dataclass
class Cluster:
    p: Prefect
    tmp: Path
    data: Path
    spool: Path
    search_worker: subprocess.Popen
    candidate_workers: list[subprocess.Popen]

    def params(self, name: str, symbio: dict, **extra) -> dict:
        return {
            **TINY,
            "data": str(self.data),
            "symbio": True,
            "symbio_config": {"searchMode": "ffn-activation-search", "metricsInterval": 5,
                              **symbio},
            "lake": str(self.tmp / "lake"),
            "run_dir": str(self.tmp / name),
            **extra,
        }  # fmt: skip

    def alive(self) -> None:
        for w in (self.search_worker, *self.candidate_workers):
            assert w.poll() is None, self.p.tail("worker-search") + self.p.tail("worker-c1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("fanout")
    logs = tmp / "logs"
    logs.mkdir()
    data = tmp / "corpus.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    p = Prefect(tmp / "prefect-home", _free_port(), logs)
    spool = tmp / "spool"
    p.env.update(
        ALPHA_SPOOL=str(spool),
        OMP_NUM_THREADS="1",  # deterministic, and the same in every process
        PREFECT_WORKER_QUERY_SECONDS="1",
        PYTHONPATH=str(ROOT),
    )
    try:
        server = p.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(p.port))
        p.wait_healthy(server)
        p.run("work-pool", "create", "alpha-local", "--type", "process")
        out = p.run("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        assert "alpha-candidate/candidate" in out, out
        search = p.start("worker-search", "worker", "start", "--pool", "alpha-local",
                         "--work-queue", "default", "--limit", "1", "--name", "search")  # fmt: skip
        workers = [
            p.start(f"worker-c{i}", "worker", "start", "--pool", "alpha-local",
                    "--work-queue", "candidates", "--limit", "1", "--name", f"candidates-{i}")
            for i in (1, 2)
        ]  # fmt: skip
        yield Cluster(p, tmp, data, spool, search, workers)
    finally:
        for proc in reversed(p.procs):
            _stop(proc)


def _api(c: Cluster, method: str, path: str, **body) -> dict | list:
    r = httpx.request(method, f"{c.p.api}{path}", json=body or None, timeout=15)
    r.raise_for_status()
    return r.json()


def _wait(c: Cluster, flow_run_id: str, timeout: float = WAIT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(c, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in FINAL:
            return run
        c.alive()
        time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} not final in {timeout}s\n{c.p.tail('worker-search')}")


def _children(c: Cluster, run_id: str) -> list[dict]:
    return _api(c, "POST", "/flow_runs/filter",
                flow_runs={"tags": {"all_": [f"alpha-search:{run_id}"]}})  # fmt: skip


def _task_runs(c: Cluster, flow_run_id: str) -> list[dict]:
    return _api(c, "POST", "/task_runs/filter", flow_runs={"id": {"any_": [flow_run_id]}})


def _deployment_run(c: Cluster, params: dict) -> str:
    out = c.p.run("deployment", "run", "alpha/symbio", "--params", json.dumps(params))
    return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)


def _records(lake: Path, run_id: str) -> dict[str, dict]:
    folder = lake / "search" / run_id / "results"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


#: Long enough (~10 s of tiny-model training) that the two candidates overlap even when one
#: worker's flow-run process starts seconds after the other's on a loaded 2-core box.
STEPS = 1200


@pytest.mark.slow
def test_search_fans_out_to_two_workers_and_matches_the_local_search(cluster: Cluster) -> None:
    """The same seeded search twice in one flow process: candidates dispatched to the
    two candidate workers (overlapping, in two processes), then as local threads."""
    c = cluster
    symbio = {"activationPool": ["gelu", "relu"], "populationSize": 2, "generations": 1,
              "stepsPerCandidate": STEPS, "confirmSeeds": 0}  # fmt: skip
    remote = c.params("fanout-remote", symbio, eval_interval=STEPS, search_dispatch="deployment",
                      search_parallel=2)  # fmt: skip
    local = c.params("fanout-local", symbio, eval_interval=STEPS)
    code = (
        "import json, sys; from flows.alpha_flow import alpha\n"
        "r = alpha(**json.loads(sys.argv[1])); l = alpha(**json.loads(sys.argv[2]))\n"
        "print('RESULT', json.dumps([r['run_id'], l['run_id']]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(remote), json.dumps(local)],
        cwd=ROOT, env=c.p.env, capture_output=True, text=True, timeout=WAIT_S * 2,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    remote_id, local_id = json.loads(done.stdout.split("RESULT ")[-1])

    from storage.reader import get_run, run_metrics, search_candidates

    lake = str(c.tmp / "lake")
    cols = ["candidate_id", "generation", "activation", "parent_ids", "status", "steps",
            "best_val_loss", "final_loss", "fitness", "rank", "is_winner"]  # fmt: skip
    got = search_candidates(lake, remote_id).sort("candidate_id").select(cols).to_dicts()
    want = search_candidates(lake, local_id).sort("candidate_id").select(cols).to_dicts()
    assert len(got) == 2 and got == want  # same seeds: the same losses, bit for bit
    winners = [json.loads(get_run(lake, i)["symbio_winner"]) for i in (remote_id, local_id)]
    stable = ("candidate_id", "activation", "best_val_loss", "final_val_loss", "fitness")
    assert [{k: w[k] for k in stable} for w in winners] == [{k: winners[1][k] for k in stable}] * 2
    steps = run_metrics(lake, remote_id)["step"].to_list()
    assert sorted(steps) == sorted(run_metrics(lake, local_id)["step"].to_list())
    assert len(steps) == len(set(steps)) == 2 * STEPS

    records = _records(c.tmp / "lake", remote_id)
    assert sorted(records) == sorted(r["candidate_id"] for r in got)
    gen0 = [records["g0-c00"]["worker"], records["g0-c01"]["worker"]]
    assert gen0[0]["pid"] != gen0[1]["pid"]  # two processes ...
    assert {w["worker"] for w in gen0} == {"candidates-1", "candidates-2"}  # ... of two workers
    start = max(_ts(w["started_at"]) for w in gen0)
    end = min(_ts(w["ended_at"]) for w in gen0)
    assert start < end, gen0  # ... training at the same time
    for rec in records.values():  # every checkpoint went through the lake
        assert Path(rec["checkpoint"]).is_file()

    children = _children(c, remote_id)
    assert len(children) == 2 and {r["state"]["type"] for r in children} == {"COMPLETED"}
    assert _children(c, local_id) == []


@pytest.mark.slow
def test_cancel_of_a_local_search_stops_it_and_says_cancelled(cluster: Cluster) -> None:
    _cancel_mid_search(cluster, "cancel-local", {})


@pytest.mark.slow
def test_cancel_of_a_fanned_out_search_stops_every_candidate(cluster: Cluster) -> None:
    children = _cancel_mid_search(
        cluster, "cancel-remote", {"search_dispatch": "deployment", "search_parallel": 2}
    )
    assert children and all(r["state"]["type"] == "CANCELLED" for r in children), children
    for child in children:  # the candidate's own task run says so too
        tasks = _task_runs(cluster, child["id"])
        assert [t["state"]["type"] for t in tasks if t["name"].startswith("train-")] == [
            "CANCELLED"
        ], tasks


def _cancel_mid_search(c: Cluster, name: str, extra: dict) -> list[dict]:
    """Cancel an `alpha/symbio` flow run through the API once its rows reach the lake."""
    from storage.reader import list_runs, run_metrics

    symbio = {"activationPool": ["gelu", "relu"], "populationSize": 2, "generations": 3,
              "stepsPerCandidate": 20_000}  # fmt: skip
    flow_run_id = _deployment_run(c, c.params(name, symbio, eval_interval=500, **extra))
    lake = str(c.tmp / "lake")
    deadline = time.monotonic() + WAIT_S
    run_id = None
    while time.monotonic() < deadline:
        c.alive()
        runs = list_runs(lake) if Path(lake, "runs").exists() else None
        if runs is not None and "flow_run_id" in runs.columns:
            mine = runs.filter(runs["flow_run_id"] == flow_run_id)
            run_id = mine["run_id"][0] if mine.height else None
        if run_id and run_metrics(lake, run_id, columns=["step"]).height >= 5:
            break
        time.sleep(1)
    assert run_id, f"no training rows within {WAIT_S}s\n{c.p.tail('worker-search')}"
    cancelled_at = time.monotonic()
    c.p.run("flow-run", "cancel", flow_run_id)
    run = _wait(c, flow_run_id, timeout=90)
    stopped_in = time.monotonic() - cancelled_at
    assert run["state"]["type"] == "CANCELLED", (run["state"], c.p.tail("worker-search"))
    assert stopped_in < 60, stopped_in

    from storage.reader import get_run

    row = get_run(lake, run_id)
    # the search stopped itself (its own end: artifacts and run row), not the worker's
    # SIGKILL 30 s after its SIGTERM followed by the state hook
    assert row["status"] == "cancelled", row
    assert row["error"] == "interrupted (TerminationSignal)", row
    summary = json.loads((c.tmp / name / "symbio-summary.json").read_text())
    assert summary["status"] == "cancelled"
    (search,) = _api(c, "POST", "/flow_runs/filter",
                     flow_runs={"name": {"any_": [f"search-{run_id}"]}})  # fmt: skip
    assert search["state"]["type"] == "CANCELLED"
    train = {t["name"]: t["state"]["type"] for t in _task_runs(c, search["id"])}
    train = {k: v for k, v in train.items() if k.startswith("train-g")}
    assert set(train) == {"train-g0-c00-gelu", "train-g0-c01-relu"}, train
    assert set(train.values()) == {"CANCELLED"}, train
    deadline = time.monotonic() + 60  # Prefect marks a killed run Cancelled a bit later
    while (children := _children(c, run_id)) and time.monotonic() < deadline:
        if all(child["state"]["type"] in FINAL for child in children):
            break
        time.sleep(1)
    for child in children:  # none of them still training
        assert child["state"]["type"] in FINAL, child
    time.sleep(3)  # anything still writing would land now
    ended = _ts(run["end_time"])
    stamps = run_metrics(lake, run_id, columns=["timestamp"])["timestamp"]
    assert stamps.len() >= 5 and stamps.max() <= ended, (stamps.max(), ended)
    assert not list(c.spool.glob("rescued-*")), list(c.spool.iterdir())
    return children


@pytest.mark.slow
def test_no_parameter_symbio_run_finishes_within_its_budget(cluster: Cluster) -> None:
    """`alpha/symbio` with only a budget (and where to write): the default search of the
    default model on a CPU worker either fits (scaled down) or is refused in one line."""
    c = cluster
    budget = 0.75
    params = {"max_search_minutes": budget, "lake": str(c.tmp / "lake"),
              "run_dir": str(c.tmp / "budget")}  # fmt: skip
    run = _wait(c, _deployment_run(c, params), timeout=WAIT_S)
    state = run["state"]
    if state["type"] == "FAILED":
        message = state["message"] or ""
        assert "search refused:" in message and "\n" not in message, message
        return
    assert state["type"] == "COMPLETED", (state, c.p.tail("worker-search"))
    summary = json.loads((c.tmp / "budget" / "symbio-summary.json").read_text())
    config = summary["config"]["symbio"]
    assert config["generations"] == 1 and config["populationSize"] == 4  # scaled down
    assert summary["estimated_s"] <= budget * 60
    assert summary["elapsed_s"] <= budget * 60 * 1.5  # the estimate is a measurement


@pytest.mark.parametrize("where", ["local", "s3"])
def test_checkpoints_and_results_travel_through_the_lake(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A candidate's checkpoint goes up to the lake, and a later candidate that names it
    (by candidate id or by URL) gets the same bytes; results are JSON objects there."""
    from storage.lake import open_lake
    from tasks.search_remote import (
        checkpoint_parts,
        fetch_checkpoint,
        get_json,
        put_bytes,
        remove,
        result_parts,
        upload_file,
    )

    if where == "s3":
        request.getfixturevalue("s3_server")
        lake = open_lake("s3://alpha-lake/team/lake")
    else:
        lake = open_lake(tmp_path / "lake")
    ckpt = tmp_path / "worker-a" / "candidates" / "g0-c01" / "checkpoint.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(bytes(range(256)) * 1000)
    url = upload_file(lake, ckpt, checkpoint_parts("run-1", "g0-c01"))
    assert url.endswith("checkpoints/run-1/g0-c01/checkpoint.safetensors")
    assert url.startswith("s3://alpha-lake/team/lake/" if where == "s3" else str(tmp_path))

    by_id = fetch_checkpoint(lake, "run-1", "g0-c01", tmp_path / "worker-b")
    assert by_id == tmp_path / "worker-b" / "candidates" / "g0-c01" / "checkpoint.safetensors"
    assert by_id.read_bytes() == ckpt.read_bytes()
    by_url = fetch_checkpoint(lake, "run-1", url, tmp_path / "worker-c")
    assert by_url.read_bytes() == ckpt.read_bytes()
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="resume_from: no checkpoint at g0-c09"):
        fetch_checkpoint(lake, "run-1", "g0-c09", tmp_path / "worker-b")

    put_bytes(lake, result_parts("run-1", "g0-c01"), json.dumps({"result": {"steps": 3}}).encode())
    assert get_json(lake, result_parts("run-1", "g0-c01")) == {"result": {"steps": 3}}
    remove(lake, result_parts("run-1", "g0-c01"))
    assert get_json(lake, result_parts("run-1", "g0-c01")) is None
