"""CUSUM monitors, the four-signal dashboard and adaptive batching (PRD §8.2, §8.10)."""

from __future__ import annotations

import random
import time

import pytest

from storage.schema import BATCH_CHANGE_REASONS, CUSUM_BITS
from symbio.monitor.adaptive_batch import AdaptiveBatch
from symbio.monitor.cusum import CusumMonitor
from symbio.monitor.dashboard import (
    CUSUM_CLIP,
    CUSUM_GRAD,
    CUSUM_TPS,
    CUSUM_VAL,
    CusumDashboard,
)

SHIFT_AT = 150


def _alerts(monitor: CusumMonitor, series: list[float]) -> list[int]:
    return [i for i, x in enumerate(series) if monitor.update(x)]


def test_bits_match_the_lake_schema() -> None:
    assert (CUSUM_GRAD, CUSUM_CLIP, CUSUM_TPS, CUSUM_VAL) == (
        CUSUM_BITS["grad"],
        CUSUM_BITS["clip"],
        CUSUM_BITS["tps"],
        CUSUM_BITS["val"],
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("direction", [1, -1])
def test_one_sided_cusum_detects_a_shift_in_the_bad_direction(seed: int, direction: int) -> None:
    rng = random.Random(seed)
    series = [10 + rng.gauss(0, 1) for _ in range(SHIFT_AT)]
    series += [10 + direction * 3 + rng.gauss(0, 1) for _ in range(100)]
    alerts = _alerts(CusumMonitor(4.0, 10, direction=direction), series)
    assert alerts and alerts[0] >= SHIFT_AT, "false alarm before the shift"
    assert alerts[0] - SHIFT_AT <= 6, "3-sigma shift detected too late"
    # one shift -> one alert: the monitor re-baselines on the new regime
    assert len(alerts) == 1


@pytest.mark.parametrize("direction", [1, -1])
def test_shift_in_the_good_direction_never_alerts(direction: int) -> None:
    rng = random.Random(7)
    series = [10 + rng.gauss(0, 1) for _ in range(SHIFT_AT)]
    series += [10 - direction * 5 + rng.gauss(0, 1) for _ in range(100)]
    assert _alerts(CusumMonitor(4.0, 10, direction=direction), series) == []


def test_value_reports_s_at_the_alert_then_zero_while_rebaselining() -> None:
    m = CusumMonitor(4.0, 4)
    for x in [1.0, 1.1, 0.9, 1.0]:
        assert not m.update(x) and m.value == 0.0 and (m.calibrating or x == 1.0)
    assert not m.calibrating
    assert not m.update(50.0)  # a lone outlier adds at most z_cap - k = 2
    assert m.value == 2.0
    assert not m.update(50.0) and m.value == 4.0  # S = 4 is not > 4 ...
    assert m.update(50.0)  # ... a sustained jump alerts at S = 6
    assert m.value > 4.0 and m.n_alerts == 1
    m.update(50.0)
    assert m.value == 0.0 and m.calibrating


def test_flat_baseline_uses_the_std_floor() -> None:
    m = CusumMonitor(4.0, 10, min_std=0.02)
    assert _alerts(m, [0.0] * 10 + [0.001] * 50) == []  # tiny wiggle: no alert
    assert _alerts(CusumMonitor(4.0, 10, min_std=0.02), [0.0] * 10 + [0.3] * 5) == [12]


def test_none_and_non_finite_observations_are_ignored() -> None:
    m = CusumMonitor(4.0, 3)
    for x in [None, float("nan"), float("inf"), 1.0, 1.0, 1.0]:
        m.update(x)
    assert not m.calibrating and m.baseline.mean == 1.0


def test_reset_forgets_the_baseline() -> None:
    m = CusumMonitor(4.0, 3)
    for x in [1.0, 2.0, 3.0, 9.0]:
        m.update(x)
    m.reset()
    assert m.calibrating and m.value == 0.0 and m.n_alerts == 0


def _rows(rng: random.Random, n: int, shift: str | None) -> list[dict]:
    """Synthetic step rows; from SHIFT_AT on, ``shift`` goes bad."""
    rows = []
    for i in range(n):
        bad = shift is not None and i >= SHIFT_AT
        rows.append(
            {
                "grad_norm": (3.0 if bad and shift == "grad" else 1.0) + rng.gauss(0, 0.05),
                "clip_pct": 0.4 if bad and shift == "clip" else 0.0,
                "tokens_per_sec": (6000.0 if bad and shift == "tps" else 10000.0)
                + rng.gauss(0, 100),
                # eval every 10 steps; val loss falls, then diverges
                "val_loss": None
                if i % 10
                else (2.7 + (i - SHIFT_AT) * 0.02 if bad and shift == "val" else 3.0 - i * 0.002)
                + rng.gauss(0, 0.005),
            }
        )
    return rows


@pytest.mark.parametrize(
    ("signal", "bit", "max_delay"),
    [
        ("grad", CUSUM_GRAD, 3),
        ("clip", CUSUM_CLIP, 3),
        ("tps", CUSUM_TPS, 3),
        ("val", CUSUM_VAL, 50),
    ],
)
def test_dashboard_detects_an_injected_shift_in_each_signal(signal, bit, max_delay) -> None:
    dash = CusumDashboard(4.0, 10)
    fired = []
    for i, row in enumerate(_rows(random.Random(1), 260, signal)):
        out = dash.update(row)
        assert set(out) <= {
            "cusum_grad",
            "cusum_clip",
            "cusum_tps",
            "cusum_val",
            "cusum_alerts",
            "cusum_alert_reason",
        }
        assert ("cusum_val" in out) == (row["val_loss"] is not None)
        assert ("cusum_alert_reason" in out) == bool(out["cusum_alerts"])
        if out["cusum_alerts"]:
            fired.append((i, out["cusum_alerts"], out["cusum_alert_reason"]))
    assert fired, f"{signal} shift not detected"
    first_step, mask, reason = fired[0]
    assert first_step >= SHIFT_AT, f"false alarm before the shift: {fired[0]}"
    assert first_step - SHIFT_AT <= max_delay
    assert mask == bit
    assert all(m == bit for _, m, _ in fired), "another monitor fired"
    names = {
        "grad": "grad_norm rose",
        "clip": "clip_pct rose",
        "tps": "tokens_per_sec fell",
        "val": "val_loss rose",
    }
    assert reason.startswith(names[signal])


def test_dashboard_is_quiet_on_a_calm_run() -> None:
    dash = CusumDashboard(4.0, 10)
    assert all(dash.update(r)["cusum_alerts"] == 0 for r in _rows(random.Random(2), 300, None))


def test_bitmask_encodes_simultaneous_alerts() -> None:
    dash = CusumDashboard(4.0, 10)
    calm = {"grad_norm": 1.0, "clip_pct": 0.0, "tokens_per_sec": 1000.0, "val_loss": 2.0}
    for i in range(12):
        dash.update({**calm, "grad_norm": 1.0 + 0.01 * (i % 3)})
    bad = {"grad_norm": 50.0, "clip_pct": 0.9, "tokens_per_sec": 10.0, "val_loss": 9.0}
    assert dash.update(bad)["cusum_alerts"] == 0  # one outlier step is not a regime
    assert dash.update(bad)["cusum_alerts"] == 0
    out = dash.update(bad)
    assert out["cusum_alerts"] == CUSUM_GRAD | CUSUM_CLIP | CUSUM_TPS | CUSUM_VAL == 0x0F
    assert out["cusum_alert_reason"].count(";") == 3


def test_cusum_update_costs_under_a_tenth_of_a_millisecond() -> None:
    dash = CusumDashboard(4.0, 10)
    rows = _rows(random.Random(3), 2000, None)
    start = time.perf_counter()
    for row in rows:
        dash.update(row)
    per_step_ms = (time.perf_counter() - start) * 1000 / len(rows)
    assert per_step_ms < 0.1, per_step_ms


# -- adaptive batch ----------------------------------------------------------------


def test_alerts_move_the_batch_in_the_right_direction() -> None:
    ab = AdaptiveBatch(32, 8, 64, 4, calm_steps=100)
    assert ab.update(CUSUM_GRAD) == (28, "cusum_grad")
    assert ab.update(CUSUM_TPS) == (24, "cusum_tps")
    assert ab.update(CUSUM_CLIP) == (28, "cusum_clip")
    assert ab.update(0) == (28, None)
    assert ab.update(CUSUM_VAL) == (28, None)  # val alerts do not resize
    assert ab.update(CUSUM_GRAD | CUSUM_CLIP) == (24, "cusum_grad")  # smaller wins


def test_batch_is_clamped_and_a_cancelled_change_has_no_reason() -> None:
    ab = AdaptiveBatch(12, 8, 16, 4, calm_steps=100)
    assert ab.update(CUSUM_GRAD) == (8, "cusum_grad")
    assert ab.update(CUSUM_GRAD) == (8, None)
    for _ in range(3):
        ab.update(CUSUM_CLIP)
    assert ab.current == 16
    assert ab.update(CUSUM_CLIP) == (16, None)


def test_original_outside_the_range_is_kept_until_an_alert() -> None:
    ab = AdaptiveBatch(4, 8, 64, 4, calm_steps=5)
    assert all(ab.update(0) == (4, None) for _ in range(20))
    assert ab.update(CUSUM_GRAD) == (4, None)  # already at the (widened) minimum
    assert ab.update(CUSUM_CLIP) == (8, "cusum_clip")


def test_calm_steps_restore_toward_the_original_one_step_at_a_time() -> None:
    ab = AdaptiveBatch(32, 8, 64, 4, calm_steps=5)
    ab.update(CUSUM_GRAD)
    ab.update(CUSUM_GRAD)
    assert ab.current == 24
    changes = [(i, *ab.update(0)) for i in range(1, 16)]
    restores = [(i, size) for i, size, reason in changes if reason == "restore"]
    assert restores == [(5, 28), (10, 32)]
    assert all(r in BATCH_CHANGE_REASONS for _, _, r in changes if r)
    assert ab.update(0) == (32, None)  # back home: nothing more to restore


def test_an_alert_restarts_the_calm_count() -> None:
    ab = AdaptiveBatch(32, 8, 64, 4, calm_steps=5)
    ab.update(CUSUM_CLIP)
    for _ in range(4):
        ab.update(0)
    ab.update(CUSUM_VAL)
    assert [ab.update(0)[1] for _ in range(5)] == [None] * 4 + ["restore"]


def test_rebaselining_step_signals_keeps_the_val_monitor() -> None:
    dash = CusumDashboard(4.0, 3)
    for i in range(5):
        dash.update(
            {
                "grad_norm": 1.0 + 0.1 * (i % 2),
                "clip_pct": 0.0,
                "tokens_per_sec": 100.0 + i % 2,
                "val_loss": 2.0 + 0.01 * i,
            }
        )
    dash.rebaseline_step_signals()
    assert all(dash.monitors[k].calibrating for k in ("grad", "clip", "tps"))
    assert not dash.monitors["val"].calibrating
    # a throughput level that would have alerted is now just the new baseline
    outs = [
        dash.update({"grad_norm": 1.0, "clip_pct": 0.0, "tokens_per_sec": 50.0 + i % 2})
        for i in range(10)
    ]
    assert all(o["cusum_alerts"] == 0 for o in outs)
