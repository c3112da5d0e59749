"""``run_search``: the FFN activation search, end to end, without a Prefect server.

``alpha train --symbio`` (through ``tasks.run.execute``) calls this when the
search mode is ``ffn-activation-search``; the Prefect flow
(``flows.search_flow``) calls the same function with a Prefect executor, so
the generation loop (``symbio.search.loop``) exists once.

Per candidate: a fresh ``TrainConfig`` (its activation, its seed,
``stepsPerCandidate`` steps, its own ``<run_dir>/candidates/<candidate_id>``
folder), fresh hooks (``SymbioHook`` with the candidate's fields, so the CUSUM
and metric state start from zero; ``LakeHook`` on the search's one shared
sink) and ``step_offset = ordinal * steps`` so every metric row of the search
has a unique ``(run_id, step)``. The engine evaluates on the validation set at
the last step, before the search ranks anything. A candidate that fails (an
exception, out of memory, no finite validation loss) is recorded with its
reason, gets the worst fitness, and the search goes on.

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

from model.errors import ConfigError
from model.hooks import TrainerHook
from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.estimate import (
    BUDGET_MARGIN,
    DEFAULT_MAX_SEARCH_MINUTES,
    Estimate,
    estimate_search,
    fit_budget,
    format_duration,
    probe_activation,
    probe_steps,
    run_probe,
)
from symbio.search.executors import ThreadExecutor
from symbio.search.loop import (
    Executor,
    GenerationResult,
    PopulationInfo,
    SearchPlan,
    run_generations,
)
from symbio.search.report import (
    SEARCH_MODE,
    build_summary,
    candidate_lake_rows,
    candidate_record,
    pick_winner,
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
    error: str | None = None
    lake_url: str | None = None
    sink_stats: Any = None
    #: ``tasks.run.RunOutcome`` compatibility: a search has no single ``TrainResult``.
    result: Any = None

    @property
    def winner_activation(self) -> str | None:
        return self.winner["activation"] if self.winner else None

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


def device_type(cfg: TrainConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def candidate_train_config(
    base: TrainConfig, c: Candidate, steps: int, run_dir: Path
) -> TrainConfig:
    """The candidate's own config: its activation, seed, steps and folder.

    A warm-up as long as the candidate is cut to a tenth of it; candidates are
    never resumed, so unless an interval was asked for, the one checkpoint is
    written at the end.
    """
    warmup = base.warmup_iters if base.warmup_iters < steps else steps // 10
    return base.model_copy(
        update={
            "activation": c.activation,
            "seed": c.seed,
            "iters": steps,
            "warmup_iters": warmup,
            "eval_interval": min(base.eval_interval, steps),
            "checkpoint_interval": base.checkpoint_interval or steps,
            "run_dir": str(run_dir),
            "resume": None,
        }
    )


# -- one candidate -----------------------------------------------------------------


class CandidateTrainer:
    """Trains one candidate (thread-safe: all state is per call)."""

    def __init__(
        self,
        *,
        base: TrainConfig,
        symbio: SymbioConfig,
        run_id: str,
        run_dir: Path,
        steps: int,
        sink: Any | None,
        progress: bool,
        run_meta: dict[str, Any],
        extra_hooks: Sequence[TrainerHook] = (),
    ) -> None:
        self.base, self.symbio, self.run_id = base, symbio, run_id
        self.run_dir, self.steps, self.sink = run_dir, steps, sink
        self.progress, self.run_meta = progress, run_meta
        self.extra_hooks = tuple(extra_hooks)
        self._print_lock = threading.Lock()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask running candidates to stop at their next step (they end ``interrupted``)."""
        self._stop.set()

    def __call__(self, c: Candidate, info: PopulationInfo) -> CandidateResult:
        from model.trainer import train
        from symbio.hook import SymbioHook

        if self._stop.is_set():  # the search is stopping: do not start another candidate
            raise SearchInterrupted(c.candidate_id)
        folder = self.run_dir / "candidates" / c.candidate_id
        offset = c.ordinal * self.steps
        cfg = candidate_train_config(self.base, c, self.steps, folder)
        symbio_hook = SymbioHook(self.symbio, candidate=info.row_fields(c))
        hooks: list[Any] = [_StopHook(self._stop), symbio_hook]
        if self.sink is not None:
            from storage.sink import LakeHook

            hooks.append(LakeHook(self.sink, run_row=None))
        hooks.extend(self.extra_hooks)  # e.g. notifications, after the rows are complete
        out = CandidateResult(c, steps=0, step_offset=offset, run_dir=str(folder))
        t0 = time.perf_counter()
        try:
            tr = train(
                cfg,
                hooks,
                run_id=self.run_id,
                step_offset=offset,
                progress=self.progress,
                run_meta={**self.run_meta, "candidate": c.to_dict()},
            )
        except ConfigError:
            raise  # bad input applies to every candidate: stop the search
        except Exception as exc:  # noqa: BLE001 - a failing candidate must not stop the search
            _free_accelerator_memory()
            out.elapsed_s = time.perf_counter() - t0
            self._say(c, f"failed: {_one_line(exc)}")
            return out.failed(_one_line(exc))
        out.elapsed_s = time.perf_counter() - t0
        _fill_from_train_result(out, tr, symbio_hook)
        if tr.status == "interrupted":
            raise SearchInterrupted(c.candidate_id)
        if tr.status != "completed":
            _free_accelerator_memory()
            out = out.failed(tr.error or f"training {tr.status}")
        elif not out.ok:
            out = out.failed(
                f"no finite validation loss ({tr.n_nan_skips}/{tr.steps} steps non-finite)"
            )
        self._say(c, _describe(out))
        return out

    def _say(self, c: Candidate, text: str) -> None:
        with self._print_lock:
            print(f"  [{c.candidate_id} {c.activation:>6}] {text}", flush=True)


