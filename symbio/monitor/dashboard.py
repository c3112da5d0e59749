"""Four CUSUM monitors over a training run's step signals (PRD §8.2).

| signal          | bad direction | column       | bit  |
|-----------------|---------------|--------------|------|
| grad_norm       | rising        | cusum_grad   | 0x01 |
| clip_pct        | rising        | cusum_clip   | 0x02 |
| tokens_per_sec  | falling       | cusum_tps    | 0x04 |
| val_loss        | rising        | cusum_val    | 0x08 |

``cusum_val`` is updated and reported on eval steps only. Because eval is
sparse, its baseline uses ``min(cusumBaselineWindow, 3)`` evaluations.

The sigma floors are per signal: ``clip_pct`` is a fraction in [0, 1] that
often sits at exactly 0, so its floor is absolute (0.02); the others use a
floor relative to the baseline mean (throughput: 2 %, gradient norm: 5 %,
validation loss: 1 %).
"""

from __future__ import annotations

from typing import Any

from symbio.monitor.cusum import CusumMonitor

# Copied from storage/schema.py (symbio must not import storage).
CUSUM_GRAD, CUSUM_CLIP, CUSUM_TPS, CUSUM_VAL = 0x01, 0x02, 0x04, 0x08

_SIGNALS: tuple[tuple[str, str, int, str], ...] = (
    # key, row field, bit, column
    ("grad", "grad_norm", CUSUM_GRAD, "cusum_grad"),
    ("clip", "clip_pct", CUSUM_CLIP, "cusum_clip"),
    ("tps", "tokens_per_sec", CUSUM_TPS, "cusum_tps"),
    ("val", "val_loss", CUSUM_VAL, "cusum_val"),
)
_VAL_BASELINE_MAX = 3


class CusumDashboard:
    """The four monitors of one run (or one search candidate)."""

    def __init__(self, sensitivity: float = 4.0, baseline_window: int = 10) -> None:
        self.sensitivity = float(sensitivity)
        self.monitors: dict[str, CusumMonitor] = {
            "grad": CusumMonitor(
                sensitivity, baseline_window, direction=1, rel_std=0.05, name="grad_norm"
            ),
            "clip": CusumMonitor(
                sensitivity, baseline_window, direction=1, min_std=0.02, name="clip_pct"
            ),
            "tps": CusumMonitor(
                sensitivity,
                baseline_window,
                direction=-1,
                rel_std=0.02,
                skip_first=2,
                name="tokens_per_sec",
            ),
            "val": CusumMonitor(
                sensitivity,
                max(2, min(baseline_window, _VAL_BASELINE_MAX)),
                direction=1,
                rel_std=0.01,
                name="val_loss",
            ),
        }

    def reset(self) -> None:
        for monitor in self.monitors.values():
            monitor.reset()

    def rebaseline_step_signals(self) -> None:
        """New baselines for grad_norm, clip_pct and tokens/s (not val_loss).

        Called after the batch size changes: the change shifts all three by
        design (smaller batches: noisier gradients, lower throughput), and
        without a new baseline a shrink would look like a throughput collapse
        and trigger the next shrink.
        """
        for key in ("grad", "clip", "tps"):
            self.monitors[key].rebaseline()

    def update(self, row: dict[str, Any]) -> dict[str, Any]:
        """Feed one step's row; returns the ``cusum_*`` fields for that row.

        Always: ``cusum_grad``, ``cusum_clip``, ``cusum_tps``, ``cusum_alerts``.
        On eval steps (``val_loss`` not None): ``cusum_val``. On an alert:
        ``cusum_alert_reason``.
        """
        out: dict[str, Any] = {}
        mask = 0
        reasons: list[str] = []
        for key, field, bit, column in _SIGNALS:
            value = row.get(field)
            if key == "val" and value is None:
                continue
            monitor = self.monitors[key]
            if monitor.update(value):
                mask |= bit
                reasons.append(_reason(monitor))
            out[column] = monitor.value
        out["cusum_alerts"] = mask
        if reasons:
            out["cusum_alert_reason"] = "; ".join(reasons)
        return out


def _reason(monitor: CusumMonitor) -> str:
    base = monitor.last_alert_baseline
    verb = "rose" if monitor.direction > 0 else "fell"
    ref = f" from baseline {base.mean:.4g}±{base.std:.2g}" if base else ""
    return f"{monitor.name} {verb}{ref}: S={monitor.value:.2f} > {monitor.sensitivity:g}"
