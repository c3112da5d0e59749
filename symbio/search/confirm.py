"""Confirmation: the search's pick against the baseline and GELU, on held-out data.

After the last generation the search's top candidate (the *nominee*), the
run's starting activation (the *baseline*) and ``gelu`` are each retrained
from scratch with ``confirmSeeds`` paired seeds for ``confirmSteps`` steps
and evaluated on the held-out **test** split, which no candidate ever
evaluated on during the search (no winner's curse: selection used the
validation split). Seed ``k`` (1, 2, ...) gives every confirmed activation the
same initial-weight seed and batch order, so differences are paired.

Each distinct ``(activation, lr)`` is one *arm*: the nominee runs at its lr
gene (with ``lrGene``), the baseline and gelu at the run's lr. The
recommendation is the arm with the lowest mean test loss **only if** its
paired difference against the baseline has a 95% t interval below zero;
otherwise the baseline stays ("no significant difference").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from symbio.search.candidate import CONFIRM, Candidate, CandidateResult, confirm_id
from symbio.search.stats import PairedDiff, Summary, paired_diff, summarize

#: Seed ``k`` of the confirmation is the search's seed + ``k * SEED_STRIDE`` (weights and data).
SEED_STRIDE = 1000
REFERENCE = "gelu"


@dataclass(frozen=True)
class Arm:
    name: str  # activation, or "<activation>-lr<lr>" when the lr differs from the run's
    activation: str
    lr: float | None  # None: the run's lr
    roles: tuple[str, ...]  # of "top", "baseline", "gelu"


def arms_for(nominee: Candidate | None, baseline: str) -> list[Arm]:
    """The distinct configurations to confirm, in order top, baseline, gelu."""
    wanted: list[tuple[str, str, float | None]] = []
    if nominee is not None:
        wanted.append(("top", nominee.activation, nominee.lr))
    wanted += [("baseline", baseline, None), ("gelu", REFERENCE, None)]
    arms: dict[tuple[str, float | None], list[str]] = {}
    for role, act, lr in wanted:
        arms.setdefault((act, lr), []).append(role)
    return [
        Arm(act if lr is None else f"{act}-lr{lr:.2g}", act, lr, tuple(roles))
        for (act, lr), roles in arms.items()
    ]


def confirmation_candidates(
    arms: Sequence[Arm],
    *,
    seeds: int,
    steps: int,
    seed: int,
    data_seed: int,
    generation: int,
    ordinal_start: int,
    nominee_id: str | None = None,
) -> list[Candidate]:
    """``seeds`` x ``len(arms)`` fresh runs; seed ``k`` shared by every arm (paired)."""
    out = []
    for k in range(1, seeds + 1):
        for arm in arms:
            i = len(out)
            parents = (nominee_id,) if nominee_id and "top" in arm.roles else ()
            out.append(
                Candidate(
                    confirm_id(k, arm.name), arm.activation, generation, i, ordinal_start + i,
                    seed + k * SEED_STRIDE, parents, ("confirm",),
                    data_seed=data_seed + k * SEED_STRIDE, lr=arm.lr, iters=steps,
                    horizon=steps, role=CONFIRM, replicate=k,
                )  # fmt: skip
            )
    return out


@dataclass
class Confirmation:
    """The confirmation runs and what they say."""

    arms: list[Arm]
    results: list[CandidateResult]
    seeds: int
    steps: int
    baseline: str
    wall_s: float = 0.0
    _by_arm: dict[str, list[CandidateResult]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        names = {(a.activation, a.lr): a.name for a in self.arms}
        for r in self.results:
            name = names.get((r.candidate.activation, r.candidate.lr), r.candidate.candidate_id)
            self._by_arm.setdefault(name, []).append(r)
        for rs in self._by_arm.values():
            rs.sort(key=lambda r: r.candidate.replicate)

    def arm(self, role: str) -> Arm | None:
        return next((a for a in self.arms if role in a.roles), None)

    def test_losses(self, arm: Arm) -> list[float | None]:
        """Per seed 1..seeds: the test loss, None where the run was unhealthy or missing."""
        by_rep = {r.candidate.replicate: r for r in self._by_arm.get(arm.name, [])}
        return [
            by_rep[k].test_loss if k in by_rep and by_rep[k].ok else None
            for k in range(1, self.seeds + 1)
        ]

    def results_of(self, arm: Arm) -> list[CandidateResult]:
        return list(self._by_arm.get(arm.name, []))

    def summary(self, arm: Arm) -> Summary:
        return summarize([x for x in self.test_losses(arm) if x is not None])

    def diff(self, a: Arm, b: Arm) -> PairedDiff:
        return paired_diff(self.test_losses(a), self.test_losses(b))

    def healthy(self, arm: Arm) -> bool:
        return self.summary(arm).n > 0

    def best(self) -> Arm | None:
        """The healthy arm with the lowest mean test loss."""
        healthy = [a for a in self.arms if self.healthy(a)]
        return min(healthy, key=lambda a: self.summary(a).mean) if healthy else None

    def winner(self) -> Arm | None:
        """The confirmed best arm (lowest mean test loss); ``switch()`` says if it is significant."""
        return self.best()

    def switch(self) -> bool:
        """Is the winner significantly better than the baseline (95% CI of the difference < 0)?"""
        best, base = self.best(), self.arm("baseline")
        if best is None or base is None or best is base or not self.healthy(base):
            return False
        d = self.diff(best, base)
        return d.significant and d.mean is not None and d.mean < 0

    def arm_rows(self) -> list[dict[str, Any]]:
        """Per arm: roles, lr, test-loss mean/sd/values, differences vs baseline and gelu."""
        base, ref = self.arm("baseline"), self.arm("gelu")
        rows = []
        for a in self.arms:
            s = self.summary(a)
            failed = [r for r in self.results_of(a) if not r.ok]
            rows.append(
                {
                    "arm": a.name,
                    "activation": a.activation,
                    "lr": a.lr,
                    "roles": list(a.roles),
                    "n": s.n,
                    "test_loss_mean": s.mean,
                    "test_loss_sd": s.sd,
                    "test_losses": self.test_losses(a),
                    "unhealthy": [
                        f"{r.candidate.candidate_id}: {r.failure_reason}" for r in failed
                    ],
                    "vs_baseline": self.diff(a, base).to_dict() if base and a is not base else None,
                    "vs_gelu": self.diff(a, ref).to_dict() if ref and a is not ref else None,
                }
            )
        return rows
