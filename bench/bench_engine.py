"""Engine benchmark: speed (eager and ``torch.compile``) and val loss after N iters.

The issue's configuration, which is nanoGPT's ``config/train_shakespeare_char.py``:
6 layers, 6 heads, dim 384, block 256, batch 64, dropout 0.2, bf16 autocast,
char-level on ``--data`` with a 90/10 split, lr 1e-3 -> 1e-4 (cosine, 100 warmup
iters), AdamW beta2 0.99, weight decay 0.1, grad clip 1.

    # on a GPU machine (the reference: ~12 ms/iter eager on an H200, val loss 1.295 @ 5000)
    python bench/bench_engine.py --data path/to/shakespeare.txt
    # the val loss over three seeds (mean, std): is a gap to the reference seed noise?
    python bench/bench_engine.py --data path/to/shakespeare.txt --skip-speed --repeats 3
    # CPU smoke check
    python bench/bench_engine.py --small --iters 20 --speed-iters 10 --skip-compile

Prints progress to stderr and one JSON summary line to stdout. Imports only
the engine (torch, numpy, pydantic), never the lake, Prefect or Dash.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.config import build_train_config  # noqa: E402
from model.trainer import train  # noqa: E402

BENCH = dict(layers=6, heads=6, dim=384, block=256, batch=64, dropout=0.2)
SMALL = dict(layers=2, heads=2, dim=64, block=64, batch=8, dropout=0.2)
OPTIM = dict(lr=1e-3, lr_min=1e-4, warmup_iters=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(ROOT / "model" / "corpus" / "shakespeare.txt"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--iters", type=int, default=5000, help="iters of the val-loss run")
    p.add_argument("--evals", type=int, default=20, help="evaluations during the val-loss run")
    p.add_argument("--eval-iters", type=int, default=200, help="batches per evaluation")
    p.add_argument("--speed-iters", type=int, default=300, help="iters of each speed run")
    p.add_argument("--warmup-steps", type=int, default=20, help="speed steps ignored (compile)")
    p.add_argument("--small", action="store_true", help="a tiny model for a CPU smoke check")
    p.add_argument("--skip-compile", action="store_true", help="no torch.compile runs")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--quality-eager", action="store_true", help="val-loss run without compile")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="val-loss runs with seeds --seed, --seed+1, ...; reports their mean and spread",
    )
    p.add_argument("--out", help="keep run folders here (default: a temp dir, removed)")
    return p.parse_args(argv)


def config(
    args: argparse.Namespace,
    run_dir: Path,
    *,
    iters: int,
    compile_: bool,
    eval_interval: int,
    eval_iters: int,
):
    shape = SMALL if args.small else BENCH
    return build_train_config(
        dict(
            data=args.data,
            device=args.device,
            tokenizer="char",
            iters=iters,
            compile=compile_,
            eval_interval=eval_interval,
            eval_iters=eval_iters,
            checkpoint_interval=iters,
            sample_tokens=0,
            seed=args.seed,
            run_dir=str(run_dir),
            **shape,
            **OPTIM,
        )  # fmt: skip
    )


def speed_run(args: argparse.Namespace, root: Path, compile_: bool) -> dict:
    """ms/iter (median over post-warm-up steps), tokens/s and MFU of one config."""
    name = "compiled" if compile_ else "eager"
    iters = args.speed_iters
    cfg = config(
        args,
        root / f"speed-{name}",
        iters=iters,
        compile_=compile_,
        eval_interval=iters,
        eval_iters=1,
    )
    log(f"speed run ({name}), {iters} iters ...")
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    if result.status != "completed":
        return {"status": result.status, "error": result.error}
    rows = read_rows(Path(result.run_dir))[args.warmup_steps if iters > args.warmup_steps else 1 :]
    ms = statistics.median(r["ms_per_iter"] for r in rows)
    tokens = cfg.batch * cfg.block * cfg.grad_accum
    mfus = [r["mfu"] for r in rows if r["mfu"] is not None]
    return {
        "ms_per_iter_median": round(ms, 3),
        "tokens_per_sec": round(tokens / (ms / 1000)),
        "mfu": round(statistics.median(mfus), 4) if mfus else None,
        "steps_measured": len(rows),
        "wall_s": round(wall, 1),
        "param_count": result.param_count,
    }


def quality_run(
    args: argparse.Namespace, root: Path, compile_: bool, seed: int | None = None
) -> dict:
    """Train ``--iters`` with ``--evals`` evaluations; the val loss at the end."""
    interval = max(1, args.iters // max(1, args.evals))
    seed = args.seed if seed is None else seed
    cfg = config(
        argparse.Namespace(**{**vars(args), "seed": seed}),
        root / f"quality-{seed}",
        iters=args.iters,
        compile_=compile_,
        eval_interval=interval,
        eval_iters=args.eval_iters,
    )
    log(
        f"val-loss run: {args.iters} iters, eval every {interval} on {args.eval_iters} "
        f"batches, compile={compile_}, seed={seed} ..."
    )
    t0 = time.perf_counter()
    result = train(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    evals = [
        (r["step"], r["val_loss"])
        for r in read_rows(Path(result.run_dir))
        if r["val_loss"] is not None
    ]
    return {
        "status": result.status,
        "error": result.error,
        "iters": result.steps,
        "compile": compile_,
        "seed": seed,
        "final_val_loss": result.final_val_loss,
        "best_val_loss": result.best_val_loss,
        "last_loss": result.last_loss,
        "evals": len(evals),
        "val_curve": [[s, round(v, 4)] for s, v in evals],
        "wall_s": round(wall, 1),
        "train_s": round(result.elapsed_s, 1),
        "ms_per_iter_median": round(result.ms_per_iter_median or 0.0, 3),
    }


def spread(runs: list[dict]) -> dict:
    """Final val loss per seed, with mean, sample std and range: is a gap seed noise?"""
    finals = {r["seed"]: r["final_val_loss"] for r in runs}
    values = [v for v in finals.values() if v is not None]
    return {
        "final_val_loss_by_seed": {str(k): v and round(v, 4) for k, v in finals.items()},
        "mean": round(statistics.fmean(values), 4) if values else None,
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "min": round(min(values), 4) if values else None,
        "max": round(max(values), 4) if values else None,
    }


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="alpha-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    summary: dict = {
        "bench": "engine",
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "data": args.data,
        "config": {
            **(SMALL if args.small else BENCH),
            **OPTIM,
            "dtype": "bfloat16" if cuda else "float32",
        },
    }
    try:
        if not args.skip_speed:
            summary["eager"] = speed_run(args, root, compile_=False)
            if not args.skip_compile:
                summary["compiled"] = speed_run(args, root, compile_=True)
        if not args.skip_quality:
            compile_ = not (args.skip_compile or args.quality_eager)
            runs = [
                quality_run(args, root, compile_, seed=args.seed + i)
                for i in range(max(1, args.repeats))
            ]
            summary["quality"] = runs[0]
            if len(runs) > 1:
                summary["quality_repeats"] = spread(runs)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
