"""Ranking, selection and exploration: how one generation becomes the next.

Ranking (``rankBy``): ``valLoss`` sorts by the validation loss at the end of
the generation (``final_val_loss``: every candidate of a generation has the
same total steps, so this compares like with like), ``fitness`` by the PRD
§14.3 fitness (higher is better). Unhealthy candidates (``failed``/``stalled``)
always rank last, in candidate order. Ties break by ordinal, so a ranking is a
pure function of the results.

``evolutionary`` is successive halving with PBT-style exploit/explore:

1. **Halving.** The next generation keeps ``size = ceil(n / halvingEta)``
   healthy candidates (at most ``n - 1``): ``topk`` keeps the best ``size``;
   ``tournament`` picks them one by one, each the best of ``tournamentK``
   uniform draws (with replacement) among those not yet picked.
2. **Continue.** Each survivor continues its own checkpoint (weights,
   optimizer state, data position) for ``stepsPerCandidate`` more steps
   (``["continue"]``): nothing trained is thrown away.
3. **Exploit/explore** (PBT). Every survivor but the best, with probability
   ``mutationRate``, is replaced by a copy of a better survivor's checkpoint
   (``topk``: the best; ``tournament``: a tournament among the better ones),
   then explored: its activation swaps to another one of the pool with the
   same weight shapes (gelu/relu/silu are interchangeable, swiglu is not), or
   with ``lrGene`` its peak lr is halved or doubled (within ``lrGeneRange``).
   Ops: ``["exploit:g1-c00", "swap:gelu->relu"]`` or
   ``["exploit:g1-c00", "lr:0.001->0.002"]``. Without a possible move the
   survivor just continues.

If no candidate of a generation trained, the next one restarts from the pool
from scratch (``["reseed"]``). ``exhaustive`` trains generation 0 only (every
activation of the pool, or the activation x lr grid with ``lrGene``).

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
#: Explore factors of the lr gene (PBT perturbation).
LR_FACTORS = (0.5, 2.0)


def shape_family(activation: str) -> str:
    """Activations whose FFN weights have the same shapes share a family."""
    return "gated" if activation == "swiglu" else "two-matrix"


def rank_key(result: CandidateResult, rank_by: str) -> tuple:
    if not result.ok:
        return (1, 0.0, result.candidate.ordinal)
    if rank_by == "fitness":
        fit = result.fitness if result.fitness is not None else -math.inf
        return (0, -fit, result.candidate.ordinal)
    if rank_by == "valLoss":
        return (0, result.final_val_loss, result.candidate.ordinal)
    raise ValueError(f"rankBy: unknown value {rank_by!r} (choose from {', '.join(RANK_BY)})")


def rank(results: Sequence[CandidateResult], rank_by: str) -> list[CandidateResult]:
    """Results best-first, each with ``rank`` set (1 = best)."""
    ranked = sorted(results, key=lambda r: rank_key(r, rank_by))
    for i, r in enumerate(ranked, start=1):
        r.rank = i
    return ranked


def next_size(n: int, eta: float) -> int:
    """Candidates kept from a generation of ``n``: ``ceil(n / eta)``, shrinking when eta > 1."""
    if eta <= 1:
        return n
    return max(1, min(n - 1, math.ceil(n / eta)))


def select_survivors(
    ranked: Sequence[CandidateResult], size: int, selection: str, k: int, rng: random.Random
) -> list[CandidateResult]:
    """``size`` distinct healthy candidates, best-ranked first."""
    ok = [r for r in ranked if r.ok]
    if selection == "topk":
        return ok[:size]
    if selection != "tournament":
        raise ValueError(f"selectionStrategy: unknown value {selection!r}")
    pos = {id(r): i for i, r in enumerate(ranked)}
    left, picked = list(ok), []
    while left and len(picked) < size:
        entrants = [left[rng.randrange(len(left))] for _ in range(k)]
        best = min(entrants, key=lambda r: pos[id(r)])
        picked.append(best)
        left.remove(best)
    return sorted(picked, key=lambda r: pos[id(r)])


def explore(
    source: Candidate,
    pool: Sequence[str],
    lr_range: tuple[float, float] | None,
    rng: random.Random,
) -> tuple[str, float | None, str] | None:
    """A PBT explore move from ``source``: ``(activation, lr, op)``, or None if none exists."""
    swaps = [
        a
        for a in pool
        if a != source.activation and shape_family(a) == shape_family(source.activation)
    ]
    kinds = (["swap"] if swaps else []) + (["lr"] if lr_range and source.lr else [])
    if not kinds:
        return None
    if rng.choice(kinds) == "swap":
        new = rng.choice(swaps)
        return new, source.lr, f"swap:{source.activation}->{new}"
    lo, hi = lr_range  # type: ignore[misc]
    old = float(source.lr)  # type: ignore[arg-type]
    factor = rng.choice(LR_FACTORS)
    new_lr = min(hi, max(lo, old * factor))
    if new_lr == old:  # at a bound: the other direction
        new_lr = min(hi, max(lo, old / factor))
    return source.activation, new_lr, f"lr:{old:.3g}->{new_lr:.3g}"


def next_generation(
    ranked: Sequence[CandidateResult],
    *,
    generation: int,
    size: int,
    pool: Sequence[str],
    selection: str,
    tournament_k: int,
    mutation_rate: float,
    lr_range: tuple[float, float] | None,
    steps: int,
    horizon: int,
    ordinal_start: int,
    seed: int,
    data_seed: int,
    rng: random.Random,
) -> list[Candidate]:
    """The children of a ranked generation (see the module docstring)."""
    survivors = select_survivors(ranked, size, selection, tournament_k, rng)
    if not survivors:  # nothing trained: start again from the pool
        return [
            Candidate(
                candidate_id(generation, i), pool[i % len(pool)], generation, i,
                ordinal_start + i, seed, (), ("reseed",), data_seed=data_seed,
                iters=steps, horizon=horizon,
            )  # fmt: skip
            for i in range(min(size, len(pool)))
        ]
    children = []
    for i, parent in enumerate(survivors):
        src, act, lr, ops = parent, parent.activation, parent.candidate.lr, ("continue",)
        if i > 0 and rng.random() < mutation_rate:
            # the source of the copy: the best, or a tournament among the better survivors
            j = min(rng.randrange(i) for _ in range(tournament_k)) if selection == "tournament" else 0
            source = survivors[j]
            move = explore(source.candidate, pool, lr_range, rng)
            if move is not None:
                src, (act, lr, op) = source, move
                ops = (f"exploit:{source.candidate.candidate_id}", op)
        c = src.candidate
        children.append(
            Candidate(
                candidate_id(generation, i), act, generation, i, ordinal_start + i, c.seed,
                (c.candidate_id,), ops, data_seed=c.data_seed, lr=lr,
                resume_from=c.candidate_id, start_step=src.total_steps,
                iters=src.total_steps + steps, horizon=horizon,
            )  # fmt: skip
        )
    return children
