"""Pure search logic: population, halving, exploit/explore, health, confirmation, reports."""

from __future__ import annotations

import json
import math
import random

import pytest

from symbio.config import SymbioConfig
from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.confirm import Confirmation, arms_for, confirmation_candidates
from symbio.search.executors import ThreadExecutor
from symbio.search.health import assess, near_initial_warning
from symbio.search.loop import SearchPlan, rank_generation, run_generations, run_search_loop
from symbio.search.population import initial_population, lr_grid
from symbio.search.report import (
    build_summary,
    candidate_lake_rows,
    recommendation,
    report_markdown,
    winner_record,
)
from symbio.search.strategies import next_generation, rank, select_survivors

POOL = ("gelu", "relu", "silu", "swiglu")
BASE = {"gelu": 2.0, "relu": 2.3, "silu": 2.1, "swiglu": 1.9}


def _result(i: int, act: str, loss: float | None, status: str = "ok", **kw) -> CandidateResult:
    c = Candidate(f"g0-c{i:02d}", act, 0, i, i, 100, iters=10, lr=kw.pop("lr", None))
    kw.setdefault("initial_loss", 4.0)
    return CandidateResult(c, status=status, final_val_loss=loss, best_val_loss=loss,
                           tokens_per_sec=1000.0 + i, steps=10, **kw)  # fmt: skip


def _fake_train(c: Candidate, info) -> CandidateResult:
    """Deterministic stand-in for training: loss by activation, lr and total steps."""
    lr_pen = 0.0 if c.lr is None else abs(math.log10(c.lr / 1e-3)) * 0.1
    loss = BASE[c.activation] + lr_pen + 1.0 / c.iters + random.Random(c.seed).random() * 0.01
    test = loss + 0.01 * random.Random(f"{c.seed}{c.activation}").random() if c.role == "confirm" else None  # noqa: E501
    return CandidateResult(
        c, steps=c.steps, final_val_loss=loss, best_val_loss=loss, tokens_per_sec=1e4,
        initial_loss=None if c.start_step else 4.2, recent_loss=loss, test_loss=test,
    )  # fmt: skip


def _kids(ranked, *, size=2, mutation_rate=0.0, lr_range=None, selection="topk", seed=0):
    return next_generation(
        ranked, generation=1, size=size, pool=POOL, selection=selection, tournament_k=2,
        mutation_rate=mutation_rate, lr_range=lr_range, steps=10, horizon=30,
        ordinal_start=4, seed=7, data_seed=8, rng=random.Random(seed),
    )  # fmt: skip


# -- generation 0, plans ------------------------------------------------------------


def test_initial_population_is_the_pool_with_shared_seeds():
    pop = initial_population(POOL, 6, seed=7, data_seed=9, steps=10, horizon=20)
    assert [c.activation for c in pop] == list(POOL)  # no duplicate twins without lrGene
    assert {c.seed for c in pop} == {7} and {c.data_seed for c in pop} == {9}
    assert all(c.mutation_ops == ("init",) and c.iters == 10 and c.horizon == 20 for c in pop)
    assert len({c.candidate_id for c in pop}) == 4


def test_lr_gene_fills_the_population_over_a_log_grid():
    pop = initial_population(POOL, 8, seed=1, lr_range=(1e-4, 1e-2))
    assert [c.activation for c in pop] == list(POOL) * 2
    assert [c.lr for c in pop] == pytest.approx([1e-4 * 10**0.5] * 4 + [1e-4 * 10**1.5] * 4)
    assert lr_grid(1e-4, 1e-2, 1) == pytest.approx([1e-3])


def test_plan_halving_sizes_horizon_and_budget():
    plan = SearchPlan(pool=POOL, population_size=6, generations=4, steps=100)
    assert plan.rung_sizes == [4, 2]  # 4 -> 2 -> (1: decided, not trained)
    assert plan.horizon == 200 and plan.confirm_length == 200
    assert plan.max_confirm_arms == 2  # top + gelu (the baseline is gelu)
    assert plan.planned_steps == 6 * 100 + 2 * 3 * 200
    lr = SearchPlan(pool=POOL, population_size=12, generations=4, steps=10, lr_gene=True)
    assert lr.rung_sizes == [12, 6, 3, 2] and lr.horizon == 40
    pbt = SearchPlan(pool=POOL, population_size=4, generations=3, eta=1.0)
    assert pbt.rung_sizes == [4, 4, 4]
    exhaustive = SearchPlan.from_symbio(SymbioConfig(search_strategy="exhaustive"), steps=5)
    assert exhaustive.rung_sizes == [4] and exhaustive.horizon == 5


# -- ranking, health ----------------------------------------------------------------


