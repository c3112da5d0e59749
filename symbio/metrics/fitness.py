"""Complexity, instability and fitness (PRD §8.9, §14.3). Pure functions.

    fitness = fitnessAlpha * (-best_val_loss)
            + perfWeight * ln(tokens_per_sec_mean)
            + stabilityWeight * (-instability)

``instability`` is the sum of four rates, each 0 for a perfectly calm run:

- spike rate: fraction of steps with ``grad_norm > spike_threshold``
  (0 when the threshold is 0, i.e. spike detection off);
- clip saturation: fraction of steps with ``clip_coef < 0.5`` (clipping
  removed more than half of the gradient);
- skip rate: NaN / spike skip events per step;
- step-time variance: coefficient of variation (std / mean) of step time
  after warm-up.

``InstabilityTracker`` accumulates the same quantities step by step in O(1),
for the hook; ``instability_score`` computes them from whole series, for the
search. Both give the same number for the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CLIP_SATURATION = 0.5
SKIP_EVENTS = frozenset({"spike_skip", "nan_skip"})


def complexity_score(
    mode: str,
    param_count: int,
    weight_entropy: float | None = None,
    effective_rank: float | None = None,
) -> float:
    """Complexity term of PRD §8.9 in one of the modes ``params``, ``entropy``, ``mdl``."""
    n = max(1, int(param_count))
    if mode == "params":
        return 1.0 / (1.0 + n / 1000.0)
    if mode == "entropy":
        if weight_entropy is None:
            raise ValueError("complexity mode 'entropy' needs weight_entropy")
        return float(weight_entropy) / max(1.0, math.log2(n))
    if mode == "mdl":
        if effective_rank is None:
            raise ValueError("complexity mode 'mdl' needs effective_rank")
        return float(effective_rank) * math.log2(max(2, n)) / n
    raise ValueError(f"unknown complexity mode {mode!r}")


@dataclass(frozen=True)
class Instability:
    spike_rate: float
    clip_saturation: float
    skip_rate: float
    step_time_cv: float

    @property
    def score(self) -> float:
        return self.spike_rate + self.clip_saturation + self.skip_rate + self.step_time_cv


def instability_score(
    grad_norms: Sequence[float],
    clip_coefs: Sequence[float],
    events: Sequence[str | None],
    step_ms: Sequence[float],
    *,
    spike_threshold: float = 0.0,
    warmup_steps: int = 0,
) -> Instability:
    """Instability of a run from its per-step series (all the same length)."""
    tracker = InstabilityTracker(spike_threshold, warmup_steps)
    for g, c, e, ms in zip(grad_norms, clip_coefs, events, step_ms, strict=True):
        tracker.add(g, c, e, ms)
    return tracker.result()


class InstabilityTracker:
    """Running version of ``instability_score`` (Welford for the step-time variance)."""

    def __init__(self, spike_threshold: float = 0.0, warmup_steps: int = 0) -> None:
        self.spike_threshold = float(spike_threshold)
        self.warmup_steps = int(warmup_steps)
        self.steps = self.spikes = self.saturated = self.skips = 0
        self._n = 0
        self._mean = self._m2 = 0.0

    def add(
        self,
        grad_norm: float | None,
        clip_coef: float | None,
        event: str | None,
        step_ms: float | None,
    ) -> None:
        self.steps += 1
        if self.spike_threshold > 0 and _finite(grad_norm) and grad_norm > self.spike_threshold:
            self.spikes += 1
        if _finite(clip_coef) and clip_coef < CLIP_SATURATION:
            self.saturated += 1
        if event in SKIP_EVENTS or (grad_norm is not None and not _finite(grad_norm)):
            self.skips += 1
        if self.steps > self.warmup_steps and _finite(step_ms):
            self._n += 1
            delta = step_ms - self._mean
            self._mean += delta / self._n
            self._m2 += delta * (step_ms - self._mean)

    def result(self) -> Instability:
        n = max(1, self.steps)
        cv = 0.0
        if self._n >= 2 and self._mean > 0:
            cv = math.sqrt(self._m2 / (self._n - 1)) / self._mean
        return Instability(self.spikes / n, self.saturated / n, self.skips / n, cv)


def fitness(
    best_val_loss: float | None,
    *,
    tokens_per_sec_mean: float | None = None,
    instability: float = 0.0,
    alpha: float = 1.0,
    perf_weight: float = 0.0,
    stability_weight: float = 0.0,
) -> float:
    """Multi-objective fitness (higher is better); ``-inf`` without a finite val loss."""
    if not _finite(best_val_loss):
        return -math.inf
    score = alpha * -float(best_val_loss)
    if perf_weight and _finite(tokens_per_sec_mean) and tokens_per_sec_mean > 0:
        score += perf_weight * math.log(tokens_per_sec_mean)
    if stability_weight:
        score += stability_weight * -float(instability)
    return score


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
