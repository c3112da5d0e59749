"""The generation loop, shared by the plain CLI search and the Prefect flow.

The loop is written once. *How* each step runs is the executor's business:
``executors.ThreadExecutor`` calls the steps directly and trains a
generation's candidates on a thread pool; ``tasks.search_tasks`` runs every
step as a Prefect task (one ``train-candidate`` task run per candidate). The
step functions below are pure: they take and return plain data.

    spawn_candidates -> [train_candidate x N] -> rank_generation -> mutate -> ...
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.fitness import candidate_fitness, diversity_weight
from symbio.search.population import (
    activation_counts,
    activation_distribution,
    architecture_diversity,
    initial_population,
    population_entropy,
)
from symbio.search.strategies import next_generation, rank


@dataclass(frozen=True)
class SearchPlan:
    """Everything the loop needs to know about a search (no training settings)."""

    pool: tuple[str, ...]
    population_size: int
    generations: int
    strategy: str = "evolutionary"
    selection: str = "topk"
    tournament_k: int = 3
    mutation_rate: float = 0.25
    steps: int = 1000
    rank_by: str = "valLoss"
    fitness_alpha: float = 1.0
    perf_weight: float = 0.0
    stability_weight: float = 0.0
    diversity_bonus: float = 0.0
    diversity_decay: str = "none"
    seed: int = 1337

    @classmethod
    def from_symbio(cls, cfg: Any, *, steps: int | None = None, seed: int = 1337) -> SearchPlan:
        """Build from a ``SymbioConfig``; ``exhaustive`` becomes one generation of the pool."""
        exhaustive = cfg.search_strategy == "exhaustive"
        return cls(
            pool=tuple(cfg.activation_pool),
            population_size=len(cfg.activation_pool) if exhaustive else cfg.population_size,
            generations=1 if exhaustive else cfg.generations,
            strategy=cfg.search_strategy,
            selection=cfg.selection_strategy,
            tournament_k=cfg.tournament_k,
            mutation_rate=cfg.mutation_rate,
            steps=steps or cfg.steps_per_candidate,
            rank_by=cfg.rank_by,
            fitness_alpha=cfg.fitness_alpha,
            perf_weight=cfg.perf_weight,
            stability_weight=cfg.stability_weight,
            diversity_bonus=cfg.diversity_bonus,
            diversity_decay=cfg.diversity_decay,
            seed=seed,
        )

    @property
    def total_candidates(self) -> int:
        return self.population_size * self.generations


@dataclass(frozen=True)
class PopulationInfo:
    """Per-generation fields stamped on every metric row of the generation."""

    generation: int
    architecture_diversity: float
    activation_distribution: str  # JSON, as in the lake
    population_entropy: float | None  # of the parent generation's fitness; None in gen 0

    def row_fields(self, candidate: Candidate) -> dict[str, Any]:
        """The ``SymbioHook`` candidate dict: stamped on every row of the candidate.

        ``population_entropy`` is left out in generation 0 (no parent fitness
        yet): those rows carry the candidate's own loss-window entropy instead.
        """
        fields = {
            "symbio_candidate_id": candidate.candidate_id,
            "symbio_candidate_activation": candidate.activation,
            "symbio_generation": self.generation,
            "architecture_diversity": self.architecture_diversity,
            "activation_distribution": self.activation_distribution,
        }
        if self.population_entropy is not None:
            fields["population_entropy"] = self.population_entropy
        return fields


@dataclass
class GenerationResult:
    generation: int
    ranked: list[CandidateResult]
    architecture_diversity: float
    activation_distribution: dict[str, int]  # activation -> count
    population_entropy: float | None  # of this generation's fitness, nats
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> CandidateResult:
        return self.ranked[0]


class Executor(Protocol):
    """Runs the loop's steps; ``map`` may run the items concurrently."""

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]: ...


TrainOne = Callable[[Candidate, PopulationInfo], CandidateResult]


# -- the steps ------------------------------------------------------------------


def spawn_candidates(plan: SearchPlan) -> list[Candidate]:
    """Generation 0: one candidate per activation of the pool, duplicates to fill."""
    return initial_population(plan.pool, plan.population_size, seed=plan.seed)


def population_info(
    generation: int, candidates: Sequence[Candidate], parent_entropy: float | None
) -> PopulationInfo:
    acts = [c.activation for c in candidates]
    return PopulationInfo(
        generation, architecture_diversity(acts), activation_distribution(acts), parent_entropy
    )


def rank_generation(
    plan: SearchPlan, generation: int, results: Sequence[CandidateResult]
) -> GenerationResult:
    """Score every result (PRD §14.3 fitness, plus the diversity bonus), then rank.

    A failed candidate gets no fitness (the worst) and ranks last.
    """
    acts = [r.activation for r in results]
    counts = activation_counts(acts)
    bonus = diversity_weight(
        plan.diversity_bonus, plan.diversity_decay, generation, plan.generations
    )
    for r in results:
        if not r.ok:
            r.fitness = None
            continue
        fit = candidate_fitness(
            r.best_val_loss, r.tokens_per_sec, r.instability or 0.0,
            alpha=plan.fitness_alpha, perf_weight=plan.perf_weight,
            stability_weight=plan.stability_weight,
        )  # fmt: skip
        if bonus:
            fit += bonus * (1 - counts[r.activation] / len(results))
        r.fitness = fit
    ranked = rank(results, plan.rank_by)
    fits = [r.fitness for r in ranked if r.fitness is not None and math.isfinite(r.fitness)]
    return GenerationResult(
        generation=generation,
        ranked=ranked,
        architecture_diversity=architecture_diversity(acts),
        activation_distribution=counts,
        population_entropy=population_entropy(fits) if fits else None,
    )


def mutate_generation(
    plan: SearchPlan, ranked: GenerationResult, rng: random.Random
) -> list[Candidate]:
    """Selection + mutation: the next generation's candidates."""
    gen = ranked.generation + 1
    return next_generation(
        ranked.ranked,
        generation=gen,
        pool=plan.pool,
        population_size=plan.population_size,
        selection=plan.selection,
        tournament_k=plan.tournament_k,
        mutation_rate=plan.mutation_rate,
        base_seed=plan.seed,
        ordinal_start=gen * plan.population_size,
        rng=rng,
    )


# -- the loop -------------------------------------------------------------------


def run_generations(
    plan: SearchPlan,
    train_one: TrainOne,
    executor: Executor,
    *,
    on_generation: Callable[[GenerationResult], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> list[GenerationResult]:
    """Run every generation of ``plan``; returns them in order, each ranked best-first."""
    clock = clock or time.perf_counter
    rng = random.Random(plan.seed)
    candidates: list[Candidate] = executor.call("spawn_candidates", spawn_candidates, plan)
    parent_entropy: float | None = None
    out: list[GenerationResult] = []
    for g in range(plan.generations):
        info = population_info(g, candidates, parent_entropy)
        t0 = clock()
        results = executor.map(
            "train_candidate",
            train_one,
            [(c, info) for c in candidates],
            [f"{c.candidate_id}-{c.activation}" for c in candidates],
        )
        gen = executor.call("rank_generation", rank_generation, plan, g, results)
        gen.wall_s = clock() - t0
        out.append(gen)
        if on_generation:
            on_generation(gen)
        parent_entropy = gen.population_entropy
        if g + 1 < plan.generations:
            candidates = executor.call("mutate", mutate_generation, plan, gen, rng)
    return out
