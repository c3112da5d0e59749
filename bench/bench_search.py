"""Search benchmark: one generation's wall time, batched population vs one by one.

Default (``--compare batched``): for each model config, one generation of
``--population`` candidates (the activation pool cycled, seeds ``--seed + i``,
symbio hooks on as in a real search) is trained twice in this one process:

- **sequential**: one ``model.trainer.Trainer`` after the other (what the search does with
  one slot);
- **batched**: all at once with ``model.population.train_population`` (stacked parameters,
  one forward/backward per shape family).

It reports both wall times (setup included, and training only), their ratio
(target >= 3x on an H200), each candidate's final val loss in both modes and the
max |difference| (float tolerance: ~1e-6 in fp32; under bf16 autocast the batched
matmuls round differently, so expect bf16-noise-sized differences). For that
comparison both modes run without dropout and without adaptive batch (its
decisions follow the measured tokens/s, which differ between the modes by design);
``--keep-dropout`` / ``--adaptive-batch`` turn them back on (speed only).
A short warm-up of both modes runs first (CUDA context, cuBLAS, kernel caches).

``--compare search`` times the whole search as ``alpha train --symbio`` runs it
(``run_search``: ``--search-generations`` generations of successive halving from
``--population`` candidates with the lr gene, then ``--confirm-seeds`` paired seeds
of up to 3 arms), once with ``batched="off"`` (one candidate at a time) and once with
``batched="on"`` (each generation and the confirmation as one population), and
reports the wall times per phase, each candidate's val/test loss in both modes and
whether the winner is the same.

``--compare slots`` is the older measurement: the whole search (``run_search``)
with 1..N concurrent candidate threads (``--slots``) and the extrapolated default
search from the timing probe.

Configs: ``engine`` (6 layers, 6 heads, dim 384, block 256, batch 64 — the engine
benchmark), ``code`` (the ``--domain code`` preset: byte-level BPE 8192, 6 layers,
8 heads, dim 256, block 512, batch 16; its data is the first ``--code-chars``
characters of ``--data`` to bound the per-candidate tokenizer training), ``small``
(4 layers, dim 128, block 128, batch 32), ``tiny`` / ``code-tiny`` (CPU smoke).

    # CPU smoke check (seconds): tiny char-level and tiny BPE configs, 4 candidates x 20 steps
    python bench/bench_search.py --smoke
    # GPU (one H200, ~3 minutes): engine and code configs, 6 candidates x 500 steps
    python bench/bench_search.py --device cuda --configs engine,code --steps 500
    # the whole search, batched vs one at a time (CPU smoke: --smoke)
    python bench/bench_search.py --compare search --device cuda --configs engine --steps 300
    # the older concurrency-slots measurement (--slots implies --compare slots)
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
    "code": dict(domain="code"),  # the domain preset's model, tokenizer and batch
    "small": dict(layers=4, heads=4, dim=128, block=128, batch=32, dropout=0.1),
    "tiny": dict(layers=1, heads=2, dim=32, block=32, batch=8, dropout=0.0),
    "code-tiny": dict(
        domain="code", vocab_size=320, layers=1, heads=2, dim=32, block=32, batch=4
    ),
}
POOL = ("gelu", "relu", "silu", "swiglu")
SHARED_DATA = ROOT.parent / "shared" / "data" / "shakespeare.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_data = SHARED_DATA if SHARED_DATA.exists() else ROOT / "model/corpus/shakespeare.txt"
    p.add_argument(
        "--compare", choices=("batched", "search", "slots"),
        help="default: slots if --slots is given",
    )
    p.add_argument("--search-generations", type=int, default=2, help="--compare search")
    p.add_argument("--confirm-seeds", type=int, default=2, help="--compare search")
    p.add_argument("--smoke", action="store_true", help="CPU smoke check: tiny configs, seconds")
    p.add_argument("--data", default=str(default_data))
    p.add_argument("--code-chars", type=int, default=1_000_000, help="text of the code config")
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--configs", default=None, help="comma-separated (default by device/mode)")
    p.add_argument("--steps", type=int, default=None, help="steps per candidate")
    p.add_argument("--population", type=int, default=6)
    p.add_argument("--slots", default=None, help="comma-separated (default 1,2,3 / CPU 1,2)")
    p.add_argument("--generations", type=int, default=4, help="of the extrapolated search")
    p.add_argument("--full-steps", type=int, default=1000, help="of the extrapolated search")
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed warm-up per mode")
    p.add_argument("--keep-dropout", action="store_true", help="batched: the config's dropout")
    p.add_argument("--adaptive-batch", action="store_true", help="batched: symbio adaptive batch")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    args.compare = args.compare or ("slots" if args.slots else "batched")
    args.slots = args.slots or ("1,2,3" if cuda else "1,2")
    if args.smoke:
        args.device, args.population = "cpu", min(args.population, 4)
        args.configs = args.configs or "tiny,code-tiny"
        args.steps = args.steps or 20
        args.eval_iters, args.warmup_steps = min(args.eval_iters, 4), min(args.warmup_steps, 2)
        args.code_chars = min(args.code_chars, 200_000)
    gpu = args.device == "cuda"
    if args.configs is None:
        args.configs = ("engine,small" if args.compare == "slots" else "engine,code") if gpu else "tiny"
    if args.steps is None:
        args.steps = (1000 if args.compare == "slots" else 500) if gpu else 20
    return args


def resolve(
    args: argparse.Namespace, name: str, run_dir: Path, *, batched: bool = False,
    generations: int = 1, confirm_seeds: int = 0,
):  # fmt: skip
    from tasks.resolve import resolve_run_config

    symbio = {
        "populationSize": args.population,
        "generations": generations,  # default: one generation only
        "stepsPerCandidate": args.steps,
        "lrGene": True,  # fills the population beyond the 4-activation pool
        "confirmSeeds": confirm_seeds,  # default: no confirmation runs
    }
    explicit = {**CONFIGS[name]}
    if batched:
        symbio["adaptiveBatch"] = args.adaptive_batch
        if not args.keep_dropout:
            explicit["dropout"] = 0.0
        explicit["dtype"] = args.dtype
    return resolve_run_config(
        {
            "symbio": True,
            "symbio_config": symbio,
            "data": args.data if not name.startswith("code") else code_data(args, run_dir),
            "device": args.device,
            "eval_interval": min(args.eval_interval, args.steps),
            "eval_iters": args.eval_iters,
            "sample_tokens": 0,
            "compile": args.compile,
            "seed": args.seed,
            "run_dir": str(run_dir),
            **explicit,
        }
    )


def code_data(args: argparse.Namespace, near: Path) -> str:
    """The first ``--code-chars`` characters of ``--data`` (BPE training per candidate)."""
    path = near.parent / "code-data.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = Path(args.data).read_text(encoding="utf-8")[: args.code_chars]
        path.write_text(text, encoding="utf-8")
    return str(path)


# -- batched vs sequential ---------------------------------------------------------


def generation_configs(args, name: str, folder: Path, steps: int, population: int):
    """The generation's candidate configs and fresh symbio hooks, as the search builds them."""
    from symbio.hook import SymbioHook

    resolved = resolve(args, name, folder / "base", batched=True)
    base, symbio = resolved.train, resolved.symbio_config
    warmup = base.warmup_iters if base.warmup_iters < steps else steps // 10
    cfgs, hooks = [], []
    for i in range(population):
        act = POOL[i % len(POOL)]
        cid = f"g0-c{i:02d}-{act}"
        cfgs.append(
            base.model_copy(
                update={
                    "activation": act, "seed": args.seed + i, "iters": steps,
                    "warmup_iters": warmup, "eval_interval": min(base.eval_interval, steps),
                    "checkpoint_interval": steps, "run_dir": str(folder / cid), "resume": None,
                }
            )
        )  # fmt: skip
        fields = {
            "symbio_candidate_id": cid,
            "symbio_candidate_activation": act,
            "symbio_generation": 0,
        }
        hooks.append([SymbioHook(symbio, candidate=fields)])
    return resolved.run_id, cfgs, hooks


