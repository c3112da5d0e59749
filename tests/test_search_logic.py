"""Pure search logic: population, ranking, selection, mutation, determinism, reports."""

from __future__ import annotations

import json
import math
import random

import pytest

from symbio.config import SymbioConfig
from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.executors import ThreadExecutor
from symbio.search.loop import (
    GenerationResult,
    SearchPlan,
    rank_generation,
    run_generations,
)
from symbio.search.population import initial_population
from symbio.search.report import build_summary, candidate_lake_rows, report_markdown
from symbio.search.strategies import mutate, next_generation, rank, select_tournament

POOL = ("gelu", "relu", "silu", "swiglu")


def _result(i: int, act: str, loss: float | None, status: str = "ok") -> CandidateResult:
    c = Candidate(f"g0-c{i:02d}", act, 0, i, i, 100 + i)
    return CandidateResult(c, status=status, best_val_loss=loss, tokens_per_sec=1000.0 + i)


def _fake_train(c: Candidate, info) -> CandidateResult:
    """A deterministic stand-in for training: loss depends on activation and seed."""
    base = {"gelu": 2.0, "relu": 2.3, "silu": 2.1, "swiglu": 1.9}[c.activation]
    loss = base + random.Random(c.seed).random() * 0.05
    return CandidateResult(c, best_val_loss=loss, tokens_per_sec=1e4, steps=10)


def test_initial_population_covers_pool_then_duplicates():
    pop = initial_population(POOL, 6, seed=7)
    assert [c.activation for c in pop] == ["gelu", "relu", "silu", "swiglu", "gelu", "relu"]
    assert len({c.candidate_id for c in pop}) == 6
    assert [c.seed for c in pop] == [7, 8, 9, 10, 11, 12]
    assert all(c.mutation_ops == ("init",) for c in pop)


