"""Symbio's CUDA-only path: weight entropy and effective rank snapshotted and computed
on a side stream (eager or CUDA graph) one step before the metrics step.

Skipped without CUDA (the lead runs these on the GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from model.config import SHIPPED_CORPUS, build_train_config
from model.hooks import TrainerHook
from model.trainer import Trainer
from symbio.config import SymbioConfig
from symbio.hook import SymbioHook
from symbio.metrics.async_weights import AsyncWeightMetrics
from symbio.metrics.weights import (
    effective_rank,
    effective_rank_tensor,
    weight_entropy,
    weight_entropy_tensor,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(50, 48), nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48), nn.Linear(48, 48)
    ).cuda()


@pytest.mark.parametrize("use_graph", [True, False])
def test_async_metrics_are_those_of_the_weights_at_launch(use_graph: bool) -> None:
    model = small_model()
    expected = (weight_entropy(model.parameters()), effective_rank(model, method="sign"))
    eigh_rank = effective_rank(model.cpu(), method="eigh")
    model.cuda()
    metrics = AsyncWeightMetrics(model, use_graph=use_graph)
    for _ in range(2):  # the first launch captures the graphs, the second replays them
        metrics.launch()
        with torch.no_grad():  # the "next optimizer step" on the main stream
            for p in model.parameters():
                p.mul_(3.0).add_(1.0)
        entropy, rank = metrics.result()
        assert entropy == pytest.approx(expected[0], abs=1e-9)
        assert rank == pytest.approx(expected[1], abs=1e-9) and rank == eigh_rank
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(1.0).div_(3.0)
        expected = (weight_entropy(model.parameters()), effective_rank(model, method="sign"))
    if use_graph:  # the rank (the costly stage) must replay from a graph
        assert metrics.mode in ("graph", "partial") and metrics._stages[0].graph is not None
    else:
        assert metrics.mode == "eager"
    assert metrics.result() is None  # nothing pending
    metrics.close()


def test_tensor_versions_need_no_host_sync() -> None:
    model = small_model()
    torch.cuda.set_sync_debug_mode("error")
    try:
        h = weight_entropy_tensor(model.parameters())
        r = effective_rank_tensor(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert h.is_cuda and r.is_cuda
    assert float(h) == weight_entropy(model.parameters())
    assert float(r) == effective_rank(model)


class WeightsAt(TrainerHook):
    """Records the synchronous weight metrics at chosen steps (runs before SymbioHook)."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.values: dict[int, tuple[float, float]] = {}

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if row["step"] in self.steps:
            model = trainer.model
            self.values[row["step"]] = (weight_entropy(model.parameters()), effective_rank(model))


def gpu_config(tmp_path: Path, name: str):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    return build_train_config(
        {
            "data": str(corpus),
            "device": "cuda",
            "iters": 21,
            "batch": 8,
            "block": 32,
            "dim": 64,
            "heads": 2,
            "layers": 2,
            "dropout": 0.0,
            "eval_interval": 10,
            "eval_iters": 2,
            "sample_tokens": 0,
            "activation": "swiglu",
            "seed": 3,
            "run_dir": str(tmp_path / name),
        }
    )


def rows_of(trainer: Trainer) -> list[dict]:
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_training_with_async_metrics(tmp_path, cuda_graph: bool) -> None:
    plain = Trainer(gpu_config(tmp_path, "plain"), progress=False)
    assert plain.fit().status == "completed"
    cfg = SymbioConfig(metrics_interval=5, adaptive_batch=False, track_mi_profiles=False)
    hook = SymbioHook(cfg, cuda_graph=cuda_graph)
    seen = WeightsAt({4, 9, 14, 19})
    trainer = Trainer(gpu_config(tmp_path, "symbio"), [seen, hook], progress=False)
    assert trainer.fit().status == "completed"
    rows = rows_of(trainer)
    # the loss curve is unaffected (same kernels; tolerance only for GPU nondeterminism)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in rows_of(plain)], rel=1e-5)
    # metrics at steps 5, 10, ... are those of the weights one step earlier
    for step in (5, 10, 15, 20):
        row = rows[step - 1]
        entropy, rank = seen.values[step - 1]
        assert row["weight_entropy"] == pytest.approx(entropy, abs=1e-9)
        assert row["effective_rank"] == pytest.approx(rank, abs=1e-9)
        assert row["free_energy"] == pytest.approx(row["loss"] + 0.01 * entropy)
    assert hook.weights_async is None  # closed at the end of training