def run_sequential(run_id: str, cfgs, hooks, steps: int) -> tuple[list, float, float]:
    """Each candidate alone, one after the other: ``(results, setup_s, train_s)``."""
    from model.trainer import Trainer

    results, setup, fit = [], 0.0, 0.0
    for i, (cfg, hk) in enumerate(zip(cfgs, hooks, strict=True)):
        t0 = time.perf_counter()
        trainer = Trainer(cfg, hk, run_id=run_id, step_offset=i * steps, progress=False)
        t1 = time.perf_counter()
        results.append(trainer.fit())
        setup, fit = setup + t1 - t0, fit + time.perf_counter() - t1
        del trainer
        _free()
    return results, setup, fit


def run_batched(run_id: str, cfgs, hooks, steps: int) -> tuple[list, float, float, list[int]]:
    """All candidates as one population: ``(results, setup_s, train_s, family sizes)``."""
    from model.population import Population

    t0 = time.perf_counter()
    pop = Population(cfgs, hooks, run_id=run_id, step_offsets=[i * steps for i in range(len(cfgs))])
    t1 = time.perf_counter()
    results = pop.fit()
    t2 = time.perf_counter()
    families = [f.P for f in pop.families]
    del pop
    _free()
    return results, t1 - t0, t2 - t1, families


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def bench_batched(args, name: str, tmp: Path) -> dict:
    with contextlib.redirect_stdout(sys.stderr):
        steps, n = args.steps, args.population
        if args.warmup_steps > 0:  # untimed: CUDA context, cuBLAS handles, kernel caches
            w = args.warmup_steps
            run_id, cfgs, hooks = generation_configs(args, name, tmp / f"{name}-warm-b", w, n)
            run_batched(run_id, cfgs, hooks, w)
            run_id, cfgs, hooks = generation_configs(args, name, tmp / f"{name}-warm-s", w, 1)
            run_sequential(run_id, cfgs, hooks, w)
        run_id, cfgs, hooks = generation_configs(args, name, tmp / f"{name}-seq", steps, n)
        seq, seq_setup, seq_fit = run_sequential(run_id, cfgs, hooks, steps)
        run_id, cfgs, hooks = generation_configs(args, name, tmp / f"{name}-bat", steps, n)
        bat, bat_setup, bat_fit, families = run_batched(run_id, cfgs, hooks, steps)
    cands = []
    for cfg, s, b in zip(cfgs, seq, bat, strict=True):
        diff = _abs_diff(s.final_val_loss, b.final_val_loss)
        cands.append({
            "activation": cfg.activation, "seed": cfg.seed,
            "status": [s.status, b.status], "error": s.error or b.error,
            "val_sequential": _r(s.final_val_loss, 5), "val_batched": _r(b.final_val_loss, 5),
            "abs_diff": _r(diff, 6),
            "first_loss_abs_diff": _r(_abs_diff(*(r.losses[0] if r.losses else None
                                                  for r in (s, b))), 6),
            "ms_per_iter_sequential": _r(s.ms_per_iter_median, 2),
        })  # fmt: skip
    diffs = [c["abs_diff"] for c in cands if c["abs_diff"] is not None]
    seq_wall, bat_wall = seq_setup + seq_fit, bat_setup + bat_fit
    base = cfgs[0]
    return {
        "config": name,
        "model": {k: getattr(base, k) for k in ("layers", "heads", "dim", "block", "batch",
                                                "dropout", "tokenizer", "vocab_size")},
        "device": args.device,
        "gpu": _gpu_name(args.device),
        "dtype": args.dtype,
        "compile": args.compile,
        "adaptive_batch": args.adaptive_batch,
        "population": n,
        "families": families,
        "steps_per_candidate": steps,
        "sequential": {"wall_s": _r(seq_wall, 2), "setup_s": _r(seq_setup, 2),
                       "train_s": _r(seq_fit, 2)},
        "batched": {"wall_s": _r(bat_wall, 2), "setup_s": _r(bat_setup, 2),
                    "train_s": _r(bat_fit, 2),
                    "ms_per_population_step": _r(bat[0].ms_per_iter_median, 2)},
        "speedup_wall": _r(seq_wall / bat_wall, 2) if bat_wall else None,
        "speedup_train": _r(seq_fit / bat_fit, 2) if bat_fit else None,
        "max_abs_val_diff": max(diffs) if diffs else None,
        "all_completed": all(c["status"] == ["completed", "completed"] for c in cands),
        "candidates": cands,
    }  # fmt: skip


