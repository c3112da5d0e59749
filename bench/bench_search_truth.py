"""Search benchmark on a real corpus: wall time, and the confirmed winner vs GELU with its CI.

Runs the FFN activation search as ``alpha train --symbio`` would (the symbio
preset, the default search unless flags change it: pool of 4, successive
halving from generation 0, ``stepsPerCandidate`` steps per generation, then
the confirmation of the pick, the baseline and gelu with paired seeds on the
held-out test split) and reports:

- wall time per phase (search, confirmation) and the steps trained, against
  an exhaustive sweep with the same replicates at the same length;
- the confirmed per-activation test loss (mean ± sd) and the paired
  difference of each against gelu and against the baseline, with 95% CIs.

    # CPU smoke check (tiny model, 20 steps per generation, 2 confirmation seeds): seconds
    python bench/bench_search_truth.py
    # GPU: the default search on the domain's model (PRD defaults, lr 5e-5 preset)
    python bench/bench_search_truth.py --device cuda
    # ... with a trainable lr and the lr gene, or the engine benchmark's model
    python bench/bench_search_truth.py --device cuda --lr 2e-3 --lr-gene --model engine

Prints a summary to stderr and one JSON line to stdout. No lake, no Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "domain": {},  # the --domain defaults
    "engine": dict(layers=6, heads=6, dim=384, block=256, batch=64, dropout=0.0),
    "tiny": dict(layers=1, heads=2, dim=32, block=32, batch=8, dropout=0.0, eval_iters=4),
}
DATA = [ROOT.parent / "shared" / "data" / "shakespeare.txt", Path("/work/shared/data/shakespeare.txt")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    found = next((d for d in DATA if d.exists()), ROOT / "model" / "corpus" / "shakespeare.txt")
    p.add_argument("--data", default=str(found), help="training text (default: %(default)s)")
    p.add_argument("--domain", default="shakespeare")
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="domain" if cuda else "tiny", choices=sorted(MODELS))
    p.add_argument("--steps", type=int, default=1000 if cuda else 20, help="stepsPerCandidate")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--population", type=int, default=6)
    p.add_argument("--confirm-seeds", type=int, default=3 if cuda else 2)
    p.add_argument("--lr", type=float, default=None if cuda else 3e-3,
                   help="peak lr (default: the symbio preset's 5e-5; 3e-3 for the CPU smoke)")
    p.add_argument("--lr-gene", action="store_true")
    p.add_argument("--max-chars", type=int, default=0 if cuda else 200_000,
                   help="use the first N characters of --data (0: all)")  # fmt: skip
    p.add_argument("--slots", type=int, default=None, help="default: the search's auto slots")
    p.add_argument("--batched", choices=("auto", "on", "off"), default=None,
                   help="each generation as one population (default: ALPHA_SEARCH_BATCHED, "
                        "else on for CUDA); slots apply only when off")  # fmt: skip
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, data: Path, run_dir: Path):
    from tasks.resolve import resolve_run_config

    symbio = {
        "populationSize": args.population,
        "generations": args.generations,
        "stepsPerCandidate": args.steps,
        "confirmSeeds": args.confirm_seeds,
        "lrGene": args.lr_gene,
    }
    flags = {"lr": args.lr} if args.lr else {}
    return resolve_run_config(
        {
            "symbio": True,
            "symbio_config": symbio,
            "data": str(data),
            "domain": args.domain,
            "device": args.device,
            "sample_tokens": 0,
            "seed": args.seed,
            "run_dir": str(run_dir),
            **MODELS[args.model],
            **flags,
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.data).is_file():
        print(f"bench_search_truth: --data: file not found: {args.data}", file=sys.stderr)
        return 2
    from tasks.search_runner import run_search

    with tempfile.TemporaryDirectory(prefix="bench-search-truth-") as d:
        data = Path(args.data)
        if args.max_chars:
            data = Path(d) / "corpus.txt"
            data.write_text(Path(args.data).read_text(encoding="utf-8")[: args.max_chars],
                            encoding="utf-8")  # fmt: skip
        resolved = resolve(args, data, Path(d) / "run")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
            out = run_search(
                resolved, use_lake=False, progress=False, slots=args.slots, batched=args.batched
            )
        wall = time.perf_counter() - t0
    s = out.summary
    res = {
        "device": args.device,
        "gpu": _gpu_name(args.device),
        "model": args.model,
        "data": args.data,
        "train": {k: s["config"]["train"][k] for k in ("layers", "dim", "block", "batch", "lr")},
        "plan": {"generation_sizes": [g["size"] for g in s["generations"]],
                 "steps_per_candidate": args.steps, "confirm_seeds": args.confirm_seeds,
                 "lr_gene": args.lr_gene},  # fmt: skip
        "status": out.status,
        "batched": out.batched,
        "wall_s": round(wall, 1),
        "compute": s["compute"],
        "nominee": (s["nominee"] or {}).get("activation"),
        "winner": (s["winner"] or {}).get("arm"),
        "recommendation": s["recommendation"],
        "confirmation": [
            {k: a[k] for k in ("arm", "roles", "n", "test_loss_mean", "test_loss_sd",
                               "vs_gelu", "vs_baseline")}  # fmt: skip
            for a in (s["confirmation"] or {}).get("arms", [])
        ],
        "warnings": s["warnings"],
    }
    _print_summary(res)
    print(json.dumps(res), flush=True)
    return 0 if out.status == "completed" else 1


def _print_summary(res: dict) -> None:
    c = res["compute"]
    err = sys.stderr
    print(f"\n== search on {res['gpu'] or res['device']} ({res['model']} model, {res['train']}): "
          f"{res['status']} in {res['wall_s']:.0f}s", file=err)  # fmt: skip
    print(f"  generations {res['plan']['generation_sizes']} x {res['plan']['steps_per_candidate']} "
          f"steps: {c['search_steps']:,} steps in {c['search_wall_s']:.0f}s; confirmation "
          f"{c['confirm_runs']} runs, {c['confirm_steps']:,} steps in {c['confirm_wall_s']:.0f}s",
          file=err)  # fmt: skip
    print(f"  {c['total_steps']:,} steps = {100 * (c['fraction_of_exhaustive'] or 0):.0f}% of an "
          f"exhaustive sweep with replicates ({c['exhaustive']['steps']:,})", file=err)  # fmt: skip
    print(f"  nominee {res['nominee']}; winner {res['winner']}", file=err)
    for a in res["confirmation"]:
        vs = a["vs_gelu"]
        ci = vs["ci95"] if vs else None
        vs_txt = (f"vs gelu {vs['mean_diff']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] {vs['verdict']}"
                  if vs and ci else "")  # fmt: skip
        mean = f"{a['test_loss_mean']:.4f}" if a["test_loss_mean"] is not None else "-"
        sd = f" ± {a['test_loss_sd']:.4f}" if a["test_loss_sd"] is not None else ""
        print(f"  {a['arm']:>14} ({', '.join(a['roles'])}): test {mean}{sd} "
              f"(n={a['n']}) {vs_txt}", file=err)  # fmt: skip
    print(f"  {res['recommendation']}", file=err)
    for w in res["warnings"]:
        print(f"  warning: {w}", file=err)


def _gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else None


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
