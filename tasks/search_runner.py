"""``run_search``: the FFN activation search, end to end, without a Prefect server.

``alpha train --symbio`` (through ``tasks.run.execute``) calls this when the
search mode is ``ffn-activation-search``; the Prefect flow
(``flows.search_flow``) calls the same function with a Prefect executor, so
the generation loop and the confirmation (``symbio.search.loop``) exist once.

Per candidate: its own ``TrainConfig`` (activation, lr gene, the generation's
shared init and data seeds, its total steps, the lr horizon of the whole
search, the search's test split held out, its own
``<run_dir>/candidates/<candidate_id>`` folder) and, for a survivor, the
parent's checkpoint to continue (the engine's exact resume); fresh hooks
(``SymbioHook`` with the candidate's fields, so the CUSUM and metric state
start from zero; ``LakeHook`` on the search's one shared sink) and
``step_offset = ordinal * plan.step_stride`` so every metric row of the search
has a unique ``(run_id, step)``. A candidate that fails (an exception, out of
memory) is recorded with its reason; the health gates of the loop mark
diverged or stalled ones; either way it ranks last and the search goes on.
Confirmation runs are trained the same way and evaluated once on the test
split at their end.

This module is the search's orchestration layer: unlike the pure modules
beside it, it imports the engine and (lazily, only when a lake is used) the
storage package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import CheckpointError, ConfigError
from model.hooks import TrainerHook
from symbio.search.candidate import CONFIRM, Candidate, CandidateResult
from symbio.search.confirm import Confirmation, arms_for
from symbio.search.estimate import (
    BUDGET_MARGIN,
    DEFAULT_MAX_SEARCH_MINUTES,
    Estimate,
    estimate_runs,
    fit_budget,
    format_duration,
    learning_warning,
    probe_activation,
    probe_steps,
    run_probe,
)
from symbio.search.executors import BatchedExecutor, ThreadExecutor
from symbio.search.health import near_initial_warning
from symbio.search.loop import (
    Executor,
    GenerationResult,
    PopulationInfo,
    SearchPlan,
    SearchRun,
    nominee,
    run_confirmation,
    run_generations,
)
from symbio.search.report import (
    SEARCH_MODE,
    build_summary,
    candidate_lake_rows,
    candidate_record,
    report_markdown,
    winner_record,
)

if TYPE_CHECKING:  # pragma: no cover
    from model.config import TrainConfig
    from symbio.config import SymbioConfig
    from tasks.resolve import ResolvedRun

SUMMARY_FILE = "symbio-summary.json"
CANDIDATES_FILE = "symbio-candidates.jsonl"
REPORT_FILE = "symbio-report.md"
#: Slots per device kind when neither ``slots=`` nor ``ALPHA_SEARCH_SLOTS`` is given.
DEFAULT_SLOTS = {"cpu": 1, "cuda": 2}
#: ``batched`` values: auto (on for CUDA, off for a CPU), on, off.
BATCHED_CHOICES = ("auto", "on", "off")
#: Share of the validation text held out as the test split of a search (the
#: confirmation evaluates there; no candidate ever does) unless --test-fraction is set.
SEARCH_TEST_FRACTION = 0.5


class SearchInterrupted(KeyboardInterrupt):
    """A candidate was interrupted (Ctrl-C): the search stops after writing what it has."""


@dataclass
class SearchOutcome:
    run_id: str
    run_dir: Path
    status: str  # completed | failed | cancelled
    mode: str
    winner: dict[str, Any] | None
    generations: list[GenerationResult]
    summary: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0
    estimate_s: float | None = None
    slots: int = 1
    batched: bool = False  # each generation trained as one batched population
    error: str | None = None
    lake_url: str | None = None
    sink_stats: Any = None
    #: ``tasks.run.RunOutcome`` compatibility: a search has no single ``TrainResult``.
    result: Any = None
    confirmation: Confirmation | None = None

    @property
    def winner_activation(self) -> str | None:
        return self.winner["activation"] if self.winner else None

    @property
    def winner_note(self) -> str | None:
        """How far to trust the winner, for the CLI footer."""
        w = self.winner
        if not w:
            return None
        if not w.get("confirmed"):
            return "unconfirmed; report only"
        base = self.summary.get("baseline_activation")
        if w["activation"] != base and not w.get("switch"):
            return f"not significantly better than {base}; keep {base}"
        lr = f" --lr={w['lr']:.3g}" if w.get("lr") is not None else ""
        return f"confirmed on held-out data; report only, train it with --activation={w['activation']}{lr}"

    @property
    def search(self) -> dict[str, Any]:
        return self.summary

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "cancelled": 130}.get(self.status, 1)



# -- configuration helpers -------------------------------------------------------


def steps_per_candidate(resolved: ResolvedRun) -> int:
    """``--iters`` when given explicitly (explicit flags win), else ``stepsPerCandidate``."""
    if "iters" in resolved.explicit and resolved.explicit["iters"] is not None:
        return int(resolved.explicit["iters"])
    return int(resolved.symbio_config.steps_per_candidate)


def resolve_slots(device: str, slots: int | None = None) -> int:
    """Candidates trained at once: ``slots`` if given, else ``ALPHA_SEARCH_SLOTS``, else auto.

    Auto (``DEFAULT_SLOTS``) is 1 on a CPU (one candidate already keeps every
    core busy) and 2 on CUDA (small models leave a GPU idle between kernel
    launches; ``bench/bench_search.py`` measures the gain).
    """
    if slots is not None:
        if slots < 1:
            raise ConfigError(f"search slots: must be >= 1 (got {slots})")
        return int(slots)
    env = os.environ.get("ALPHA_SEARCH_SLOTS", "").strip()
    if not env:
        return DEFAULT_SLOTS.get(device, 1)
    try:
        value = int(env)
    except ValueError:
        raise ConfigError(f"ALPHA_SEARCH_SLOTS: not an integer: {env!r}") from None
    if value < 1:
        raise ConfigError(f"ALPHA_SEARCH_SLOTS: must be >= 1 (got {value})")
    return value


def resolve_batched(device: str, batched: str | bool | None = None) -> bool:
    """Train each generation as one batched population? ``batched`` > ``ALPHA_SEARCH_BATCHED`` > auto.

    ``auto`` is on for CUDA (one kernel launch serves every candidate:
    ``bench/bench_search.py`` measured 1.8-1.9x eager and 5.3x with ``--compile`` on an
    H200) and off for a CPU (no launch overhead to save; one candidate already keeps
    every core busy).
    """
    source = "search batched"
    if batched is None:
        env = os.environ.get("ALPHA_SEARCH_BATCHED", "").strip()
        batched, source = (env, "ALPHA_SEARCH_BATCHED") if env else ("auto", source)
    if isinstance(batched, bool):
        return batched
    value = str(batched).strip().lower()
    if value not in BATCHED_CHOICES:
        choices = ", ".join(BATCHED_CHOICES)
        raise ConfigError(f"{source}: must be one of {choices} (got {batched!r})")
    return value == "on" or (value == "auto" and device == "cuda")


def device_type(cfg: TrainConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def search_base_config(cfg: TrainConfig) -> TrainConfig:
    """The run's config with the search's test split held out (unless one was set)."""
    if cfg.test_fraction > 0:
        return cfg
    return cfg.model_copy(update={"test_fraction": SEARCH_TEST_FRACTION})


def candidate_train_config(
    base: TrainConfig, c: Candidate, run_dir: Path, resume: Path | None = None
) -> TrainConfig:
    """The candidate's own config: activation, lr gene, seeds, steps, lr horizon, folder.

    The lr schedule decays over the candidate's horizon (the search's longest
    lineage), so a survivor continues exactly where its schedule was; a warm-up
    as long as the horizon is cut to a tenth of it. Unless an interval was
    asked for, the one checkpoint is written at the end of the segment.
    """
    horizon = c.horizon or c.iters
    warmup = base.warmup_iters if base.warmup_iters < horizon else horizon // 10
    update: dict[str, Any] = {
        "activation": c.activation,
        "seed": c.seed,
        "data_seed": c.data_seed,
        "iters": c.iters,
        "lr_decay_iters": horizon,
        "warmup_iters": warmup,
        "eval_interval": min(base.eval_interval, max(1, c.steps)),
        "checkpoint_interval": base.checkpoint_interval or c.iters,
        "run_dir": str(run_dir),
        "resume": str(resume) if resume else None,
    }
    if c.lr is not None:
        update["lr"] = c.lr
        update["lr_min"] = c.lr * (base.lr_min / base.lr if base.lr else 0.1)
    return base.model_copy(update=update)


# -- one candidate -----------------------------------------------------------------


class CandidateTrainer:
    """Trains one candidate per call, or a list as one population (``train_many``).

    Thread-safe: all state is per call.
    """

    def __init__(
        self,
        *,
        base: TrainConfig,
        symbio: SymbioConfig,
        run_id: str,
        run_dir: Path,
        step_stride: int,
        sink: Any | None,
        progress: bool,
        run_meta: dict[str, Any],
        extra_hooks: Sequence[TrainerHook] = (),
    ) -> None:
        self.base, self.symbio, self.run_id = base, symbio, run_id
        self.run_dir, self.step_stride, self.sink = run_dir, step_stride, sink
        self.progress, self.run_meta = progress, run_meta
        self.extra_hooks = tuple(extra_hooks)
        self._print_lock = threading.Lock()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask running candidates to stop at their next step (they end ``interrupted``)."""
        self._stop.set()

    def folder(self, candidate_id: str) -> Path:
        return self.run_dir / "candidates" / candidate_id

    def __call__(self, c: Candidate, info: PopulationInfo) -> CandidateResult:
        from model.trainer import train

        job = self._job(c, info)
        t0 = time.perf_counter()
        try:
            tr = train(
                job.cfg,
                job.hooks,
                run_id=self.run_id,
                step_offset=job.offset,
                progress=self.progress,
                run_meta=job.run_meta,
                eval_test=job.eval_test,
                allow_activation_change=job.allow_activation_change,
            )
        except CheckpointError as exc:  # this candidate's parent checkpoint, not the user's input
            return self._failure(job, exc, time.perf_counter() - t0)
        except ConfigError:
            raise  # bad input applies to every candidate: stop the search
        except Exception as exc:  # noqa: BLE001 - a failing candidate must not stop the search
            return self._failure(job, exc, time.perf_counter() - t0)
        return self._result(job, tr, time.perf_counter() - t0)

    def train_many(self, items: Sequence[tuple[Candidate, PopulationInfo]]) -> list[CandidateResult]:
        """Train ``items`` as one batched population (``model.population``), one result each.

        Each candidate's config, hooks, step offset and options are ``__call__``'s
        and each result is post-processed as there (failure reasons, printing,
        ``SearchInterrupted`` for an interrupted one). A candidate whose setup
        fails (e.g. its parent checkpoint) fails alone; an error of the batched
        step fails every candidate still training; ``ConfigError`` stops the search.
        ``elapsed_s`` of each result is the population's wall time (they trained
        together).
        """
        from model.population import train_population

        jobs = [self._job(c, info) for c, info in items]
        setup_errors: dict[int, Exception] = {}

        def on_setup_error(i: int, exc: Exception) -> None:
            if isinstance(exc, ConfigError) and not isinstance(exc, CheckpointError):
                raise exc  # bad input applies to every candidate: stop the search
            setup_errors[i] = exc

        t0 = time.perf_counter()
        try:
            trs = train_population(
                [j.cfg for j in jobs],
                [j.hooks for j in jobs],
                run_id=self.run_id,
                step_offsets=[j.offset for j in jobs],
                progress=self.progress,
                run_metas=[j.run_meta for j in jobs],
                eval_test=[j.eval_test for j in jobs],
                allow_activation_change=[j.allow_activation_change for j in jobs],
                on_setup_error=on_setup_error,
            )
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing population must not stop the search
            return [self._failure(j, exc, time.perf_counter() - t0) for j in jobs]
        elapsed = time.perf_counter() - t0
        return [
            self._failure(j, setup_errors[i], elapsed) if i in setup_errors
            else self._result(j, tr, elapsed)
            for i, (j, tr) in enumerate(zip(jobs, trs, strict=True))
        ]  # fmt: skip

    def _job(self, c: Candidate, info: PopulationInfo) -> _Job:
        """The candidate's config, fresh hooks, step offset and ``train()`` options."""
        from model import checkpoint as ckpt_io
        from symbio.hook import SymbioHook

        if self._stop.is_set():  # the search is stopping: do not start another candidate
            raise SearchInterrupted(c.candidate_id)
        folder = self.folder(c.candidate_id)
        offset = c.ordinal * self.step_stride
        resume = self.folder(c.resume_from) / ckpt_io.FILENAME if c.resume_from else None
        symbio_hook = SymbioHook(self.symbio, candidate=info.row_fields(c))
        hooks: list[Any] = [_StopHook(self._stop), symbio_hook]
        if self.sink is not None:
            from storage.sink import LakeHook

            hooks.append(LakeHook(self.sink, run_row=None))
        hooks.extend(self.extra_hooks)  # e.g. notifications, after the rows are complete
        return _Job(
            candidate=c,
            cfg=candidate_train_config(self.base, c, folder, resume),
            hooks=hooks,
            symbio_hook=symbio_hook,
            offset=offset,
            run_meta={**self.run_meta, "candidate": c.to_dict()},
            eval_test=c.role == CONFIRM,
            allow_activation_change=resume is not None,
            out=CandidateResult(c, steps=0, step_offset=offset, run_dir=str(folder)),
        )

    def _failure(self, job: _Job, exc: Exception, elapsed: float) -> CandidateResult:
        """A candidate whose training raised: failed, with a one-line reason."""
        if not isinstance(exc, CheckpointError):
            _free_accelerator_memory()
        job.out.elapsed_s = elapsed
        self._say(job.candidate, f"failed: {_one_line(exc)}")
        return job.out.failed(_one_line(exc))

    def _result(self, job: _Job, tr: Any, elapsed: float) -> CandidateResult:
        """The ``TrainResult`` in the candidate's result; an interrupted one stops the search."""
        out = job.out
        out.elapsed_s = elapsed
        _fill_from_train_result(out, tr, job.symbio_hook)
        if tr.status == "interrupted":
            raise SearchInterrupted(job.candidate.candidate_id)
        if tr.status != "completed":
            _free_accelerator_memory()
            out = out.failed(tr.error or f"training {tr.status}")
        self._say(job.candidate, _describe(out))
        return out

    def _say(self, c: Candidate, text: str) -> None:
        with self._print_lock:
            print(f"  [{c.candidate_id} {c.activation:>6}] {text}", flush=True)


