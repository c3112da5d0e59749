"""The search against a known truth: does it find the best activation, and at what cost?

``Truth`` stands in for training. A lineage's validation loss after ``t``
steps is ``floor[activation] + 1.5 / sqrt(1 + t * q(lr) / 100)`` (a learning
curve; ``q`` is the lr's efficiency, 1 at ``LR_STAR``) plus seed noise that
shrinks with steps: a part shared by every activation trained with the same
seed (what common random numbers cancel) and a part specific to (seed,
activation). Continuation is respected: a candidate that resumes a checkpoint
carries its parent's progress (and an activation swap mixes the floors by
steps). Test losses (confirmation) add a small independent split noise.

The real generation loop and confirmation (``run_search_loop``) drive it,
over 24 search seeds each.
"""

from __future__ import annotations

import math
import random
import threading

from symbio.search.candidate import Candidate, CandidateResult
from symbio.search.executors import ThreadExecutor
from symbio.search.loop import SearchPlan, run_search_loop
from symbio.search.report import compute_record, winner_record

POOL = ("gelu", "relu", "silu", "swiglu")
FLOORS = {"gelu": 2.00, "relu": 2.08, "silu": 1.96, "swiglu": 2.03}  # silu is best by 0.04
BEST = "silu"
LR_STAR = 1e-3
SEEDS = range(24)
SIGMA_SHARED, SIGMA_OWN, SIGMA_TEST = 0.05, 0.03, 0.005


def _z(*key: object) -> float:
    """A standard normal draw that is a pure function of ``key``."""
    return random.Random("-".join(map(str, key))).gauss(0.0, 1.0)


class Truth:
    """A known model of training (see the module docstring); thread-safe."""

    def __init__(self, steps0: int, base_lr: float = LR_STAR) -> None:
        self.steps0, self.base_lr = steps0, base_lr
        self.state: dict[str, tuple[float, float, int]] = {}  # id -> (t_eff, floor*t, t)
        self.lock = threading.Lock()

    def q(self, lr: float | None) -> float:
        x = math.log10((lr or self.base_lr) / LR_STAR)
        return math.exp(-(x * x) / 0.5)

    def __call__(self, c: Candidate, info) -> CandidateResult:
        with self.lock:
            t_eff, floor_t, t = self.state.get(c.resume_from or "", (0.0, 0.0, 0))
        assert t == c.start_step  # the loop continues exactly the parent's steps
        t_eff += c.steps * self.q(c.lr)
        floor_t += c.steps * FLOORS[c.activation]
        t += c.steps
        with self.lock:
            self.state[c.candidate_id] = (t_eff, floor_t, t)
        shrink = math.sqrt(self.steps0 / t)
        lineage = c.seed  # noise belongs to the lineage's seed (shared within a generation)
        val = floor_t / t + 1.5 / math.sqrt(1 + t_eff / 100) + shrink * (
            SIGMA_SHARED * _z("shared", lineage) + SIGMA_OWN * _z("own", lineage, c.activation)
        )
        test = None
        if c.role == "confirm":
            test = val + SIGMA_TEST * _z("test", lineage, c.activation)
        return CandidateResult(
            c, steps=c.steps, final_val_loss=val, best_val_loss=val, final_loss=val,
            recent_loss=val, initial_loss=None if c.start_step else 4.2, test_loss=test,
            tokens_per_sec=1e4,
        )  # fmt: skip


def _search(seed: int, **plan) -> tuple[dict, dict]:
    p = SearchPlan(**{"pool": POOL, "population_size": 4, "generations": 4, "steps": 100,
                      "seed": seed, "baseline": "gelu", **plan})  # fmt: skip
    truth = Truth(p.steps)
    run = run_search_loop(p, truth, ThreadExecutor(1))
    return winner_record(run), compute_record(p, run, 0.0)


def _accuracy_and_cost(**plan) -> tuple[float, float]:
    hits, fractions = 0, []
    for seed in SEEDS:
        winner, compute = _search(seed, **plan)
        hits += winner is not None and winner["activation"] == BEST
        fractions.append(compute["fraction_of_exhaustive"])
    return hits / len(SEEDS), max(fractions)


def test_search_finds_the_best_activation_at_under_half_an_exhaustive_sweep():
    """Activation x lr (the lr gene, 12 arms): >= 80% right at <= 50% of the exhaustive cost.

    The exhaustive alternative trains every arm of generation 0 (4 activations x
    3 learning rates) with the same 3 replicates at the confirmation length.
    """
    accuracy, cost = _accuracy_and_cost(
        population_size=12, generations=5, lr_gene=True, lr_range=(1e-4, 1e-2)
    )
    assert accuracy >= 0.8, accuracy
    assert cost <= 0.5, cost


def test_search_over_the_pool_alone_is_right_but_saves_little():
    """4 activations, no lr gene: still right >= 80% of the time; with only 4 arms the
    confirmation (2 activations x 3 seeds at full length) is most of an exhaustive sweep."""
    accuracy, cost = _accuracy_and_cost()
    assert accuracy >= 0.8, accuracy
    assert cost <= 0.8, cost


def test_the_old_way_is_mostly_noise():
    """Control: one generation, one independent seed per activation, no confirmation
    (what the search did before): the same truth is found far less often."""
    hits = 0
    for seed in SEEDS:
        p = SearchPlan(pool=POOL, population_size=4, generations=1, steps=100, seed=seed,
                       confirm_seeds=0)  # fmt: skip
        truth = Truth(p.steps)

        def independent(c: Candidate, info, truth=truth, seed=seed) -> CandidateResult:
            c = Candidate(c.candidate_id, c.activation, 0, c.index, c.ordinal,
                          seed * 100 + c.index, iters=c.iters)  # fmt: skip
            return truth(c, info)

        run = run_search_loop(p, independent, ThreadExecutor(1))
        hits += winner_record(run)["activation"] == BEST
    assert hits / len(SEEDS) < 0.7
