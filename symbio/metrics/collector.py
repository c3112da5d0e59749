"""``SymbioMetricsCollector``: the sparse (every ``metricsInterval``) metrics of one run.

Computes the enabled metrics of PRD §8.3–8.9 for the current model state and
returns them as lake columns. Everything runs on the model's device; only
scalars come back. On CUDA the hook passes in weight entropy and effective
rank computed one step earlier on a side stream (``AsyncWeightMetrics``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from symbio.config import SymbioConfig
from symbio.metrics.fitness import complexity_score
from symbio.metrics.mi import MIProbe
from symbio.metrics.population import loss_window_entropy, model_activation_distribution
from symbio.metrics.weights import effective_rank, free_energy, weight_entropy

#: Recent training losses kept for the single-run population entropy.
LOSS_WINDOW_MAX = 256


class SymbioMetricsCollector:
    """Sparse metrics of one run (or one search candidate)."""

    def __init__(
        self,
        config: SymbioConfig,
        *,
        param_count: int,
        activation: str,
        n_layer: int,
        probe: MIProbe | None = None,
    ) -> None:
        self.config = config
        self.param_count = int(param_count)
        self.activation_json = model_activation_distribution(activation, n_layer)
        self.probe = probe
        window = max(2, min(config.metrics_interval, LOSS_WINDOW_MAX))
        self.recent_losses: deque[float] = deque(maxlen=window)

    def observe_loss(self, loss: float | None) -> None:
        """Record one step's training loss (every step; O(1))."""
        if loss is not None and loss == loss:  # skip NaN
            self.recent_losses.append(float(loss))

    @property
    def needs_entropy(self) -> bool:
        """Whether some enabled metric needs the weight entropy."""
        cfg = self.config
        return cfg.track_weight_entropy or cfg.track_free_energy or cfg.complexity_mode == "entropy"

    @property
    def needs_rank(self) -> bool:
        """Whether some enabled metric needs the effective rank."""
        cfg = self.config
        return cfg.track_effective_rank or cfg.complexity_mode == "mdl"

    @torch.no_grad()
    def weight_metrics(self, model: nn.Module) -> tuple[float | None, float | None]:
        """``(weight_entropy, effective_rank)`` of ``model`` now, ``None`` where not needed."""
        entropy = weight_entropy(model.parameters()) if self.needs_entropy else None
        rank = effective_rank(model) if self.needs_rank else None
        return entropy, rank

    @torch.no_grad()
    def collect(
        self,
        model: nn.Module,
        loss: float,
        autocast: Callable[[], Any] | None = None,
        weights: tuple[float | None, float | None] | None = None,
    ) -> dict[str, Any]:
        """The enabled sparse metrics for ``model`` at a step with training ``loss``.

        ``weights``: ``(entropy, rank)`` computed elsewhere (e.g. on a side CUDA
        stream by ``AsyncWeightMetrics``); by default computed here, synchronously.
        """
        cfg = self.config
        out: dict[str, Any] = {}
        entropy, rank = weights if weights is not None else self.weight_metrics(model)
        if cfg.track_weight_entropy:
            out["weight_entropy"] = entropy
        if cfg.track_effective_rank:
            out["effective_rank"] = rank
        if cfg.track_free_energy and entropy is not None:
            out["free_energy"] = free_energy(loss, entropy, cfg.free_energy_beta)
        if cfg.track_population_metrics:
            out["population_entropy"] = loss_window_entropy(self.recent_losses)
            out["activation_distribution"] = self.activation_json
        out["complexity_score"] = complexity_score(
            cfg.complexity_mode, self.param_count, entropy, rank
        )
        if cfg.track_mi_profiles and self.probe is not None:
            out.update(self.probe.measure(model, autocast))
        return {k: v for k, v in out.items() if v is not None}
