"""Plain-Python executors for the generation loop (no Prefect).

``ThreadExecutor(slots)`` trains up to ``slots`` candidates of a generation at
once on a thread pool; with ``slots=1`` they run one after another in the
calling thread (so Ctrl-C reaches the training loop directly). Threads suit
this work: a training step spends its time in torch kernels, which release
the GIL, and on CUDA several small models launched from different threads
keep one GPU busier than one model alone. On a CPU one candidate already
uses every core, so the default there is one slot.

On Ctrl-C (or any error) while candidates run on the pool, pending
candidates are cancelled and, if the step callable has a ``stop()`` method,
it is called so that running candidates end at their next step.

``BatchedExecutor`` hands a generation's whole item list to the step
callable's ``train_many(items)`` (``tasks.search_runner.CandidateTrainer``:
one batched population, ``model.population``), so one kernel launch serves
every candidate; a callable without it is called per item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class ThreadExecutor:
    """Steps run inline; ``map`` runs items on up to ``slots`` threads, keeping order.

    ``inline=False`` uses a worker thread even for one slot (benchmarks use it
    so that serial and concurrent runs see the same threading conditions).
    """

    def __init__(self, slots: int = 1, *, inline: bool = True) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.inline = inline

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]:
        if self.inline and (self.slots == 1 or len(items) <= 1):
            return [fn(*item) for item in items]
        workers = max(1, min(self.slots, len(items)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="candidate")
        futures: list[Future] = []
        try:
            futures = [pool.submit(fn, *item) for item in items]
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            stop = getattr(fn, "stop", None)
            if callable(stop):
                stop()
            raise
        finally:
            pool.shutdown(wait=True)


class BatchedExecutor:
    """Steps run inline; ``map`` trains all items at once through ``fn.train_many``.

    ``fn.train_many(items) -> list`` gets the whole list (one result per item, in
    order). A single item, or a callable without ``train_many``, is called per
    item (a population of one gains nothing). ``slots`` is 1: batching replaces
    concurrent slots.
    """

    slots = 1
    batched = True

    def call(self, step: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def map(
        self, step: str, fn: Callable[..., Any], items: Sequence[tuple], names: Sequence[str]
    ) -> list[Any]:
        many = getattr(fn, "train_many", None)
        if not callable(many) or len(items) <= 1:
            return [fn(*item) for item in items]
        results = list(many(list(items)))
        if len(results) != len(items):
            raise RuntimeError(
                f"{step}: train_many returned {len(results)} results for {len(items)} items"
            )
        return results
