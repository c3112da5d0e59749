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

A run then costs ``setup_s + steps * ms_per_iter + n_evals * eval_s``
with ``n_evals = ceil(steps / eval_interval)``, and the search costs the sum
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
        n_evals = math.ceil(steps / max(1, eval_interval))
        total += n * (probe.setup_s + steps * probe.ms_per_iter / 1000.0 + n_evals * probe.eval_s)
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
