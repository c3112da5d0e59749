"""The generation loop and the confirmation, shared by the plain CLI search and the flow.

The loop is written once. *How* each step runs is the executor's business:
``executors.ThreadExecutor`` calls the steps directly and trains a
generation's candidates on a thread pool; ``tasks.search_tasks`` runs every
step as a Prefect task (one ``train-candidate`` task run per candidate). The
step functions below are pure: they take and return plain data.

    spawn_candidates -> [train_candidate x N] -> rank_generation -> mutate -> ...
    ... -> [train_candidate x confirmation runs] -> Confirmation

Multi-fidelity (successive halving): generation ``g`` trains ``rung_sizes[g]``
candidates, each continuing a survivor of ``g - 1`` for ``steps`` more steps.
The loop stops once one candidate would be left (the nominee is decided), so
the longest lineage trains ``horizon = len(rung_sizes) * steps`` steps: the
lr schedule of every candidate decays over that horizon, so continuing never
restarts or jumps it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from symbio.search import confirm as confirm_mod
from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.fitness import candidate_fitness, diversity_weight
from symbio.search.health import assess
from symbio.search.population import (
    activation_counts,
    activation_distribution,
    architecture_diversity,
    initial_population,
    initial_size,
    population_entropy,
)
from symbio.search.strategies import next_generation, next_size, rank


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
    data_seed: int | None = None  # None: seed
    eta: float = 2.0
    lr_gene: bool = False
    lr_range: tuple[float, float] = (1e-4, 3e-3)
    baseline: str = "gelu"  # the run's starting activation
    confirm_seeds: int = 3
    confirm_steps: int | None = None  # None: horizon

    @classmethod
    def from_symbio(
        cls,
        cfg: Any,
        *,
        steps: int | None = None,
        seed: int = 1337,
        data_seed: int | None = None,
        baseline: str = "gelu",
    ) -> SearchPlan:
        """Build from a ``SymbioConfig``; ``exhaustive`` becomes one generation."""
        exhaustive = cfg.search_strategy == "exhaustive"
        return cls(
            pool=tuple(cfg.activation_pool),
            population_size=cfg.population_size,
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
            data_seed=data_seed,
            eta=cfg.halving_eta,
            lr_gene=cfg.lr_gene,
            lr_range=tuple(cfg.lr_gene_range),
            baseline=baseline,
            confirm_seeds=cfg.confirm_seeds,
            confirm_steps=cfg.confirm_steps,
        )

    @property
    def stream_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def initial_size(self) -> int:
        if self.strategy == "exhaustive" and not self.lr_gene:
            return len(self.pool)
        return initial_size(len(self.pool), self.population_size, self.lr_gene)

    @property
    def rung_sizes(self) -> list[int]:
        """Candidates per generation, assuming every candidate trains."""
        sizes = [self.initial_size]
        while len(sizes) < self.generations and sizes[-1] > 1:
            nxt = next_size(sizes[-1], self.eta)
            if self.eta > 1 and nxt <= 1:
                break  # one would be left: the nominee is decided
            sizes.append(nxt)
        return sizes

    @property
    def horizon(self) -> int:
        """Total steps of the longest lineage: the lr schedule's length."""
        return len(self.rung_sizes) * self.steps

    @property
    def confirm_length(self) -> int:
        return self.confirm_steps or self.horizon

    @property
    def step_stride(self) -> int:
        """Metric-row step offset per candidate ordinal (``ordinal * step_stride``)."""
        return max(self.horizon, self.confirm_length)

    @property
    def max_confirm_arms(self) -> int:
        return len({self.baseline, confirm_mod.REFERENCE}) + 1

    @property
    def total_candidates(self) -> int:
        """Planned training runs: the generations' and, at most, the confirmation's."""
        return sum(self.rung_sizes) + self.max_confirm_arms * self.confirm_seeds

    @property
    def planned_steps(self) -> int:
        """Planned training steps, search plus (at most) confirmation."""
        confirm = self.max_confirm_arms * self.confirm_seeds * self.confirm_length
        return sum(self.rung_sizes) * self.steps + confirm


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


@dataclass
class SearchRun:
    """What ``run_search_loop`` produced: the generations and the confirmation."""

    generations: list[GenerationResult]
    confirmation: confirm_mod.Confirmation | None = None

    @property
    def nominee(self) -> CandidateResult | None:
        return nominee(self.generations)


class Executor(Protocol):
    """Runs the loop's steps; ``map`` may run the items concurrently."""

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]: ...


TrainOne = Callable[[Candidate, PopulationInfo], CandidateResult]


# -- the steps ------------------------------------------------------------------


