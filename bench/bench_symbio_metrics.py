"""Micro-benchmark of the sparse symbio metrics' candidate kernels on one model.

Compares ways of computing effective rank and weight entropy on the engine
benchmark model (6 layers, dim 384, SwiGLU) so the fastest exact-enough one
can be the default on each device. Prints one JSON object.

    python bench/bench_symbio_metrics.py --device cuda
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
from symbio.metrics.weights import effective_rank, linear_weights, weight_entropy  # noqa: E402


def timed(fn, repeats: int, sync: bool) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


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
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = dev.type == "cuda"
    cfg = ModelConfig(
        vocab_size=96, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0,
        ffn_activation="swiglu",
    )
    model = GPT(cfg).to(dev)
    res: dict = {"device": str(dev), "gpu": torch.cuda.get_device_name() if sync else None}
    cases = {
        "entropy_current": lambda: weight_entropy(model.parameters()),
        "entropy_cat": lambda: entropy_cat(list(model.parameters())),
        "rank_sign_fp64": lambda: effective_rank(model, method="sign"),
        "rank_eigh_fp64": lambda: effective_rank(model, method="eigh"),
        "rank_svdvals_fp32": lambda: ranks_svdvals(model, torch.float32),
        "rank_eigvalsh_fp32_loop": lambda: ranks_eigvalsh(model, torch.float32),
    }
    if sync:
        cases["rank_svdvals_gesvda_fp32"] = lambda: ranks_svdvals(model, torch.float32, "gesvda")
        cases["rank_svdvals_gesvdj_fp32"] = lambda: ranks_svdvals(model, torch.float32, "gesvdj")
    for name, fn in cases.items():
        try:
            res[name + "_ms"] = round(timed(fn, args.repeats, sync), 3)
            res[name + "_value"] = round(fn(), 4)
        except Exception as exc:  # report and go on: this is a comparison
            res[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
