"""Weight-space metrics: weight entropy, effective rank, free energy (PRD §8.3–8.5).

Everything runs on the parameters' own device; only Python scalars come back
(no copy of the model to the host).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

ENTROPY_BINS = 100
RANK_THRESHOLD = 0.01


@torch.no_grad()
def weight_entropy(params: Iterable[torch.Tensor], bins: int = ENTROPY_BINS) -> float:
    """Shannon entropy (bits) of the histogram of |w| over all parameters.

    ``bins`` uniform bins on ``[0, max |w|]`` over every element of every
    parameter, as if all parameters were one flat vector. Computed per
    parameter with a shared range, so no concatenated copy is made.
    """
    tensors = [p.detach() for p in params if p.numel() > 0]
    if not tensors:
        return 0.0
    top = torch.stack([t.abs().max().float() for t in tensors]).max()
    hi = float(top)
    if not math.isfinite(hi) or hi <= 0.0:
        return 0.0
    counts = torch.zeros(bins, dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        hist = torch.histc(t.abs().float().flatten(), bins=bins, min=0.0, max=hi)
        counts += hist.to(device=counts.device, dtype=torch.float64)
    return _entropy_bits(counts)


def _entropy_bits(counts: torch.Tensor) -> float:
    total = counts.sum()
    if float(total) <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * torch.log2(p)).sum()) + 0.0  # no -0.0


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices of the model's ``nn.Linear`` layers (tied weights once)."""
    seen: set[int] = set()
    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module.weight)
    return out


def gram(w: torch.Tensor) -> torch.Tensor:
    """``k x k`` Gram matrix (``k = min(m, n)``) of a matrix or stack, in float64.

    Its eigenvalues are the squared singular values of ``w``.
    """
    a = w.detach().to(torch.float64)
    if a.shape[-2] > a.shape[-1]:
        a = a.transpose(-2, -1)
    return a @ a.transpose(-2, -1)


@torch.no_grad()
def singular_values(w: torch.Tensor) -> torch.Tensor:
    """Singular values (ascending) of a matrix or a stack ``(b, m, n)``, via ``eigvalsh``."""
    return torch.linalg.eigvalsh(gram(w)).clamp_min(0.0).sqrt()


def _ranks_eigh(g: torch.Tensor, threshold: float) -> torch.Tensor:
    s = torch.linalg.eigvalsh(g).clamp_min(0.0).sqrt()
    top = s.amax(dim=-1, keepdim=True)
    return ((s > threshold * top) & (top > 0)).sum(dim=-1)


def _frob(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(a).clamp_min(1e-300)[..., None, None]


def _lambda_max(g: torch.Tensor, squarings: int = 14) -> torch.Tensor:
    """Largest eigenvalue of PSD ``g`` from ``tr(g^p)^(1/p)``, ``p = 2^squarings``.

    Overestimates by at most a factor ``k^(1/p)`` (0.04 % for k = 384); only
    matmuls, so it stays fast on a GPU.
    """
    f = _frob(g)
    a = g / f
    log_c = f.log()
    for _ in range(squarings):
        a = a @ a
        f = _frob(a)
        a = a / f
        log_c = 2 * log_c + f.log()
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    return torch.exp((log_c[..., 0, 0] + trace.log()) / 2**squarings)


def _ranks_sign(g: torch.Tensor, threshold: float, iters: int = 60) -> torch.Tensor:
    """Eigenvalues of PSD ``g`` above ``threshold^2 * lambda_max``, by the matrix sign function.

    ``count = (k + tr sign(g - tau I)) / 2``, with the sign from the
    Newton-Schulz iteration ``x <- 1.5 x - 0.5 x^3`` on the Frobenius-normalised
    shifted matrix. Only batched matmuls (no eigensolver, which is slow on
    CUDA); exact except for eigenvalues within ~1e-6 (relative) of the
    threshold, which may round either way.
    """
    k = g.shape[-1]
    lam = _lambda_max(g)
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    x = g - (threshold**2 * lam)[..., None, None] * eye
    x = x / _frob(x)
    for _ in range(iters):
        x = 1.5 * x - 0.5 * (x @ x @ x)
    counts = ((k + x.diagonal(dim1=-2, dim2=-1).sum(-1)) / 2).round().long()
    return torch.where(lam > 0, counts, torch.zeros_like(counts))


def _ranks(g: torch.Tensor, threshold: float, method: str) -> torch.Tensor:
    if method == "auto":
        method = "sign" if g.device.type == "cuda" else "eigh"
    if method == "eigh":
        return _ranks_eigh(g, threshold)
    if method == "sign":
        return _ranks_sign(g, threshold)
    raise ValueError(f"unknown effective-rank method {method!r}")


@torch.no_grad()
def matrix_effective_rank(
    w: torch.Tensor, threshold: float = RANK_THRESHOLD, method: str = "auto"
) -> int:
    """Number of singular values above ``threshold`` times the largest."""
    return int(_ranks(gram(w), threshold, method))


@torch.no_grad()
def effective_rank(
    model_or_weights: nn.Module | Iterable[torch.Tensor],
    threshold: float = RANK_THRESHOLD,
    method: str = "auto",
) -> float:
    """Mean effective rank over 2-D weight matrices; in ``[1, min(m, n)]`` for non-zero weights.

    Given a module, the matrices are its ``nn.Linear`` weights (the embedding
    table, a lookup rather than a map, is excluded unless tied to the LM head).
    Gram matrices of equal size are decomposed in one batched call; one
    device-to-host transfer returns the total.

    ``method``: ``eigh`` (eigenvalues of the Gram matrix in float64: exact up
    to rounding; the CPU default), ``sign`` (matrix-sign counting with matmuls
    only: the CUDA default, because ``torch.linalg.eigh`` on CUDA loops over
    the batch and is slow for k > 32), or ``auto``.
    """
    if isinstance(model_or_weights, nn.Module):
        weights = linear_weights(model_or_weights)
    else:
        weights = [w for w in model_or_weights if w.dim() == 2]
    if not weights:
        return 0.0
    by_shape: dict[tuple[int, int, torch.device], list[torch.Tensor]] = {}
    for w in weights:
        by_shape.setdefault((w.shape[0], w.shape[1], w.device), []).append(w.detach())
    by_k: dict[tuple[int, torch.device], list[torch.Tensor]] = {}
    for (m, n, device), group in by_shape.items():
        by_k.setdefault((min(m, n), device), []).append(gram(torch.stack(group)))
    total = None
    for grams in by_k.values():
        ranks = _ranks(torch.cat(grams), threshold, method).sum()
        total = ranks if total is None else total + ranks.to(total.device)
    return float(total) / len(weights)


def free_energy(loss: float, entropy: float, beta: float) -> float:
    """Free-energy proxy ``F = loss + beta * weight_entropy`` (PRD §8.5)."""
    return float(loss) + float(beta) * float(entropy)
