"""Metric sink benchmark: throughput with the GX gate on, and the cost on the training thread.

Measures, against a local lake in a temporary folder (or ``--lake``):

- ``put_us_mean`` / ``put_us_p99`` / ``put_us_max``: time of one
  ``MetricSink.put`` on the calling (training) thread, while the writer
  thread validates and lands batches concurrently;
- ``put_pct_of_step``: ``put_us_mean`` as a percentage of ``--step-ms`` (a
  typical step time; target < 1 %);
- ``rows_per_sec``: rows from first ``put`` to ``close`` (validated, encoded,
  landed) when rows arrive as fast as possible;
- ``gate_ms_per_batch``: Great Expectations + type gate per batch of
  ``--max-rows`` rows (wall time, including the round trip to the GX child);
- ``writer_cpu_us_per_row`` / ``writer_cpu_pct_of_step``: CPU time of the
  sink's writer thread (``time.thread_time``): the most GIL time it can take
  from the training thread. Unlike wall times it does not depend on the load
  of the machine;
- ``step_overhead_pct``: a simulated training loop (``--python-ms`` of
  GIL-holding Python per step, the rest of ``--step-ms`` a GIL-free wait like
  a CUDA sync) with one row per step into the sink, against the same loop
  without it, in alternating blocks: this includes the writer thread's GIL
  contention while it validates.

    python bench/bench_sink.py                          # CPU defaults
    python bench/bench_sink.py --rows 200000 --max-rows 5000 --step-ms 50

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.lake import open_lake  # noqa: E402
from storage.sink import MetricSink  # noqa: E402


def symbio_row(run_id: str, step: int) -> dict:
    """A full symbio step row (the widest row the trainer produces)."""
    return {
        "run_id": run_id,
        "step": step,
        "loss": 3.0 / (1 + step * 1e-3),
        "val_loss": None,
        "lr": 3e-4,
        "grad_norm": 0.8,
        "clip_coef": 1.0,
        "clip_pct": 0.0,
        "tokens_per_sec": 120_000.0,
        "ms_per_iter": 50.0,
        "elapsed_ms": 50.0 * step,
        "batch_size": 32,
        "mfu": 0.31,
        "timestamp": dt.datetime.now(dt.UTC),
        "event": None,
        "cusum_grad": 0.1,
        "cusum_clip": 0.0,
        "cusum_tps": 0.2,
        "cusum_val": None,
        "cusum_alerts": 0,
        "cusum_alert_reason": None,
        "adaptive_batch_size": 32,
        "batch_change_reason": None,
        **(
            {
                "weight_entropy": 6.1,
                "effective_rank": 40.2,
                "free_energy": 3.1,
                "population_entropy": 2.3,
                "activation_distribution": '{"swiglu": 1}',
                "fitness_score": 0.5,
                "complexity_score": 0.1,
            }
            if step % 50 == 0
            else {}
        ),
    }


def bench_throughput(lake_url: str, rows: int, max_rows: int) -> dict:
    lake = open_lake(lake_url)
    sink = MetricSink(
        lake,
        "bench-throughput",
        max_rows=max_rows,
        max_seconds=5.0,
        register_atexit=False,
        gate_in_process=GATE_IN_PROCESS[0],
    )
    sink.flush(timeout=120)  # GX import and suite build are not part of the steady state
    payload = [symbio_row("bench-throughput", s) for s in range(1, rows + 1)]
    put_ns = []
    t0 = time.perf_counter()
    for row in payload:
        a = time.perf_counter_ns()
        sink.put(row)
        put_ns.append(time.perf_counter_ns() - a)
    put_done = time.perf_counter() - t0
    stats = sink.close(timeout=600)
    total = time.perf_counter() - t0
    assert stats.rows_landed == rows, stats
    put_us = np.array(put_ns) / 1e3
    return {
        "rows": rows,
        "max_rows": max_rows,
        "rows_per_sec": round(rows / total, 1),
        "seconds_total": round(total, 3),
        "seconds_putting": round(put_done, 4),
        "put_us_mean": round(float(put_us.mean()), 3),
        "put_us_p99": round(float(np.percentile(put_us, 99)), 3),
        "put_us_max": round(float(put_us.max()), 1),
        "batches": stats.batches,
        "gate_ms_per_batch": round(1e3 * stats.gate_seconds / max(1, stats.batches), 1),
        "writer_cpu_ms_per_batch": round(1e3 * stats.writer_cpu_seconds / max(1, stats.batches), 1),
        "writer_cpu_us_per_row": round(1e6 * stats.writer_cpu_seconds / rows, 2),
    }


_STEP = [0]  # global step counter of the simulated loop (rows must not repeat steps)
GATE_IN_PROCESS = [False]


def _python_work(ms: float) -> None:
    """Hold the GIL for ~ms, like the Python side of a step (kernel launches, hooks)."""
    end = time.perf_counter() + ms / 1e3
    x = 0
    while time.perf_counter() < end:
        for i in range(200):
            x += i


def _step_loop(
    steps: int, step_ms: float, python_ms: float, sink: MetricSink | None
) -> list[float]:
    """Steps of ``python_ms`` GIL-holding work plus a GIL-free wait (the GPU),
    ``step_ms`` in all; one row per step into ``sink``."""
    times = []
    for _ in range(steps):
        _STEP[0] += 1
        step = _STEP[0]
        t0 = time.perf_counter()
        _python_work(python_ms)
        time.sleep(max(0.0, (step_ms - python_ms) / 1e3))  # releases the GIL, like a CUDA sync
        if sink is not None:
            sink.put(symbio_row("bench-steps", step))
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_steps(
    lake_url: str, steps: int, step_ms: float, python_ms: float, max_rows: int, max_seconds: float
) -> dict:
    sink = MetricSink(
        open_lake(lake_url),
        "bench-steps",
        max_rows=max_rows,
        max_seconds=max_seconds,
        register_atexit=False,
        gate_in_process=GATE_IN_PROCESS[0],
    )
    sink.flush(timeout=120)
    # Alternate blocks with and without the sink so that load from other
    # processes hits both alike.
    base, with_sink = [], []
    block = max(1, steps // 10)
    for _ in range(10):
        base += _step_loop(block, step_ms, python_ms, None)
        with_sink += _step_loop(block, step_ms, python_ms, sink)
    stats = sink.close(timeout=600)
    base_ms, sink_ms = statistics.mean(base), statistics.mean(with_sink)
    return {
        "steps": len(with_sink),
        "python_ms_per_step": python_ms,
        "batch_max_seconds": max_seconds,
        "batches_in_step_loop": stats.batches,
        "step_ms_without_sink": round(base_ms, 3),
        "step_ms_with_sink": round(sink_ms, 3),
        "step_overhead_pct": round(100 * (sink_ms - base_ms) / base_ms, 2),
        # CPU the writer thread used (GIL it could take) per step, as % of a step
        "writer_cpu_pct_of_step": round(
            100 * stats.writer_cpu_seconds / (len(with_sink) * step_ms / 1e3), 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows for the throughput test")
    p.add_argument("--max-rows", type=int, default=2000, help="sink batch size")
    p.add_argument("--step-ms", type=float, default=50.0, help="typical training step time")
    p.add_argument("--steps", type=int, default=200, help="steps of the simulated loop (0: skip)")
    p.add_argument("--python-ms", type=float, default=10.0, help="GIL-holding part of a step")
    p.add_argument("--max-seconds", type=float, default=5.0, help="batch age in the step loop")
    p.add_argument("--lake", default=None, help="lake URL (default: a temporary folder)")
    p.add_argument("--gate-in-process", action="store_true", help="run GX in the writer thread")
    args = p.parse_args(argv)
    GATE_IN_PROCESS[0] = args.gate_in_process
    with tempfile.TemporaryDirectory(prefix="alpha-bench-lake-") as tmp:
        os.environ.setdefault("ALPHA_SPOOL", os.path.join(tmp, "spool"))
        lake_url = args.lake or os.path.join(tmp, "lake")
        out = {
            "bench": "sink",
            "cpu_count": os.cpu_count(),
            "step_ms": args.step_ms,
            "gx_in": "writer thread" if args.gate_in_process else "child process",
        }
        out.update(bench_throughput(lake_url, args.rows, args.max_rows))
        out["put_pct_of_step"] = round(100 * out["put_us_mean"] / (1e3 * args.step_ms), 4)
        if args.steps:
            out.update(
                bench_steps(
                    lake_url,
                    args.steps,
                    args.step_ms,
                    args.python_ms,
                    args.max_rows,
                    args.max_seconds,
                )
            )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
