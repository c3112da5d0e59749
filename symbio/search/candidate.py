"""Search candidates and their results: plain data, no training code.

A *candidate* is one training segment: an FFN activation (and, with the lr
gene, a peak lr) trained for ``stepsPerCandidate`` steps in one generation,
either from scratch (generation 0, confirmation runs) or *continuing* the
checkpoint of a candidate of the previous generation (``resume_from``), so
a generation never throws away what the last one trained.

Identity and lineage:

- ``candidate_id`` is ``g<generation>-c<index>`` (``g1-c03``) for the search
  and ``confirm-s<k>-<activation>`` for the confirmation runs; unique within a
  search, stable across re-runs of the same seeded search.
- ``ordinal`` numbers candidates across the whole search; the candidate's
  metric rows use ``step_offset = ordinal * step_stride`` so that
  ``(run_id, step)`` is unique over all candidates of one search run.
- ``parent_ids`` / ``mutation_ops`` record where it came from: ``["init"]`` in
  generation 0, then ``["continue"]`` (a survivor trains on),
  ``["exploit:g1-c00", "lr:0.001->0.002"]`` or
  ``["exploit:g1-c00", "swap:gelu->relu"]`` (PBT: copy a better candidate's
  checkpoint, then explore), ``["reseed"]``, or ``["confirm"]``.
- ``seed`` seeds the initial weights, ``data_seed`` the training batch order:
  every candidate of a generation shares both (common random numbers).
- ``start_step`` steps are inherited from the parent; the segment trains to
  ``iters`` total steps, on an lr schedule that decays over ``horizon`` steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

OK, FAILED, STALLED = "ok", "failed", "stalled"
SEARCH, CONFIRM = "search", "confirm"


@dataclass(frozen=True)
class Candidate:
    candidate_id: str
    activation: str
    generation: int
    index: int
    ordinal: int
    seed: int  # initial weights
    parent_ids: tuple[str, ...] = ()
    mutation_ops: tuple[str, ...] = ()
    data_seed: int | None = None  # training batches; None: the run's
    lr: float | None = None  # the lr gene; None: the run's lr
    resume_from: str | None = None  # candidate_id whose checkpoint this one continues
    start_step: int = 0  # steps inherited from resume_from
    iters: int = 0  # total steps at the end of this segment (0: the plan's steps)
    horizon: int | None = None  # lr schedule length (None: iters)
    role: str = SEARCH  # search | confirm
    replicate: int = 0  # confirmation seed index (1..confirmSeeds)

    @property
    def steps(self) -> int:
        """Steps this segment trains (its own compute)."""
        return self.iters - self.start_step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parent_ids"], d["mutation_ops"] = list(self.parent_ids), list(self.mutation_ops)
        return d


def candidate_id(generation: int, index: int) -> str:
    return f"g{generation}-c{index:02d}"


def confirm_id(replicate: int, activation: str) -> str:
    return f"confirm-s{replicate}-{activation}"


@dataclass
class CandidateResult:
    """What training one candidate produced; health, ``fitness``/``rank`` are set by ranking."""

    candidate: Candidate
    status: str = OK
    failure_reason: str | None = None
    steps: int = 0  # steps trained by this segment
    step_offset: int = 0
    best_val_loss: float | None = None  # over the lineage
    final_val_loss: float | None = None  # at the end of this segment: what ranking uses
    final_loss: float | None = None
    recent_loss: float | None = None  # mean training loss over the segment's last steps
    initial_loss: float | None = None  # the lineage's first training loss
    skipped_steps: int = 0  # spike + NaN skips of this segment
    test_loss: float | None = None  # confirmation runs only (held-out split)
    tokens_per_sec: float | None = None
    ms_per_iter: float | None = None
    param_count: int | None = None
    instability: float | None = None
    instability_terms: dict[str, float] = field(default_factory=dict)  # spike_rate, ...
    fitness: float | None = None
    rank: int | None = None
    elapsed_s: float = 0.0
    run_dir: str | None = None

    @property
    def ok(self) -> bool:
        """Trained to the end, healthy, with a finite validation loss."""
        return self.status == OK and _finite(self.final_val_loss)

    @property
    def activation(self) -> str:
        return self.candidate.activation

    @property
    def inherited_steps(self) -> int:
        return self.candidate.start_step

    @property
    def total_steps(self) -> int:
        """Own plus inherited steps: the lineage's training so far."""
        return self.candidate.start_step + self.steps

    def failed(self, reason: str, status: str = FAILED) -> CandidateResult:
        """A copy marked failed/stalled: it ranks last and has no fitness (the worst)."""
        return replace(self, status=status, failure_reason=reason, fitness=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the candidate's identity flattened in, non-finite floats as null."""
        d = {k: v for k, v in asdict(self).items() if k != "candidate"}
        out = {
            **self.candidate.to_dict(),
            **d,
            "inherited_steps": self.inherited_steps,
            "total_steps": self.total_steps,
        }
        return {k: _json_safe(v) for k, v in out.items()}


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v
