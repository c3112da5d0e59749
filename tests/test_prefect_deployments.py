"""deployments/: prefect.yaml, the GCP deployments and the Vertex AI pool template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deployments"


def _yaml(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _template() -> dict:
    return json.loads((DEPLOY / "vertex-ai-gpu.json").read_text())


def test_local_deployments() -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = _yaml("prefect.yaml")
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"train", "symbio", "symbio-nightly", "symbio-fanout", "candidate"}
    candidate = deployments.pop("candidate")
    for d in deployments.values():
        assert d["work_pool"]["name"] == "alpha-local"
        assert d["work_pool"]["work_queue_name"] == "default"
        assert d["entrypoint"] == "flows/alpha_flow.py:alpha"
    flow = load_flow_from_entrypoint(str(ROOT / "flows/alpha_flow.py") + ":alpha")
    assert flow.name == "alpha"
    assert deployments["symbio"]["parameters"] == {"symbio": True}
    assert deployments["train"]["parameters"] == {}
    assert deployments["symbio-fanout"]["parameters"]["search_dispatch"] == "deployment"
    (schedule,) = deployments["symbio-nightly"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is False
    # every default parameter is a parameter of the flow
    for d in deployments.values():
        assert set(d["parameters"]) <= set(flow.parameters.properties)
    # the candidates of a fanned-out search: their own flow, on the pool's candidates queue
    from tasks.search_remote import DEPLOYMENT

    entry, name = candidate["entrypoint"].split(":")
    cflow = load_flow_from_entrypoint(f"{ROOT / entry}:{name}")
    assert f"{cflow.name}/{candidate['name']}" == DEPLOYMENT
    assert candidate["work_pool"] == {
        "name": "alpha-local", "work_queue_name": "candidates", "job_variables": {}
    }  # fmt: skip
    assert set(cflow.parameters.required) == {"search", "candidates"}
    # the pull step runs the flow in the checkout recorded at deploy time
    step = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ project-root.stdout }}"
    assert spec["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == "project-root"


def _render(template: dict, overrides: dict) -> dict:
    """What a worker does: variable defaults + job variables into the job configuration."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update(overrides)
    return apply_values(template["job_configuration"], values)


def test_vertex_template_gives_a_long_gpu_job() -> None:
    spec = _render(_template(), {})["job_spec"]
    assert spec["maximum_run_time_hours"] >= 24  # prefect-gcp's default of 1 h is not enough
    (pool_spec,) = spec["worker_pool_specs"]
    assert pool_spec["machine_spec"] == {
        "machine_type": "g2-standard-8",
        "accelerator_type": "NVIDIA_L4",
        "accelerator_count": 1,
    }
    assert pool_spec["container_spec"]["image_uri"].endswith("/alpha-symbio:latest")
    longer = _render(_template(), {"maximum_run_time_hours": 72})["job_spec"]
    assert longer["maximum_run_time_hours"] == 72


def test_gcp_deployments_match_the_template() -> None:
    spec = _yaml("prefect-gcp.yaml")
    props = _template()["variables"]["properties"]
    roles = set()
    for d in spec["deployments"]:
        assert d["work_pool"]["name"] == "alpha-gpu"
        assert d["parameters"]["device"] == "cuda"
        assert set(d["work_pool"]["job_variables"]) <= set(props)
        roles |= {t for t in d["tags"] if t.startswith("alpha-role:")}
    assert roles == {"alpha-role:train", "alpha-role:symbio"}
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "/opt/alpha"
    )


def test_prefect_accepts_the_gpu_pool_and_its_deployments(prefect_harness: str) -> None:
    """The server validates the template and the deployments' job variables against it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.alpha_flow import alpha

    spec = _yaml("prefect-gcp.yaml")
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(
            WorkPoolCreate(name="alpha-gpu-test", type="vertex-ai", base_job_template=_template()),
            overwrite=True,
        )
        assert pool.base_job_template["variables"]["properties"]["accelerator_type"]["default"] == (
            "NVIDIA_L4"
        )
        for d in spec["deployments"]:
            deployment = alpha.to_deployment(
                name=f"{d['name']}-test",
                work_pool_name="alpha-gpu-test",
                tags=d["tags"],
                parameters=d["parameters"],
                job_variables=d["work_pool"]["job_variables"],
            )
            deployment.apply()
        with pytest.raises(Exception, match="accelerator_count"):
            alpha.to_deployment(
                name="bad-gpu-test",
                work_pool_name="alpha-gpu-test",
                job_variables={"accelerator_count": "two"},
            ).apply()