class _StopHook(TrainerHook):
    """Raises ``KeyboardInterrupt`` in the training thread once the search is stopping."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt


def _fill_from_train_result(out: CandidateResult, tr: Any, hook: Any) -> None:
    out.steps = tr.steps
    out.best_val_loss = tr.best_val_loss
    out.final_val_loss = tr.final_val_loss
    out.final_loss = tr.last_loss
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
    if not r.ok:
        return f"failed: {r.failure_reason}"
    tps = f"{r.tokens_per_sec:,.0f} tok/s" if r.tokens_per_sec else "- tok/s"
    return f"best val {r.best_val_loss:.4f} | {tps} | {r.elapsed_s:.1f}s"


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
) -> SearchOutcome:
    """Run the FFN activation search of ``resolved`` and write its artifacts.

    ``lake_url`` None means the default lake (``$ALPHA_LAKE`` or ``./lake``);
    ``use_lake=False`` writes only the run directory. ``executor`` decides how
    the loop's steps run (default: ``ThreadExecutor`` with ``slots``, see
    ``resolve_slots``). ``max_search_minutes`` (default
    ``DEFAULT_MAX_SEARCH_MINUTES``, 0 = no limit) scales the search down to
    what the timing probe says fits, or refuses it (``ConfigError``).
    """
    if resolved.symbio_config is None:
        raise ConfigError("--symbio: the activation search needs symbio mode")
    device = device_type(resolved.train)
    n_slots = getattr(executor, "slots", None) or resolve_slots(device, slots)
    search = _Search(
        resolved,
        device=device,
        slots=n_slots,
        executor=executor or ThreadExecutor(n_slots),
        lake_url=lake_url,
        use_lake=use_lake,
        progress=progress and n_slots == 1,  # one progress bar at a time
        flow_run_id=flow_run_id,
        on_generation=on_generation,
        extra_hooks=extra_hooks,
        max_minutes=check_budget_minutes(max_search_minutes),
    )
    return search.run()


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
        self.cfg: TrainConfig = resolved.train
        self.symbio: SymbioConfig = resolved.symbio_config
        self.run_id: str = resolved.run_id
        self.run_dir = Path(resolved.run_dir)
        self.steps = steps_per_candidate(resolved)
        self.plan = SearchPlan.from_symbio(self.symbio, steps=self.steps, seed=self.cfg.seed)
        self.device, self.slots, self.executor = device, slots, executor
        self.lake_url, self.use_lake, self.progress = lake_url, use_lake, progress
        self.flow_run_id, self.on_generation = flow_run_id, on_generation
        self.sink: Any = None
        self.started_at = datetime.now(UTC)
        self.generations: list[GenerationResult] = []
        self.estimate: Estimate | None = None
        self.t0 = time.perf_counter()

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
        try:
            run_generations(
                self.plan, self._trainer(), self.executor, on_generation=self._generation_done
            )
        except Exception as exc:
            status, error = "failed", _one_line(exc)
            raise
        except BaseException as exc:  # Ctrl-C, Prefect's cancel (TerminationSignal), SystemExit
            status, error = "cancelled", f"interrupted ({type(exc).__name__})"
            raise
        finally:
            if status == "completed" and pick_winner(self.generations) is None:
                status, error = "failed", "no candidate finished training"
            outcome = self._finish(status, error)
        return outcome

    def _announce(self) -> None:
        p = self.plan
        print(
            f"symbio search {self.run_id}: {p.strategy}, {p.generations} generation(s) x "
            f"{p.population_size} candidates x {p.steps} steps, pool {list(p.pool)}, "
            f"rank by {p.rank_by}, {self.slots} slot(s) on {self.device}",
            flush=True,
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
        from model.trainer import train

        act = probe_activation(self.plan.pool)
        try:
            probe = run_probe(train, self.cfg, act, self.run_dir / ".probe", n)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - an estimate is advice, not a requirement
            print(f"search estimate unavailable: {_one_line(exc)}", flush=True)
            return None
        est = estimate_search(
            probe,
            candidates=self.plan.total_candidates,
            steps=self.steps,
            eval_interval=min(self.cfg.eval_interval, self.steps),
        )
        print(est.describe(self.slots), flush=True)
        return est

    def _apply_budget(self) -> None:
        """Scale the plan to ``max_minutes`` (or refuse it); docs/search.md, Duration."""
        if self.estimate is None or not self.max_minutes:
            return
        p, before = self.estimate.probe, self.plan
        left = self.max_minutes * 60 - (time.perf_counter() - self.t0)
        fit = fit_budget(
            p, population_size=before.population_size, generations=before.generations,
            steps=self.steps, eval_interval=self.cfg.eval_interval,
            min_population=len(before.pool), budget_s=max(0.0, left) * BUDGET_MARGIN,
        )  # fmt: skip
        was = (before.population_size, before.generations, self.steps)
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
        self.estimate = estimate_search(
            p, candidates=self.plan.total_candidates, steps=self.steps,
            eval_interval=min(self.cfg.eval_interval, self.steps),
        )  # fmt: skip

    def _trainer(self) -> CandidateTrainer:
        return CandidateTrainer(
            base=self.cfg,
            symbio=self.symbio,
            run_id=self.run_id,
            run_dir=self.run_dir,
            steps=self.steps,
            sink=self.sink,
            progress=self.progress,
            run_meta=self.resolved.run_meta(),
            extra_hooks=self.extra_hooks,
        )

    def _generation_done(self, gen: GenerationResult) -> None:
        self.generations.append(gen)
        best = gen.best
        done = len(self.generations)
        left = self.plan.generations - done
        eta = f", about {format_duration(gen.wall_s * left)} left" if left else ""
        best_txt = f"{best.activation} {best.best_val_loss:.4f}" if best.ok else "none trained"
        print(
            f"generation {gen.generation}: best {best_txt}; diversity "
            f"{gen.architecture_diversity:.2f}; {format_duration(gen.wall_s)}{eta}",
            flush=True,
        )
        winner = pick_winner(self.generations)
        wid = winner.candidate.candidate_id if winner and left == 0 else None
        if self.symbio.write_candidates:
            with (self.run_dir / CANDIDATES_FILE).open("a", encoding="utf-8") as f:
                for r in gen.ranked:
                    rec = candidate_record(r, gen, wid)
                    f.write(json.dumps(rec, allow_nan=False) + "\n")
        if self.sink is not None:
            self.sink.write_candidates(candidate_lake_rows(gen, wid))
        _prune_checkpoints(gen, keep=best.candidate.candidate_id if best.ok else None)
        if self.on_generation is not None:
            self.on_generation(gen)

    def _finish(self, status: str, error: str | None) -> SearchOutcome:
        elapsed = time.perf_counter() - self.t0
        winner = pick_winner(self.generations)
        summary = build_summary(
            run_id=self.run_id,
            plan=self.plan,
            symbio_config=self.symbio.to_camel_dict(),
            train_config={**self.cfg.model_dump(mode="json"), "steps_per_candidate": self.steps},
            baseline_activation=self.cfg.activation,
            generations=self.generations,
            status=status,
            elapsed_s=elapsed,
            estimate_s=self.estimate.total_s if self.estimate else None,
        )
        summary["slots"] = self.slots
        summary["device"] = self.device
        artifacts = self._write_artifacts(summary)
        self._write_run(status, error=error, winner=winner)
        sink_stats = self._close_sink()
        print(
            f"symbio search {status} in {format_duration(elapsed)}: {summary['recommendation']}",
            flush=True,
        )
        for name, path in artifacts.items():
            print(f"  {name}: {path}", flush=True)
        if winner is not None:
            print(f"  winner checkpoint: {winner.run_dir}", flush=True)
        return SearchOutcome(
            run_id=self.run_id,
            run_dir=self.run_dir,
            status=status,
            mode=SEARCH_MODE,
            winner=winner_record(winner),
            generations=self.generations,
            summary=summary,
            artifacts=artifacts,
            elapsed_s=elapsed,
            estimate_s=summary["estimated_s"],
            slots=self.slots,
            error=error,
            lake_url=self.lake_url,
            sink_stats=sink_stats,
        )

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
                self.run_dir / REPORT_FILE, report_markdown(summary, self.generations)
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
        self, status: str, *, error: str | None = None, winner: CandidateResult | None = None
    ) -> None:
        if self.sink is None:
            return
        self.sink.write_run(self._run_row(status, error, winner))

    def _run_row(self, status: str, error: str | None, winner: CandidateResult | None) -> dict:
        now = datetime.now(UTC)
        done = [r for g in self.generations for r in g.ranked]
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
            "total_iters": self.plan.total_candidates * self.steps,
            "latest_step": max((r.step_offset + r.steps for r in done), default=None),
            "last_loss": _finite(winner.final_loss) if winner else None,
            "best_val_loss": _finite(winner.best_val_loss) if winner else None,
            "param_count": winner.param_count if winner else None,
            "host": socket.gethostname(),
            "device": self.device,
            "gpu_name": _gpu_name(self.device),
            "run_dir": str(self.run_dir.resolve()),
            "error": error,
            "symbio": 1,
            "symbio_config": self.symbio.to_camel_json(),
            "ffn_activation": self.cfg.activation,
            "symbio_winner": json.dumps(winner_record(winner)) if winner else None,
            "symbio_mode": SEARCH_MODE,
            "flow_run_id": self.flow_run_id,
        }


def _prune_checkpoints(gen: GenerationResult, keep: str | None) -> None:
    """Keep only the generation best's checkpoint: a search of 24 models adds up on disk."""
    for r in gen.ranked:
        if r.candidate.candidate_id == keep or not r.run_dir:
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
