"""Symbio overhead benchmark: the same run with and without ``SymbioHook`` (PRD §17.2).

Plain and symbio runs alternate (``--repeats`` pairs, same seed and data, so
slow phases of the machine hit both alike). With MI off at ``metricsInterval``
50 (the budget case) it reports:

- ``wall_ms_per_step``: mean wall time per step after warm-up (metric steps
  included: they are rare, a median would hide them), median over the runs of
  each kind; ``wall_overhead_pct`` compares the two (the honest headline, but
  noisy at the 1 % level);
- the hook's critical-path time, timed *without* a device synchronize (the
  trainer synchronises every step anyway, so GPU work the hook queues shows up
  in the next step's time, not the hook's): ``monitor_ms`` (CUSUM + adaptive
  batch, every step), ``launch_step_hook_ms`` (the step before a metrics step:
  on CUDA the weight snapshot + side-stream launch), ``metric_step_hook_ms``;
  ``collection_hook_ms`` = both minus two monitor steps;
- ``side_stream_slowdown_ms``: how much the two training steps after a launch
  are slower than the median step (GPU contention with the side stream; ~0 on
  CPU, where nothing runs asynchronously);
- ``collection_critical_ms`` = the two above (a negative slowdown counts as
  0); ``overhead_pct`` = (monitor time
  over an interval + one collection) / the interval's median step time
  (target < 2 %);
- per-metric costs (synchronised, each alone) and one MI collection.

Both runs use the same activation, so the activation's own cost (SwiGLU vs
GELU) is not counted as symbio overhead; adaptive batch is off by default so
both do the same work.

    python bench/bench_symbio.py --threads 1                 # small CPU config
    python bench/bench_symbio.py --gpu --device cuda --data .benchdata/shakespeare.txt

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
from symbio.metrics.async_weights import AsyncWeightMetrics  # noqa: E402
from symbio.metrics.weights import (  # noqa: E402
    effective_rank,
    effective_rank_tensor,
    weight_entropy,
    weight_entropy_tensor,
)

CPU_CONFIG = {"batch": 8, "block": 64, "dim": 64, "heads": 4, "layers": 2, "iters": 200}
GPU_CONFIG = {"batch": 64, "block": 256, "dim": 384, "heads": 6, "layers": 6, "iters": 500}


class TimedHook(TrainerHook):
    """Wraps a hook and records the wall time of each ``on_step_end`` (no device sync:
    what the hook costs the training loop, GPU work it queues shows up in later steps)."""

    def __init__(self, inner: SymbioHook) -> None:
        self.inner = inner
        self.times: dict[int, float] = {}

    def on_train_start(self, trainer: Any) -> None:
        self.inner.on_train_start(trainer)

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.inner.on_step_end(trainer, row)
        self.times[row["step"]] = (time.perf_counter() - t0) * 1000.0

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
    p.add_argument("--repeats", type=int, default=3, help="plain/symbio run pairs, interleaved")
    p.add_argument(
        "--adaptive-batch",
        action="store_true",
        help="let CUSUM alerts resize the batch (off by default: a resize changes the work)",
    )
    p.add_argument("--sync-weights", action="store_true", help="CUDA: no side stream (as on CPU)")
    p.add_argument("--no-graph", action="store_true", help="CUDA: side stream without CUDA graph")
    p.add_argument("--mi-repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--skip-warmup", type=int, default=5, help="steps ignored in the statistics")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.metrics_interval < 1:
        p.error("--repeats and --metrics-interval must be >= 1")
    return args


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
    """Median step time (trainer's, hooks excluded) and mean wall time per step (all in)."""
    rows = rows[skip:-1]  # the last step evaluates and checkpoints
    n = len(rows) - 1
    return {
        "ms_per_iter_median": statistics.median(r["ms_per_iter"] for r in rows),
        "wall_ms_per_step": (rows[-1]["elapsed_ms"] - rows[0]["elapsed_ms"]) / n
        if n > 0
        else float("nan"),
    }


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def collection_stats(
    timed: TimedHook, rows: list[dict], interval: int, skip: int
) -> dict[str, float | None]:
    """Critical-path cost of one sparse-metrics collection in one symbio run."""
    last = rows[-1]["step"]
    metric = [s for s in timed.times if s % interval == 0 and skip < s < last]
    launch = [s - 1 for s in metric]
    special = set(metric) | set(launch) | {s + 1 for s in metric}
    monitor = [t for s, t in timed.times.items() if s > skip and s not in special and s != last]
    step_ms = {r["step"]: r["ms_per_iter"] for r in rows}
    med_step = statistics.median(step_ms[s] for s in step_ms if s > skip and s not in special)
    slow = [step_ms[s] + step_ms.get(s + 1, med_step) - 2 * med_step for s in metric]
    out: dict[str, float | None] = {"collections": len(metric)}
    if not metric or not monitor:
        return out
    mon = statistics.median(monitor)
    out["monitor_ms"] = mon
    out["launch_step_hook_ms"] = statistics.median(timed.times[s] for s in launch)
    out["metric_step_hook_ms"] = statistics.median(timed.times[s] for s in metric)
    out["collection_hook_ms"] = out["launch_step_hook_ms"] + out["metric_step_hook_ms"] - 2 * mon
    out["side_stream_slowdown_ms"] = statistics.median(slow)
    # a negative slowdown is noise (nothing runs asynchronously on CPU): never credit it
    out["collection_critical_ms"] = out["collection_hook_ms"] + max(
        0.0, out["side_stream_slowdown_ms"]
    )
    out["step_ms_median"] = med_step
    out["overhead_pct"] = (
        100.0 * (interval * mon + out["collection_critical_ms"]) / (interval * med_step)
    )
    return out


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
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def metric_costs(model: torch.nn.Module, repeats: int, sync: bool) -> dict[str, float]:
    """Per-metric cost on the trained model, each alone and synchronised (GPU time)."""
    params = list(model.parameters())
    costs = {
        "weight_entropy_ms": timed_ms(lambda: weight_entropy(params), repeats, sync),
        "weight_entropy_tensor_ms": timed_ms(lambda: weight_entropy_tensor(params), repeats, sync),
        "effective_rank_ms": timed_ms(lambda: effective_rank(model), repeats, sync),
        "effective_rank_tensor_ms": timed_ms(lambda: effective_rank_tensor(model), repeats, sync),
        "effective_rank_eigh_ms": timed_ms(
            lambda: effective_rank(model, method="eigh"), repeats, sync
        ),
        "effective_rank_sign_ms": timed_ms(
            lambda: effective_rank(model, method="sign"), repeats, sync
        ),
    }
    if sync:
        costs.update(async_costs(model, repeats))
    return costs


def async_costs(model: torch.nn.Module, repeats: int) -> dict[str, float | str]:
    """``AsyncWeightMetrics``: CPU time of ``launch()`` and launch-to-result time, alone."""
    out: dict[str, float | str] = {}
    for name, use_graph in (("graph", True), ("eager", False)):
        metrics = AsyncWeightMetrics(model, use_graph=use_graph)
        metrics.launch()  # captures the graphs
        metrics.result()
        launch_ms, total_ms = [], []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            metrics.launch()
            t1 = time.perf_counter()
            metrics.result()
            launch_ms.append((t1 - t0) * 1000.0)
            total_ms.append((time.perf_counter() - t0) * 1000.0)
        out[f"async_{name}_launch_cpu_ms"] = statistics.median(launch_ms)
        out[f"async_{name}_gpu_ms"] = statistics.median(total_ms)
        out[f"async_{name}_mode"] = metrics.mode
        metrics.close()
    return out


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
    plain_runs, symbio_runs, collections = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for i in range(args.repeats):
            _, rows = run(args, [], tmp_path / f"plain{i}")
            plain_runs.append(step_stats(rows, args.skip_warmup))
            hook = SymbioHook(
                symbio, async_weights=not args.sync_weights, cuda_graph=not args.no_graph
            )
            timed = TimedHook(hook)
            symbio_trainer, rows = run(args, [timed], tmp_path / f"symbio{i}")
            symbio_runs.append(step_stats(rows, args.skip_warmup))
            collections.append(
                collection_stats(timed, rows, args.metrics_interval, args.skip_warmup)
            )
        costs = metric_costs(symbio_trainer.model, args.mi_repeats, sync)
        mi_hook = SymbioHook(symbio.model_copy(update={"track_mi_profiles": True}))
        mi_args = argparse.Namespace(**{**vars(args), "iters": 2})
        mi_trainer, _ = run(mi_args, [mi_hook], tmp_path / "mi")
        mi = mi_cost(mi_trainer, mi_hook, args.mi_repeats, sync)

    plain_wall = median_of(plain_runs, "wall_ms_per_step")
    symbio_wall = median_of(symbio_runs, "wall_ms_per_step")
    per_collection = {
        key: statistics.median(c[key] for c in collections)
        for key in collections[0]
        if all(c.get(key) is not None for c in collections)
    }
    cfg = train_config(args, Path("-"))
    weights_path = "sync"
    if sync and not args.sync_weights:
        weights_path = "side-stream eager" if args.no_graph else "side-stream CUDA graph"
    summary = {
        "device": str(mi_trainer.device),
        "gpu": torch.cuda.get_device_name() if sync else None,
        "torch": torch.__version__,
        "config": {
            k: getattr(cfg, k)
            for k in ("iters", "batch", "block", "dim", "heads", "layers", "activation", "compile")
        },
        "threads": torch.get_num_threads(),
        "metrics_interval": args.metrics_interval,
        "adaptive_batch": args.adaptive_batch,
        "weight_metrics_path": weights_path,
        "repeats": args.repeats,
        "plain_wall_ms_per_step": plain_wall,
        "symbio_wall_ms_per_step": symbio_wall,
        "wall_overhead_pct": 100.0 * (symbio_wall - plain_wall) / plain_wall,
        "plain_runs": plain_runs,
        "symbio_runs": symbio_runs,
        **per_collection,
        "target_pct": 2.0,
        **costs,
        **mi,
    }
    if "overhead_pct" in summary:
        summary["within_budget"] = summary["overhead_pct"] < summary["target_pct"]
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
