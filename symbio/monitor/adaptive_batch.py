"""Adaptive batch sizing driven by CUSUM alerts (PRD §8.10).

- gradient-norm alert (0x01): smaller by ``batchStep`` (smaller batches recover faster)
- throughput alert (0x04): smaller by ``batchStep`` (memory pressure)
- clip alert (0x02): larger by ``batchStep`` (larger batches smooth gradients)
- no alert for ``calmStepsBeforeRestore`` steps: one ``batchStep`` back toward
  the original size; the calm count restarts after each restore step.

When several alerts fire at once, "smaller" wins (instability first) and the
reason names the first of grad, tps. The size stays within
``[batchMin, batchMax]`` widened to include the original size, so that a run
whose configured batch lies outside the range is never changed without an
alert. A change that clamping cancels is no change (and has no reason).
"""

from __future__ import annotations

from symbio.monitor.dashboard import CUSUM_CLIP, CUSUM_GRAD, CUSUM_TPS


class AdaptiveBatch:
    """Batch size state machine; ``update`` is O(1) and allocation-free."""

    def __init__(
        self,
        original: int,
        batch_min: int = 8,
        batch_max: int = 64,
        batch_step: int = 4,
        calm_steps: int = 200,
    ) -> None:
        if original < 1 or batch_step < 1 or calm_steps < 1 or batch_min > batch_max:
            raise ValueError("invalid adaptive batch settings")
        self.original = int(original)
        self.low = max(1, min(batch_min, self.original))
        self.high = max(batch_max, self.original)
        self.step = int(batch_step)
        self.calm_steps = int(calm_steps)
        self.current = self.original
        self.calm = 0

    def update(self, alerts: int) -> tuple[int, str | None]:
        """Apply one step's alert bitmask; returns ``(size, reason or None)``."""
        if alerts:
            self.calm = 0  # any alert (val included) breaks the calm streak
            if alerts & CUSUM_GRAD:
                return self._move(-self.step, "cusum_grad")
            if alerts & CUSUM_TPS:
                return self._move(-self.step, "cusum_tps")
            if alerts & CUSUM_CLIP:
                return self._move(self.step, "cusum_clip")
            return self.current, None
        self.calm += 1
        if self.calm < self.calm_steps or self.current == self.original:
            return self.current, None
        self.calm = 0
        gap = self.original - self.current
        return self._move(max(-self.step, min(self.step, gap)), "restore")

    def _move(self, delta: int, reason: str) -> tuple[int, str | None]:
        new = max(self.low, min(self.high, self.current + delta))
        if new == self.current:
            return self.current, None
        self.current = new
        return new, reason
