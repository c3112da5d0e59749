"""Symbio overhead benchmark: the same run with and without ``SymbioHook`` (PRD §17.2).

Measures, with MI off at ``metricsInterval`` 50 (the budget case):

- ``hook_ms_per_step``: wall time spent inside ``SymbioHook.on_step_end``,
  amortised over all steps, split into monitoring steps (CUSUM + adaptive
  batch) and metric steps (the sparse metrics);
- ``overhead_pct``: that time as a percentage of the median training step
  time of the same run (the trainer's ``ms_per_iter`` excludes hooks), so
  load from other processes affects numerator and denominator alike
  (target < 2 %); ``overhead_vs_plain_pct`` divides by the plain run's
  median instead;
- the plain and symbio runs' median step time and wall time per step.

and, separately, the cost of one MI collection (``MIProbe.measure``) on the
trained model. Both runs use the same activation, so the activation's own
cost (SwiGLU vs GELU) is not counted as symbio overhead.

    python bench/bench_symbio.py                      # small CPU config
    python bench/bench_symbio.py --gpu --device cuda  # engine benchmark config

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.config import SHIPPED_CORPUS, build_train_config  # noqa: E402
from model.hooks import TrainerHook  # noqa: E402
from model.trainer import Trainer  # noqa: E402
from symbio.config import SymbioConfig  # noqa: E402
from symbio.hook import SymbioHook  # noqa: E402
from symbio.metrics.weights import effective_rank, weight_entropy  # noqa: E402

CPU_CONFIG = {"batch": 8, "block": 64, "dim": 64, "heads": 4, "layers": 2, "iters": 200}
GPU_CONFIG = {"batch": 64, "block": 256, "dim": 384, "heads": 6, "layers": 6, "iters": 500}


class TimedHook(TrainerHook):
    """Wraps a hook and records the wall time of each ``on_step_end``."""

    def __init__(self, inner: SymbioHook, sync: bool) -> None:
        self.inner = inner
        self.sync = sync
        self.times: list[tuple[int, float]] = []
        self.metric_steps: set[int] = set()

    def on_train_start(self, trainer: Any) -> None:
        self.inner.on_train_start(trainer)

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.inner.on_step_end(trainer, row)
        if self.sync:
            torch.cuda.synchronize()
        self.times.append((row["step"], (time.perf_counter() - t0) * 1000.0))
        if "weight_entropy" in row or "effective_rank" in row:
            self.metric_steps.add(row["step"])

    def on_train_end(self, trainer: Any, result: Any) -> None:
        self.inner.on_train_end(trainer, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--gpu", action="store_true", help="engine benchmark config (6x6x384, T=256, B=64)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--data", default=None, help="training text (default: the shipped corpus)")
    for name in ("iters", "batch", "block", "dim", "heads", "layers"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--activation", default="swiglu", choices=["gelu", "relu", "silu", "swiglu"])
    p.add_argument("--metrics-interval", type=int, default=50)
    p.add_argument(
        "--adaptive-batch",
        action="store_true",
        help="let CUSUM alerts resize the batch (off by default: a resize changes the work)",
    )
    p.add_argument("--mi-repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--skip-warmup", type=int, default=5, help="steps ignored in the medians")
    return p.parse_args(argv)


def train_config(args: argparse.Namespace, run_dir: Path):
    base = dict(GPU_CONFIG if args.gpu else CPU_CONFIG)
    for name in base:
        if getattr(args, name, None) is not None:
            base[name] = getattr(args, name)
    return build_train_config(
        {
            **base,
            "data": args.data or str(SHIPPED_CORPUS),
            "device": args.device,
            "activation": args.activation,
            "dropout": 0.0,
            "eval_interval": 10**9 // 2,  # eval only at the end: keep both runs identical
            "eval_iters": 2,
            "sample_tokens": 0,
            "compile": args.compile,
            "seed": 1,
            "run_dir": str(run_dir),
        }
    )


def run(
    args: argparse.Namespace, hooks: list[TrainerHook], run_dir: Path
) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(train_config(args, run_dir), hooks, progress=False)
    result = trainer.fit()
    if result.status != "completed":
        raise SystemExit(f"bench_symbio: run failed: {result.error}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, rows


def step_stats(rows: list[dict], skip: int) -> dict[str, float]:
    rows = rows[skip:]
    wall = [b["elapsed_ms"] - a["elapsed_ms"] for a, b in zip(rows, rows[1:], strict=False)]
    return {
        "ms_per_iter_median": statistics.median(r["ms_per_iter"] for r in rows),
        "wall_ms_per_step_median": statistics.median(wall) if wall else float("nan"),
    }


def mi_cost(trainer: Trainer, hook: SymbioHook, repeats: int, sync: bool) -> dict[str, float]:
    probe = hook.collector.probe if hook.collector else None
    if probe is None:
        return {}
    probe.measure(trainer.model, trainer.autocast)  # warm-up (neuron sample, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        probe.measure(trainer.model, trainer.autocast)
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"mi_ms_per_collection": statistics.median(times), "mi_probe_tokens": probe.x.numel()}


def timed_ms(fn: Any, repeats: int, sync: bool) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def metric_costs(model: torch.nn.Module, repeats: int, sync: bool) -> dict[str, float]:
    """Per-metric cost on the trained model; both effective-rank methods."""
    return {
        "weight_entropy_ms": timed_ms(lambda: weight_entropy(model.parameters()), repeats, sync),
        "effective_rank_ms": timed_ms(lambda: effective_rank(model), repeats, sync),
        "effective_rank_eigh_ms": timed_ms(
            lambda: effective_rank(model, method="eigh"), repeats, sync
        ),
        "effective_rank_sign_ms": timed_ms(
            lambda: effective_rank(model, method="sign"), repeats, sync
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    symbio = SymbioConfig(
        metrics_interval=args.metrics_interval,
        adaptive_batch=args.adaptive_batch,
        track_mi_profiles=False,
        search_mode="none",
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _, plain_rows = run(args, [], tmp_path / "plain")
        timed = TimedHook(SymbioHook(symbio), sync)
        symbio_trainer, symbio_rows = run(args, [timed], tmp_path / "symbio")
        costs = metric_costs(symbio_trainer.model, args.mi_repeats, sync)
        mi_hook = SymbioHook(symbio.model_copy(update={"track_mi_profiles": True}))
        mi_args = argparse.Namespace(**{**vars(args), "iters": 2})
        mi_trainer, _ = run(mi_args, [mi_hook], tmp_path / "mi")
        mi = mi_cost(mi_trainer, mi_hook, args.mi_repeats, sync)

    plain = step_stats(plain_rows, args.skip_warmup)
    on = step_stats(symbio_rows, args.skip_warmup)
    monitor_ms = [t for s, t in timed.times if s not in timed.metric_steps]
    metric_ms = [t for s, t in timed.times if s in timed.metric_steps]
    hook_ms_per_step = sum(t for _, t in timed.times) / len(timed.times)
    cfg = train_config(args, Path("-"))
    summary = {
        "device": str(mi_trainer.device),
        "gpu": torch.cuda.get_device_name() if sync else None,
        "config": {
            k: getattr(cfg, k)
            for k in ("iters", "batch", "block", "dim", "heads", "layers", "activation", "compile")
        },
        "threads": torch.get_num_threads(),
        "metrics_interval": args.metrics_interval,
        "adaptive_batch": args.adaptive_batch,
        "plain": plain,
        "symbio": on,
        "hook_ms_per_step": hook_ms_per_step,
        "monitor_ms_per_step_median": statistics.median(monitor_ms) if monitor_ms else None,
        "metrics_ms_per_collection_median": statistics.median(metric_ms) if metric_ms else None,
        "metric_collections": len(metric_ms),
        "overhead_pct": 100.0 * hook_ms_per_step / on["ms_per_iter_median"],
        "overhead_vs_plain_pct": 100.0 * hook_ms_per_step / plain["ms_per_iter_median"],
        "wall_overhead_pct": 100.0
        * (on["wall_ms_per_step_median"] - plain["wall_ms_per_step_median"])
        / plain["wall_ms_per_step_median"],
        "target_pct": 2.0,
        **costs,
        **mi,
    }
    summary["within_budget"] = summary["overhead_pct"] < summary["target_pct"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
