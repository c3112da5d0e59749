"""The ``--symbio`` preset: TrainConfig overrides of PRD §7.1 and §7.2.

Applied by the run resolver after the domain defaults and before the symbio
config file and explicit flags (PRD §5.2). Keys are ``TrainConfig`` field
names. ``ffn_dim`` is deliberately absent: when it is not given, the engine
derives it from the activation (``ceil(8/3 * dim / 64) * 64`` for SwiGLU, so
the gated FFN keeps the parameter count of a ``4 * dim`` GELU FFN).
"""

from __future__ import annotations

from typing import Any

#: Treat as read-only; copy it (``dict(SYMBIO_PRESET)``) before changing anything.
SYMBIO_PRESET: dict[str, Any] = {
    "activation": "swiglu",  # PRD §7.1 ffnActivation
    "lr": 5e-5,
    "grad_clip": 5.0,
    "warmup_iters": 500,
    "spike_threshold": 10.0,
}
