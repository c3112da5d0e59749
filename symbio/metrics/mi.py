"""Binned mutual-information profiles of a transformer (PRD §8.8).

Variables, per token position of a fixed probe batch:

- ``X``: the input token id at that position;
- ``T``: the hidden state the last transformer block outputs at that position
  (captured with a forward hook), restricted to a fixed random sample of
  ``n_neurons`` channels;
- ``Y``: the next-token target at that position.

Estimator (the binning estimator of the symbiogenesis ``mi_estimator``, with
its per-neuron independence assumption): each sampled neuron's activations are
discretised into ``num_bins`` uniform bins between that neuron's min and max on
the probe batch; for each neuron ``j``

    I(X; T_j) = H(X) + H(T_j) - H(X, T_j)        (plug-in entropies, bits)

and likewise for ``Y``. Under independence the layer's information is the sum
over neurons; we report the *mean over neurons* (bits per neuron), which keeps
the value comparable across model widths and bounded by ``log2(num_bins)``.
``mi_compression = I(T;Y) / I(X;T)``.

The probe batch is fixed at the start of a run so the trajectory reflects the
model, not the data. Hooks exist only during ``measure``: nothing is added to
the training forward pass. Plug-in estimates are biased upward for small
samples; compare values within a run (or runs with the same probe size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MAX_PROBE_TOKENS = 2048
DEFAULT_NEURONS = 64


def find_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of transformer blocks: the longest ``nn.ModuleList``."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return max(lists, key=len) if lists else None


#: Largest dense count table (entries) before switching to a sort-based count.
DENSE_COUNT_LIMIT = 1 << 24


def _entropy_by_group(keys: torch.Tensor, group_size: int, n_groups: int, n: int) -> torch.Tensor:
    """Plug-in entropy (bits) of ``keys`` per group ``key // group_size``; ``n`` samples each."""
    if n_groups * group_size <= DENSE_COUNT_LIMIT:  # dense bincount: fast on CPU and GPU
        counts = torch.bincount(keys, minlength=n_groups * group_size).view(n_groups, group_size)
        p = counts.to(torch.float64) / n
        return -(p * torch.log2(p.clamp_min(1e-300))).sum(dim=1)
    uniq, counts = torch.unique(keys, return_counts=True)
    p = counts.to(torch.float64) / n
    out = torch.zeros(n_groups, dtype=torch.float64, device=keys.device)
    return out.scatter_add_(0, uniq // group_size, -p * torch.log2(p))


def binned_mi(t: torch.Tensor, labels: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Per-neuron binned ``I(L; T_j)`` in bits for ``t`` of shape (N, K), ``labels`` (N,)."""
    n, k = t.shape
    t = t.float()
    lo = t.amin(dim=0, keepdim=True)
    span = (t.amax(dim=0, keepdim=True) - lo).clamp_min(1e-12)
    bins = ((t - lo) / span * num_bins).long().clamp_(0, num_bins - 1)  # (N, K)
    _, lab = torch.unique(labels, return_inverse=True)  # compact label ids 0..n_lab-1
    n_lab = int(lab.max()) + 1
    neuron = torch.arange(k, device=t.device).expand(n, k)
    # H(T_j): keys neuron*num_bins + bin
    h_t = _entropy_by_group((neuron * num_bins + bins).flatten(), num_bins, k, n)
    # H(L, T_j): keys (neuron*n_lab + label)*num_bins + bin
    joint = (neuron * n_lab + lab.unsqueeze(1)) * num_bins + bins
    h_lt = _entropy_by_group(joint.flatten(), n_lab * num_bins, k, n)
    counts = torch.bincount(lab, minlength=n_lab).to(torch.float64) / n
    counts = counts[counts > 0]
    h_l = -(counts * torch.log2(counts)).sum()
    return (h_l + h_t - h_lt).clamp_min(0.0)


class MIProbe:
    """MI profile of a model on a fixed probe batch ``(x, y)`` of token ids (B, T)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        num_bins: int = 30,
        n_neurons: int = DEFAULT_NEURONS,
        seed: int = 0,
        max_tokens: int = MAX_PROBE_TOKENS,
    ) -> None:
        rows = max(1, min(x.shape[0], max_tokens // max(1, x.shape[1])))
        self.x = x[:rows].detach().clone()
        self.y = y[:rows].detach().clone()
        self.num_bins = int(num_bins)
        self.n_neurons = int(n_neurons)
        self.seed = int(seed)
        self._channels: torch.Tensor | None = None

    @torch.no_grad()
    def measure(
        self, model: nn.Module, autocast: Callable[[], Any] | None = None
    ) -> dict[str, float | None]:
        """Forward the probe batch once (eval mode) and return the three MI columns."""
        hidden = self._capture(model, autocast)
        if hidden is None:
            return {}
        n_embd = hidden.shape[-1]
        if self._channels is None:
            gen = torch.Generator().manual_seed(self.seed)
            k = min(self.n_neurons, n_embd)
            self._channels = torch.randperm(n_embd, generator=gen)[:k].to(hidden.device)
        t = hidden.reshape(-1, n_embd)[:, self._channels]
        x_ids = self.x.reshape(-1).to(t.device)
        y_ids = self.y.reshape(-1).to(t.device)
        i_xt = float(binned_mi(t, x_ids, self.num_bins).mean())
        i_ty = float(binned_mi(t, y_ids, self.num_bins).mean())
        return {
            "mi_input_repr": i_xt,
            "mi_repr_output": i_ty,
            "mi_compression": i_ty / i_xt if i_xt > 0 else None,
        }

    def _capture(self, model: nn.Module, autocast: Callable[[], Any] | None) -> torch.Tensor | None:
        blocks = find_blocks(model)
        if blocks is None:
            return None
        captured: list[torch.Tensor] = []

        def grab(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured.append(out.detach())

        was_training = model.training
        handle = blocks[-1].register_forward_hook(grab)
        try:
            model.eval()
            ctx = autocast() if autocast is not None else contextlib.nullcontext()
            with ctx:
                model(self.x)
        finally:
            handle.remove()
            model.train(was_training)
        return captured[-1] if captured else None
