"""The search as a Prefect flow: one task run per candidate, artifacts published."""

from __future__ import annotations

import asyncio
import json

import pytest

from model.config import SHIPPED_CORPUS
from tasks.resolve import resolve_run_config

pytestmark = pytest.mark.timeout(240)


def _resolved(tmp_path, symbio: dict, **flags):
    data = tmp_path / "corpus.txt"
    data.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return resolve_run_config(
        {
            "symbio": True,
            "symbio_config": {"metricsInterval": 5, **symbio},
            "data": str(data),
            "device": "cpu",
            "dim": 32,
            "heads": 2,
            "layers": 1,
            "block": 32,
            "batch": 8,
            "lr": 1e-3,
            "eval_iters": 2,
            "eval_interval": 4,
            "run_dir": str(tmp_path / "run"),
            **flags,
        }  # fmt: skip
    )


async def _task_runs(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        arts = await client.read_artifacts()
    return runs, arts


def test_search_flow_runs_each_candidate_as_a_task(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    monkeypatch.setenv("ALPHA_SEARCH_SLOTS", "2")
    from flows.search_flow import artifact_key, run_search_flow

    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "relu", "silu"], "generations": 2,
         "stepsPerCandidate": 6, "confirmSeeds": 1},
    )  # fmt: skip
    outcome = run_search_flow(resolved, use_lake=False)

    assert outcome.status == "completed" and outcome.slots == 2
    assert [len(g.ranked) for g in outcome.generations] == [3, 2]
    assert all(r.ok for g in outcome.generations for r in g.ranked)
    summary = json.loads((resolved.run_dir / "symbio-summary.json").read_text())
    assert summary["winner"]["activation"] in ("gelu", "relu", "silu", "swiglu")
    assert summary["winner"]["confirmed"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async def flow_id():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[f"search-{resolved.run_id}"])
                )
            )
            return str(runs[0].id), runs[0].state.type.value

    fid, state = asyncio.run(flow_id())
    assert state == "COMPLETED"
    task_runs, artifacts = asyncio.run(_task_runs(fid))
    names = sorted(t.name for t in task_runs)
    train_runs = [n for n in names if n.startswith("train-g")]
    expected = ["train-g0-c00-gelu", "train-g0-c01-relu", "train-g0-c02-silu"] + [
        f"train-{r.candidate.candidate_id}-{r.activation}" for r in outcome.generations[1].ranked
    ]
    assert train_runs == sorted(expected)
    confirm_runs = [n for n in names if n.startswith("train-confirm-")]
    assert len(confirm_runs) == len(outcome.confirmation.results) >= 2
    assert "spawn-candidates-g0" in names and "mutate-g1" in names
    assert {"rank-generation-0", "rank-generation-1"} <= set(names)
    assert all(t.state.type.value == "COMPLETED" for t in task_runs)
    keys = {a.key for a in artifacts}
    key = artifact_key(resolved.run_id)
    assert {key, f"{key}-candidates"} <= keys
    report = next(a for a in artifacts if a.key == key)
    assert "Winner" in report.data


def _flow_run_by_name(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return run


def test_a_failed_candidate_is_a_failed_task_run_and_the_search_goes_on(
    prefect_harness, tmp_path, monkeypatch
):
    """relu made to emit NaN (real NaN losses through the engine): its task run is
    Failed, carries its result, and the search still ranks it and completes."""
    import torch

    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    real_relu = torch.nn.functional.relu
    monkeypatch.setattr(torch.nn.functional, "relu", lambda x, *a, **k: real_relu(x) * torch.nan)
    from flows.search_flow import run_search_flow

    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "relu"], "searchStrategy": "exhaustive",
         "stepsPerCandidate": 4},
    )  # fmt: skip
    outcome = run_search_flow(resolved, use_lake=False, slots=1)

    assert outcome.status == "completed" and outcome.winner["activation"] == "gelu"
    relu = next(r for r in outcome.generations[0].ranked if r.activation == "relu")
    assert relu.status == "failed" and relu.failure_reason and relu.rank == 2
    search = _flow_run_by_name(f"search-{resolved.run_id}")
    assert search.state.type.value == "COMPLETED"
    task_runs, _ = asyncio.run(_task_runs(str(search.id)))
    states = {t.name: t.state for t in task_runs if t.name.startswith("train-")}
    assert states["train-g0-c00-gelu"].type.value == "COMPLETED"
    failed = states["train-g0-c01-relu"]
    assert failed.type.value == "FAILED" and "no finite validation loss" in failed.message


def test_a_failed_search_is_a_failed_subflow(prefect_harness, tmp_path, monkeypatch):
    """lr 1e30: every candidate diverges to NaN; the search flow run is Failed and
    still hands back its outcome (artifacts written, every candidate recorded)."""
    monkeypatch.setenv("ALPHA_SEARCH_PROBE_STEPS", "0")
    from flows.search_flow import run_search_flow

    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "relu"], "searchStrategy": "exhaustive",
         "stepsPerCandidate": 4},
        lr=1e30,
    )  # fmt: skip
    outcome = run_search_flow(resolved, use_lake=False, slots=1)

    assert outcome.status == "failed" and outcome.error == "no candidate finished training"
    assert [r.status for r in outcome.generations[0].ranked] == ["failed", "failed"]
    search = _flow_run_by_name(f"search-{resolved.run_id}")
    assert search.state.type.value == "FAILED"
    assert "no candidate finished training" in search.state.message
    task_runs, _ = asyncio.run(_task_runs(str(search.id)))
    train = [t.state.type.value for t in task_runs if t.name.startswith("train-")]
    assert train == ["FAILED", "FAILED"]


def test_fan_out_without_the_candidate_deployment_fails_in_one_line(prefect_harness, tmp_path):
    from flows.search_flow import run_search_flow
    from model.errors import ConfigError
    from storage.reader import get_run

    resolved = _resolved(
        tmp_path,
        {"activationPool": ["gelu", "relu"], "searchStrategy": "exhaustive",
         "stepsPerCandidate": 4},
    )  # fmt: skip
    lake = str(tmp_path / "lake")
    with pytest.raises(ConfigError, match="^search_dispatch=deployment: no deployment 'alpha-"):
        run_search_flow(resolved, lake_url=lake, dispatch="deployment")
    with pytest.raises(ConfigError, match="search_parallel: must be >= 1"):
        run_search_flow(resolved, lake_url=lake, dispatch="deployment", parallel=0)
    run = get_run(lake, resolved.run_id)
    assert run["status"] == "failed" and "no deployment" in run["error"]
