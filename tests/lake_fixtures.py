"""Synthetic metric lakes for tests, benchmarks and demos.

Builders write real lake objects through the storage writer API
(``storage.writer.put_object``), so the files look exactly like the sink's:
``<lake>/<table>/run_id=<id>/<unique>.parquet`` with the versioned schema, and
commit markers on object stores. Values follow the shapes training produces:
decaying loss, warmup + cosine lr, clip telemetry on every step, sparse symbio
metrics every ``metrics_interval`` steps, ``val_loss`` on eval steps.

Builders (each returns the run id):

- :func:`plain_run`        a completed non-symbio run
- :func:`symbio_run`       a completed symbio run with every symbio metric (MI included)
- :func:`search_run`       an FFN-activation search run with candidates and a winner
- :func:`in_progress_run`  a ``running`` run; grow it with :func:`append_steps`
- :func:`large_run`        100,000 steps (symbio)
- :func:`demo_lake`        all of the above in one lake

``python tests/lake_fixtures.py <dir>`` builds a demo lake to browse with
``alpha dashboard --lake <dir>``.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from storage.lake import Lake, open_lake
from storage.schema import CUSUM_BITS, arrow_schema
from storage.writer import batch_key, encode_parquet, object_name, put_object

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
ACTIVATIONS = ("gelu", "relu", "silu", "swiglu")


def _lake(lake: Lake | str) -> Lake:
    return lake if isinstance(lake, Lake) else open_lake(str(lake))


def write_table(lake: Lake | str, table: str, run_id: str, columns: dict[str, Any]) -> str:
    """Write one Parquet object of ``table`` for ``run_id``; missing columns are null.

    ``columns`` maps column name -> list or numpy array (NaN means null for floats).
    """
    lake = _lake(lake)
    schema = arrow_schema(table, with_partition=False)
    n = len(next(iter(columns.values())))
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        arrays.append(pa.nulls(n, field.type) if values is None else _array(values, field.type))
    data = pa.Table.from_arrays(arrays, schema=schema)
    return put_object(lake, batch_key(table, run_id, object_name()), encode_parquet(data))


def _best(values: np.ndarray) -> float | None:
    """Lowest non-NaN value, or None when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.min()) if finite.size else None


def _array(values: Any, type_: pa.DataType) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values, type=type_, mask=np.isnan(values))
    return pa.array(values, type=type_)


# -- runs table ------------------------------------------------------------------


def write_run(lake: Lake | str, run_id: str, **fields: Any) -> None:
    """Upsert the ``runs`` row of ``run_id`` (a newer ``updated_at`` wins)."""
    row = {"run_id": run_id, "status": "completed", "updated_at": datetime.now(UTC), **fields}
    write_table(lake, "runs", run_id, {k: [v] for k, v in row.items() if k != "run_id"})


def _train_config(steps: int, **kw: Any) -> str:
    cfg = {
        "domain": "shakespeare",
        "iters": steps,
        "batch": 32,
        "block": 128,
        "dim": 128,
        "heads": 4,
        "layers": 4,
        "lr": 3e-4,
        "grad_clip": 1.0,
        "eval_interval": 50,
        "activation": "gelu",
        "device": "cpu",
        "seed": 1337,
    }
    cfg.update(kw)
    return json.dumps(cfg)


def _model_config(activation: str) -> str:
    return json.dumps(
        {
            "vocab_size": 65,
            "block_size": 128,
            "n_layer": 4,
            "n_head": 4,
            "n_embd": 128,
            "dropout": 0.0,
            "ffn_activation": activation,
        }
    )


def symbio_config(**overrides: Any) -> dict[str, Any]:
    """A resolved SymbioConfig in the lake's JSON form (camelCase keys)."""
    cfg = {
        "cusumSensitivity": 4.0,
        "cusumBaselineWindow": 10,
        "metricsInterval": 50,
        "trackMIProfiles": False,
        "freeEnergyBeta": 0.01,
        "adaptiveBatch": True,
        "batchMin": 8,
        "batchMax": 64,
        "batchStep": 4,
        "complexityMode": "entropy",
        "searchMode": "none",
        "activationPool": list(ACTIVATIONS),
        "populationSize": 4,
        "generations": 2,
        "stepsPerCandidate": 60,
        "rankBy": "valLoss",
    }
    cfg.update(overrides)
    return cfg


# -- metrics ---------------------------------------------------------------------


