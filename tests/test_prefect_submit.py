"""``alpha submit``: every train flag reaches the ``alpha`` flow unchanged (acceptance 11)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flows.cli import main
from flows.cli_train import TRAIN_FLAGS
from model.config import SHIPPED_CORPUS

POOL = "alpha-submit-test"
SYMBIO_FILE = {"searchMode": "none", "metricsInterval": 2, "cusumSensitivity": 3.5}


@pytest.fixture(scope="module")
def deployments(prefect_harness: str) -> dict[str, str]:
    """A process pool with the train and symbio deployments of the real ``alpha`` flow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.alpha_flow import alpha

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
    ids = {}
    for role, params in (("train", {}), ("symbio", {"symbio": True})):
        deployment = alpha.to_deployment(
            name=f"{role}-submit-test",
            work_pool_name=POOL,
            tags=["alpha", f"alpha-role:{role}"],
            parameters=params,
        )
        ids[role] = str(deployment.apply())
    return ids


def _submit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["submit", *argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _flow_run(out: str):
    from prefect.client.orchestration import get_client

    flow_run_id = re.search(r"\(([0-9a-f-]{36})\)", out).group(1)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _every_flag(tmp_path: Path) -> tuple[list[str], dict]:
    """argv with a distinctive value for every ``alpha train`` flag, and the expected params."""
    values = {int: 7, float: 0.125, str: "text-value"}
    argv, expected = [], {}
    for flag, type_, _ in TRAIN_FLAGS:
        value = values[type_]
        argv += [flag, str(value)]
        expected[flag[2:].replace("-", "_")] = value
    config = tmp_path / "symbio.json"
    config.write_text(json.dumps(SYMBIO_FILE))
    argv += ["--symbio-config", str(config), "--compile", "--symbio", "--lake", "s3://bucket/lake"]
    expected.update(symbio_config=SYMBIO_FILE, compile=True, symbio=True, lake="s3://bucket/lake")
    return argv, expected


def test_every_train_flag_arrives_unchanged(
    deployments: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.alpha_flow import alpha

    argv, expected = _every_flag(tmp_path)
    code, out, err = _submit(["--pool", POOL, *argv], capsys)
    assert code == 0, err
    flow_run = _flow_run(out)
    assert str(flow_run.deployment_id) == deployments["symbio"]
    given = {k: v for k, v in flow_run.parameters.items() if v is not None}
    assert given == expected
    # and every one of them is a parameter of the flow
    assert set(expected) <= set(alpha.parameters.properties)


def test_a_submitted_run_trains_with_the_given_flags(
    deployments: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Execute the created flow run as a worker would and read the run back from the lake."""
    from prefect.flow_engine import run_flow

    from flows.alpha_flow import alpha
    from storage.reader import get_run

    flags = {
        "data": str(SHIPPED_CORPUS),
        "val_data": str(SHIPPED_CORPUS),
        "domain": "shakespeare",
        "device": "cpu",
        "dtype": "float32",
        "tokenizer": "char",
        "vocab_size": 300,
        "iters": 4,
        "batch": 2,
        "grad_accum": 2,
        "block": 8,
        "dim": 8,
        "heads": 2,
        "layers": 1,
        "dropout": 0.05,
        "activation": "silu",
        "ffn_dim": 24,
        "lr": 0.002,
        "lr_min": 0.0002,
        "warmup_iters": 1,
        "grad_clip": 0.5,
        "spike_threshold": 50.0,
        "weight_decay": 0.01,
        "beta1": 0.85,
        "beta2": 0.98,
        "eval_interval": 2,
        "eval_iters": 1,
        "log_interval": 1,
        "checkpoint_interval": 2,
        "sample_tokens": 0,
        "seed": 99,
        "data_seed": 7,
        "test_fraction": 0.25,
        "spike_patience": 5,
        "lr_decay_iters": 4,
        "run_dir": str(tmp_path / "run"),
    }
    assert set(flags) == {f[2:].replace("-", "_") for f, _, _ in TRAIN_FLAGS} - {
        "resume",
        "symbio_config",
    }
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    argv += ["--lake", str(tmp_path / "lake")]
    code, out, err = _submit(["--pool", POOL, *argv], capsys)
    assert code == 0, err
    flow_run = _flow_run(out)
    assert str(flow_run.deployment_id) == deployments["train"]

    state = run_flow(alpha, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert state.is_completed(), state
    run = get_run(str(tmp_path / "lake"), state.result()["run_id"])
    train_config = json.loads(run["train_config"])
    for key, value in flags.items():
        assert train_config[key] == value, key
    assert run["symbio"] == 0 and run["ffn_activation"] == "silu"


def test_submit_errors_are_one_line(
    deployments: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _submit(["--pool", "no-such-pool", "--iters", "5"], capsys)
    assert code == 2 and "no 'train' deployment of flow 'alpha' on work pool 'no-such-pool'" in err
    code, _, err = _submit(["--pool", POOL, "--symbio", "--symbio-config", "nope.json"], capsys)
    assert (
        code == 2
        and err.strip() == "alpha submit: error: --symbio-config: file not found: nope.json"
    )
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    code, _, err = _submit(["--pool", POOL, "--symbio", "--symbio-config", str(bad)], capsys)
    assert code == 2 and "must hold a JSON object" in err
    code, _, err = _submit(["--pool", POOL, "--job-variables", "{oops"], capsys)
    assert code == 2 and "--job-variables: not valid JSON" in err
    code, _, err = _submit(["--pool", POOL, "--iters", "many"], capsys)
    assert code == 2 and "invalid int value" in err and len(err.strip().splitlines()) == 1


def test_submit_without_a_server_is_one_line(
    prefect_harness: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import prefect.settings

    with prefect.settings.temporary_settings(
        updates={
            prefect.settings.PREFECT_API_URL: "http://127.0.0.1:9/api",
            prefect.settings.PREFECT_CLIENT_MAX_RETRIES: 0,
        }
    ):
        code, _, err = _submit(["--pool", POOL, "--iters", "5"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Prefect API:" in err


def test_submit_needs_an_api_url(prefect_harness: str, capsys: pytest.CaptureFixture[str]) -> None:
    import prefect.settings

    with prefect.settings.temporary_settings(restore_defaults={prefect.settings.PREFECT_API_URL}):
        code, _, err = _submit(["--pool", POOL, "--iters", "5"], capsys)
    assert code == 2 and "PREFECT_API_URL is not set" in err
