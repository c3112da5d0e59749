"""SymbioHook inside the real trainer: row fields and cadence, adaptive batch on
the real loader, fresh state per candidate, no effect on training itself."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from model.config import SHIPPED_CORPUS, build_train_config
from model.hooks import TrainerHook
from model.trainer import Trainer
from storage.schema import BATCH_CHANGE_REASONS, SYMBIO_METRIC_COLUMNS, column_names
from symbio.config import SymbioConfig
from symbio.hook import SymbioHook

EVERY_STEP = {"cusum_grad", "cusum_clip", "cusum_tps", "cusum_alerts", "adaptive_batch_size"}
SPARSE = {
    "weight_entropy",
    "effective_rank",
    "free_energy",
    "population_entropy",
    "activation_distribution",
    "complexity_score",
}
MI = {"mi_input_repr", "mi_repr_output", "mi_compression"}
EVAL = {"cusum_val", "fitness_score"}


def small_corpus(tmp_path: Path) -> str:
    """The first 100 kB of the shipped corpus: the same text, a faster setup."""
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    return str(path)


def tiny(tmp_path: Path, name: str = "run", **kw: Any):
    values = dict(
        data=small_corpus(tmp_path),
        device="cpu",
        iters=40,
        batch=8,
        block=16,
        dim=32,
        heads=2,
        layers=2,
        dropout=0.0,
        eval_interval=10,
        eval_iters=2,
        sample_tokens=0,
        activation="swiglu",
        seed=3,
        run_dir=str(tmp_path / name),
    )
    values.update(kw)
    return build_train_config(values)


def rows_of(result) -> list[dict]:
    lines = (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train(cfg, hooks) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(cfg, hooks, progress=False)
    result = trainer.fit()
    assert result.status == "completed", result.error
    return trainer, rows_of(result)


class Seen(TrainerHook):
    """Records the batch dimension the model really sees, via a forward pre-hook."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_start(self, trainer) -> None:
        def pre(_module, args):
            if torch.is_grad_enabled():  # training forwards only (eval/MI run under no_grad)
                self.sizes.append(args[0].shape[0])

        trainer.model.register_forward_pre_hook(pre)


class Signals(TrainerHook):
    """Replaces the monitored signals by a controlled series with a known gradient
    shift on ``shift_steps`` (real CPU timings and early grad norms are too noisy
    to place an alert at a known step). Runs before SymbioHook."""

    def __init__(self, shift_steps: range) -> None:
        self.shift_steps = shift_steps

    def on_step_end(self, trainer, row) -> None:
        step = row["step"]
        row["grad_norm"] = 1e3 if step in self.shift_steps else 1.0 + 0.01 * (step * 7 % 5)
        row["clip_pct"] = 0.0
        row["tokens_per_sec"] = 1e4 + 10.0 * (step * 3 % 7)


def test_rows_carry_every_symbio_field_at_its_cadence(tmp_path) -> None:
    cfg = SymbioConfig(
        metrics_interval=10, track_mi_profiles=True, search_mode="none", adaptive_batch=False
    )
    _, rows = train(tiny(tmp_path), [SymbioHook(cfg)])
    assert len(rows) == 40
    schema = set(column_names("metrics"))
    for row in rows:
        assert set(row) <= schema, set(row) - schema
        assert EVERY_STEP <= set(row)
        assert row["adaptive_batch_size"] == 8
        is_eval = row["val_loss"] is not None
        assert all((k in row) == is_eval for k in EVAL), row["step"]
        sparse_due = row["step"] % 10 == 0
        assert all((k in row) == sparse_due for k in SPARSE | MI), row["step"]
        assert ("cusum_alert_reason" in row) == bool(row["cusum_alerts"])
        assert "batch_change_reason" not in row
        for key in SYMBIO_METRIC_COLUMNS & set(row):
            value = row[key]
            assert not (isinstance(value, float) and not math.isfinite(value))
    last = rows[-1]
    assert json.loads(last["activation_distribution"]) == {"swiglu": 2}
    assert last["fitness_score"] == pytest.approx(
        -min(r["val_loss"] for r in rows if r["val_loss"])
    )
    assert last["free_energy"] == pytest.approx(last["loss"] + 0.01 * last["weight_entropy"])
    assert 1 <= last["effective_rank"] <= 32
    assert 0 < last["mi_input_repr"] <= math.log2(30)


def test_symbio_observes_without_changing_training(tmp_path) -> None:
    plain = Trainer(tiny(tmp_path, "plain"), progress=False).fit()
    cfg = SymbioConfig(metrics_interval=5, track_mi_profiles=True, adaptive_batch=False)
    _, rows = train(tiny(tmp_path, "symbio"), [SymbioHook(cfg)])
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_of(plain)]
    assert not any(SYMBIO_METRIC_COLUMNS & set(r) for r in rows_of(plain))


