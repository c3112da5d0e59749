"""Symbio mode: CUSUM monitoring, adaptive batch sizing, symbio metrics, FFN search.

Imported only for ``--symbio`` runs (plain runs never import this package).
The names below load lazily, so ``from symbio.config import ...`` (the run
resolver) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SymbioConfig": "symbio.config",
    "SymbioConfigError": "symbio.config",
    "load_symbio_config": "symbio.config",
    "SYMBIO_PRESET": "symbio.preset",
    "SymbioHook": "symbio.hook",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'symbio' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