@dataclass
class _Job:
    """One candidate, ready to train: what ``CandidateTrainer`` passes the engine."""

    candidate: Candidate
    cfg: TrainConfig
    hooks: list[Any]
    symbio_hook: Any
    offset: int
    run_meta: dict[str, Any]
    eval_test: bool
    allow_activation_change: bool
    out: CandidateResult


class _StopHook(TrainerHook):
    """Raises ``KeyboardInterrupt`` in the training thread once the search is stopping."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt


def _fill_from_train_result(out: CandidateResult, tr: Any, hook: Any) -> None:
    c = out.candidate
    losses = [x for x in tr.losses if math.isfinite(x)]
    tail = losses[-max(1, len(losses) // 5) :]
    out.steps = max(0, tr.steps - c.start_step) if tr.steps else 0
    out.best_val_loss = tr.best_val_loss
    out.final_val_loss = tr.final_val_loss
    out.final_loss = tr.last_loss
    out.recent_loss = sum(tail) / len(tail) if tail else None
    out.initial_loss = losses[0] if losses and c.start_step == 0 else None  # else the lineage's
    out.skipped_steps = tr.n_spike_skips + tr.n_nan_skips
    out.test_loss = tr.test_loss
    out.tokens_per_sec = tr.tokens_per_sec_mean
    out.ms_per_iter = tr.ms_per_iter_median
    out.param_count = tr.param_count
    inst = hook.instability.result()  # the SymbioHook's running instability (PRD §14.3)
    out.instability = inst.score
    out.instability_terms = {
        "spike_rate": inst.spike_rate,
        "clip_saturation": inst.clip_saturation,
        "skip_rate": inst.skip_rate,
        "step_time_cv": inst.step_time_cv,
    }


def _describe(r: CandidateResult) -> str:
    if r.status != "ok":
        return f"{r.status}: {r.failure_reason}"
    tps = f"{r.tokens_per_sec:,.0f} tok/s" if r.tokens_per_sec else "- tok/s"
    val = f"{r.final_val_loss:.4f}" if r.final_val_loss is not None else "none"
    test = f" | test {r.test_loss:.4f}" if r.test_loss is not None else ""
    skips = f" | {r.skipped_steps} skipped" if r.skipped_steps else ""
    return f"val {val}{test} at step {r.total_steps}{skips} | {tps} | {r.elapsed_s:.1f}s"


def _arm_line(row: dict[str, Any]) -> str:
    """``  gelu: test 2.5683 ± 0.0142 over 3 seeds; vs baseline -0.0616: lower (better)``."""
    mean, sd, vs = row["test_loss_mean"], row["test_loss_sd"], row["vs_baseline"]
    text = f"  {row['arm']:>12}: test " + (f"{mean:.4f}" if mean is not None else "-")
    text += (f" ± {sd:.4f}" if sd is not None else "") + f" over {row['n']} seeds"
    if vs and vs["mean_diff"] is not None:
        text += f"; vs baseline {vs['mean_diff']:+.4f}: {vs['verdict']}"
    return text


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


# -- the search ----------------------------------------------------------------------


def run_search(
    resolved: ResolvedRun,
    *,
    lake_url: str | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    flow_run_id: str | None = None,
    use_lake: bool = True,
    on_generation: Callable[[GenerationResult], None] | None = None,
    slots: int | None = None,
    extra_hooks: Sequence[TrainerHook] = (),
    max_search_minutes: float | None = None,
    batched: str | bool | None = None,
) -> SearchOutcome:
    """Run the FFN activation search of ``resolved`` and write its artifacts.

    ``lake_url`` None means the default lake (``$ALPHA_LAKE`` or ``./lake``);
    ``use_lake=False`` writes only the run directory. ``executor`` decides how
    the loop's steps run; without one, ``batched`` (``resolve_batched``: auto,
    on, off) picks ``BatchedExecutor`` (each generation and the confirmation as
    one population; ``slots`` do not apply) or ``ThreadExecutor`` with ``slots``
    (``resolve_slots``). A given executor batches if its ``batched`` attribute says so.
    ``max_search_minutes`` (default ``DEFAULT_MAX_SEARCH_MINUTES``, 0 = no limit)
    scales the search down to what the timing probe says fits, or refuses it
    (``ConfigError``).
    """
    if resolved.symbio_config is None:
        raise ConfigError("--symbio: the activation search needs symbio mode")
    device = device_type(resolved.train)
    if executor is None:
        executor = _default_executor(device, slots, batched)
    is_batched = bool(getattr(executor, "batched", False))
    n_slots = getattr(executor, "slots", None) or resolve_slots(device, slots)
    search = _Search(
        resolved,
        device=device,
        slots=n_slots,
        batched=is_batched,
        executor=executor,
        lake_url=lake_url,
        use_lake=use_lake,
        progress=progress and n_slots == 1,  # one progress bar at a time
        flow_run_id=flow_run_id,
        on_generation=on_generation,
        extra_hooks=extra_hooks,
        max_minutes=check_budget_minutes(max_search_minutes),
    )
    return search.run()


def _default_executor(device: str, slots: int | None, batched: str | bool | None) -> Executor:
    if resolve_batched(device, batched):
        return BatchedExecutor()
    return ThreadExecutor(resolve_slots(device, slots))


def check_budget_minutes(minutes: float | None) -> float:
    """``--max-search-minutes``: None -> the default; must be a finite number >= 0."""
    if minutes is None:
        return DEFAULT_MAX_SEARCH_MINUTES
    value = float(minutes)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"--max-search-minutes: must be a number >= 0 (got {minutes})")
    return value


class _Search:
    """State of one search run (kept out of ``run_search`` to keep functions short)."""

    def __init__(
        self,
        resolved: ResolvedRun,
        *,
        device: str,
        slots: int,
        executor: Executor,
        batched: bool = False,
        lake_url: str | None,
        use_lake: bool,
        progress: bool,
        flow_run_id: str | None,
        on_generation: Callable[[GenerationResult], None] | None,
        extra_hooks: Sequence[TrainerHook] = (),
        max_minutes: float = DEFAULT_MAX_SEARCH_MINUTES,
    ) -> None:
        self.resolved = resolved
        self.max_minutes = max_minutes
        self.extra_hooks = tuple(extra_hooks)
        self.cfg: TrainConfig = search_base_config(resolved.train)
        self.symbio: SymbioConfig = resolved.symbio_config
        self.run_id: str = resolved.run_id
        self.run_dir = Path(resolved.run_dir)
        self.steps = steps_per_candidate(resolved)
        self.plan = SearchPlan.from_symbio(
            self.symbio,
            steps=self.steps,
            seed=self.cfg.seed,
            data_seed=self.cfg.resolved_data_seed,
            baseline=self.cfg.activation,
        )
        self.device, self.slots, self.executor = device, slots, executor
        self.batched = batched
        self.lake_url, self.use_lake, self.progress = lake_url, use_lake, progress
        self.flow_run_id, self.on_generation = flow_run_id, on_generation
        self.sink: Any = None
        self.started_at = datetime.now(UTC)
        self.generations: list[GenerationResult] = []
        self.confirmation: Confirmation | None = None
        self.warnings: list[str] = []
        self.estimate: Estimate | None = None
        self.trainer: CandidateTrainer | None = None
        self.t0 = time.perf_counter()

    @property
    def search_run(self) -> SearchRun:
        return SearchRun(self.generations, self.confirmation)

    # -- phases --

    def run(self) -> SearchOutcome:
        self._made_run_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CANDIDATES_FILE).unlink(missing_ok=True)
        self._announce()
        self.estimate = self._estimate()
        self._apply_budget()
        self._open_sink()
        self._write_run("running")
        status, error = "completed", None
        self.trainer = self._trainer()
        try:
            run_generations(
                self.plan, self.trainer, self.executor, on_generation=self._generation_done
            )
            self._confirm()
        except Exception as exc:
            status, error = "failed", _one_line(exc)
            raise
        except BaseException as exc:  # Ctrl-C, Prefect's cancel (TerminationSignal), SystemExit
            status, error = "cancelled", f"interrupted ({type(exc).__name__})"
            raise
        finally:
            if status == "completed" and winner_record(self.search_run) is None:
                status, error = "failed", "no candidate finished training healthy"
            outcome = self._finish(status, error)
        return outcome

    def _announce(self) -> None:
        p = self.plan
        sizes = " -> ".join(map(str, p.rung_sizes))
        note = ""
        if not p.lr_gene and p.population_size > len(p.pool) and p.strategy != "exhaustive":
            note = (
                f" (populationSize {p.population_size} > pool: without lrGene a duplicate "
                "would repeat its twin's seeds, so generation 0 is the pool)"
            )
        lr = f", lr gene in [{p.lr_range[0]:g}, {p.lr_range[1]:g}]" if p.lr_gene else ""
        print(
            f"symbio search {self.run_id}: {p.strategy}, generations of {sizes} candidates x "
            f"{p.steps} steps (lr horizon {p.horizon}){lr}, pool {list(p.pool)}, rank by "
            f"{p.rank_by}; confirmation: {p.confirm_seeds} paired seeds x {p.confirm_length} "
            f"steps of the pick, {p.baseline} (baseline) and gelu on a held-out test split; "
            f"{self._how()}{note}",
            flush=True,
        )

    def _how(self) -> str:
        """How candidates train: slots, or one batched population per generation."""
        if not self.batched:
            return f"{self.slots} slot(s) on {self.device}"
        compiled = ", compiled" if self.cfg.compile else ""
        return (
            f"each generation and the confirmation as one batched population on "
            f"{self.device}{compiled} (slots do not apply)"
        )

    def _estimate(self) -> Estimate | None:
        n = probe_steps()
        if n == 0:
            print("search estimate: timing probe off (ALPHA_SEARCH_PROBE_STEPS=0)", flush=True)
            return None
        if where := getattr(self.executor, "trains_elsewhere", None):
            # this process may not even have the workers' device: no probe, no budget
            print(f"search estimate: none, candidates train on {where}", flush=True)
            return None
        from model.trainer import lr_at, train

        act = probe_activation(self.plan.pool)
        try:
            probe = run_probe(train, self.cfg, act, self.run_dir / ".probe", n, lr_at=lr_at)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - an estimate is advice, not a requirement
            print(f"search estimate unavailable: {_one_line(exc)}", flush=True)
            return None
        p = self.plan
        est = self._estimate_plan(probe, p)
        note = "; serial: batching can only shorten it" if self.batched else ""
        print(est.describe(self.slots) + note, flush=True)
        warning = learning_warning(probe, self._rung0_lr_area(lr_at), p.steps)
        if warning:
            self._warn(warning)
        return est

    def _rung0_lr_area(self, lr_at: Callable[[Any, int], float]) -> float:
        """Sum of the lr over generation 0's steps (the highest lr gene with lrGene)."""
        p = self.plan
        c = Candidate("area", self.cfg.activation, 0, 0, 0, p.seed, iters=p.steps,
                      horizon=p.horizon, lr=p.lr_range[1] if p.lr_gene else None)  # fmt: skip
        cfg = candidate_train_config(self.cfg, c, self.run_dir)
        return sum(lr_at(cfg, t) for t in range(1, p.steps + 1))

    def _warn(self, text: str) -> None:
        self.warnings.append(text.removeprefix("warning: "))
        print(text if text.startswith("warning: ") else f"warning: {text}", flush=True)

    def _planned_runs(self, plan: SearchPlan) -> list[tuple[int, int]]:
        """``(count, steps)`` of every run the plan trains: its generations, then confirmation."""
        runs = [(size, plan.steps) for size in plan.rung_sizes]
        runs.append((plan.max_confirm_arms * plan.confirm_seeds, plan.confirm_length))
        return runs

    def _estimate_plan(self, probe: Any, plan: SearchPlan) -> Estimate:
        every = min(self.cfg.eval_interval, plan.steps)
        return estimate_runs(probe, self._planned_runs(plan), eval_interval=every)

    def _apply_budget(self) -> None:
        """Scale the plan to ``max_minutes`` (or refuse it); docs/search.md, Duration."""
        if self.estimate is None or not self.max_minutes:
            return
        p, before = self.estimate.probe, self.plan

        def cost(population: int, generations: int, steps: int) -> float:
            plan = dataclasses.replace(
                before, population_size=population, generations=generations, steps=steps
            )
            return self._estimate_plan(p, plan).total_s

        left = self.max_minutes * 60 - (time.perf_counter() - self.t0)
        fit = fit_budget(
            cost, population_size=before.population_size, generations=before.generations,
            steps=before.steps, min_population=len(before.pool),
            budget_s=max(0.0, left) * BUDGET_MARGIN,
        )  # fmt: skip
        was = (before.population_size, before.generations, before.steps)
        line = fit.describe(was, self.max_minutes)
        if not fit.fits:
            if self._made_run_dir and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # refused before anything was written
            raise ConfigError(line)
        if not fit.changed:
            return
        print(line, flush=True)
        self.steps = fit.steps
        self.plan = dataclasses.replace(
            before, population_size=fit.population_size, generations=fit.generations,
            steps=fit.steps,
        )  # fmt: skip
        self.symbio = self.symbio.model_copy(
            update={"population_size": fit.population_size, "generations": fit.generations,
                    "steps_per_candidate": fit.steps}
        )  # fmt: skip
        self.estimate = self._estimate_plan(p, self.plan)

    def _trainer(self) -> CandidateTrainer:
        return CandidateTrainer(
            base=self.cfg,
            symbio=self.symbio,
            run_id=self.run_id,
            run_dir=self.run_dir,
            step_stride=self.plan.step_stride,
            sink=self.sink,
            progress=self.progress,
            run_meta=self.resolved.run_meta(),
            extra_hooks=self.extra_hooks,
        )

    def _generation_done(self, gen: GenerationResult) -> None:
        self.generations.append(gen)
        best = gen.best
        best_txt = f"{best.activation} {best.final_val_loss:.4f}" if best.ok else "none healthy"
        bad = [r for r in gen.ranked if not r.ok]
        print(
            f"generation {gen.generation}: {len(gen.ranked)} candidates at step "
            f"{max(r.total_steps for r in gen.ranked)}; best {best_txt}; "
            f"{len(bad)} unhealthy; diversity {gen.architecture_diversity:.2f}; "
            f"{format_duration(gen.wall_s)}, about {format_duration(self._left_s(gen))} left",
            flush=True,
        )
        for r in bad:
            print(f"  [{r.candidate.candidate_id} {r.activation:>6}] {r.status}: "
                  f"{r.failure_reason}", flush=True)  # fmt: skip
        if gen.generation == 0 and (warning := near_initial_warning(gen.ranked, 0)):
            self._warn(warning)
        self._record(gen.ranked, gen)
        if gen.generation > 0:  # their lineages live on in this generation's folders
            _prune_checkpoints(self.generations[-2].ranked, keep=())
        if self.on_generation is not None:
            self.on_generation(gen)

    def _left_s(self, gen: GenerationResult) -> float:
        """Remaining planned steps at this generation's measured rate."""
        done = sum(r.steps for r in gen.ranked)
        rate = gen.wall_s / done if done else 0.0
        p = self.plan
        sizes = p.rung_sizes[gen.generation + 1 :]
        left = sum(sizes) * p.steps + p.max_confirm_arms * p.confirm_seeds * p.confirm_length
        return rate * left

    def _confirm(self) -> None:
        top = nominee(self.generations)
        if self.generations:  # only the nominee's checkpoint stays from the search
            keep = (top.candidate.candidate_id,) if top else ()
            _prune_checkpoints(self.generations[-1].ranked, keep=keep)
        if self.plan.confirm_seeds < 1:
            print("confirmation: off (confirmSeeds 0); the winner is unconfirmed", flush=True)
            return
        arms = arms_for(top.candidate if top else None, self.plan.baseline)
        names = ", ".join(f"{a.name} ({', '.join(a.roles)})" for a in arms)
        print(
            f"confirmation of {names}: {self.plan.confirm_seeds} paired seeds x "
            f"{self.plan.confirm_length} steps each, from scratch, evaluated on the held-out "
            "test split",
            flush=True,
        )
        assert self.trainer is not None
        self.confirmation = run_confirmation(
            self.plan, self.generations, self.trainer, self.executor
        )
        self._record(self.confirmation.results, None)
        for row in self.confirmation.arm_rows():
            print(_arm_line(row), flush=True)

    def _record(self, results: Sequence[CandidateResult], gen: GenerationResult | None) -> None:
        """Candidate records as they finish (jsonl, lake); rewritten with the winner at the end."""
        if self.symbio.write_candidates:
            with (self.run_dir / CANDIDATES_FILE).open("a", encoding="utf-8") as f:
                for r in results:
                    f.write(json.dumps(candidate_record(r, gen, None), allow_nan=False) + "\n")
        if self.sink is not None:
            self.sink.write_candidates(candidate_lake_rows(results, None))

    def _finish(self, status: str, error: str | None) -> SearchOutcome:
        elapsed = time.perf_counter() - self.t0
        run = self.search_run
        winner = winner_record(run)
        summary = build_summary(
            run_id=self.run_id,
            plan=self.plan,
            symbio_config=self.symbio.to_camel_dict(),
            train_config={**self.cfg.model_dump(mode="json"), "steps_per_candidate": self.steps},
            baseline_activation=self.cfg.activation,
            run=run,
            status=status,
            elapsed_s=elapsed,
            estimate_s=self.estimate.total_s if self.estimate else None,
            warnings=self.warnings,
        )
        summary["slots"] = self.slots
        summary["batched"] = self.batched
        summary["device"] = self.device
        self._mark_winner(winner)
        self._prune_confirmation(winner)
        artifacts = self._write_artifacts(summary)
        self._write_run(status, error=error, winner=winner)
        sink_stats = self._close_sink()
        print(
            f"symbio search {status} in {format_duration(elapsed)}: {summary['recommendation']}",
            flush=True,
        )
        for name, path in artifacts.items():
            print(f"  {name}: {path}", flush=True)
        if winner is not None and winner.get("run_dir"):
            print(f"  winner checkpoint: {winner['run_dir']}", flush=True)
        return SearchOutcome(
            run_id=self.run_id,
            run_dir=self.run_dir,
            status=status,
            mode=SEARCH_MODE,
            winner=winner,
            generations=self.generations,
            summary=summary,
            artifacts=artifacts,
            elapsed_s=elapsed,
            estimate_s=summary["estimated_s"],
            slots=self.slots,
            batched=self.batched,
            error=error,
            lake_url=self.lake_url,
            sink_stats=sink_stats,
            confirmation=self.confirmation,
        )

    def _all_results(self) -> list[tuple[CandidateResult, GenerationResult | None]]:
        out: list[tuple[CandidateResult, GenerationResult | None]] = [
            (r, g) for g in self.generations for r in g.ranked
        ]
        if self.confirmation is not None:
            out += [(r, None) for r in self.confirmation.results]
        return out

    def _mark_winner(self, winner: dict[str, Any] | None) -> None:
        """Rewrite the candidates file (and the winner's lake row) with ``is_winner`` set."""
        wid = winner.get("candidate_id") if winner else None
        if self.symbio.write_candidates and (self.run_dir / CANDIDATES_FILE).exists():
            lines = [
                json.dumps(candidate_record(r, g, wid), allow_nan=False)
                for r, g in self._all_results()
            ]
            _write_text(self.run_dir / CANDIDATES_FILE, "\n".join(lines))
        if self.sink is not None and wid:
            hit = [r for r, _ in self._all_results() if r.candidate.candidate_id == wid]
            if hit:
                self.sink.write_candidates(candidate_lake_rows(hit, wid))

    def _prune_confirmation(self, winner: dict[str, Any] | None) -> None:
        """Keep one confirmation checkpoint: the winner's (``alpha sample`` it)."""
        if self.confirmation is None:
            return
        keep = Path(winner["run_dir"]).name if winner and winner.get("run_dir") else None
        _prune_checkpoints(self.confirmation.results, keep=(keep,) if keep else ())

    def _write_artifacts(self, summary: dict[str, Any]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        if self.symbio.write_summary:
            out["summary"] = _write_text(
                self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False)
            )
        if self.symbio.write_candidates and (self.run_dir / CANDIDATES_FILE).exists():
            out["candidates"] = self.run_dir / CANDIDATES_FILE
        if self.symbio.write_report:
            out["report"] = _write_text(
                self.run_dir / REPORT_FILE, report_markdown(summary, self.search_run)
            )
        return out

    # -- the lake --

    def _open_sink(self) -> None:
        if not self.use_lake:
            return
        from storage.lake import open_lake
        from storage.sink import MetricSink

        lake = open_lake(self.lake_url)
        self.lake_url = lake.url
        bounds = None
        if self.symbio.adaptive_batch:
            # AdaptiveBatch widens [batch_min, batch_max] to hold the configured batch.
            batch = self.cfg.batch
            bounds = (min(self.symbio.batch_min, batch), max(self.symbio.batch_max, batch))
        self.sink = MetricSink(lake, self.run_id, batch_bounds=bounds)

    def _close_sink(self) -> Any:
        if self.sink is None:
            return None
        try:
            return self.sink.close()
        finally:
            self.sink = None

    def _write_run(
        self, status: str, *, error: str | None = None, winner: dict[str, Any] | None = None
    ) -> None:
        if self.sink is None:
            return
        self.sink.write_run(self._run_row(status, error, winner))

    def _run_row(self, status: str, error: str | None, winner: dict[str, Any] | None) -> dict:
        now = datetime.now(UTC)
        done = [r for r, _ in self._all_results()]
        ended = status != "running"
        return {
            "run_id": self.run_id,
            "status": status,
            "domain": self.cfg.domain,
            "model_config": json.dumps(_model_config(self.cfg)),
            "train_config": json.dumps(self.cfg.model_dump(mode="json")),
            "started_at": self.started_at,
            "updated_at": now,
            "finished_at": now if ended else None,
            "total_iters": self.plan.total_candidates * self.plan.step_stride,
            "latest_step": max((r.step_offset + r.total_steps for r in done), default=None),
            "last_loss": _finite(winner.get("final_loss")) if winner else None,
            "best_val_loss": _finite(winner.get("best_val_loss")) if winner else None,
            "param_count": winner.get("param_count") if winner else None,
            "host": socket.gethostname(),
            "device": self.device,
            "gpu_name": _gpu_name(self.device),
            "run_dir": str(self.run_dir.resolve()),
            "error": error,
            "symbio": 1,
            "symbio_config": self.symbio.to_camel_json(),
            "ffn_activation": self.cfg.activation,
            "symbio_winner": json.dumps(winner, allow_nan=False) if winner else None,
            "symbio_mode": SEARCH_MODE,
            "flow_run_id": self.flow_run_id,
        }


def _prune_checkpoints(results: Sequence[CandidateResult], keep: Sequence[str]) -> None:
    """Delete the checkpoints of ``results`` except those of the ``keep`` candidate ids."""
    for r in results:
        if r.candidate.candidate_id in keep or not r.run_dir:
            continue
        for path in Path(r.run_dir).glob("*.safetensors"):
            path.unlink(missing_ok=True)


def _model_config(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "block_size": cfg.block,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_embd": cfg.dim,
        "dropout": cfg.dropout,
        "ffn_activation": cfg.activation,  # the starting activation; candidates vary it
        "ffn_dim": cfg.ffn_dim,
    }


def _gpu_name(device: str) -> str | None:
    if device != "cuda":
        return None
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: alpha train --symbio")
