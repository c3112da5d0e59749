"""Fan-out: a search's candidates as flow runs of the ``alpha-candidate/candidate`` deployment.

With ``dispatch="deployment"`` (``flows.search_flow``) the generation loop runs
in the search's flow as usual, but ``DeploymentExecutor.map`` sends each
candidate to the candidate deployment with ``prefect.deployments.run_deployment``,
so every worker of the deployment's pool trains one candidate at a time:
N workers train N candidates at once. At most ``parallel`` candidates of one
search are in flight (one thread per candidate polls its flow run); work-pool,
work-queue or deployment concurrency limits (``deployments/prefect.yaml``)
bound the pool across searches.

Everything that travels is plain data, and files go through the lake (any
fsspec URL: a shared folder or ``s3://``), never through local paths:

- **parameters** of a candidate flow run (``candidate_params``): ``search``,
  the search's spec (``search_spec``: run id, step stride per candidate, the resolved
  ``TrainConfig`` as JSON, the symbio config in camelCase, run metadata, batch
  bounds, the search's ``run_dir``), ``candidates`` (each: the ``Candidate``
  dict, the generation's ``PopulationInfo`` dict and ``resume_from``) and
  ``lake``;
- **metric rows**: the worker's own ``MetricSink`` on the search's ``run_id``
  (unique step offsets, as with local threads);
- **results**: ``<lake>/search/<run_id>/results/<candidate_id>.json``
  (``result_record``: the ``CandidateResult`` fields plus where and when it
  trained: host, pid, flow run id, start/end timestamps);
- **checkpoints**: ``<lake>/checkpoints/<run_id>/<candidate_id>/checkpoint.safetensors``,
  uploaded when a candidate ends ok. A candidate may *start from* another
  candidate's checkpoint: ``resume_from`` names the earlier candidate's id
  (or a full checkpoint URL); the worker downloads it to
  ``<work dir>/candidates/<id>/checkpoint.safetensors`` (where a local search
  would have it) before training.

On the worker the candidate trains in a thread while the flow's main thread
waits, so Prefect's cancel (``TerminationSignal`` in the main thread) stops the
candidate at its next step and the worker's sink lands every row before the
flow run ends. On the search side, stopping (a cancel of the search, Ctrl-C)
cancels every candidate flow run still in flight and waits for them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import ConfigError
from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.loop import PopulationInfo

if TYPE_CHECKING:  # pragma: no cover
    from storage.lake import Lake
    from tasks.search_runner import CandidateTrainer

#: ``<flow name>/<deployment name>`` of the candidate deployment (deployments/prefect.yaml).
DEPLOYMENT = "alpha-candidate/candidate"
ENV_DEPLOYMENT = "ALPHA_CANDIDATE_DEPLOYMENT"
#: On a worker: folder for candidate run dirs (default: the search's run_dir, as sent).
ENV_WORK_DIR = "ALPHA_CANDIDATE_DIR"
#: A candidate flow run that is not final after this long is cancelled and failed.
ENV_TIMEOUT = "ALPHA_CANDIDATE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 24 * 3600.0
#: Candidates of one search in flight at once when ``parallel`` is not given.
DEFAULT_PARALLEL = 4
DISPATCHES = ("local", "deployment")
POLL_S = 1.0
#: How long a stopping search waits for a cancelled candidate flow run to end.
CANCEL_WAIT_S = 20.0
#: A candidate flow run still Scheduled after this long: say that no worker serves it.
UNCLAIMED_WARN_S = 60.0
#: How often a candidate flow run checks whether it is being cancelled.
WATCH_S = 2.0
CHECKPOINT_FILE = "checkpoint.safetensors"  # model.checkpoint.FILENAME
#: Tags of candidate flow runs and of their task runs. Not ``symbio-search``, the
#: tag of the search's own task runs: a tag concurrency limit on that would count
#: a candidate twice (its dispatch task and its training task) and could deadlock.
TAGS = ("alpha", "symbio-candidate")


def check_dispatch(dispatch: str | None) -> str:
    """``local`` (threads of the search's process, the default) or ``deployment``."""
    value = (dispatch or "local").strip().lower()
    if value not in DISPATCHES:
        raise ConfigError(f"search_dispatch: must be local or deployment (got {dispatch!r})")
    return value


def deployment_name(name: str | None = None) -> str:
    return name or os.environ.get(ENV_DEPLOYMENT, "").strip() or DEPLOYMENT


# -- the lake layout ---------------------------------------------------------------


def checkpoint_parts(run_id: str, candidate_id: str) -> tuple[str, ...]:
    return ("checkpoints", run_id, candidate_id, CHECKPOINT_FILE)


def result_parts(run_id: str, candidate_id: str) -> tuple[str, ...]:
    return ("search", run_id, "results", f"{candidate_id}.json")


def put_bytes(lake: Lake, parts: Sequence[str], data: bytes) -> str:
    """Write one object (atomically on local disk); returns its URL."""
    path = lake.path(*parts)
    if lake.is_local:
        from storage.writer import atomic_write_bytes

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    else:
        lake.fs.pipe_file(path, data)
    return lake.uri(path)


def get_json(lake: Lake, parts: Sequence[str]) -> dict[str, Any] | None:
    path = lake.path(*parts)
    try:
        with lake.fs.open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def remove(lake: Lake, parts: Sequence[str]) -> None:
    path = lake.path(*parts)
    try:
        lake.fs.rm_file(path)
    except FileNotFoundError:
        pass


def upload_file(lake: Lake, local: Path, parts: Sequence[str]) -> str:
    """Copy a local file into the lake (a temporary name first on local disk)."""
    path = lake.path(*parts)
    if lake.is_local:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        lake.fs.put_file(str(local), str(tmp))
        os.replace(tmp, target)
    else:
        lake.fs.put_file(str(local), path)
    return lake.uri(path)


def download_file(lake: Lake | None, source: str, local: Path) -> None:
    """Fetch ``source`` to ``local`` (atomically): a path in ``lake``'s filesystem, or
    with ``lake=None`` any fsspec URL or local path."""
    import fsspec

    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
    opener = lake.fs.open(source, "rb") if lake is not None else fsspec.open(source, "rb")
    with opener as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    os.replace(tmp, local)


# -- the plain-data contract -----------------------------------------------------------


def search_spec(trainer: CandidateTrainer) -> dict[str, Any]:
    """What a worker needs to build the search's ``CandidateTrainer``, as JSON data."""
    sink = trainer.sink
    bounds = getattr(sink, "batch_bounds", None)
    return {
        "run_id": trainer.run_id,
        "step_stride": trainer.step_stride,
        "train": trainer.base.model_dump(mode="json"),
        "symbio": trainer.symbio.to_camel_dict(),
        "run_meta": trainer.run_meta,
        "run_dir": str(trainer.run_dir),
        "batch_bounds": list(bounds) if bounds else None,
    }


def trainer_from_spec(
    spec: dict[str, Any], *, run_dir: Path, sink: Any, extra_hooks: Sequence[Any] = ()
) -> CandidateTrainer:
    from model.config import TrainConfig
    from symbio.config import load_symbio_config
    from tasks.search_runner import CandidateTrainer

    return CandidateTrainer(
        base=TrainConfig.model_validate(spec["train"]),
        symbio=load_symbio_config(dict(spec["symbio"]))[0],
        run_id=spec["run_id"],
        run_dir=run_dir,
        step_stride=int(spec["step_stride"]),
        sink=sink,
        progress=False,
        run_meta=dict(spec.get("run_meta") or {}),
        extra_hooks=extra_hooks,
    )


def candidate_params(
    candidate: Candidate, info: PopulationInfo, resume_from: str | None = None
) -> dict[str, Any]:
    """One candidate of a candidate flow run: identity, generation fields, start point."""
    return {
        "candidate": candidate.to_dict(),
        "info": dataclasses.asdict(info),
        "resume_from": resume_from,
    }


def candidate_from_params(p: dict[str, Any]) -> tuple[Candidate, PopulationInfo, str | None]:
    c = dict(p["candidate"])
    for key in ("parent_ids", "mutation_ops"):
        c[key] = tuple(c.get(key) or ())
    return Candidate(**c), PopulationInfo(**p["info"]), p.get("resume_from")


def resume_source(candidate: Candidate) -> str | None:
    """The checkpoint a candidate starts from: its ``resume_from`` (a candidate id or URL)."""
    return getattr(candidate, "resume_from", None)


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(CandidateResult) if f.name != "candidate")