def spawn_candidates(plan: SearchPlan) -> list[Candidate]:
    """Generation 0: the pool (with the lr gene: over an lr grid), shared seeds."""
    return initial_population(
        plan.pool,
        plan.initial_size,
        seed=plan.seed,
        data_seed=plan.stream_seed,
        lr_range=plan.lr_range if plan.lr_gene else None,
        steps=plan.steps,
        horizon=plan.horizon,
    )


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
    """Health gates, then score (PRD §14.3 fitness plus the diversity bonus) and rank.

    An unhealthy candidate (``failed``/``stalled``) gets no fitness (the worst)
    and ranks last.
    """
    results = [assess(r) for r in results]
    acts = [r.activation for r in results]
    counts = activation_counts(acts)
    bonus = diversity_weight(
        plan.diversity_bonus, plan.diversity_decay, generation, len(plan.rung_sizes)
    )
    for r in results:
        if not r.ok:
            r.fitness = None
            continue
        fit = candidate_fitness(
            r.final_val_loss, r.tokens_per_sec, r.instability or 0.0,
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
    """Halving + exploit/explore: the next generation's candidates."""
    gen = ranked.generation + 1
    return next_generation(
        ranked.ranked,
        generation=gen,
        size=plan.rung_sizes[gen],
        pool=plan.pool,
        selection=plan.selection,
        tournament_k=plan.tournament_k,
        mutation_rate=plan.mutation_rate,
        lr_range=plan.lr_range if plan.lr_gene else None,
        steps=plan.steps,
        horizon=plan.horizon,
        ordinal_start=sum(plan.rung_sizes[:gen]),
        seed=plan.seed,
        data_seed=plan.stream_seed,
        rng=rng,
    )


def nominee(generations: Sequence[GenerationResult]) -> CandidateResult | None:
    """The search's pick: the best-ranked candidate of the last generation, if healthy."""
    if not generations or not generations[-1].ranked:
        return None
    best = generations[-1].ranked[0]
    return best if best.ok else None


def inherit_lineage(results: Sequence[CandidateResult], by_id: dict[str, CandidateResult]) -> None:
    """A continuing candidate's initial loss is its lineage's (for the health gates)."""
    for r in results:
        parent = by_id.get(r.candidate.resume_from or "")
        if parent is not None and parent.initial_loss is not None:
            r.initial_loss = parent.initial_loss


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
    sizes = plan.rung_sizes
    candidates: list[Candidate] = executor.call("spawn_candidates", spawn_candidates, plan)
    parent_entropy: float | None = None
    by_id: dict[str, CandidateResult] = {}
    out: list[GenerationResult] = []
    for g in range(len(sizes)):
        info = population_info(g, candidates, parent_entropy)
        t0 = clock()
        results = executor.map(
            "train_candidate",
            train_one,
            [(c, info) for c in candidates],
            [f"{c.candidate_id}-{c.activation}" for c in candidates],
        )
        inherit_lineage(results, by_id)
        gen = executor.call("rank_generation", rank_generation, plan, g, results)
        gen.wall_s = clock() - t0
        out.append(gen)
        by_id.update((r.candidate.candidate_id, r) for r in gen.ranked)
        if on_generation:
            on_generation(gen)
        parent_entropy = gen.population_entropy
        if g + 1 < len(sizes):
            candidates = executor.call("mutate", mutate_generation, plan, gen, rng)
    return out


def run_confirmation(
    plan: SearchPlan,
    generations: Sequence[GenerationResult],
    train_one: TrainOne,
    executor: Executor,
    *,
    clock: Callable[[], float] | None = None,
) -> confirm_mod.Confirmation | None:
    """Retrain the nominee, the baseline and gelu with paired seeds; None if confirmSeeds is 0."""
    if plan.confirm_seeds < 1:
        return None
    clock = clock or time.perf_counter
    top = nominee(generations)
    arms = confirm_mod.arms_for(top.candidate if top else None, plan.baseline)
    candidates = confirm_mod.confirmation_candidates(
        arms,
        seeds=plan.confirm_seeds,
        steps=plan.confirm_length,
        seed=plan.seed,
        data_seed=plan.stream_seed,
        generation=len(generations),
        ordinal_start=sum(plan.rung_sizes),
        nominee_id=top.candidate.candidate_id if top else None,
    )
    info = population_info(len(generations), candidates, None)
    t0 = clock()
    results = executor.map(
        "train_candidate",
        train_one,
        [(c, info) for c in candidates],
        [f"{c.candidate_id}-{c.activation}" for c in candidates],
    )
    results = [assess(r) for r in results]
    return confirm_mod.Confirmation(
        arms, results, plan.confirm_seeds, plan.confirm_length, plan.baseline, clock() - t0
    )


def run_search_loop(
    plan: SearchPlan,
    train_one: TrainOne,
    executor: Executor,
    *,
    on_generation: Callable[[GenerationResult], None] | None = None,
    on_confirmation_start: Callable[[], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> SearchRun:
    """The whole search: every generation, then the confirmation of its pick."""
    gens = run_generations(plan, train_one, executor, on_generation=on_generation, clock=clock)
    if on_confirmation_start is not None:
        on_confirmation_start()
    return SearchRun(gens, run_confirmation(plan, gens, train_one, executor, clock=clock))
