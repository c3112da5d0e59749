"""``--compile`` with adaptive batch sizes: no recompilation storm, and what a resize costs.

Trains with ``torch.compile`` while a hook changes the batch size the way
adaptive batching does (down and back up by ``--step``, every ``--every``
steps), then reports how many graphs Dynamo compiled, the recompiles, and the
median step time per batch size after its first step. Prints one JSON line.

    python bench/bench_compile_resize.py --device cuda --data shakespeare.txt   # engine config
    python bench/bench_compile_resize.py --device cpu --small                   # smoke check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from model.config import SHIPPED_CORPUS, build_train_config  # noqa: E402
from model.hooks import TrainerHook  # noqa: E402
from model.trainer import train  # noqa: E402

ENGINE = dict(layers=6, heads=6, dim=384, block=256, batch=64, dropout=0.2)
SMALL = dict(layers=1, heads=2, dim=32, block=32, batch=16, dropout=0.0)


class Resizer(TrainerHook):
    """Walks the batch size down and back up, like CUSUM-driven adaptive batching."""

    def __init__(self, sizes: list[int], every: int) -> None:
        self.sizes, self.every = sizes, every

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if row["step"] % self.every == 0:
            i = row["step"] // self.every
            trainer.set_batch_size(self.sizes[i % len(self.sizes)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=str(SHIPPED_CORPUS))
    p.add_argument("--small", action="store_true")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--every", type=int, default=25, help="steps between resizes")
    p.add_argument("--step", type=int, default=4, help="batchStep")
    p.add_argument("--levels", type=int, default=3, help="resizes down before coming back")
    args = p.parse_args(argv)

    shape = SMALL if args.small else ENGINE
    top = shape["batch"]
    down = [top - args.step * k for k in range(1, args.levels + 1)]
    sizes = [*down, *reversed(down[:-1]), top]  # e.g. 60 56 52 56 60 64
    counters.clear()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_train_config(
            {
                **shape,
                "data": args.data,
                "device": args.device,
                "iters": args.iters,
                "compile": True,
                "eval_interval": 10**6,
                "eval_iters": 2,
                "sample_tokens": 0,
                "checkpoint_interval": 10**6,
                "run_dir": str(Path(tmp) / "run"),
            }
        )
        result = train(cfg, [Resizer(sizes, args.every)], progress=False)
        rows = [json.loads(x) for x in (Path(result.run_dir) / "metrics.jsonl").open()]
    by_size: dict[int, list[float]] = defaultdict(list)
    for prev, row in zip(rows, rows[1:], strict=False):
        if row["batch_size"] == prev["batch_size"]:  # skip each size's first step
            by_size[row["batch_size"]].append(row["ms_per_iter"])
    stats = dict(counters["stats"])
    resizes = sum(a["batch_size"] != b["batch_size"] for a, b in zip(rows, rows[1:], strict=False))
    print(
        json.dumps(
            {
                "device": args.device,
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                "torch": torch.__version__,
                "config": shape,
                "status": result.status,
                "resizes": resizes,
                "batch_sizes": sorted(by_size),
                "unique_graphs": stats.get("unique_graphs"),
                "calls_captured": stats.get("calls_captured"),
                "recompiles": dict(counters.get("recompiles", {})),
                "ms_per_iter_median_by_batch": {
                    b: round(statistics.median(v), 3) for b, v in sorted(by_size.items())
                },
            }
        )
    )
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
