"""Plain-Python executors for the generation loop (no Prefect).

``ThreadExecutor(slots)`` trains up to ``slots`` candidates of a generation at
once on a thread pool; ``slots=1`` runs them one after another in the calling
thread. Threads suit this work: the training loop spends its time inside torch
kernels, which release the GIL, and on CUDA several small models launched from
different threads overlap on one GPU. On a CPU the cores are already busy with
one candidate's intra-op threads, so the default there is one slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class ThreadExecutor:
    """Steps run inline; ``map`` runs items on up to ``slots`` threads, keeping order."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]:
        if self.slots == 1 or len(items) <= 1:
            return [fn(*item) for item in items]
        workers = min(self.slots, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="candidate") as pool:
            futures = [pool.submit(fn, *item) for item in items]
            return [f.result() for f in futures]
