"""Candidate fitness: PRD §14.3 via ``symbio.metrics``, plus the diversity bonus.

The fitness formula and the instability score live in
``symbio.metrics.fitness`` (shared with the per-step ``fitness_score``); the
search only adds ``diversityBonus``: when it is > 0, a candidate whose
activation is rare in its generation gains
``bonus(generation) * (1 - share_of_its_activation)``, where
``bonus(generation)`` decays per ``diversityDecay`` (``none``, ``linear`` or
``cosine`` from the full bonus in generation 0 to 0 in the last one).
"""

from __future__ import annotations

import math

from symbio.metrics import fitness as prd_fitness


def candidate_fitness(
    best_val_loss: float | None,
    tokens_per_sec: float | None,
    instability: float,
    *,
    alpha: float,
    perf_weight: float,
    stability_weight: float,
) -> float:
    """PRD §14.3 fitness (higher is better, ``-inf`` without a finite val loss)."""
    return prd_fitness(
        best_val_loss,
        tokens_per_sec_mean=tokens_per_sec,
        instability=instability,
        alpha=alpha,
        perf_weight=perf_weight,
        stability_weight=stability_weight,
    )


def diversity_weight(bonus: float, decay: str, generation: int, generations: int) -> float:
    """``diversityBonus`` after ``diversityDecay`` at ``generation`` (0-based)."""
    if bonus <= 0 or decay == "none" or generations <= 1:
        return bonus
    t = generation / (generations - 1)
    if decay == "linear":
        return bonus * (1 - t)
    if decay == "cosine":
        return bonus * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"diversityDecay: unknown value {decay!r}")
