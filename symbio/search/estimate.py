"""How long will a search take? A timing probe, printed before the search starts.

The probe trains the pool's most expensive activation (SwiGLU has three FFN
matrices, the others two) for ``PROBE_STEPS`` steps with the search's exact
settings, in a scratch folder that is deleted afterwards. It measures:

- ``setup_s``: everything per candidate that is not a training step (tokenising
  the corpus, building the model, the final sample), taken as the probe's wall
  time minus its training time;
- ``ms_per_iter``: the median step time (the first step, with its warm-up, is
  excluded by the engine);
- ``eval_s``: one evaluation plus the checkpoint written with it (the probe
  ends with both).

A run then costs ``setup_s + CANDIDATE_OVERHEAD_S + steps * ms_per_iter + n_evals *
eval_s`` with ``n_evals = ceil(steps / eval_interval)``, and the search costs the sum
over its planned runs (each generation's candidates, then the confirmation's
at most three activations x ``confirmSeeds``): the estimate assumes runs go
one after another (concurrent slots can only shorten it). After each
generation the runner prints a revised estimate from the measured wall time.

The probe also tells whether candidates will learn anything before they are
compared (``learning_warning``): it measures the training loss drop over its
steps and extrapolates it, *linearly in the area under the lr schedule*
(sum of lr over the steps), to the first generation. That is optimistic
(loss curves flatten), so when even the extrapolated drop is under
``WARN_DROP`` of the initial loss, generation 0 would rank candidates near
their initial loss and the search prints a warning before it starts.

**Budget.** ``fit_budget`` checks the estimate against ``max_search_minutes``
(default ``DEFAULT_MAX_SEARCH_MINUTES``; 0 = no limit) and, when the search
does not fit, scales it down rather than refusing it (a deployment run with no
parameters should finish, not fail): first fewer generations (every candidate
keeps its full training length), then fewer candidates (down to one per
activation of the pool), then fewer steps (down to ``MIN_STEPS``). Only a
search that does not fit even then is refused.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_STEPS = 8
WARN_DROP = 0.05
#: The budget of a search when none is given: ``alpha train --symbio`` and a
#: no-parameter ``alpha/symbio`` deployment run both finish within an hour.
DEFAULT_MAX_SEARCH_MINUTES = 60.0
#: The plan is fitted to this share of the budget left: the estimate is a
#: measurement of a few steps, not a promise (and symbio hooks, off in the probe,
#: add to every step).
BUDGET_MARGIN = 0.8
#: Per-candidate cost the probe does not see: its hooks and lake sink, the task
#: run around it (measured ~2 s on a 2-core CPU box with the default model).
CANDIDATE_OVERHEAD_S = 2.0
#: Fewest steps per candidate a scaled-down search keeps (fewer rank noise).
MIN_STEPS = 20


@dataclass(frozen=True)
class Probe:
    activation: str
    steps: int
    ms_per_iter: float
    eval_s: float
    setup_s: float
    first_loss: float | None = None  # training loss of step 1 (before any update)
    last_loss: float | None = None  # mean training loss of the last two steps
    lr_area: float | None = None  # sum of the probe's lr over its steps


@dataclass(frozen=True)
class Estimate:
    per_candidate_s: float
    total_s: float
    candidates: int
    probe: Probe

    def describe(self, slots: int) -> str:
        p = self.probe
        how = (
            f"timing probe: {p.steps} steps of {p.activation}, {p.ms_per_iter:.1f} ms/step, "
            f"eval+checkpoint {p.eval_s:.2f} s, setup {p.setup_s:.2f} s"
        )
        note = "" if slots == 1 else f"; assumes no speed-up from {slots} concurrent slots"
        return (
            f"estimated search time {format_duration(self.total_s)} "
            f"({self.candidates} runs x {format_duration(self.per_candidate_s)} on average; {how}{note})"
        )


def probe_steps() -> int:
    """``ALPHA_SEARCH_PROBE_STEPS`` (0 turns the probe off), default ``PROBE_STEPS``."""
    try:
        return max(0, int(os.environ.get("ALPHA_SEARCH_PROBE_STEPS", PROBE_STEPS)))
    except ValueError:
        return PROBE_STEPS


def probe_activation(pool: tuple[str, ...]) -> str:
    return "swiglu" if "swiglu" in pool else pool[0]


def run_probe(
    train_fn: Callable[..., Any],
    cfg: Any,
    activation: str,
    scratch: Path,
    steps: int,
    lr_at: Callable[[Any, int], float] | None = None,
) -> Probe:
    """Train ``steps`` steps of ``activation`` with ``cfg`` in ``scratch`` (then removed).

    ``lr_at(cfg, step)`` (the engine's schedule) gives the probe's lr area.
    """
    steps = max(2, steps)
    pcfg = cfg.model_copy(
        update={
            "activation": activation,
            "iters": steps,
            "eval_interval": steps,
            "warmup_iters": 0,
            "run_dir": str(scratch),
            "resume": None,
        }
    )
    t0 = time.perf_counter()
    try:
        result = train_fn(pcfg, (), run_id="search-probe", progress=False, eval_test=False)
    finally:
        wall = time.perf_counter() - t0
        shutil.rmtree(scratch, ignore_errors=True)
    if result.status != "completed" or not result.ms_per_iter_median:
        raise RuntimeError(result.error or f"probe {result.status}")
    ms = float(result.ms_per_iter_median)
    eval_s = max(0.0, result.elapsed_s - steps * ms / 1000.0)
    losses = [x for x in getattr(result, "losses", []) if math.isfinite(x)]
    return Probe(
        activation,
        steps,
        ms,
        eval_s,
        max(0.0, wall - result.elapsed_s),
        first_loss=losses[0] if losses else None,
        last_loss=sum(losses[-2:]) / len(losses[-2:]) if losses else None,
        lr_area=sum(lr_at(pcfg, t) for t in range(1, steps + 1)) if lr_at else None,
    )


def estimate_runs(
    probe: Probe, runs: Sequence[tuple[int, int]], *, eval_interval: int
) -> Estimate:
    """The serial time of ``runs``: ``(count, steps)`` pairs."""
    total, count = 0.0, 0
    for n, steps in runs:
        total += n * candidate_seconds(probe, steps, eval_interval)
        count += n
    return Estimate(total / max(1, count), total, count, probe)


def estimate_search(probe: Probe, *, candidates: int, steps: int, eval_interval: int) -> Estimate:
    """``candidates`` runs of ``steps`` steps each."""
    return estimate_runs(probe, [(candidates, steps)], eval_interval=eval_interval)


def learning_warning(probe: Probe, rung_lr_area: float, rung_steps: int) -> str | None:
    """A warning when generation 0 would compare candidates near their initial loss."""
    first, last, area = probe.first_loss, probe.last_loss, probe.lr_area
    if first is None or last is None or not area or first <= 0:
        return None
    drop = max(0.0, first - last)
    expected = drop * rung_lr_area / area
    if expected >= WARN_DROP * first:
        return None
    return (
        f"warning: generation 0 would compare candidates near their initial loss: the probe's "
        f"training loss fell {drop:.3f} in {probe.steps} steps; extrapolated (linearly in "
        f"lr x steps, optimistic) to the first {rung_steps} steps of the search's schedule "
        f"that is {expected:.3f}, under {100 * WARN_DROP:.0f}% of the initial loss {first:.3f}. "
        "Raise lr, shorten warmupIters, raise stepsPerCandidate, or set lrGene."
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass(frozen=True)
class BudgetFit:
    """A search plan checked against a budget.

    ``population_size``/``generations``/``steps`` is the plan that fits (equal
    to the input when it already fitted); ``fits`` is False when nothing down
    to one generation of one candidate per activation at ``MIN_STEPS`` does.
    """

    population_size: int
    generations: int
    steps: int
    estimate_s: float
    budget_s: float
    changed: bool
    fits: bool

    def describe(self, before: tuple[int, int, int], minutes: float) -> str:
        """One line: the new plan (or the refusal), with the numbers behind it."""
        pop, gens, steps = before
        flag = f"--max-search-minutes {minutes:g}"
        if not self.fits:
            return (
                f"search refused: even {self.generations} generation x {self.population_size} "
                f"candidates x {self.steps} steps needs about "
                f"{format_duration(math.ceil(self.estimate_s))} and {flag} leaves "
                f"{format_duration(math.floor(self.budget_s))} for it (after the timing "
                "probe, with a safety margin); raise it (0 = no limit) or use a faster device"
            )
        return (
            f"search scaled down to fit {flag} (0 = no limit): {gens} generation(s) x {pop} "
            f"candidates x {steps} steps -> {self.generations} x {self.population_size} x "
            f"{self.steps}, estimated {format_duration(self.estimate_s)} "
            f"(planned to {format_duration(self.budget_s)})"
        )


def candidate_seconds(probe: Probe, steps: int, eval_interval: int) -> float:
    """Estimated wall time of one candidate of ``steps`` steps (evals as the runner sets them)."""
    every = max(1, min(eval_interval, steps))
    fixed = probe.setup_s + CANDIDATE_OVERHEAD_S
    return fixed + steps * probe.ms_per_iter / 1000.0 + math.ceil(steps / every) * probe.eval_s


def fit_budget(
    cost: Callable[[int, int, int], float],
    *,
    population_size: int,
    generations: int,
    steps: int,
    min_population: int,
    budget_s: float,
    min_steps: int = MIN_STEPS,
) -> BudgetFit:
    """The largest plan whose serial estimate ``cost(population, generations, steps)``
    (seconds: the search's runs, confirmation included) fits ``budget_s``.

    Shrinks generations first, then candidates (to ``min_population``, one per
    activation), then steps (to ``min_steps``); never grows anything.
    """
    min_population = max(1, min(min_population, population_size))
    min_steps = max(1, min(min_steps, steps))

    def total(p: int, g: int, s: int) -> float:
        return cost(p, g, s)

    def fit(p: int, g: int, s: int, ok: bool = True) -> BudgetFit:
        changed = (p, g, s) != (population_size, generations, steps)
        return BudgetFit(p, g, s, total(p, g, s), budget_s, changed, ok)

    if total(population_size, generations, steps) <= budget_s:
        return fit(population_size, generations, steps)
    for g in range(generations - 1, 0, -1):
        if total(population_size, g, steps) <= budget_s:
            return fit(population_size, g, steps)
    for p in range(population_size - 1, min_population - 1, -1):
        if total(p, 1, steps) <= budget_s:
            return fit(p, 1, steps)
    if total(min_population, 1, min_steps) > budget_s:
        return fit(min_population, 1, min_steps, ok=False)
    lo, hi = min_steps, steps  # total(lo) fits, total(hi) does not: bisect the longest that fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(min_population, 1, mid) <= budget_s else (lo, mid)
    return fit(min_population, 1, lo)
