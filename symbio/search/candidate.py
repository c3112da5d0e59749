"""Search candidates and their results: plain data, no training code.

A *candidate* is one FFN activation trained from scratch for
``stepsPerCandidate`` steps in one generation. Identity and lineage:

- ``candidate_id`` is ``g<generation>-c<index>`` (``g1-c03``): unique within a
  search, stable across re-runs of the same seeded search.
- ``ordinal`` numbers candidates across the whole search (generation-major);
  the candidate's metric rows use ``step_offset = ordinal * steps`` so that
  ``(run_id, step)`` is unique over all candidates of one search run.
- ``parent_ids`` / ``mutation_ops`` record where it came from: ``["init"]`` in
  generation 0, then ``["elite"]``, ``["clone"]`` or ``["swap:gelu->relu"]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

OK, FAILED = "ok", "failed"


@dataclass(frozen=True)
class Candidate:
    candidate_id: str
    activation: str
    generation: int
    index: int
    ordinal: int
    seed: int
    parent_ids: tuple[str, ...] = ()
    mutation_ops: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parent_ids"], d["mutation_ops"] = list(self.parent_ids), list(self.mutation_ops)
        return d


def candidate_id(generation: int, index: int) -> str:
    return f"g{generation}-c{index:02d}"


@dataclass
class CandidateResult:
    """What training one candidate produced; ``fitness``/``rank`` are set by ranking."""

    candidate: Candidate
    status: str = OK
    failure_reason: str | None = None
    steps: int = 0
    step_offset: int = 0
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    final_loss: float | None = None
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
        """Trained to the end with a finite validation loss."""
        return self.status == OK and _finite(self.best_val_loss)

    @property
    def activation(self) -> str:
        return self.candidate.activation

    def failed(self, reason: str) -> CandidateResult:
        """A copy marked failed: it ranks last and has no fitness (the worst)."""
        return replace(self, status=FAILED, failure_reason=reason, fitness=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the candidate's identity flattened in, non-finite floats as null."""
        d = {k: v for k, v in asdict(self).items() if k != "candidate"}
        out = {**self.candidate.to_dict(), **d}
        return {k: _json_safe(v) for k, v in out.items()}


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v
