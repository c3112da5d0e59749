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

A candidate then costs ``setup_s + steps * ms_per_iter + n_evals * eval_s``
with ``n_evals = ceil(steps / eval_interval)``, and the search costs that
times the number of candidates: the estimate assumes candidates run one after
another (concurrent slots can only shorten it). After each generation the
runner prints a revised estimate from the measured generation wall time.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_STEPS = 8


@dataclass(frozen=True)
class Probe:
    activation: str
    steps: int
    ms_per_iter: float
    eval_s: float
    setup_s: float


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
            f"({self.candidates} candidates x {format_duration(self.per_candidate_s)}; {how}{note})"
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
    train_fn: Callable[..., Any], cfg: Any, activation: str, scratch: Path, steps: int
) -> Probe:
    """Train ``steps`` steps of ``activation`` with ``cfg`` in ``scratch`` (then removed)."""
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
        result = train_fn(pcfg, (), run_id="search-probe", progress=False)
    finally:
        wall = time.perf_counter() - t0
        shutil.rmtree(scratch, ignore_errors=True)
    if result.status != "completed" or not result.ms_per_iter_median:
        raise RuntimeError(result.error or f"probe {result.status}")
    ms = float(result.ms_per_iter_median)
    eval_s = max(0.0, result.elapsed_s - steps * ms / 1000.0)
    return Probe(activation, steps, ms, eval_s, max(0.0, wall - result.elapsed_s))


def estimate_search(probe: Probe, *, candidates: int, steps: int, eval_interval: int) -> Estimate:
    n_evals = math.ceil(steps / max(1, eval_interval))
    per = probe.setup_s + steps * probe.ms_per_iter / 1000.0 + n_evals * probe.eval_s
    return Estimate(per, per * candidates, candidates, probe)


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
