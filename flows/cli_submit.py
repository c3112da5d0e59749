"""``alpha submit``: start an ``alpha`` flow run on a Prefect work pool (PRD §15).

    alpha submit --pool alpha-gpu --symbio --symbio-config search.json --iters 50000

Takes every ``alpha train`` flag (the same argparse definitions,
``flows.cli_train.register``) and passes exactly the flags given as flow
parameters, unchanged, to the deployment of the ``alpha`` flow on that pool:
the ``symbio`` role with ``--symbio``, else ``train``. A deployment's role is
its ``alpha-role:<role>`` tag (``deployments/prefect.yaml``,
``deployments/prefect-gcp.yaml``). ``--symbio-config`` is read here and sent
as a JSON object, so a remote GPU worker does not need the local file; other
paths (``--data``, ``--run-dir``) are paths on the worker.

Needs ``PREFECT_API_URL`` (or a Prefect profile) pointing at the server the
workers poll. Returns as soon as the flow run is created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from flows.cli import CliError

ROLE_TAG = "alpha-role:{}"
FLOW_NAME = "alpha"
DEFAULT_POOL = "alpha-local"
ENV_POOL = "ALPHA_WORK_POOL"
#: ``alpha submit``'s own options; everything else is a flow parameter.
SUBMIT_OPTIONS = ("pool", "deployment", "work_queue", "job_variables", "flow_run_name", "tag")


def register(name: str, parser: argparse.ArgumentParser) -> None:
    from flows.cli_train import register as register_train_flags

    register_train_flags("train", parser)
    group = parser.add_argument_group("submission")
    group.add_argument(
        "--pool",
        default=os.environ.get(ENV_POOL, DEFAULT_POOL),
        help=f"work pool to run on (default ${ENV_POOL}, else {DEFAULT_POOL})",
    )
    group.add_argument(
        "--deployment",
        help="deployment to run, 'alpha/<name>' (default: the pool's train/symbio deployment)",
    )
    group.add_argument("--work-queue", help="work queue of the pool (default: the deployment's)")
    group.add_argument(
        "--job-variables",
        metavar="JSON",
        help='job variable overrides for the pool, e.g. \'{"machine_type": "g2-standard-16"}\'',
    )
    group.add_argument("--flow-run-name", help="name of the flow run (default: set by the flow)")
    group.add_argument("--tag", action="append", default=[], help="tag the flow run (repeatable)")


def run(name: str, args: argparse.Namespace) -> int:
    params = flow_parameters(args)
    job_variables = _json_object(args.job_variables, "--job-variables")
    _require_api_url()
    deployment = find_deployment(args.pool, params.get("symbio", False), args.deployment)
    flow_run = _create_flow_run(
        deployment,
        params,
        work_queue=args.work_queue,
        job_variables=job_variables,
        flow_run_name=args.flow_run_name,
        tags=args.tag,
    )
    print(
        f"alpha submit: flow run {flow_run.name!r} ({flow_run.id}) of "
        f"{FLOW_NAME}/{deployment.name} on pool {deployment.work_pool_name!r}"
    )
    print(f"  parameters  {json.dumps(params, sort_keys=True)}")
    ui = _ui_url()
    if ui:
        print(f"  watch       {ui.rstrip('/')}/runs/flow-run/{flow_run.id}")
    return 0


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The ``alpha`` flow parameters: exactly the train flags given, unchanged.

    ``--symbio-config`` becomes the file's JSON object.
    """
    params = {k: v for k, v in vars(args).items() if k not in SUBMIT_OPTIONS}
    if "symbio_config" in params:
        params["symbio_config"] = read_symbio_config(params["symbio_config"])
    return params


def read_symbio_config(path: str) -> dict[str, Any]:
    p = Path(path).expanduser()
    if p.exists() and not (p.is_file() or p.is_dir()):  # a FIFO would block forever
        raise CliError(f"--symbio-config: not a regular file: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"--symbio-config: file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--symbio-config: cannot read {p}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"--symbio-config: {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"--symbio-config: {p} must hold a JSON object")
    return data


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{flag}: must be a JSON object")
    return value


def find_deployment(pool: str, symbio: bool, name: str | None = None) -> Any:
    """The deployment to run: ``name``, else the ``alpha`` deployment of ``pool`` with
    the ``train``/``symbio`` role tag."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterTags,
        FlowFilter,
        FlowFilterName,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    role = "symbio" if symbio else "train"
    try:
        with get_client(sync_client=True) as client:
            if name:
                full = name if "/" in name else f"{FLOW_NAME}/{name}"
                return client.read_deployment_by_name(full)
            found = client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
                deployment_filter=DeploymentFilter(
                    tags=DeploymentFilterTags(all_=[ROLE_TAG.format(role)])
                ),
            )
    except Exception as exc:  # noqa: BLE001 - server down, bad URL, unknown name: one line
        raise CliError(_api_error(exc, name)) from None
    if not found:
        raise CliError(
            f"no {role!r} deployment of flow {FLOW_NAME!r} on work pool {pool!r} "
            f"(a deployment tagged {ROLE_TAG.format(role)!r}; see docs/deploy.md)"
        )
    return sorted(found, key=lambda d: d.name)[0]


def _create_flow_run(
    deployment: Any,
    params: dict[str, Any],
    *,
    work_queue: str | None,
    job_variables: dict[str, Any] | None,
    flow_run_name: str | None,
    tags: list[str],
) -> Any:
    from prefect.deployments import run_deployment

    try:
        return run_deployment(
            deployment.id,
            parameters=params,
            timeout=0,
            as_subflow=False,
            work_queue_name=work_queue,
            job_variables=job_variables,
            flow_run_name=flow_run_name,
            tags=tags or None,
        )
    except Exception as exc:  # noqa: BLE001 - e.g. parameters the schema rejects
        raise CliError(_api_error(exc, None)) from None


def _require_api_url() -> None:
    """Without an API URL Prefect would start a throwaway local server: refuse instead."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise CliError(
            "PREFECT_API_URL is not set: point it at the Prefect server your workers poll "
            "(prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )


def _api_error(exc: Exception, name: str | None) -> str:
    from prefect.exceptions import ObjectNotFound

    if isinstance(exc, ObjectNotFound) and name:
        return f"--deployment: no deployment named {name!r}"
    text = str(exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    return f"Prefect API: {detail[:300]} (is PREFECT_API_URL set and the server up?)"


def _ui_url() -> str | None:
    try:
        from prefect.settings import PREFECT_UI_URL

        return PREFECT_UI_URL.value()
    except Exception:  # noqa: BLE001 - cosmetic
        return None


if __name__ == "__main__":  # pragma: no cover
    from flows.cli import main

    sys.exit(main(["submit", *sys.argv[1:]]))
