"""Weight entropy and effective rank off the training critical path (CUDA only).

One step before a metrics step, ``launch()`` snapshots the parameters on a
side CUDA stream (after the optimizer step already queued on the training
stream; the training stream then waits for the copy only, ~tens of µs, so the
next optimizer step cannot overwrite weights being copied) and queues the
entropy and rank computation behind it on the side stream. It overlaps the
next training step; at the metrics step ``result()`` waits for it (usually
long done) and returns two floats. So the reported values describe the weights
at the end of the previous step (one optimizer step of lag).

Snapshot and computation are captured once into CUDA graphs (parameters
have static addresses): a launch costs three graph replays and two small
device-to-host copies instead of hundreds of kernel launches. A stage whose
capture fails (snapshot, rank, entropy: captured separately) runs eagerly on
the side stream instead (logged at info).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from symbio.metrics.weights import (
    ENTROPY_BINS,
    RANK_THRESHOLD,
    effective_rank_tensor,
    entropy_of_flat,
    linear_weights,
)

log = logging.getLogger(__name__)


class _Stage:
    """One step of the pipeline: eager ``fn`` or its CUDA graph and static output."""

    def __init__(self, name: str, fn: Callable[[], torch.Tensor | None]) -> None:
        self.name = name
        self.fn = fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def capture(self, side: torch.cuda.Stream, main: torch.cuda.Stream, pool: Any) -> None:
        """Capture ``fn`` after a warm-up run on ``side`` (as torch requires); eager if it fails."""
        try:
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self.fn()
            main.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                out = self.fn()
        except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly instead
            log.info("symbio: CUDA graph capture of %s failed (%s); eager", self.name, exc)
            return
        self.graph, self.out = graph, out

    def run(self) -> torch.Tensor | None:
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        return self.out


class AsyncWeightMetrics:
    """Weight entropy and/or effective rank of ``model``, computed on a side CUDA stream."""

    def __init__(
        self,
        model: nn.Module,
        *,
        entropy: bool = True,
        rank: bool = True,
        use_graph: bool = True,
        bins: int = ENTROPY_BINS,
        threshold: float = RANK_THRESHOLD,
    ) -> None:
        self.params = [p for p in model.parameters() if p.numel() > 0]
        if not self.params or self.params[0].device.type != "cuda":
            raise ValueError("AsyncWeightMetrics needs a model on a CUDA device")
        self.device = self.params[0].device
        self.want_entropy, self.want_rank = entropy, rank
        self.bins, self.threshold = bins, threshold
        self.use_graph = use_graph
        self.side = torch.cuda.Stream(device=self.device)
        self.copied = torch.cuda.Event()
        self.done = torch.cuda.Event()
        self.flat = torch.empty(
            sum(p.numel() for p in self.params), dtype=torch.float32, device=self.device
        )
        self.flat.record_stream(self.side)  # used on both streams: freed only when both are done
        self._views = self._linear_views(model)
        self._host = torch.empty(2, dtype=torch.float64, pin_memory=True)
        # rank before entropy: the entropy stage overwrites the snapshot with |w| / max|w|
        self._snapshot = _Stage("snapshot", self._copy_params)
        self._stages = [
            _Stage("effective_rank", self._rank) if rank and self._views else None,
            _Stage("weight_entropy", self._entropy) if entropy else None,
        ]
        self._ready = False
        self.pending = False

    @property
    def mode(self) -> str:
        """``graph`` (all stages replayed from CUDA graphs), ``eager`` or ``partial``."""
        stages = [self._snapshot] + [s for s in self._stages if s is not None]
        graphed = [s.graph is not None for s in stages]
        return "graph" if all(graphed) else "eager" if not any(graphed) else "partial"

    # -- public ------------------------------------------------------------------

    @torch.no_grad()
    def launch(self) -> None:
        """Snapshot the current weights and start computing on the side stream."""
        main = torch.cuda.current_stream(self.device)
        if not self._ready:
            self.prepare()
        self.side.wait_stream(main)  # after the optimizer step queued so far
        with torch.cuda.stream(self.side):
            self._snapshot.run()
            self.copied.record(self.side)
            main.wait_event(self.copied)  # the next optimizer step waits for the copy only
            for i, stage in enumerate(self._stages):
                if stage is not None:
                    self._host[1 - i].copy_(stage.run(), non_blocking=True)
            self.done.record(self.side)
        self.pending = True

    def result(self) -> tuple[float | None, float | None] | None:
        """``(entropy, rank)`` of the last launch (``None`` if nothing is pending)."""
        if not self.pending:
            return None
        self.pending = False
        self.done.synchronize()
        entropy, rank = self._host.tolist()
        rank = rank if self._stages[0] is not None else 0.0
        return (
            entropy + 0.0 if self.want_entropy else None,
            rank if self.want_rank else None,
        )

    def close(self) -> None:
        """Wait for any work still in flight (before dropping graphs and buffers)."""
        if self.pending:
            self.done.synchronize()
            self.pending = False

    # -- internals -----------------------------------------------------------------

    def _linear_views(self, model: nn.Module) -> list[torch.Tensor]:
        """Views of the snapshot buffer at the ``nn.Linear`` weights (tied ones once)."""
        offsets, pos = {}, 0
        for p in self.params:
            offsets[id(p)] = pos
            pos += p.numel()
        views = []
        for w in linear_weights(model):
            start = offsets[id(w)]
            views.append(self.flat[start : start + w.numel()].view(w.shape))
        return views

    def _copy_params(self) -> None:
        if all(p.dtype == torch.float32 for p in self.params):
            torch.cat([p.detach().reshape(-1) for p in self.params], out=self.flat)
        else:
            torch.cat([p.detach().reshape(-1).float() for p in self.params], out=self.flat)

    def _rank(self) -> torch.Tensor:
        return effective_rank_tensor(self._views, self.threshold, method="sign")

    def _entropy(self) -> torch.Tensor:
        return entropy_of_flat(self.flat, self.bins, inplace=True)

    @torch.no_grad()
    def prepare(self) -> None:
        """Capture the stages into CUDA graphs (once; each falls back to eager on its own).

        Called by the first ``launch()`` unless called before (the hook does, at
        the start of training, to keep the one-time capture out of the step loop).
        """
        if self._ready:
            return
        self._ready = True
        if not self.use_graph:
            return
        main = torch.cuda.current_stream(self.device)
        self._snapshot.capture(self.side, main, None)
        pool = torch.cuda.graph_pool_handle()
        for stage in self._stages:
            if stage is not None:
                stage.capture(self.side, main, pool)