def test_rank_by_final_val_loss_and_fitness_unhealthy_last():
    rs = [_result(0, "gelu", 2.0), _result(1, "relu", None, "failed"), _result(2, "silu", 1.5)]
    ranked = rank(rs, "valLoss")
    assert [r.activation for r in ranked] == ["silu", "gelu", "relu"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    rs[0].fitness, rs[2].fitness = 5.0, 1.0  # fitness disagrees with val loss
    assert rank(rs, "fitness")[0].activation == "gelu"
    assert rank(rs, "fitness")[-1].status == "failed"


@pytest.mark.parametrize(
    ("kw", "status", "reason"),
    [
        ({"skipped_steps": 8}, "stalled", "8/10 steps skipped"),
        ({"loss": math.nan}, "failed", "no finite validation loss"),
        ({"loss": 1e11}, "failed", "diverged"),
        ({"loss": 4.5}, "failed", "not below the initial loss"),
        ({"recent_loss": 3.99}, "stalled", "training loss moved"),
        ({}, "ok", None),
    ],
)
def test_health_gates(kw, status, reason):
    loss = kw.pop("loss", 2.0)
    r = assess(_result(0, "gelu", loss, recent_loss=kw.pop("recent_loss", 2.1), **kw))
    assert r.status == status and r.ok == (status == "ok")
    assert (reason is None and r.failure_reason is None) or reason in r.failure_reason


def test_unhealthy_candidates_rank_last_without_fitness():
    plan = SearchPlan(pool=POOL, population_size=3, generations=1)
    rs = [_result(0, "gelu", 2.0), _result(1, "relu", 1.0, skipped_steps=10),
          _result(2, "silu", 1.5), _result(3, "swiglu", 1e11)]  # fmt: skip
    gen = rank_generation(plan, 0, rs)
    assert [r.activation for r in gen.ranked] == ["silu", "gelu", "relu", "swiglu"]
    assert [r.status for r in gen.ranked] == ["ok", "ok", "stalled", "failed"]
    assert gen.ranked[2].fitness is None and gen.ranked[3].fitness is None
    assert gen.ranked[0].fitness == pytest.approx(-1.5)


def test_near_initial_warning():
    assert near_initial_warning([_result(0, "gelu", 3.8)], 0) is not None
    assert near_initial_warning([_result(0, "gelu", 3.8), _result(1, "relu", 2.0)], 0) is None


# -- halving, exploit / explore -----------------------------------------------------


def test_survivors_continue_their_own_checkpoints():
    ranked = rank([_result(i, POOL[i], 2.0 - 0.1 * i) for i in range(4)], "valLoss")
    kids = _kids(ranked)
    assert [k.activation for k in kids] == ["swiglu", "silu"]  # the best two
    assert [k.resume_from for k in kids] == ["g0-c03", "g0-c02"]
    assert all(k.mutation_ops == ("continue",) for k in kids)
    assert [(k.start_step, k.iters, k.horizon) for k in kids] == [(10, 20, 30)] * 2
    assert [k.ordinal for k in kids] == [4, 5] and {k.seed for k in kids} == {100}
    assert [k.candidate_id for k in kids] == ["g1-c00", "g1-c01"]


def test_exploit_copies_a_better_checkpoint_then_explores():
    ranked = rank([_result(0, "gelu", 1.0, lr=1e-3), _result(1, "relu", 1.1, lr=1e-3),
                   _result(2, "silu", 1.2, lr=1e-3)], "valLoss")  # fmt: skip
    ops, lrs = set(), set()
    for seed in range(40):
        best, second = _kids(ranked, mutation_rate=1.0, lr_range=(1e-4, 1e-2), seed=seed)
        assert best.mutation_ops == ("continue",)  # the best always continues
        assert second.resume_from == "g0-c00" and second.mutation_ops[0] == "exploit:g0-c00"
        ops.add(second.mutation_ops[1].split(":")[0])
        if second.activation == "gelu":
            lrs.add(second.lr)
        else:  # a swap keeps the shapes: gelu -> relu/silu, never swiglu
            assert second.activation in ("relu", "silu") and second.lr == 1e-3
    assert ops == {"swap", "lr"} and lrs == {5e-4, 2e-3}


def test_swiglu_without_lr_gene_has_no_move_and_continues():
    ranked = rank([_result(0, "swiglu", 1.0), _result(1, "gelu", 1.1)], "valLoss")
    kids = _kids(ranked, mutation_rate=1.0)
    assert [k.mutation_ops for k in kids] == [("continue",), ("continue",)]
    assert [k.activation for k in kids] == ["swiglu", "gelu"]


def test_tournament_survivors_are_distinct_and_favour_the_fitter():
    ranked = rank([_result(i, POOL[i % 4], 1.0 + i) for i in range(6)], "valLoss")
    counts = [0] * 6
    rng = random.Random(1)
    for _ in range(3000):
        picked = select_survivors(ranked, 3, "tournament", 2, rng)
        assert len({id(p) for p in picked}) == 3 and picked == sorted(picked, key=ranked.index)
        for p in picked:
            counts[ranked.index(p)] += 1
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0


def test_all_failed_generation_reseeds_from_pool():
    ranked = rank([_result(i, "gelu", None, "failed") for i in range(3)], "valLoss")
    kids = _kids(ranked, size=3)
    assert [k.activation for k in kids] == ["gelu", "relu", "silu"]
    assert all(k.mutation_ops == ("reseed",) and k.resume_from is None for k in kids)


# -- the loop -----------------------------------------------------------------------


def _search(seed: int, **over):
    cfg = SymbioConfig(**{"population_size": 8, "generations": 4, "mutation_rate": 0.5,
                          "lr_gene": True, **over})  # fmt: skip
    plan = SearchPlan.from_symbio(cfg, steps=10, seed=seed)
    return plan, run_search_loop(plan, _fake_train, ThreadExecutor(slots=2))


def _trace(run):
    return [[(r.candidate.candidate_id, r.activation, r.candidate.lr, r.candidate.parent_ids,
              r.candidate.mutation_ops) for r in g.ranked] for g in run.generations]  # fmt: skip


@pytest.mark.parametrize("selection", ["topk", "tournament"])
def test_search_is_deterministic_under_a_seed(selection):
    (plan, a), (_, b) = _search(3, selection_strategy=selection), _search(3, selection_strategy=selection)
    assert _trace(a) == _trace(b)
    assert [len(g.ranked) for g in a.generations] == plan.rung_sizes == [8, 4, 2]
    ordinals = [r.candidate.ordinal for g in a.generations for r in g.ranked]
    ordinals += [r.candidate.ordinal for r in a.confirmation.results]
    assert len(set(ordinals)) == len(ordinals)  # unique step offsets over the search
    # every generation > 0 continues checkpoints of the previous one, all at equal steps
    for prev, gen in zip(a.generations, a.generations[1:], strict=False):
        ids = {r.candidate.candidate_id: r for r in prev.ranked}
        for r in gen.ranked:
            assert r.candidate.resume_from in ids
            assert r.inherited_steps == ids[r.candidate.resume_from].total_steps
        assert len({r.total_steps for r in gen.ranked}) == 1


def test_exhaustive_covers_the_pool_in_one_generation_then_confirms():
    plan, run = _search(0, search_strategy="exhaustive", lr_gene=False,
                        activation_pool=["relu", "silu", "gelu"])  # fmt: skip
    assert len(run.generations) == 1
    assert sorted(r.activation for r in run.generations[0].ranked) == ["gelu", "relu", "silu"]
    assert run.nominee.activation == "gelu"  # lowest fake loss among these
    assert {a.activation for a in run.confirmation.arms} == {"gelu"}  # nominee = baseline = gelu


def test_generation_losses_rank_the_truth_and_confirmation_reports_it():
    plan, run = _search(0, lr_gene=False)
    assert run.nominee.activation == "swiglu"
    conf = run.confirmation
    assert [a.roles for a in conf.arms] == [("top",), ("baseline", "gelu")]
    assert conf.winner().activation == "swiglu"
    assert len(conf.results) == 2 * 3 and all(r.test_loss is not None for r in conf.results)


# -- confirmation -------------------------------------------------------------------


def test_confirmation_arms_and_paired_seeds():
    top = Candidate("g2-c00", "relu", 2, 0, 9, 1, lr=2e-3)
    arms = arms_for(top, "swiglu")
    assert [(a.name, a.roles) for a in arms] == [
        ("relu-lr0.002", ("top",)), ("swiglu", ("baseline",)), ("gelu", ("gelu",)),
    ]  # fmt: skip
    assert [a.roles for a in arms_for(Candidate("x", "gelu", 0, 0, 0, 1), "gelu")] == [
        ("top", "baseline", "gelu")
    ]
    runs = confirmation_candidates(arms, seeds=3, steps=50, seed=10, data_seed=20,
                                   generation=3, ordinal_start=12, nominee_id="g2-c00")  # fmt: skip
    assert len(runs) == 9 and [r.ordinal for r in runs] == list(range(12, 21))
    for k in (1, 2, 3):  # every arm of seed k shares the init and the data seed
        same = [r for r in runs if r.replicate == k]
        assert {r.seed for r in same} == {10 + 1000 * k} and {r.data_seed for r in same} == {
            20 + 1000 * k
        }
    assert all(r.iters == r.horizon == 50 and r.role == "confirm" for r in runs)
    assert runs[0].candidate_id == "confirm-s1-relu-lr0.002" and runs[0].lr == 2e-3
    assert runs[0].parent_ids == ("g2-c00",) and runs[1].parent_ids == ()


def _confirmation(losses: dict[str, list[float | None]], baseline="swiglu") -> Confirmation:
    arms = arms_for(Candidate("g1-c00", "relu", 1, 0, 0, 1), baseline)
    results = []
    for c in confirmation_candidates(arms, seeds=3, steps=5, seed=0, data_seed=0,
                                     generation=2, ordinal_start=0):  # fmt: skip
        loss = losses[c.activation][c.replicate - 1]
        r = CandidateResult(c, steps=5, final_val_loss=loss if loss else math.nan, test_loss=loss,
                            initial_loss=4.0)  # fmt: skip
        results.append(assess(r))
    return Confirmation(arms, results, 3, 5, baseline)


def test_confirmation_significant_switch():
    conf = _confirmation({"relu": [2.0, 2.1, 2.05], "swiglu": [2.2, 2.31, 2.24],
                          "gelu": [2.1, 2.2, 2.16]})  # fmt: skip
    assert conf.winner().activation == "relu" and conf.switch()
    from symbio.search.loop import SearchRun

    text = recommendation(SearchRun([], conf), "swiglu")
    assert text.startswith("Consider --activation relu") and "95% CI" in text


def test_confirmation_without_significance_keeps_the_baseline():
    conf = _confirmation({"relu": [2.0, 2.3, 2.1], "swiglu": [2.1, 2.1, 2.2],
                          "gelu": [2.3, 2.3, 2.3]})  # fmt: skip
    from symbio.search.loop import SearchRun

    assert conf.winner().activation == "relu" and not conf.switch()
    text = recommendation(SearchRun([], conf), "swiglu")
    assert text.startswith("No significant difference") and "keep --activation swiglu" in text


def test_unhealthy_confirmation_runs_never_win():
    conf = _confirmation({"relu": [1e11, 1e11, None], "swiglu": [2.1, 2.2, 2.15],
                          "gelu": [2.3, 2.3, 2.3]})  # fmt: skip
    relu = conf.arm("top")
    assert not conf.healthy(relu) and conf.test_losses(relu) == [None, None, None]
    assert conf.winner().activation == "swiglu"
    row = next(r for r in conf.arm_rows() if r["arm"] == "relu")
    assert len(row["unhealthy"]) == 3 and "diverged" in row["unhealthy"][0]


# -- artifacts ----------------------------------------------------------------------


def test_summary_report_and_lake_rows():
    from storage.schema import column_names

    plan, run = _search(0)
    summary = build_summary(
        run_id="r1", plan=plan, symbio_config={}, train_config={}, baseline_activation="gelu",
        run=run, status="completed", elapsed_s=12.0, estimate_s=10.0, warnings=["w1"],
    )  # fmt: skip
    json.dumps(summary, allow_nan=False)  # strict JSON
    w = summary["winner"]
    assert w["confirmed"] and w["activation"] == "swiglu" and w["n_seeds"] == 3
    assert w["vs_baseline"]["n_pairs"] == 3 and len(w["vs_baseline"]["ci95"]) == 2
    assert summary["winner"] == winner_record(run)
    c = summary["compute"]
    assert c["search_steps"] == sum(plan.rung_sizes) * 10
    assert c["confirm_steps"] == 3 * len(run.confirmation.arms) * plan.confirm_length
    assert c["exhaustive"]["steps"] == 8 * 3 * plan.confirm_length
    assert c["fraction_of_exhaustive"] == pytest.approx(
        c["total_steps"] / c["exhaustive"]["steps"], abs=1e-4
    )
    final = summary["final_population"]
    assert all(x["total_steps"] == x["inherited_steps"] + x["steps"] == 30 for x in final)
    md = report_markdown(summary, run)
    for text in ("## Confirmation", "95%", "## Compute", "exhaustive sweep", "## Generation 2",
                 "w1", "Recommendation"):  # fmt: skip
        assert text in md
    rows = candidate_lake_rows(run.generations[-1].ranked, w["candidate_id"])
    assert set(rows[0]) <= set(column_names("candidates"))
    assert sum(r["is_winner"] for r in rows) == 1


def test_unconfirmed_search_says_so():
    plan, run = _search(0, confirm_seeds=0)
    assert run.confirmation is None
    w = winner_record(run)
    assert w["confirmed"] is False and w["candidate_id"] == run.nominee.candidate.candidate_id
    assert recommendation(run, "gelu").startswith("Unconfirmed")


def test_run_generations_alone_stops_when_one_would_be_left():
    plan = SearchPlan(pool=POOL, population_size=4, generations=10, steps=5)
    gens = run_generations(plan, _fake_train, ThreadExecutor(1))
    assert [len(g.ranked) for g in gens] == [4, 2]
