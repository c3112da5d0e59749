"""Search benchmark: one generation's wall time, candidates concurrent vs one by one.

For each model config, trains one generation of ``--population`` candidates
(the activation pool cycled, symbio hooks on, as in a real search) for
``--steps`` steps each, once per ``--slots`` value (1 = one after another),
and reports the generation's wall time and the speed-up over one slot. A
timing probe (``symbio.search.estimate``) then extrapolates the default search
(``--generations`` x ``--population`` x ``--full-steps``) for each slot count.

Configs: ``engine`` (6 layers, 6 heads, dim 384, block 256, batch 64 — the
engine benchmark), ``small`` (4 layers, 4 heads, dim 128, block 128, batch 32 —
the shakespeare domain default model), ``tiny`` (a CPU smoke check).

    # CPU smoke check (the default on a machine without CUDA)
    python bench/bench_search.py
    # on a GPU: both configs, one generation at the real 1000 steps per candidate
    python bench/bench_search.py --device cuda --configs engine,small --steps 1000 --slots 1,2,3

Prints a table to stderr and one JSON line per config to stdout. Imports the
engine, symbio and the run resolver only (no lake, Prefect or Dash).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "engine": dict(layers=6, heads=6, dim=384, block=256, batch=64, dropout=0.2),
    "small": dict(layers=4, heads=4, dim=128, block=128, batch=32, dropout=0.1),
    "tiny": dict(layers=1, heads=2, dim=32, block=32, batch=8, dropout=0.0),
}
SHARED_DATA = ROOT.parent / "shared" / "data" / "shakespeare.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_data = SHARED_DATA if SHARED_DATA.exists() else ROOT / "model/corpus/shakespeare.txt"
    p.add_argument("--data", default=str(default_data))
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--configs", default="engine,small" if cuda else "tiny")
    p.add_argument("--steps", type=int, default=1000 if cuda else 20, help="steps per candidate")
    p.add_argument("--population", type=int, default=6)
    p.add_argument("--slots", default="1,2,3" if cuda else "1,2", help="comma-separated")
    p.add_argument("--generations", type=int, default=4, help="of the extrapolated search")
    p.add_argument("--full-steps", type=int, default=1000, help="of the extrapolated search")
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, name: str, run_dir: Path):
    from tasks.resolve import resolve_run_config

    symbio = {
        "populationSize": args.population,
        "generations": 1,
        "stepsPerCandidate": args.steps,
        "lrGene": True,  # fills the population beyond the 4-activation pool
        "confirmSeeds": 0,  # one generation only: no confirmation runs
    }
    return resolve_run_config(
        {
            "symbio": True,
            "symbio_config": symbio,
            "data": args.data,
            "device": args.device,
            "eval_interval": min(args.eval_interval, args.steps),
            "eval_iters": args.eval_iters,
            "sample_tokens": 0,
            "compile": args.compile,
            "seed": args.seed,
            "run_dir": str(run_dir),
            **CONFIGS[name],
        }
    )


def one_generation(args, name: str, slots: int, tmp: Path) -> dict:
    from symbio.search.executors import ThreadExecutor
    from tasks.search_runner import run_search

    resolved = resolve(args, name, tmp / f"{name}-slots{slots}")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
        out = run_search(
            resolved, use_lake=False, progress=False, executor=ThreadExecutor(slots, inline=False)
        )
    wall = time.perf_counter() - t0
    gen = out.generations[0]
    ok = [r for r in gen.ranked if r.ok]
    cfg = CONFIGS[name]
    tokens = len(ok) * args.steps * cfg["batch"] * cfg["block"]
    return {
        "slots": slots,
        "generation_wall_s": round(gen.wall_s, 2),
        "total_wall_s": round(wall, 2),
        "candidates_ok": len(ok),
        "generation_tokens_per_sec": round(tokens / gen.wall_s) if gen.wall_s else None,
        "candidate_ms_per_iter_median": _median([r.ms_per_iter for r in ok]),
    }


def _median(xs: list) -> float | None:
    xs = sorted(x for x in xs if x)
    return round(xs[len(xs) // 2], 2) if xs else None


def probe(args, name: str, tmp: Path):
    from model.trainer import train
    from symbio.search.estimate import estimate_search, run_probe

    resolved = resolve(args, name, tmp / f"{name}-probe-cfg")
    with ThreadPoolExecutor(1) as pool:  # a worker thread, like the measured generations
        p = pool.submit(run_probe, train, resolved.train, "swiglu", tmp / f"{name}-probe", 20)
        p = p.result()
    return estimate_search(
        p,
        candidates=args.generations * args.population,
        steps=args.full_steps,
        eval_interval=args.eval_interval,
    )


def bench_config(args, name: str, tmp: Path) -> dict:
    slot_list = [int(s) for s in args.slots.split(",") if s.strip()]
    est = probe(args, name, tmp)  # first: it also warms up kernels and the page cache
    runs = [one_generation(args, name, k, tmp / f"rep{i}") for i, k in enumerate(slot_list)]
    serial = [r["generation_wall_s"] for r in runs if r["slots"] == 1]
    base = min(serial) if serial else None
    for r in runs:
        speedup = base / r["generation_wall_s"] if base and r["generation_wall_s"] else None
        r["speedup_vs_1_slot"] = round(speedup, 2) if speedup else None
        if speedup:
            r["extrapolated_full_search_s"] = round(est.total_s / speedup, 1)
    return {
        "config": name,
        **CONFIGS[name],
        "device": args.device,
        "gpu": _gpu_name(args.device),
        "population": args.population,
        "steps_per_candidate": args.steps,
        "full_search": f"{args.generations} x {args.population} x {args.full_steps}",
        "serial_estimate_full_search_s": round(est.total_s, 1),
        "probe_ms_per_iter": round(est.probe.ms_per_iter, 2),
        "runs": runs,
    }


def _gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["ALPHA_SEARCH_PROBE_STEPS"] = "0"  # this script probes once per config itself
    from symbio.search.estimate import format_duration

    with tempfile.TemporaryDirectory(prefix="bench-search-") as d:
        for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
            if name not in CONFIGS:
                print(f"bench_search: unknown config {name!r}", file=sys.stderr)
                return 2
            res = bench_config(args, name, Path(d))
            print(f"\n== {name} on {res['gpu'] or args.device}: one generation of "
                  f"{args.population} x {args.steps} steps", file=sys.stderr)  # fmt: skip
            for r in res["runs"]:
                print(
                    f"  slots {r['slots']}: generation {format_duration(r['generation_wall_s'])} "
                    f"({r['generation_wall_s']:.1f}s), speed-up {r['speedup_vs_1_slot']}x, "
                    f"full search ~{format_duration(r.get('extrapolated_full_search_s'))}",
                    file=sys.stderr,
                )
            print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
