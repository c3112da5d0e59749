"""Populations: generation 0, and the per-generation population statistics.

Generation 0 is the activation pool, every candidate with the *same* initial
weight seed and data seed (common random numbers: a comparison inside a
generation never mixes seed noise into activation differences). Without the
lr gene the population is the pool once (a duplicate with the same seeds would
repeat its twin; ``populationSize`` only caps it); with the lr gene,
``populationSize`` candidates cycle the pool over ``ceil(size / len(pool))``
peak learning rates, log-spaced cell centres of ``lrGeneRange``.

The statistics are ``symbio.metrics``' (PRD §8.6, §8.7, §8.11):
``architecture_diversity`` (fraction of unique activations),
``activation_distribution`` (JSON map activation -> count) and
``population_entropy`` (softmax entropy of the generation's fitness, nats).
``activation_counts`` is the same distribution as a dict, for reports.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from symbio.metrics import activation_distribution, architecture_diversity, population_entropy
from symbio.search.candidate import Candidate, candidate_id

__all__ = [
    "activation_counts",
    "activation_distribution",
    "architecture_diversity",
    "initial_population",
    "lr_grid",
    "population_entropy",
]


def lr_grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` learning rates at the centres of ``n`` equal log-width cells of ``[lo, hi]``."""
    ratio = hi / lo
    return [lo * ratio ** ((j + 0.5) / n) for j in range(n)]


def initial_size(pool_size: int, population_size: int, lr_gene: bool) -> int:
    """How many candidates generation 0 trains."""
    return population_size if lr_gene else min(population_size, pool_size)


def initial_population(
    pool: Sequence[str],
    size: int,
    *,
    seed: int,
    data_seed: int | None = None,
    lr_range: tuple[float, float] | None = None,
    steps: int = 1000,
    horizon: int | None = None,
) -> list[Candidate]:
    """Generation 0 (see the module docstring); ``lr_range`` turns the lr gene on.

    Without the lr gene the first ``min(size, len(pool))`` activations are used.
    """
    if not pool:
        raise ValueError("activation pool is empty")
    if size < 1:
        raise ValueError("population size must be >= 1")
    n = size if lr_range else min(size, len(pool))
    lrs = lr_grid(*lr_range, math.ceil(n / len(pool))) if lr_range else None
    return [
        Candidate(
            candidate_id=candidate_id(0, i),
            activation=pool[i % len(pool)],
            generation=0,
            index=i,
            ordinal=i,
            seed=seed,
            mutation_ops=("init",),
            data_seed=seed if data_seed is None else data_seed,
            lr=lrs[i // len(pool)] if lrs else None,
            iters=steps,
            horizon=horizon,
        )
        for i in range(n)
    ]


def activation_counts(activations: Sequence[str]) -> dict[str, int]:
    """``{"gelu": 2, "relu": 1}``, keys sorted."""
    counts = Counter(activations)
    return {k: counts[k] for k in sorted(counts)}
