"""Ranking, selection and mutation: how one generation becomes the next.

Ranking (``rankBy``): ``valLoss`` sorts by best validation loss (lower is
better), ``fitness`` by the PRD §14.3 fitness (higher is better). Failed
candidates always rank last, in candidate order. Ties break by ordinal, so a
ranking is a pure function of the results.

``evolutionary`` builds the next generation of ``populationSize`` children:

1. **Elitism** (one elite): the best candidate of the generation, if it
   trained, is carried into the next generation unmutated
   (``mutation_ops=["elite"]``). Like every candidate it is re-trained from
   scratch with a fresh seed, which re-measures the front-runner instead of
   trusting one noisy sample.
2. **Selection** fills the other slots with parents:
   ``topk`` keeps the best ``ceil(n / 2)`` trained candidates and cycles through
   them in rank order; ``tournament`` draws ``tournamentK`` entrants uniformly
   (with replacement) from the whole generation per slot and keeps the best.
3. **Mutation**: each non-elite child swaps its activation for a different one
   of ``activationPool`` with probability ``mutationRate``
   (``["swap:gelu->relu"]``), otherwise it is a ``["clone"]``.

If no candidate of a generation trained, the next one is re-seeded from the
pool (``["reseed"]``). ``exhaustive`` trains every activation of the pool once,
in a single generation; ``populationSize``, selection and mutation do not apply.

All randomness comes from one ``random.Random`` owned by the search and seeded
from the run's seed, so a search is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from symbio.search.candidate import Candidate, CandidateResult, candidate_id

RANK_BY = ("valLoss", "fitness")
SELECTIONS = ("topk", "tournament")


def rank_key(result: CandidateResult, rank_by: str) -> tuple:
    if not result.ok:
        return (1, 0.0, result.candidate.ordinal)
    if rank_by == "fitness":
        fit = result.fitness if result.fitness is not None else -math.inf
        return (0, -fit, result.candidate.ordinal)
    if rank_by == "valLoss":
        return (0, result.best_val_loss, result.candidate.ordinal)
    raise ValueError(f"rankBy: unknown value {rank_by!r} (choose from {', '.join(RANK_BY)})")


def rank(results: Sequence[CandidateResult], rank_by: str) -> list[CandidateResult]:
    """Results best-first, each with ``rank`` set (1 = best)."""
    ranked = sorted(results, key=lambda r: rank_key(r, rank_by))
    for i, r in enumerate(ranked, start=1):
        r.rank = i
    return ranked


def select_topk(ranked: Sequence[CandidateResult], n: int) -> list[CandidateResult]:
    """``n`` parents cycling through the best ``ceil(len/2)`` trained candidates."""
    survivors = [r for r in ranked if r.ok][: max(1, math.ceil(len(ranked) / 2))]
    if not survivors:
        return []
    return [survivors[i % len(survivors)] for i in range(n)]


def select_tournament(
    ranked: Sequence[CandidateResult], n: int, k: int, rng: random.Random
) -> list[CandidateResult]:
    """``n`` parents, each the best-ranked of ``k`` uniform draws (with replacement)."""
    if not any(r.ok for r in ranked):
        return []
    pos = {id(r): i for i, r in enumerate(ranked)}
    parents = []
    for _ in range(n):
        entrants = [ranked[rng.randrange(len(ranked))] for _ in range(k)]
        parents.append(min(entrants, key=lambda r: pos[id(r)]))
    return parents


def mutate(activation: str, pool: Sequence[str], rate: float, rng: random.Random) -> str | None:
    """With probability ``rate`` a different activation of ``pool``, else ``None`` (clone).

    One uniform draw decides whether to mutate, then one picks the new
    activation, so the mutation frequency is exactly ``rate`` in expectation.
    """
    choices = [a for a in pool if a != activation]
    if rng.random() >= rate or not choices:
        return None
    return rng.choice(choices)


def next_generation(
    ranked: Sequence[CandidateResult],
    *,
    generation: int,
    pool: Sequence[str],
    population_size: int,
    selection: str,
    tournament_k: int,
    mutation_rate: float,
    base_seed: int,
    ordinal_start: int,
    rng: random.Random,
) -> list[Candidate]:
    """The children of a ranked generation (see the module docstring)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selectionStrategy: unknown value {selection!r}")

    def make(i: int, act: str, parents: tuple[str, ...], ops: tuple[str, ...]) -> Candidate:
        ordinal = ordinal_start + i
        return Candidate(
            candidate_id(generation, i), act, generation, i, ordinal, base_seed + ordinal,
            parent_ids=parents, mutation_ops=ops,
        )  # fmt: skip

    best = ranked[0] if ranked and ranked[0].ok else None
    if best is None:  # nothing trained: start again from the pool
        return [make(i, pool[i % len(pool)], (), ("reseed",)) for i in range(population_size)]
    children = [make(0, best.activation, (best.candidate.candidate_id,), ("elite",))]
    n = population_size - 1
    if selection == "topk":
        parents = select_topk(ranked, n)
    else:
        parents = select_tournament(ranked, n, tournament_k, rng)
    for i, parent in enumerate(parents, start=1):
        new = mutate(parent.activation, pool, mutation_rate, rng)
        ops = (f"swap:{parent.activation}->{new}",) if new else ("clone",)
        children.append(make(i, new or parent.activation, (parent.candidate.candidate_id,), ops))
    return children