def result_record(
    result: CandidateResult, *, worker: dict[str, Any], checkpoint: str | None = None
) -> dict[str, Any]:
    """A candidate's result as JSON data (non-finite floats as null)."""
    flat = result.to_dict()
    return {
        "candidate_id": result.candidate.candidate_id,
        "result": {k: flat[k] for k in _RESULT_FIELDS if k in flat},
        "worker": worker,
        "checkpoint": checkpoint,
        "error": None,
    }


def result_from_record(candidate: Candidate, record: dict[str, Any]) -> CandidateResult:
    fields = {k: v for k, v in (record.get("result") or {}).items() if k in _RESULT_FIELDS}
    return CandidateResult(candidate, **fields)


def worker_info() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": os.environ.get("PREFECT__WORKER_NAME"),  # set by the worker that started us
        "flow_run_id": flow_run.get_id(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()


# -- worker side: the candidate flow's body -------------------------------------------


def work_dir(spec: dict[str, Any]) -> Path:
    """Where the worker keeps candidate run dirs: ``$ALPHA_CANDIDATE_DIR/<run_id>``, else
    the search's ``run_dir`` (a shared path on one machine)."""
    base = os.environ.get(ENV_WORK_DIR, "").strip()
    return Path(base).expanduser() / spec["run_id"] if base else Path(spec["run_dir"])


def train_candidates(
    spec: dict[str, Any],
    candidates: Sequence[dict[str, Any]],
    lake_url: str | None,
    *,
    train_one: Callable[[Any, Candidate, PopulationInfo], CandidateResult] | None = None,
    extra_hooks: Sequence[Any] = (),
    cancelled: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Train ``candidates`` of the search ``spec`` one after another; their result records.

    Each record is also written to the lake, with the candidate's checkpoint.
    ``train_one(trainer, candidate, info)`` runs one candidate (default: in a
    stoppable thread, ``run_stoppable``); the candidate flow passes a Prefect
    task here. A ``ConfigError`` is recorded (so the search stops on it) and raised.
    ``cancelled()``, polled every ``WATCH_S`` seconds, stops training when true (the
    candidate flow asks the API whether its own flow run is being cancelled: a
    worker may miss the cancel of a run that was just starting).
    """
    from storage.lake import open_lake
    from storage.sink import MetricSink

    lake = open_lake(lake_url)
    bounds = spec.get("batch_bounds")
    sink = MetricSink(lake, spec["run_id"], batch_bounds=tuple(bounds) if bounds else None)
    folder = work_dir(spec)
    trainer = trainer_from_spec(spec, run_dir=folder, sink=sink, extra_hooks=extra_hooks)
    train_one = train_one or run_stoppable
    records: list[dict[str, Any]] = []
    stopped = False
    watcher = _watch(cancelled, trainer.stop) if cancelled is not None else None
    try:
        for params in candidates:
            c, info, resume_from = candidate_from_params(params)
            records.append(_train_one(lake, spec, folder, trainer, train_one, c, info, resume_from))
    except BaseException as exc:
        stopped = not isinstance(exc, Exception)  # a cancel (TerminationSignal), Ctrl-C
        raise
    finally:
        if watcher is not None:
            watcher.set()
        sink.close()  # every row queued so far lands (or spools) before anyone is told
        if stopped:
            _mark_stopped(lake, spec["run_id"], candidates, records)
    return records


def _watch(cancelled: Callable[[], bool], stop: Callable[[], None]) -> threading.Event:
    """A daemon thread that calls ``stop()`` once ``cancelled()``; set the event to end it."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(WATCH_S):
            try:
                if cancelled():
                    stop()
                    return
            except Exception:  # noqa: BLE001 - a failed poll is retried; the worker's SIGTERM stays
                continue

    threading.Thread(target=loop, name="candidate-cancel-watch", daemon=True).start()
    return done


def _mark_stopped(lake: Lake, run_id: str, candidates, records) -> None:
    """Tell the search that these candidates stopped and wrote their last row: it need
    not wait for Prefect to finish marking this flow run Cancelled."""
    done = {r["candidate_id"] for r in records}
    for params in candidates:
        cid = params["candidate"]["candidate_id"]
        if cid not in done:
            record = {"candidate_id": cid, "result": None, "stopped": True,
                      "worker": {**worker_info(), "ended_at": _now()}, "error": None}  # fmt: skip
            put_bytes(lake, result_parts(run_id, cid), json.dumps(record).encode())


def _train_one(lake, spec, folder, trainer, train_one, c, info, resume_from) -> dict[str, Any]:
    run_id, cid = spec["run_id"], c.candidate_id
    worker = {**worker_info(), "started_at": _now()}
    try:
        if resume_from:
            fetch_checkpoint(lake, run_id, resume_from, folder)
        result = train_one(trainer, c, info)
    except ConfigError as exc:
        record = {"candidate_id": cid, "result": None, "worker": worker, "error": str(exc)}
        record["config_error"] = True
        put_bytes(lake, result_parts(run_id, cid), json.dumps(record).encode())
        raise
    worker["ended_at"] = _now()
    ckpt = Path(result.run_dir or folder / "candidates" / cid) / CHECKPOINT_FILE
    keep = result.ok and ckpt.is_file()  # a failed candidate's weights help no one
    url = upload_file(lake, ckpt, checkpoint_parts(run_id, cid)) if keep else None
    record = result_record(result, worker=worker, checkpoint=url)
    put_bytes(lake, result_parts(run_id, cid), json.dumps(record, allow_nan=False).encode())
    return record


def fetch_checkpoint(lake: Lake, run_id: str, source: str, folder: Path) -> Path:
    """Download the checkpoint ``source`` (a candidate id of this search, or a URL)."""
    fs: Lake | None = lake
    if "://" in source or source.startswith("/"):  # a URL or path of its own
        where, name = source, Path(source.rstrip("/")).parent.name
        prefix = lake.uri(lake.root).rstrip("/") + "/"
        if source.startswith(prefix):  # inside the lake: through its filesystem
            where = lake.path(source[len(prefix) :])
        else:
            fs = None
    else:  # a candidate of this search
        where, name = lake.path(*checkpoint_parts(run_id, source)), source
    local = folder / "candidates" / name / CHECKPOINT_FILE
    if not local.is_file():
        try:
            download_file(fs, where, local)
        except FileNotFoundError:
            raise ConfigError(f"resume_from: no checkpoint at {source}") from None
    return local


def run_stoppable(trainer: Any, c: Candidate, info: PopulationInfo) -> CandidateResult:
    """``trainer(c, info)`` in a thread; an interrupt of this thread stops it at its next step.

    Prefect raises its ``TerminationSignal`` (a cancel) in the main thread:
    training there would be torn down mid-step, its rows and result lost.
    """
    from tasks.prefect_tasks import run_in_thread

    return run_in_thread(lambda: trainer(c, info), trainer.stop)


# -- search side: dispatch -----------------------------------------------------------


class RemoteCandidates:
    """``TrainOne`` that trains a candidate as a flow run of the candidate deployment.

    Thread-safe: each call dispatches one candidate and polls its flow run.
    ``stop()`` cancels every flow run in flight; calls then end at once.
    ``placements`` maps candidate id -> its result record's ``worker`` fields.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        lake_url: str,
        *,
        deployment: str | None = None,
        poll_s: float = POLL_S,
        timeout_s: float | None = None,
        work_queue: str | None = None,
        job_variables: dict[str, Any] | None = None,
    ) -> None:
        from storage.lake import open_lake

        self.spec, self.lake = spec, open_lake(lake_url)
        self.deployment = deployment_name(deployment)
        self.poll_s = poll_s
        self.timeout_s = timeout_s or float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT_S)
        self.work_queue, self.job_variables = work_queue, job_variables
        self.placements: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def __call__(self, c: Candidate, info: PopulationInfo) -> CandidateResult:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        from tasks.search_runner import SearchInterrupted

        if self._stop.is_set():
            raise SearchInterrupted(c.candidate_id)
        run_id = self.spec["run_id"]
        remove(self.lake, result_parts(run_id, c.candidate_id))  # a record of an earlier try
        params = {
            "search": self.spec,
            "candidates": [candidate_params(c, info, resume_source(c))],
            "lake": self.lake.url,
        }
        t0 = time.perf_counter()
        try:
            flow_run = run_deployment(
                self.deployment,
                parameters=params,
                timeout=0,
                flow_run_name=f"{run_id}-{c.candidate_id}-{c.activation}",
                tags=[*TAGS, f"alpha-search:{run_id}"],
                work_queue_name=self.work_queue,
                job_variables=self.job_variables,
            )
        except ObjectNotFound:
            raise ConfigError(
                f"search_dispatch=deployment: no deployment {self.deployment!r} on the Prefect "
                "server (prefect deploy --all --prefect-file deployments/prefect.yaml)"
            ) from None
        state = self._wait_final(flow_run.id, result_parts(run_id, c.candidate_id))
        record = get_json(self.lake, result_parts(run_id, c.candidate_id))
        if record and record.get("config_error"):
            raise ConfigError(record["error"])
        if self._stop.is_set() and not (record and record.get("result")):
            raise SearchInterrupted(c.candidate_id)  # stopped before it finished
        if record and record.get("result"):
            self.placements[c.candidate_id] = dict(record.get("worker") or {})
            return result_from_record(c, record)
        out = CandidateResult(c, step_offset=c.ordinal * int(self.spec["step_stride"]))
        out.elapsed_s = time.perf_counter() - t0
        why = (state.message or "").splitlines()[0][:200] if state.message else ""
        return out.failed(f"candidate flow run {state.name.lower()}{': ' + why if why else ''}")

    def _wait_final(self, flow_run_id: Any, record: Sequence[str]) -> Any:
        """Poll until the flow run is final; cancel it on ``stop()`` or after the timeout.

        Once cancelled, the candidate's ``stopped`` record (written after its sink
        closed) ends the wait too: Prefect may take many seconds more to mark the
        run Cancelled, and the search has only the worker's grace period left.
        """
        from prefect.client.orchestration import get_client

        t0 = time.monotonic()
        deadline, cancel_deadline, warned = t0 + self.timeout_s, None, False
        with get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                state = flow_run.state
                if state is not None and state.is_final():
                    return state
                if not warned and state is not None and state.is_scheduled() and (
                    time.monotonic() - t0 > UNCLAIMED_WARN_S
                ):
                    warned = True
                    print(
                        f"  candidate flow run {flow_run.name} waits for a worker: start one with "
                        f"`prefect worker start --pool {flow_run.work_pool_name} --work-queue "
                        f"{flow_run.work_queue_name}`",
                        flush=True,
                    )
                if cancel_deadline is None and (self._stop.is_set() or time.monotonic() > deadline):
                    cancel_flow_run(client, flow_run_id, state)
                    cancel_deadline = time.monotonic() + CANCEL_WAIT_S
                elif cancel_deadline is not None and (
                    time.monotonic() > cancel_deadline or get_json(self.lake, record)
                ):
                    return state
                time.sleep(self.poll_s)


def cancel_flow_run(client: Any, flow_run_id: Any, state: Any) -> None:
    """Cancel a candidate flow run: Cancelled before it started, else Cancelling (the
    worker then stops its process, which lands its rows and ends Cancelled)."""
    from prefect.states import Cancelled, Cancelling

    message = "the search is stopping"
    started = state is not None and not state.is_scheduled()  # a worker has it
    try:
        if started:
            client.set_flow_run_state(flow_run_id, Cancelling(message=message))
        else:
            client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)
    except Exception:  # noqa: BLE001 - the poll loop waits for the run either way
        pass


class DeploymentExecutor:
    """The generation loop's executor for ``dispatch="deployment"``.

    ``call`` runs spawn/rank/mutate like ``PrefectExecutor`` (task runs inside a
    flow, plain calls outside). ``map`` turns the search's ``CandidateTrainer``
    into ``RemoteCandidates`` and trains each candidate as a flow run of the
    candidate deployment: inside a flow as one ``train-<id>-<activation>`` task
    run per candidate (the flow's task runner must have ``parallel`` workers),
    outside on a thread pool of ``parallel`` threads.
    """

    def __init__(self, parallel: int = DEFAULT_PARALLEL, **remote: Any) -> None:
        if parallel < 1:
            raise ConfigError(f"search_parallel: must be >= 1 (got {parallel})")
        self.slots = parallel
        self.remote = remote
        self.last: RemoteCandidates | None = None
        #: read by the search runner: no local timing probe (and so no budget check)
        self.trains_elsewhere = f"the workers of {deployment_name(remote.get('deployment'))}"

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if _in_flow():
            from tasks.search_tasks import PrefectExecutor

            return PrefectExecutor(self.slots).call(step, fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]:
        if step == "train_candidate":
            lake_url = self.remote.pop("lake_url", None) or _sink_lake(fn)
            self.remote["lake_url"] = lake_url
            opts = {k: v for k, v in self.remote.items() if k != "lake_url"}
            fn = self.last = RemoteCandidates(search_spec(fn), lake_url, **opts)
        if _in_flow():
            from tasks.search_tasks import PrefectExecutor

            return PrefectExecutor(self.slots).map(step, fn, items, names)
        from symbio.search.executors import ThreadExecutor

        return ThreadExecutor(self.slots, inline=False).map(step, fn, items, names)


def _sink_lake(trainer: Any) -> str:
    sink = getattr(trainer, "sink", None)
    if sink is None:
        raise ConfigError("search_dispatch=deployment: needs the lake (results travel through it)")
    return sink.lake.url


def _in_flow() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None
