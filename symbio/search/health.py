"""Health gates: a candidate that did not really train is never ``ok``.

Applied to every result before ranking (search and confirmation alike), in
this order; the first that trips sets the status and a one-line reason:

1. ``failed``: training raised or ended ``failed`` (kept as the runner set it);
2. ``stalled``: more than ``MAX_SKIP_FRACTION`` of the segment's steps were
   skipped by the NaN or spike guard (the model hardly updated);
3. ``failed``: the validation loss at the end is missing or not finite;
4. ``failed``: the validation loss is not below the lineage's initial loss
   (the first training loss, about ``ln(vocab)``): diverged or never learned;
5. ``stalled``: the training loss moved less than ``MIN_PROGRESS`` (relative)
   from the initial loss over the lineage: the loss stopped moving.

A non-``ok`` candidate gets no fitness, ranks last, never survives a
generation and is never recommended.

``near_initial_warning`` flags a generation whose best candidate is still
within ``NEAR_INITIAL`` of its initial loss: its ranking is mostly noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from symbio.search.candidate import FAILED, OK, STALLED, CandidateResult

MAX_SKIP_FRACTION = 0.5
MIN_PROGRESS = 0.01
NEAR_INITIAL = 0.9  # a val loss above 90% of the initial loss has learned little


def assess(r: CandidateResult) -> CandidateResult:
    """``r`` itself when healthy, else a copy marked ``failed``/``stalled`` with a reason."""
    if r.status != OK:
        return r
    if r.steps > 0 and r.skipped_steps > MAX_SKIP_FRACTION * r.steps:
        return r.failed(
            f"{r.skipped_steps}/{r.steps} steps skipped by the NaN/spike guard",
            STALLED,
        )
    val, initial = r.final_val_loss, r.initial_loss
    if val is None or not math.isfinite(val):
        return r.failed("no finite validation loss")
    if initial is not None and math.isfinite(initial) and val >= initial:
        return r.failed(f"diverged: val loss {val:.4g} not below the initial loss {initial:.4g}")
    recent = r.recent_loss
    if initial and recent is not None and math.isfinite(recent):
        progress = (initial - recent) / abs(initial)
        if progress < MIN_PROGRESS:
            return r.failed(
                f"training loss moved {100 * progress:.2f}% from the initial "
                f"{initial:.4g} (< {100 * MIN_PROGRESS:.0f}%)",
                STALLED,
            )
    return r


def near_initial_warning(results: Sequence[CandidateResult], generation: int) -> str | None:
    """A warning when even the generation's best val loss is near its initial loss."""
    ok = [r for r in results if r.ok and r.initial_loss]
    if not ok:
        return None
    best = min(ok, key=lambda r: r.final_val_loss)  # type: ignore[arg-type, return-value]
    if best.final_val_loss < NEAR_INITIAL * best.initial_loss:  # type: ignore[operator]
        return None
    return (
        f"generation {generation}: the best val loss {best.final_val_loss:.4g} is still within "
        f"{100 * (1 - NEAR_INITIAL):.0f}% of the initial loss {best.initial_loss:.4g}: candidates "
        "are compared before they learned much, so the ranking is mostly noise (raise lr or "
        "warmupIters/stepsPerCandidate, or set lrGene)"
    )


__all__ = [
    "FAILED", "MAX_SKIP_FRACTION", "MIN_PROGRESS", "NEAR_INITIAL", "OK", "STALLED", "assess",
    "near_initial_warning",
]  # fmt: skip
