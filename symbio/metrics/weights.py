"""Weight-space metrics: weight entropy, effective rank, free energy (PRD §8.3–8.5).

Everything runs on the parameters' own device. The ``*_tensor`` functions
return 0-d device tensors and never synchronise with the host, so they can run
on a side CUDA stream or inside a CUDA graph (``symbio.metrics.async_weights``);
the float functions are thin wrappers that read the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

ENTROPY_BINS = 100
RANK_THRESHOLD = 0.01
#: Elements per ``histc`` call: float32 bin counts are exact up to 2**24.
_HIST_CHUNK = 1 << 24


# -- weight entropy ------------------------------------------------------------------


def flat_params(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """All parameters as one flat float32 vector (one ``cat``: a copy)."""
    tensors = [p.detach().reshape(-1) for p in params if p.numel() > 0]
    if not tensors:
        return torch.zeros(0)
    if all(t.dtype == torch.float32 for t in tensors):
        return torch.cat(tensors)
    return torch.cat([t.float() for t in tensors])


@torch.no_grad()
def entropy_of_flat(flat: torch.Tensor, bins: int = ENTROPY_BINS, *, inplace: bool = False):
    """Entropy (bits, 0-d float64 tensor) of the histogram of ``|flat|`` on ``[0, max|flat|]``.

    Bins ``|w| / max|w|`` on ``[0, 1]``, so the range never leaves the device
    (no host sync). 0 for an empty, all-zero or non-finite vector. With
    ``inplace`` the vector is overwritten (saves a copy).
    """
    if flat.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=flat.device)
    a = flat.abs_() if inplace else flat.abs()
    top = a.max()
    ok = torch.isfinite(top) & (top > 0)
    a.div_(torch.where(ok, top, torch.ones_like(top)))
    counts = torch.stack(
        [torch.histc(c, bins=bins, min=0.0, max=1.0) for c in a.split(_HIST_CHUNK)]
    ).to(torch.float64)
    counts = counts.sum(0)
    p = counts / counts.sum().clamp_min(1.0)
    h = -torch.special.xlogy(p, p).sum() / math.log(2.0)
    return torch.where(ok, h, torch.zeros_like(h)).clamp_min(0.0)  # clamp: no -0.0


@torch.no_grad()
def weight_entropy_tensor(params: Iterable[torch.Tensor], bins: int = ENTROPY_BINS) -> torch.Tensor:
    """Shannon entropy (bits) of the histogram of |w| over all parameters, as a 0-d tensor.

    ``bins`` uniform bins on ``[0, max |w|]`` over every element of every
    parameter, as if all parameters were one flat vector (they are: one
    float32 copy). No host synchronisation.
    """
    return entropy_of_flat(flat_params(params), bins, inplace=True)


def weight_entropy(params: Iterable[torch.Tensor], bins: int = ENTROPY_BINS) -> float:
    """Shannon entropy (bits) of the histogram of |w| over all parameters."""
    return float(weight_entropy_tensor(params, bins)) + 0.0  # no -0.0


# -- effective rank ------------------------------------------------------------------


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


#: Eigenvalues of the normalised shifted matrix with ``|x| >= SIGN_RESOLUTION`` get
#: the right sign: a singular value is counted correctly unless its square lies
#: within ~1e-6 (relative) of the threshold's square.
SIGN_RESOLUTION = 1e-10
#: Normalise by ``SIGN_MARGIN * lambda_max`` so rounding never pushes |x| past 1.
SIGN_MARGIN = 1.01


def _sign_schedule(lo: float = SIGN_RESOLUTION, tol: float = 1e-12) -> tuple[float, ...]:
    """Scalings of the scaled Newton-Schulz sign iteration (Chen & Chow, 2014).

    ``x <- f(a x)``, ``f(y) = 1.5 y - 0.5 y^3``, with ``a = sqrt(3 / (1 + l + l^2))``
    maps eigenvalue magnitudes in ``[l, 1]`` into ``[f(a l), 1]``: the lower end
    grows 2.6x per step instead of 1.5x (plain Newton-Schulz), so the same
    resolution takes 29 steps instead of ~60.
    """
    alphas: list[float] = []
    lo_k = lo
    while 1.0 - lo_k > tol and len(alphas) < 100:
        a = math.sqrt(3.0 / (1.0 + lo_k + lo_k * lo_k))
        alphas.append(a)
        y = a * lo_k
        lo_k = 1.5 * y - 0.5 * y**3
    return tuple(alphas)


SIGN_SCHEDULE = _sign_schedule()


def _ranks_sign(g: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eigenvalues of PSD ``g`` above ``threshold^2 * lambda_max``, by the matrix sign function.

    ``count = (k + tr sign(g - tau I)) / 2``, with the sign from the scaled
    Newton-Schulz iteration (``SIGN_SCHEDULE``, one ``bmm`` + one ``baddbmm``
    per step) on the shifted matrix normalised by ``lambda_max``. Only batched
    matmuls (no eigensolver, which is slow on CUDA) and no host sync; exact
    except for eigenvalues within ~1e-6 (relative) of the threshold, which may
    round either way.
    """
    shape = g.shape[:-2]
    k = g.shape[-1]
    g = g.reshape(-1, k, k)
    lam = _lambda_max(g)
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    x = g - (threshold**2 * lam)[:, None, None] * eye
    x = x / (SIGN_MARGIN * lam).clamp_min(1e-300)[:, None, None]
    for a in SIGN_SCHEDULE:  # x <- 1.5 a x - 0.5 a^3 x^3 = x (1.5 a I - 0.5 a^3 x^2)
        x = torch.baddbmm(x, x, torch.bmm(x, x), beta=1.5 * a, alpha=-0.5 * a**3)
    counts = ((k + x.diagonal(dim1=-2, dim2=-1).sum(-1)) / 2).round().long()
    return torch.where(lam > 0, counts, torch.zeros_like(counts)).reshape(shape)


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


def _matrices(model_or_weights: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(model_or_weights, nn.Module):
        return linear_weights(model_or_weights)
    return [w for w in model_or_weights if w.dim() == 2]


@torch.no_grad()
def effective_rank_tensor(
    model_or_weights: nn.Module | Iterable[torch.Tensor],
    threshold: float = RANK_THRESHOLD,
    method: str = "auto",
) -> torch.Tensor:
    """``effective_rank`` as a 0-d float64 tensor on the weights' device (no host sync)."""
    weights = _matrices(model_or_weights)
    if not weights:
        return torch.zeros((), dtype=torch.float64)
    by_shape: dict[tuple[int, int, torch.device], list[torch.Tensor]] = {}
    for w in weights:
        by_shape.setdefault((w.shape[0], w.shape[1], w.device), []).append(w.detach())
    by_k: dict[tuple[int, torch.device], list[torch.Tensor]] = {}
    for (m, n, device), group in by_shape.items():
        by_k.setdefault((min(m, n), device), []).append(gram(torch.stack(group)))
    device = weights[0].device
    sums = [_ranks(torch.cat(grams), threshold, method).sum().to(device) for grams in by_k.values()]
    return torch.stack(sums).sum().to(torch.float64) / len(weights)


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
    return float(effective_rank_tensor(model_or_weights, threshold, method))


def free_energy(loss: float, entropy: float, beta: float) -> float:
    """Free-energy proxy ``F = loss + beta * weight_entropy`` (PRD §8.5)."""
    return float(loss) + float(beta) * float(entropy)