def _abs_diff(a: float | None, b: float | None) -> float | None:
    return abs(a - b) if a is not None and b is not None else None


def _r(x: float | None, nd: int) -> float | None:
    return round(x, nd) if x is not None else None


def print_batched(res: dict) -> None:
    s, b = res["sequential"], res["batched"]
    print(
        f"\n== {res['config']} on {res['gpu'] or res['device']}: {res['population']} candidates "
        f"x {res['steps_per_candidate']} steps, families {res['families']}\n"
        f"  sequential: {s['wall_s']:.1f}s (setup {s['setup_s']:.1f}s, train {s['train_s']:.1f}s)\n"
        f"  batched:    {b['wall_s']:.1f}s (setup {b['setup_s']:.1f}s, train {b['train_s']:.1f}s, "
        f"{b['ms_per_population_step']} ms/population step)\n"
        f"  speed-up {res['speedup_wall']}x wall, {res['speedup_train']}x training; "
        f"max |val loss diff| {res['max_abs_val_diff']}",
        file=sys.stderr,
    )
    for c in res["candidates"]:
        print(
            f"    {c['activation']:>6} seed {c['seed']}: val {c['val_sequential']} vs "
            f"{c['val_batched']} (|diff| {c['abs_diff']}) {'/'.join(c['status'])}",
            file=sys.stderr,
        )


