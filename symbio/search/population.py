"""Populations: the initial one, and the per-generation population statistics.

The statistics themselves are ``symbio.metrics``' (PRD §8.6, §8.7, §8.11):
``architecture_diversity`` (fraction of unique activations),
``activation_distribution`` (JSON map activation -> count) and
``population_entropy`` (softmax entropy of the generation's fitness, nats).
``activation_counts`` is the same distribution as a dict, for reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from symbio.metrics import activation_distribution, architecture_diversity, population_entropy
from symbio.search.candidate import Candidate, candidate_id

__all__ = [
    "activation_counts",
    "activation_distribution",
    "architecture_diversity",
    "initial_population",
    "population_entropy",
]


def initial_population(
    pool: Sequence[str], size: int, *, seed: int, ordinal_start: int = 0
) -> list[Candidate]:
    """One candidate per activation of ``pool``, then duplicates (cycling the pool) to ``size``.

    When ``size`` is smaller than the pool, the first ``size`` activations are
    used. Candidate ``i`` trains with seed ``seed + ordinal``: duplicates are
    independent replicates rather than identical copies.
    """
    if not pool:
        raise ValueError("activation pool is empty")
    if size < 1:
        raise ValueError("population size must be >= 1")
    return [
        Candidate(
            candidate_id=candidate_id(0, i),
            activation=pool[i % len(pool)],
            generation=0,
            index=i,
            ordinal=ordinal_start + i,
            seed=seed + ordinal_start + i,
            mutation_ops=("init",),
        )
        for i in range(size)
    ]


def activation_counts(activations: Sequence[str]) -> dict[str, int]:
    """``{"gelu": 2, "relu": 1}``, keys sorted."""
    counts = Counter(activations)
    return {k: counts[k] for k in sorted(counts)}
