"""Weight entropy and effective rank off the training critical path (CUDA only).

One step before a metrics step, ``launch()`` snapshots the parameters on a
side CUDA stream (after the optimizer step already queued on the training
stream; the training stream then waits for the copy only, ~tens of µs, so the
next optimizer step cannot overwrite weights being copied) and queues the
entropy and rank computation behind it on the side stream. It overlaps the
next training step; at the metrics step ``result()`` waits for it (usually
long done) and returns two floats. So the reported values describe the weights
at the end of the previous step (one optimizer step of lag).

Snapshot and computation are captured once into two CUDA graphs (parameters
have static addresses): a launch costs two graph replays and one small
device-to-host copy instead of hundreds of kernel launches. If capture fails,
the same work runs eagerly on the side stream (logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
        self._snapshot_graph: torch.cuda.CUDAGraph | None = None
        self._compute_graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None
        self._ready = False  # graphs captured (or eager mode chosen)
        self.pending = False
        self.mode = "graph" if use_graph else "eager"

    # -- public ------------------------------------------------------------------

    @torch.no_grad()
    def launch(self) -> None:
        """Snapshot the current weights and start computing on the side stream."""
        main = torch.cuda.current_stream(self.device)
        if not self._ready:
            self._prepare(main)
        self.side.wait_stream(main)  # after the optimizer step queued so far
        with torch.cuda.stream(self.side):
            if self._snapshot_graph is not None:
                self._snapshot_graph.replay()
            else:
                self._snapshot()
            self.copied.record(self.side)
            main.wait_event(self.copied)  # the next optimizer step waits for the copy only
            if self._compute_graph is not None:
                self._compute_graph.replay()
                out = self._out
            else:
                out = self._compute()
            self._host.copy_(out, non_blocking=True)
            self.done.record(self.side)
        self.pending = True

    def result(self) -> tuple[float | None, float | None] | None:
        """``(entropy, rank)`` of the last launch (``None`` if nothing is pending)."""
        if not self.pending:
            return None
        self.pending = False
        self.done.synchronize()
        entropy, rank = self._host.tolist()
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

    def _snapshot(self) -> None:
        if all(p.dtype == torch.float32 for p in self.params):
            torch.cat([p.detach().reshape(-1) for p in self.params], out=self.flat)
        else:
            torch.cat([p.detach().reshape(-1).float() for p in self.params], out=self.flat)

    def _compute(self) -> torch.Tensor:
        """``[entropy, rank]`` (float64) from the snapshot; rank first: entropy overwrites it."""
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        rank = zero
        if self.want_rank and self._views:
            rank = effective_rank_tensor(self._views, self.threshold, method="sign")
        entropy = entropy_of_flat(self.flat, self.bins, inplace=True) if self.want_entropy else zero
        return torch.stack([entropy, rank.to(self.device)])

    def _prepare(self, main: torch.cuda.Stream) -> None:
        """Capture the two graphs once (warm-up on the side stream first); else go eager."""
        self._ready = True
        if not self.use_graph:
            return
        try:
            self._snapshot_graph = _capture(self._snapshot, self.side, main)
            out_holder: list[torch.Tensor] = []
            self._compute_graph = _capture(
                lambda: out_holder.append(self._compute()), self.side, main
            )
            self._out = out_holder[-1]
        except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly instead
            self._snapshot_graph = self._compute_graph = self._out = None
            self.mode = "eager"
            log.info("symbio: CUDA graph capture of the weight metrics failed (%s); eager", exc)


def _capture(
    fn: Callable[[], object], side: torch.cuda.Stream, main: torch.cuda.Stream
) -> torch.cuda.CUDAGraph:
    """``fn`` captured into a CUDA graph, after a warm-up run on ``side`` (as torch requires)."""
    side.wait_stream(main)
    with torch.cuda.stream(side):
        fn()
    main.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
        fn()
    return graph