# -- the whole search, batched vs one at a time --------------------------------------


def bench_search(args, name: str, tmp: Path) -> dict:
    from tasks.search_runner import run_search

    outs, walls = {}, {}
    with contextlib.redirect_stdout(sys.stderr):
        if args.warmup_steps > 0:  # untimed: CUDA context, cuBLAS handles, kernel caches
            w = args.warmup_steps
            run_id, cfgs, hooks = generation_configs(args, name, tmp / f"{name}-warm-b", w, 2)
            run_batched(run_id, cfgs, hooks, w)
            run_id, cfgs, hooks = generation_configs(args, name, tmp / f"{name}-warm-s", w, 1)
            run_sequential(run_id, cfgs, hooks, w)
        for mode in ("off", "on"):
            resolved = resolve(
                args, name, tmp / f"{name}-search-{mode}", batched=True,
                generations=args.search_generations, confirm_seeds=args.confirm_seeds,
            )  # fmt: skip
            t0 = time.perf_counter()
            outs[mode] = run_search(resolved, use_lake=False, progress=False, batched=mode)
            walls[mode] = time.perf_counter() - t0
            _free()
    per = {mode: _search_losses(out) for mode, out in outs.items()}
    diffs = [
        _abs_diff(per["off"][cid][k], per["on"].get(cid, (None, None))[k])
        for cid in per["off"] for k in (0, 1)
    ]  # fmt: skip
    diffs = [d for d in diffs if d is not None]
    compute = {m: o.summary["compute"] for m, o in outs.items()}
    return {
        "config": name, "device": args.device, "gpu": _gpu_name(args.device),
        "dtype": args.dtype, "compile": args.compile,
        "planned_generation_sizes": outs["on"].summary.get("planned_generation_sizes"),
        "steps_per_candidate": args.steps, "confirm_seeds": args.confirm_seeds,
        "status": {m: o.status for m, o in outs.items()},
        "wall_s": {m: _r(walls[m], 2) for m in walls},
        "search_wall_s": {m: compute[m]["search_wall_s"] for m in compute},
        "confirm_wall_s": {m: compute[m]["confirm_wall_s"] for m in compute},
        "total_steps": compute["on"]["total_steps"],
        "speedup_wall": _r(walls["off"] / walls["on"], 2) if walls["on"] else None,
        "same_candidates": list(per["off"]) == list(per["on"]),
        "max_abs_loss_diff": _r(max(diffs), 6) if diffs else None,
        "winner": {m: (o.winner or {}).get("arm") for m, o in outs.items()},
        "same_winner": (outs["off"].winner or {}).get("arm") == (outs["on"].winner or {}).get("arm"),
    }  # fmt: skip