def test_adaptive_batch_changes_the_batch_the_model_sees(tmp_path) -> None:
    cfg = SymbioConfig(
        cusum_baseline_window=5,
        batch_min=2,
        batch_max=8,
        batch_step=2,
        calm_steps_before_restore=100,
        metrics_interval=1000,
    )
    seen = Seen()
    _, rows = train(tiny(tmp_path, iters=40), [Signals(range(12, 1000)), SymbioHook(cfg), seen])
    changes = [
        (r["step"], r["adaptive_batch_size"], r["batch_change_reason"])
        for r in rows
        if "batch_change_reason" in r
    ]
    first_step, new_size, reason = changes[0]
    assert reason == "cusum_grad" and new_size == 6
    assert 13 <= first_step <= 16  # detection delay after the injected shift at step 12
    assert rows[first_step - 1]["cusum_alerts"] & 0x01
    # the loader really yields the new size from the next step on
    assert seen.sizes[first_step - 1] == 8 and seen.sizes[first_step] == 6
    assert rows[first_step]["batch_size"] == 6
    assert all(s == r["batch_size"] for s, r in zip(seen.sizes, rows, strict=True))
    assert all(r in BATCH_CHANGE_REASONS for _, _, r in changes)
    assert min(seen.sizes) >= 2
    # the shrink re-baselines the step monitors: one shift, one change (no cascade)
    assert len(changes) == 1


def test_calm_steps_restore_the_original_batch(tmp_path) -> None:
    cfg = SymbioConfig(
        cusum_baseline_window=5,
        batch_min=2,
        batch_max=8,
        batch_step=2,
        calm_steps_before_restore=5,
        metrics_interval=1000,
    )

    seen = Seen()
    _, rows = train(tiny(tmp_path, iters=40), [Signals(range(10, 14)), SymbioHook(cfg), seen])
    changes = [
        (r["step"], r["adaptive_batch_size"], r["batch_change_reason"])
        for r in rows
        if "batch_change_reason" in r
    ]
    assert [c[2] for c in changes] == ["cusum_grad", "restore"]
    (down, small, _), (up, back, _) = changes
    assert small == 6 and back == 8
    assert up - down == 5  # calmStepsBeforeRestore
    assert seen.sizes[down] == 6 and seen.sizes[up] == 8 and seen.sizes[-1] == 8


def test_state_is_fresh_for_every_candidate_and_candidate_fields_are_added(tmp_path) -> None:
    candidate = {
        "symbio_candidate_id": "g1-c2",
        "symbio_candidate_activation": "silu",
        "symbio_generation": 1,
        "architecture_diversity": 0.5,
        "activation_distribution": '{"gelu":1,"silu":1}',
        "population_entropy": 0.69,
    }
    cfg = SymbioConfig(
        cusum_baseline_window=5, batch_min=2, batch_max=8, batch_step=2, metrics_interval=10
    )
    hook = SymbioHook(cfg, candidate=candidate)
    train(tiny(tmp_path, "first", iters=20), [Signals(range(8, 1000)), hook])
    assert hook.adaptive.current < 8
    _, rows = train(tiny(tmp_path, "second", iters=20, activation="silu"), [hook])
    # a fresh CUSUM: zero while the new baseline builds, no alert carried over
    assert all(r["cusum_grad"] == 0.0 for r in rows[:5])
    assert rows[0]["adaptive_batch_size"] == 8 and rows[0]["batch_size"] == 8
    for row in rows:
        assert {k: row[k] for k in candidate} == candidate
        assert set(row) <= set(column_names("metrics"))
    assert rows[9]["symbio_candidate_activation"] == "silu"


def test_unknown_candidate_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown candidate fields"):
        SymbioHook(SymbioConfig(), candidate={"candidate_id": "x"})


class TwoBursts(Signals):
    def __init__(self) -> None:
        super().__init__(range(0))

    def on_step_end(self, trainer, row) -> None:
        super().on_step_end(trainer, row)
        if row["step"] in (5, 6, 7, 15, 16, 17):
            row["grad_norm"] = 1e3


@pytest.mark.slow
def test_adaptive_batch_does_not_recompile_under_torch_compile(tmp_path) -> None:
    """`--compile`: repeated resizes reuse one dynamic-batch graph (no recompilation storm)."""
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = SymbioConfig(
        cusum_baseline_window=3,
        batch_min=2,
        batch_max=8,
        batch_step=2,
        calm_steps_before_restore=3,
        metrics_interval=1000,
    )
    _, rows = train(
        tiny(tmp_path, iters=22, layers=1, compile=True, eval_interval=1000),
        [TwoBursts(), SymbioHook(cfg)],  # no forward pre-hook here: it would break graphs
    )
    sizes = [r["batch_size"] for r in rows]
    changes = sum(a != b for a, b in zip(sizes, sizes[1:], strict=False))
    assert changes >= 3, sizes
    # at most: the first (static) graph, one dynamic-batch graph after the first
    # resize, one graph for the final eval (no_grad) -- however many resizes follow
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])


class WeightsNow(TrainerHook):
    """Weight metrics of the model as the symbio hook sees it (runs after SymbioHook)."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[float, float]] = {}

    def on_step_end(self, trainer, row) -> None:
        from symbio.metrics import effective_rank, weight_entropy

        model = trainer.model
        self.values[row["step"]] = (weight_entropy(model.parameters()), effective_rank(model))


def test_on_cpu_weight_metrics_are_synchronous_and_of_the_current_step(tmp_path) -> None:
    cfg = SymbioConfig(metrics_interval=4, adaptive_batch=False, track_mi_profiles=False)
    hook = SymbioHook(cfg)
    now = WeightsNow()
    _, rows = train(tiny(tmp_path, iters=9), [hook, now])
    assert hook.weights_async is None  # the side-stream path is CUDA only
    for step in (4, 8):
        row = rows[step - 1]
        assert (row["weight_entropy"], row["effective_rank"]) == now.values[step]
        assert row["weight_entropy"] != now.values[step - 1][0]  # no lag: this step's weights
