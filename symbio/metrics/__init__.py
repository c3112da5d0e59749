"""Symbio metrics (PRD §8.3–8.9, §14.3).

Pure functions, usable on their own (the search ranks candidates with
``fitness``, ``instability_score``, ``population_entropy``, ...), and the
``SymbioMetricsCollector`` that the hook runs every ``metricsInterval`` steps.
"""

from symbio.metrics.collector import SymbioMetricsCollector
from symbio.metrics.fitness import (
    Instability,
    InstabilityTracker,
    complexity_score,
    fitness,
    instability_score,
)
from symbio.metrics.mi import MIProbe, binned_mi
from symbio.metrics.population import (
    activation_distribution,
    architecture_diversity,
    loss_window_entropy,
    model_activation_distribution,
    population_entropy,
)
from symbio.metrics.weights import effective_rank, free_energy, weight_entropy

__all__ = [
    "Instability",
    "InstabilityTracker",
    "MIProbe",
    "SymbioMetricsCollector",
    "activation_distribution",
    "architecture_diversity",
    "binned_mi",
    "complexity_score",
    "effective_rank",
    "fitness",
    "free_energy",
    "instability_score",
    "loss_window_entropy",
    "model_activation_distribution",
    "population_entropy",
    "weight_entropy",
]
