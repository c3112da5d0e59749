"""Micro-benchmark of the sparse symbio metrics' candidate kernels on one model.

Compares ways of computing effective rank and weight entropy on the engine
benchmark model (6 layers, dim 384, SwiGLU) so the fastest exact-enough one
can be the default on each device, and the side-stream path
(``AsyncWeightMetrics``: snapshot + entropy + rank, eager or from a CUDA
graph): ``*_launch_cpu`` is what ``launch()`` costs the training loop's CPU,
``*_roundtrip`` the time until the result is on the host (GPU time when alone).
Prints one JSON object.

    python bench/bench_symbio_metrics.py --device cuda
    python bench/bench_symbio_metrics.py --device cpu --layers 2 --dim 64 --heads 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.config import ModelConfig  # noqa: E402
from model.gpt import GPT  # noqa: E402
from symbio.metrics.async_weights import AsyncWeightMetrics  # noqa: E402
from symbio.metrics.weights import (  # noqa: E402
    _lambda_max,
    effective_rank,
    effective_rank_tensor,
    gram,
    linear_weights,
    weight_entropy,
    weight_entropy_tensor,
)


def timed(fn, repeats: int, sync: bool, cpu_only: bool = False) -> float:
    """Median ms of ``fn()``; with ``cpu_only`` the device is synchronised outside the timing."""
    fn()
    out = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync and not cpu_only:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    if sync:
        torch.cuda.synchronize()
    return statistics.median(out)


def ranks_sign_plain(model, iters: int = 60) -> float:
    """The previous default: plain Newton-Schulz (60 steps) on the Frobenius-normalised matrix."""
    by_shape: dict = {}
    ws = linear_weights(model)
    for w in ws:
        by_shape.setdefault(tuple(w.shape), []).append(w.detach())
    total = 0
    for group in by_shape.values():
        g = gram(torch.stack(group))
        k = g.shape[-1]
        lam = _lambda_max(g)
        x = g - (1e-4 * lam)[:, None, None] * torch.eye(k, dtype=g.dtype, device=g.device)
        x = x / torch.linalg.matrix_norm(x).clamp_min(1e-300)[:, None, None]
        for _ in range(iters):
            x = 1.5 * x - 0.5 * (x @ x @ x)
        counts = ((k + x.diagonal(dim1=-2, dim2=-1).sum(-1)) / 2).round()
        total = total + torch.where(lam > 0, counts, torch.zeros_like(counts)).sum()
    return float(total) / len(ws)


def async_case(model, use_graph: bool):
    """(launch-only, launch+result) callables of one ``AsyncWeightMetrics``."""
    metrics = AsyncWeightMetrics(model, use_graph=use_graph)

    def launch() -> None:
        metrics.pending = False  # a bench re-launches without reading
        metrics.launch()

    def roundtrip():
        metrics.launch()
        return metrics.result()[1]

    return launch, roundtrip


def ranks_svdvals(model, dtype, driver=None) -> float:
    ws = linear_weights(model)
    total = 0
    by_shape: dict = {}
    for w in ws:
        by_shape.setdefault(tuple(w.shape), []).append(w.detach().to(dtype))
    for group in by_shape.values():
        a = torch.stack(group)
        if a.shape[-2] < a.shape[-1]:
            a = a.transpose(-2, -1)
        s = torch.linalg.svdvals(a, driver=driver) if driver else torch.linalg.svdvals(a)
        total = total + (s > 0.01 * s.amax(-1, keepdim=True)).sum()
    return float(total) / len(ws)


def ranks_eigvalsh(model, dtype) -> float:
    from symbio.metrics.weights import gram

    ws = linear_weights(model)
    total = 0
    for w in ws:
        g = gram(w).to(dtype)
        s = torch.linalg.eigvalsh(g).clamp_min(0).sqrt()
        total = total + (s > 0.01 * s.amax()).sum()
    return float(total) / len(ws)


def entropy_cat(params) -> float:
    flat = torch.cat([p.detach().abs().flatten().float() for p in params])
    hi = flat.max()
    h = torch.histc(flat, bins=100, min=0.0, max=float(hi))
    p = h[h > 0] / h.sum()
    return float(-(p * torch.log2(p)).sum())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--block", type=int, default=256)
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = dev.type == "cuda"
    cfg = ModelConfig(
        vocab_size=96,
        block_size=args.block,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.dim,
        dropout=0.0,
        ffn_activation="swiglu",
    )
    model = GPT(cfg).to(dev)
    res: dict = {"device": str(dev), "gpu": torch.cuda.get_device_name() if sync else None}
    cases = {
        "entropy_current": lambda: weight_entropy(model.parameters()),
        "entropy_cat": lambda: entropy_cat(list(model.parameters())),
        "entropy_tensor": lambda: float(weight_entropy_tensor(model.parameters())),
        "rank_sign_fp64": lambda: effective_rank(model, method="sign"),
        "rank_sign_tensor_fp64": lambda: float(effective_rank_tensor(model, method="sign")),
        "rank_sign_plain60_fp64": lambda: ranks_sign_plain(model),
        "rank_eigh_fp64": lambda: effective_rank(model, method="eigh"),
        "rank_svdvals_fp32": lambda: ranks_svdvals(model, torch.float32),
        "rank_eigvalsh_fp32_loop": lambda: ranks_eigvalsh(model, torch.float32),
    }
    if sync:
        for name, use_graph in (("graph", True), ("eager", False)):
            launch, roundtrip = async_case(model, use_graph)
            cases[f"async_{name}_launch_cpu"] = launch
            cases[f"async_{name}_roundtrip"] = roundtrip
        cases["rank_svdvals_gesvda_fp32"] = lambda: ranks_svdvals(model, torch.float32, "gesvda")
        cases["rank_svdvals_gesvdj_fp32"] = lambda: ranks_svdvals(model, torch.float32, "gesvdj")
    for name, fn in cases.items():
        try:
            cpu_only = name.endswith("_launch_cpu")
            res[name + "_ms"] = round(timed(fn, args.repeats, sync, cpu_only), 3)
            if not cpu_only:
                res[name + "_value"] = round(fn(), 4)
        except Exception as exc:  # report and go on: this is a comparison
            res[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
