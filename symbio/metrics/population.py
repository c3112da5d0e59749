"""Population metrics (PRD §8.6, §8.7, §8.11). Pure functions over Python values.

The search orchestrator calls ``population_entropy`` over its candidates'
fitness values, ``activation_distribution`` over their activations and
``architecture_diversity`` over their architecture keys; a single run uses
``loss_window_entropy`` over its recent training losses.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence


def population_entropy(fitness: Iterable[float], temperature: float = 1.0) -> float:
    """Entropy (nats) of ``softmax(fitness / temperature)``; higher fitness = more mass.

    In ``[0, ln n]``: ``ln n`` when every member is equally fit, 0 when one
    dominates. Non-finite values are ignored; fewer than two values give 0.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    xs = [float(f) / temperature for f in fitness if f is not None and math.isfinite(f)]
    if len(xs) < 2:
        return 0.0
    top = max(xs)
    weights = [math.exp(x - top) for x in xs]
    total = sum(weights)
    h = -sum((w / total) * math.log(w / total) for w in weights if w > 0)
    return max(0.0, h)


def loss_window_entropy(losses: Iterable[float], temperature: float = 1.0) -> float:
    """Population entropy of a window of recent losses (fitness = -loss), in nats."""
    return population_entropy((-float(x) for x in losses), temperature)


def activation_distribution(activations: Iterable[str]) -> str:
    """JSON map activation -> count, keys sorted (e.g. ``{"swiglu": 6}``)."""
    counts = Counter(activations)
    return json.dumps(dict(sorted(counts.items())), separators=(",", ":"))


def model_activation_distribution(activation: str, n_layer: int) -> str:
    """Single run: every one of the ``n_layer`` FFNs uses the same activation."""
    return activation_distribution([activation] * n_layer)


def architecture_diversity(architectures: Sequence[Hashable]) -> float:
    """Fraction of unique architectures in a population (1.0 = all different)."""
    if not architectures:
        return 0.0
    return len(set(architectures)) / len(architectures)