def base_metrics(
    steps: np.ndarray,
    *,
    total: int,
    seed: int = 0,
    eval_interval: int = 50,
    grad_clip: float = 1.0,
    val_loss: bool = True,
    batch: int = 32,
) -> dict[str, Any]:
    """The engine's per-step columns for ``steps`` of a run planned for ``total``."""
    rng = np.random.default_rng(seed + int(steps[0]) if len(steps) else seed)
    s = steps.astype(float)
    n = len(steps)
    loss = 1.4 + 2.8 * np.exp(-s / (0.25 * total + 1)) + rng.normal(0, 0.04, n)
    warm = max(1, total // 20)
    lr = np.where(
        s < warm, 3e-4 * s / warm, 3e-5 + 0.5 * (3e-4 - 3e-5) * (1 + np.cos(np.pi * s / total))
    )
    grad = np.abs(0.6 + 0.5 * np.exp(-s / (0.1 * total + 1)) + rng.normal(0, 0.12, n))
    spikes = rng.random(n) < 0.01
    grad[spikes] *= 4.0
    coef = np.minimum(1.0, grad_clip / np.maximum(grad, 1e-12))
    ms = 85 + rng.normal(0, 4, n)
    vl = np.full(n, np.nan)
    if val_loss:
        on_eval = (steps % eval_interval == 0) | (steps == total)
        vl[on_eval] = loss[on_eval] + 0.08 + rng.normal(0, 0.01, on_eval.sum())
    start_ms = float(steps[0] - 1) * 85 if n else 0.0
    return {
        "step": steps,
        "loss": loss,
        "val_loss": vl,
        "lr": lr,
        "grad_norm": grad,
        "clip_coef": coef,
        "clip_pct": 1.0 - coef,
        "tokens_per_sec": batch * 128 / (ms / 1000.0),
        "ms_per_iter": ms,
        "elapsed_ms": start_ms + np.cumsum(ms),
        "batch_size": np.full(n, batch),
        "mfu": np.full(n, 0.31),
        "event": _events(steps, grad, total),
        "timestamp": [T0 + timedelta(milliseconds=float(e)) for e in start_ms + np.cumsum(ms)],
    }


def symbio_metrics(
    cols: dict[str, Any],
    *,
    seed: int = 0,
    metrics_interval: int = 50,
    eval_interval: int = 50,
    sensitivity: float = 4.0,
    mi: bool = True,
    batch: int = 32,
    activation: str = "swiglu",
    period: int = 400,
) -> dict[str, Any]:
    """Add the symbio columns to ``cols`` (from :func:`base_metrics`).

    Each CUSUM signal crosses ``sensitivity`` for 6 steps once per ``period`` steps.
    """
    steps = cols["step"]
    n = len(steps)
    rng = np.random.default_rng(seed + 7 + (int(steps[0]) if n else 0))
    s = steps.astype(float)
    # CUSUM accumulators: calm random walks with an excursion past the threshold.
    cusum = {}
    for i, name in enumerate(("grad", "clip", "tps", "val")):
        walk = np.clip(
            np.sin(s / (37.0 + 11 * i) + i) * sensitivity * 0.6 + rng.normal(0, 0.2, n), 0, None
        )
        phase = (steps + period // 10 * i) % period
        burst = (phase > period * 3 // 4) & (phase <= period * 3 // 4 + 6)
        walk[burst] += sensitivity * 1.3
        cusum[name] = walk
    on_eval = steps % eval_interval == 0
    cusum["val"] = np.where(on_eval, cusum["val"], np.nan)
    alerts = np.zeros(n, dtype=np.int64)
    for name, bit in CUSUM_BITS.items():
        alerts |= np.where(np.nan_to_num(cusum[name]) > sensitivity, bit, 0)
    reason = [
        None
        if a == 0
        else ", ".join(f"{k} CUSUM above {sensitivity:g}" for k, b in CUSUM_BITS.items() if a & b)
        for a in alerts.tolist()
    ]
    # Adaptive batch: shrink on grad/tps alerts, grow on clip alerts, restore when calm.
    sizes = np.empty(n, dtype=np.int64)
    change: list[str | None] = [None] * n
    size, calm = batch, 0
    for i, a in enumerate(alerts.tolist()):
        new = size
        if a & (CUSUM_BITS["grad"] | CUSUM_BITS["tps"]):
            new, why = max(8, size - 4), "cusum_grad" if a & CUSUM_BITS["grad"] else "cusum_tps"
            calm = 0
        elif a & CUSUM_BITS["clip"]:
            new, why = min(64, size + 4), "cusum_clip"
            calm = 0
        else:
            calm += 1
            why = "restore"
            if calm >= 60 and size != batch:
                new = size + 4 if size < batch else size - 4
                calm = 0
        if new != size:
            change[i] = why
        size = new
        sizes[i] = size
    sparse = steps % metrics_interval == 0
    frac = s / max(1.0, float(steps[-1]) if n else 1.0)

    def sparse_col(values: np.ndarray) -> np.ndarray:
        return np.where(sparse, values, np.nan)

    went = sparse_col(5.8 - 0.6 * frac + rng.normal(0, 0.03, n))
    cols.update(
        {
            "cusum_grad": cusum["grad"],
            "cusum_clip": cusum["clip"],
            "cusum_tps": cusum["tps"],
            "cusum_val": cusum["val"],
            "cusum_alerts": alerts,
            "cusum_alert_reason": reason,
            "weight_entropy": went,
            "effective_rank": sparse_col(60 + 30 * frac + rng.normal(0, 1, n)),
            "free_energy": np.where(sparse, cols["loss"] + 0.01 * np.nan_to_num(went), np.nan),
            "population_entropy": sparse_col(2.1 - 0.4 * frac + rng.normal(0, 0.02, n)),
            "complexity_score": sparse_col(0.42 - 0.05 * frac),
            "fitness_score": np.where(on_eval, -np.nan_to_num(cols["val_loss"], nan=3.0), np.nan),
            "activation_distribution": [
                json.dumps({activation: 4}) if m else None for m in sparse.tolist()
            ],
            "adaptive_batch_size": sizes,
            "batch_change_reason": change,
        }
    )
    if mi:
        cols["mi_input_repr"] = sparse_col(2.0 + 3.0 * np.sqrt(frac) - 1.2 * frac**2)
        cols["mi_repr_output"] = sparse_col(0.4 + 1.6 * frac)
        cols["mi_compression"] = cols["mi_repr_output"] / cols["mi_input_repr"]
    return cols


def _now(cols: dict[str, Any]) -> dict[str, Any]:
    """Stamp rows with the current time, as a run training right now would."""
    cols["timestamp"] = [datetime.now(UTC)] * len(cols["step"])
    return cols


def _events(steps: np.ndarray, grad: np.ndarray, total: int) -> list[str | None]:
    """Engine events: the biggest gradient spikes are skipped steps; 4 checkpoints a run."""
    every = max(1, total // 4)
    out: list[str | None] = []
    for step, g in zip(steps.tolist(), grad.tolist(), strict=True):
        tags = (["spike_skip"] if g > 3.5 else []) + (["checkpoint"] if step % every == 0 else [])
        out.append(",".join(tags) or None)
    return out


# -- run builders ----------------------------------------------------------------


def plain_run(
    lake: Lake | str,
    run_id: str = "plain-0001",
    *,
    steps: int = 300,
    eval_interval: int = 50,
    val_loss: bool = True,
) -> str:
    """A completed non-symbio run (GELU) with clip telemetry."""
    cols = base_metrics(
        np.arange(1, steps + 1), total=steps, seed=1, eval_interval=eval_interval, val_loss=val_loss
    )
    write_table(lake, "metrics", run_id, cols)
    best = float(np.nanmin(cols["val_loss"])) if val_loss else None
    write_run(
        lake,
        run_id,
        status="completed",
        domain="shakespeare",
        model_config=_model_config("gelu"),
        train_config=_train_config(steps, eval_interval=eval_interval),
        started_at=T0,
        finished_at=T0 + timedelta(milliseconds=float(cols["elapsed_ms"][-1])),
        total_iters=steps,
        latest_step=steps,
        last_loss=float(cols["loss"][-1]),
        best_val_loss=best,
        param_count=824_000,
        host="localhost",
        device="cpu",
        symbio=0,
        ffn_activation="gelu",
    )
    return run_id


def symbio_run(
    lake: Lake | str,
    run_id: str = "symbio-0001",
    *,
    steps: int = 600,
    metrics_interval: int = 50,
    sensitivity: float = 3.5,
    mi: bool = True,
    status: str = "completed",
    total: int | None = None,
    now: bool = False,
) -> str:
    """A symbio run with every symbio metric; ``cusumSensitivity`` = ``sensitivity``.

    ``now``: rows are stamped with the current time (a run that is training now).
    """
    total = total or steps
    cols = base_metrics(np.arange(1, steps + 1), total=total, seed=2)
    if now:
        _now(cols)
    symbio_metrics(cols, seed=2, metrics_interval=metrics_interval, sensitivity=sensitivity, mi=mi)
    write_table(lake, "metrics", run_id, cols)
    cfg = symbio_config(
        cusumSensitivity=sensitivity, metricsInterval=metrics_interval, trackMIProfiles=mi
    )
    write_run(
        lake,
        run_id,
        status=status,
        domain="shakespeare",
        model_config=_model_config("swiglu"),
        train_config=_train_config(total, activation="swiglu", lr=5e-5, grad_clip=5.0),
        started_at=T0,
        finished_at=None if status == "running" else T0 + timedelta(hours=1),
        total_iters=total,
        latest_step=steps,
        last_loss=float(cols["loss"][-1]),
        best_val_loss=_best(cols["val_loss"]),
        param_count=830_000,
        device="cpu",
        symbio=1,
        symbio_config=json.dumps(cfg),
        ffn_activation="swiglu",
        symbio_mode="none",
    )
    return run_id


def search_run(
    lake: Lake | str,
    run_id: str = "search-0001",
    *,
    population: int = 4,
    generations: int = 2,
    steps_per_candidate: int = 60,
) -> str:
    """An FFN-activation search: candidates' rows offset in ``step``, a winner, candidates table."""
    lake = _lake(lake)
    rng = np.random.default_rng(3)
    quality = {"gelu": 0.05, "relu": 0.15, "silu": 0.02, "swiglu": -0.06}
    cand_rows: list[dict[str, Any]] = []
    offset = 0
    pop = [ACTIVATIONS[i % len(ACTIVATIONS)] for i in range(population)]
    for gen in range(generations):
        dist = {a: pop.count(a) for a in sorted(set(pop))}
        for idx, act in enumerate(pop):
            cid = f"g{gen}-c{idx}"
            steps = np.arange(offset + 1, offset + steps_per_candidate + 1)
            cols = base_metrics(
                steps, total=steps_per_candidate, seed=10 * gen + idx, eval_interval=20
            )
            cols["loss"] = cols["loss"] + quality[act]
            cols["val_loss"] = cols["val_loss"] + quality[act]
            symbio_metrics(
                cols, seed=gen, metrics_interval=20, eval_interval=20, mi=False, activation=act
            )
            cols["activation_distribution"] = [
                json.dumps(dist) if v is not None else None for v in cols["activation_distribution"]
            ]
            cols["population_entropy"] = np.where(
                np.isnan(cols["population_entropy"]), np.nan, 1.2 - 0.2 * gen
            )
            cols["symbio_candidate_id"] = [cid] * len(steps)
            cols["symbio_candidate_activation"] = [act] * len(steps)
            cols["symbio_generation"] = np.full(len(steps), gen)
            cols["architecture_diversity"] = np.full(len(steps), len(set(pop)) / len(pop))
            write_table(lake, "metrics", run_id, cols)
            best = float(np.nanmin(cols["val_loss"]))
            cand_rows.append(
                {
                    "candidate_id": cid,
                    "generation": gen,
                    "activation": act,
                    "parent_ids": json.dumps([] if gen == 0 else [f"g{gen - 1}-c{idx}"]),
                    "mutation_ops": json.dumps([]),
                    "status": "ok",
                    "steps": steps_per_candidate,
                    "step_offset": offset,
                    "best_val_loss": best,
                    "final_loss": float(cols["loss"][-1]),
                    "fitness": -best,
                    "instability": float(rng.uniform(0, 0.3)),
                    "tokens_per_sec": float(np.mean(cols["tokens_per_sec"])),
                    "param_count": 830_000 if act == "swiglu" else 824_000,
                    "is_winner": False,
                }
            )
            offset += steps_per_candidate
        gen_rows = [r for r in cand_rows if r["generation"] == gen]
        for rank, r in enumerate(sorted(gen_rows, key=lambda r: r["best_val_loss"]), 1):
            r["rank"] = rank
        survivors = [r["activation"] for r in sorted(gen_rows, key=lambda r: r["best_val_loss"])]
        pop = (survivors[: max(1, population // 2)] * population)[:population]
    winner = min(cand_rows, key=lambda r: r["best_val_loss"])
    winner["is_winner"] = True
    now = datetime.now(UTC)
    write_table(
        lake,
        "candidates",
        run_id,
        {k: [r.get(k) for r in cand_rows] for k in cand_rows[0]}
        | {"updated_at": [now] * len(cand_rows)},
    )
    write_run(
        lake,
        run_id,
        status="completed",
        domain="shakespeare",
        model_config=_model_config(winner["activation"]),
        train_config=_train_config(
            offset, activation="swiglu", lr=5e-5, grad_clip=5.0, eval_interval=20
        ),
        started_at=T0 - timedelta(days=1),
        finished_at=T0 - timedelta(hours=20),
        total_iters=offset,
        latest_step=offset,
        best_val_loss=winner["best_val_loss"],
        param_count=830_000,
        symbio=1,
        symbio_config=json.dumps(
            symbio_config(
                searchMode="ffn-activation-search",
                populationSize=population,
                generations=generations,
                stepsPerCandidate=steps_per_candidate,
                metricsInterval=20,
            )
        ),
        ffn_activation=winner["activation"],
        symbio_winner=json.dumps(
            {"candidate_id": winner["candidate_id"], "activation": winner["activation"]}
        ),
        symbio_mode="ffn-activation-search",
    )
    return run_id


def in_progress_run(
    lake: Lake | str,
    run_id: str = "live-0001",
    *,
    steps: int = 60,
    total: int = 5000,
    symbio: bool = True,
) -> str:
    """A ``running`` run with ``steps`` of ``total`` steps landed so far."""
    if symbio:
        return symbio_run(
            lake, run_id, steps=steps, total=total, status="running", metrics_interval=10, now=True
        )
    cols = _now(base_metrics(np.arange(1, steps + 1), total=total, seed=4))
    write_table(lake, "metrics", run_id, cols)
    write_run(
        lake,
        run_id,
        status="running",
        started_at=T0,
        total_iters=total,
        latest_step=steps,
        symbio=0,
    )
    return run_id


def append_steps(
    lake: Lake | str, run_id: str, start: int, count: int, *, total: int = 5000, symbio: bool = True
) -> int:
    """Land steps ``start .. start+count-1`` of a growing run; returns the last step."""
    steps = np.arange(start, start + count)
    cols = _now(base_metrics(steps, total=total, seed=4))
    if symbio:
        symbio_metrics(cols, seed=4, metrics_interval=10, sensitivity=3.5, mi=True)
    write_table(lake, "metrics", run_id, cols)
    return int(steps[-1])


def large_run(lake: Lake | str, run_id: str = "large-0001", *, steps: int = 100_000) -> str:
    """A 100,000-step symbio run (written in 10 objects, as a sink would)."""
    chunk = math.ceil(steps / 10)
    for start in range(1, steps + 1, chunk):
        stop = min(steps, start + chunk - 1)
        cols = base_metrics(np.arange(start, stop + 1), total=steps, seed=5, eval_interval=500)
        symbio_metrics(
            cols,
            seed=5,
            metrics_interval=50,
            eval_interval=500,
            sensitivity=4.0,
            mi=True,
            period=5000,
        )
        write_table(lake, "metrics", run_id, cols)
    write_run(
        lake,
        run_id,
        status="completed",
        domain="shakespeare",
        model_config=_model_config("swiglu"),
        train_config=_train_config(steps, activation="swiglu", eval_interval=500),
        started_at=T0 - timedelta(days=3),
        finished_at=T0 - timedelta(days=2),
        total_iters=steps,
        latest_step=steps,
        param_count=830_000,
        symbio=1,
        symbio_config=json.dumps(symbio_config(trackMIProfiles=True)),
        ffn_activation="swiglu",
        symbio_mode="none",
    )
    return run_id


def demo_lake(lake: Lake | str, *, large: bool = False) -> dict[str, str]:
    """Every kind of run in one lake: name -> run id."""
    runs = {
        "plain": plain_run(lake),
        "no_val": plain_run(lake, "plain-noval", steps=120, val_loss=False),
        "symbio": symbio_run(lake),
        "search": search_run(lake),
        "live": in_progress_run(lake),
    }
    if large:
        runs["large"] = large_run(lake)
    return runs


if __name__ == "__main__":  # pragma: no cover - manual demo helper
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    target = sys.argv[1] if len(sys.argv) > 1 else "demo-lake"
    print(demo_lake(target, large="--large" in sys.argv))