def _search_losses(out) -> dict[str, tuple[float | None, float | None]]:
    """candidate id -> (final val loss, test loss), in ranking order."""
    rs = [r for g in out.generations for r in g.ranked]
    rs += list(out.confirmation.results) if out.confirmation else []
    return {r.candidate.candidate_id: (r.final_val_loss, r.test_loss) for r in rs}


def print_search(res: dict) -> None:
    w, sw, cw = res["wall_s"], res["search_wall_s"], res["confirm_wall_s"]
    print(
        f"\n== whole search, {res['config']} on {res['gpu'] or res['device']}: generations "
        f"{res['planned_generation_sizes']} x {res['steps_per_candidate']} steps, "
        f"{res['confirm_seeds']} confirmation seeds, {res['total_steps']:,} steps\n"
        f"  one at a time: {w['off']:.1f}s (search {sw['off']:.1f}s, confirmation {cw['off']:.1f}s)\n"
        f"  batched:       {w['on']:.1f}s (search {sw['on']:.1f}s, confirmation {cw['on']:.1f}s)\n"
        f"  speed-up {res['speedup_wall']}x; same candidates {res['same_candidates']}, "
        f"max |loss diff| {res['max_abs_loss_diff']}, winner {res['winner']}",
        file=sys.stderr,
    )


# -- concurrency slots (run_search with 1..N candidate threads) ----------------------


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
    tokens = len(ok) * args.steps * resolved.train.batch * resolved.train.block
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
    if args.smoke:
        import torch

        torch.set_num_threads(1)  # tiny models: one thread is faster and steadier on a busy CPU
    os.environ["ALPHA_SEARCH_PROBE_STEPS"] = "0"  # this script probes once per config itself
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"bench_search: unknown config {unknown[0]!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-search-") as d:
        for name in names:
            if args.compare == "batched":
                res = bench_batched(args, name, Path(d))
                print_batched(res)
            elif args.compare == "search":
                res = bench_search(args, name, Path(d))
                print_search(res)
            else:
                res = bench_slots(args, name, Path(d))
            print(json.dumps(res), flush=True)
    return 0


def bench_slots(args, name: str, tmp: Path) -> dict:
    from symbio.search.estimate import format_duration

    res = bench_config(args, name, tmp)
    print(f"\n== {name} on {res['gpu'] or args.device}: one generation of "
          f"{args.population} x {args.steps} steps", file=sys.stderr)  # fmt: skip
    for r in res["runs"]:
        print(
            f"  slots {r['slots']}: generation {format_duration(r['generation_wall_s'])} "
            f"({r['generation_wall_s']:.1f}s), speed-up {r['speedup_vs_1_slot']}x, "
            f"full search ~{format_duration(r.get('extrapolated_full_search_s'))}",
            file=sys.stderr,
        )
    return res


if __name__ == "__main__":
    sys.exit(main())