def test_rank_by_val_loss_and_fitness_failed_last():
    rs = [_result(0, "gelu", 2.0), _result(1, "relu", None, "failed"), _result(2, "silu", 1.5)]
    ranked = rank(rs, "valLoss")
    assert [r.activation for r in ranked] == ["silu", "gelu", "relu"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    rs[0].fitness, rs[2].fitness = 5.0, 1.0  # fitness disagrees with val loss
    assert rank(rs, "fitness")[0].activation == "gelu"
    assert rank(rs, "fitness")[-1].status == "failed"


def test_rank_generation_failed_candidate_gets_worst_fitness():
    plan = SearchPlan(pool=POOL, population_size=3, generations=1)
    rs = [_result(0, "gelu", 2.0), _result(1, "relu", math.nan), _result(2, "silu", 1.5)]
    gen = rank_generation(plan, 0, rs)
    assert gen.ranked[-1].activation == "relu" and gen.ranked[-1].fitness is None
    assert gen.ranked[0].fitness == pytest.approx(-1.5)
    assert 0 < gen.population_entropy <= math.log(2)
    assert gen.architecture_diversity == 1.0


def test_mutation_rate_statistics():
    rng = random.Random(0)
    n, rate = 20_000, 0.25
    swaps = [mutate("gelu", POOL, rate, rng) for _ in range(n)]
    frac = sum(s is not None for s in swaps) / n
    assert abs(frac - rate) < 0.015  # ~5 sigma for n=20k
    assert "gelu" not in swaps  # a swap always changes the activation
    new = [s for s in swaps if s]
    for act in ("relu", "silu", "swiglu"):  # uniform over the other activations
        assert abs(new.count(act) / len(new) - 1 / 3) < 0.03
    assert all(mutate("gelu", POOL, 0.0, rng) is None for _ in range(200))


def test_tournament_favours_the_fitter():
    ranked = rank([_result(i, POOL[i % 4], 1.0 + i) for i in range(6)], "valLoss")
    rng = random.Random(1)
    picks = [p.candidate.candidate_id for p in select_tournament(ranked, 30_000, 3, rng)]
    freq = [picks.count(r.candidate.candidate_id) / len(picks) for r in ranked]
    # P(rank r wins) = ((n-r+1)^k - (n-r)^k) / n^k: 91/216 for the best, 1/216 for the worst
    assert freq[0] == pytest.approx(91 / 216, abs=0.02)
    assert freq[-1] == pytest.approx(1 / 216, abs=0.005)
    assert freq == sorted(freq, reverse=True)


def test_topk_next_generation_elitism_and_lineage():
    ranked = rank([_result(i, POOL[i % 4], 2.0 - 0.1 * i) for i in range(4)], "valLoss")
    kids = next_generation(
        ranked, generation=1, pool=POOL, population_size=4, selection="topk",
        tournament_k=3, mutation_rate=0.0, base_seed=10, ordinal_start=4, rng=random.Random(0),
    )  # fmt: skip
    assert kids[0].mutation_ops == ("elite",) and kids[0].activation == ranked[0].activation
    assert kids[0].parent_ids == (ranked[0].candidate.candidate_id,)
    top2 = {r.candidate.candidate_id for r in ranked[:2]}
    assert all(set(k.parent_ids) <= top2 for k in kids)
    assert [k.ordinal for k in kids] == [4, 5, 6, 7] and kids[1].seed == 15
    assert [k.candidate_id for k in kids] == ["g1-c00", "g1-c01", "g1-c02", "g1-c03"]


def test_all_failed_generation_reseeds_from_pool():
    ranked = rank([_result(i, "gelu", None, "failed") for i in range(3)], "valLoss")
    kids = next_generation(
        ranked, generation=1, pool=POOL, population_size=3, selection="tournament",
        tournament_k=2, mutation_rate=0.5, base_seed=0, ordinal_start=3, rng=random.Random(0),
    )  # fmt: skip
    assert [k.activation for k in kids] == ["gelu", "relu", "silu"]
    assert all(k.mutation_ops == ("reseed",) for k in kids)


def _search(seed: int, **over) -> list[GenerationResult]:
    cfg = SymbioConfig(population_size=6, generations=4, mutation_rate=0.5, **over)
    plan = SearchPlan.from_symbio(cfg, steps=10, seed=seed)
    return run_generations(plan, _fake_train, ThreadExecutor(slots=2))


def _trace(gens):
    return [[(r.candidate.candidate_id, r.activation, r.candidate.parent_ids,
              r.candidate.mutation_ops) for r in g.ranked] for g in gens]  # fmt: skip


@pytest.mark.parametrize("selection", ["topk", "tournament"])
def test_search_is_deterministic_under_a_seed(selection):
    a, b = _search(3, selection_strategy=selection), _search(3, selection_strategy=selection)
    assert _trace(a) == _trace(b)
    assert _trace(a) != _trace(_search(4, selection_strategy=selection))
    assert len(a) == 4 and all(len(g.ranked) == 6 for g in a)
    ordinals = [r.candidate.ordinal for g in a for r in g.ranked]
    assert sorted(ordinals) == list(range(24))  # unique step offsets over the search


def test_exhaustive_covers_the_pool_in_one_generation():
    gens = _search(0, search_strategy="exhaustive", activation_pool=["relu", "silu", "gelu"])
    assert len(gens) == 1
    assert sorted(r.activation for r in gens[0].ranked) == ["gelu", "relu", "silu"]
    assert gens[0].ranked[0].activation == "gelu"  # lowest fake loss among these


def test_evolution_converges_toward_the_best_activation():
    gens = _search(0)
    first = gens[0].activation_distribution.get("swiglu", 0)
    assert gens[-1].activation_distribution.get("swiglu", 0) > first
    assert gens[-1].architecture_diversity <= gens[0].architecture_diversity


def test_summary_report_and_lake_rows():
    from storage.schema import column_names

    gens = _search(0)
    summary = build_summary(
        run_id="r1", plan=SearchPlan(pool=POOL, population_size=6, generations=4),
        symbio_config={}, train_config={}, baseline_activation="gelu", generations=gens,
        status="completed", elapsed_s=12.0, estimate_s=10.0,
    )  # fmt: skip
    json.dumps(summary, allow_nan=False)  # strict JSON
    assert summary["winner"]["activation"] == "swiglu"
    assert "swiglu" in summary["recommendation"] and "gelu" in summary["recommendation"]
    assert len(summary["final_population"]) == 6
    md = report_markdown(summary, gens)
    assert "## Generation 3" in md and "delta" in md and "Recommendation" in md
    rows = candidate_lake_rows(gens[-1], summary["winner"]["candidate_id"])
    assert set(rows[0]) <= set(column_names("candidates"))
    assert sum(r["is_winner"] for r in rows) == 1
