"""What the pages read, through ``storage.reader`` only.

A run page needs three kinds of columns, read differently so that a
100,000-step run stays cheap and nothing important is lost:

- *dense* per-step series (loss, lr, grad norm, ...): downsampled by the reader
  (``max_points``), which keeps spikes;
- *sparse* series (``val_loss`` on eval steps, symbio metrics every
  ``metricsInterval``): read at full resolution and reduced to their non-null
  rows, a small fraction of the run;
- *events* (CUSUM alerts, adaptive-batch transitions): read at full resolution
  and reduced to the steps where something happened, so no alert is dropped.

The three are outer-joined on ``step`` into one series frame that the figure
builders in :mod:`dash_app.figures` consume.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from storage import reader
from storage.lake import Lake

#: Points per dense series after server-side downsampling.
MAX_POINTS = 2000
#: Most alert onsets / batch transitions drawn per run (thinned beyond).
MAX_EVENTS = 1000

DENSE_COLUMNS = (
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_sec",
    "ms_per_iter",
    "clip_coef",
    "clip_pct",
    "cusum_grad",
    "cusum_clip",
    "cusum_tps",
)
SPARSE_COLUMNS = (
    "val_loss",
    "cusum_val",
    "weight_entropy",
    "effective_rank",
    "free_energy",
    "population_entropy",
    "complexity_score",
    "fitness_score",
    "mi_input_repr",
    "mi_repr_output",
    "mi_compression",
    "activation_distribution",
    "symbio_generation",
    "architecture_diversity",
)
EVENT_COLUMNS = (
    "cusum_alerts",
    "cusum_alert_reason",
    "adaptive_batch_size",
    "batch_change_reason",
    "event",
)
#: Full-resolution columns besides sparse and events: for progress and ETA.
_PROGRESS_COLUMNS = ("elapsed_ms", "timestamp")


@dataclass
class RunView:
    """Everything a run page shows: the run row, its series and summaries."""

    run: dict[str, Any]
    series: pl.DataFrame
    last_step: int | None = None
    elapsed_ms: float | None = None
    #: When the newest row was produced (a running run that stops landing rows is stale).
    last_timestamp: datetime | None = None
    alert_count: int = 0
    last_alert_step: int | None = None
    #: ``cusum_alerts`` bitmask of the last step (live updates mark onsets after it).
    last_alerts: int = 0
    candidates: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def symbio(self) -> bool:
        return is_symbio(self.run)

    @property
    def running(self) -> bool:
        return self.run.get("status") == "running"

    def silent_for(self, now: datetime | None = None) -> float | None:
        """Seconds since a running run last landed a row (``None`` if not running)."""
        if not self.running:
            return None
        since = self.last_timestamp or self.run.get("started_at")
        if since is None:
            return None
        return ((now or datetime.now(UTC)) - since).total_seconds()


def is_symbio(run: dict[str, Any]) -> bool:
    return bool(run.get("symbio"))


def parse_json(text: str | None) -> dict[str, Any]:
    """A JSON object from a TEXT column; ``{}`` for null or malformed values."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def config_value(cfg: dict[str, Any], camel: str) -> Any:
    """A SymbioConfig field by its camelCase name, accepting snake_case too."""
    if camel in cfg:
        return cfg[camel]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return cfg.get(snake, cfg.get(snake.replace("_m_i_", "_mi_")))


def cusum_threshold(run: dict[str, Any]) -> float | None:
    """The run's ``cusumSensitivity`` from its ``symbio_config`` JSON, if recorded."""
    value = config_value(parse_json(run.get("symbio_config")), "cusumSensitivity")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def grad_clip(run: dict[str, Any]) -> float | None:
    value = parse_json(run.get("train_config")).get("grad_clip")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _columns(frame: pl.DataFrame, names: tuple[str, ...]) -> list[str]:
    return [c for c in names if c in frame.columns]


def alert_onsets(df: pl.DataFrame, previous: int = 0) -> pl.DataFrame:
    """Replace ``cusum_alerts`` by the bits that *turned on* at each row.

    A monitor stays above its threshold for a while; the chart marks the onset
    of each alert, not every step of it. ``df`` holds consecutive steps;
    ``previous`` is the bitmask of the step before its first row.
    """
    if "cusum_alerts" not in df.columns:
        return df
    bits = pl.col("cusum_alerts").fill_null(0)
    return df.with_columns(cusum_alerts=bits & ~bits.shift(1).fill_null(previous))


def _events(full: pl.DataFrame) -> pl.DataFrame:
    """Alert onsets, adaptive-batch transitions (and the batch's last step), engine events."""
    cols = ["step", *_columns(full, EVENT_COLUMNS)]
    if len(cols) == 1 or full.is_empty():
        return full.select(cols).clear()
    full = alert_onsets(full)
    keep = pl.lit(False)
    if "cusum_alerts" in full.columns:
        onsets = full.filter(pl.col("cusum_alerts") != 0)["step"]
        if onsets.len() > MAX_EVENTS:
            onsets = onsets.gather_every(onsets.len() // MAX_EVENTS + 1)
        keep = keep | pl.col("step").is_in(onsets.implode())
    if "batch_change_reason" in full.columns:
        keep = keep | pl.col("batch_change_reason").is_not_null()
    if "event" in full.columns:
        events = full.filter(pl.col("event").is_not_null())["step"]
        if events.len() > MAX_EVENTS:
            events = events.gather_every(events.len() // MAX_EVENTS + 1)
        keep = keep | pl.col("step").is_in(events.implode())
    if "adaptive_batch_size" in full.columns:
        sizes = full.select("step", "adaptive_batch_size").drop_nulls()
        size = pl.col("adaptive_batch_size")
        edges = sizes.filter(
            (size != size.shift(1)).fill_null(True) | (pl.col("step") == pl.col("step").max())
        )
        if edges.height > MAX_EVENTS:
            edges = edges.gather_every(edges.height // MAX_EVENTS + 1)
        keep = keep | pl.col("step").is_in(edges["step"].implode())
    return full.filter(keep).select(cols)


def _sparse(full: pl.DataFrame) -> pl.DataFrame:
    cols = _columns(full, SPARSE_COLUMNS)
    if not cols:
        return full.select("step").clear()
    return full.filter(pl.any_horizontal(pl.col(cols).is_not_null())).select("step", *cols)


def series_frame(
    lake: Lake, run_id: str, *, max_points: int = MAX_POINTS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(series, full)``: the joined series frame and the full-resolution rows.

    One read of the run (an object store serves each file once), then the
    reader's spike-keeping ``downsample`` for the dense columns.
    """
    columns = dict.fromkeys([*DENSE_COLUMNS, *SPARSE_COLUMNS, *EVENT_COLUMNS, *_PROGRESS_COLUMNS])
    full = reader.run_metrics(lake, run_id, list(columns))
    dense = full.select(DENSE_COLUMNS)
    if dense.height > max_points:
        dense = reader.downsample(dense, max_points)
    series = dense
    for part in (_sparse(full), _events(full)):
        if part.height:
            series = series.join(part, on="step", how="full", coalesce=True)
    return series.sort("step"), full


def load_run_view(lake: Lake, run_id: str, *, max_points: int = MAX_POINTS) -> RunView | None:
    """The run page's data; ``None`` if the lake has no such run."""
    run = reader.get_run(lake, run_id)
    if run is None:
        return None
    series, full = series_frame(lake, run_id, max_points=max_points)
    view = RunView(run=run, series=series)
    if full.height:
        last = full.row(full["step"].arg_max(), named=True)
        view.last_step = int(last["step"])
        view.elapsed_ms = last.get("elapsed_ms")
        view.last_timestamp = last.get("timestamp")
    if "cusum_alerts" in full.columns:
        alerts = full.filter(pl.col("cusum_alerts").fill_null(0) != 0)
        view.alert_count = alerts.height
        view.last_alert_step = alerts["step"].max() if alerts.height else None
        view.last_alerts = int(full["cusum_alerts"].fill_null(0)[-1]) if full.height else 0
    if is_symbio(run):
        view.candidates = reader.search_candidates(lake, run_id)
    return view


def new_rows(
    lake: Lake, run_id: str, since_step: int | None, columns: tuple[str, ...]
) -> pl.DataFrame:
    """Rows after ``since_step`` at full resolution (live updates)."""
    return reader.run_metrics(lake, run_id, list(columns), since_step=since_step)


def latest_steps(lake: Lake, runs: pl.DataFrame) -> dict[str, int]:
    """Newest landed step of each running run (its runs row may be stale)."""
    out: dict[str, int] = {}
    if runs.is_empty() or "status" not in runs.columns:
        return out
    for row in runs.filter(pl.col("status") == "running").iter_rows(named=True):
        since = row.get("latest_step") or None
        steps = reader.run_metrics(lake, row["run_id"], ["step"], since_step=since)
        best = steps["step"].max() if steps.height else None
        out[row["run_id"]] = max(int(best or 0), int(row.get("latest_step") or 0))
    return out


# -- progress ---------------------------------------------------------------------


def eta_seconds(step: int | None, total: int | None, elapsed_ms: float | None) -> float | None:
    """Time left at the run's mean pace; ``None`` when it cannot be told."""
    if not step or not total or elapsed_ms is None or step >= total:
        return None
    return (total - step) * (elapsed_ms / 1000.0) / step


def progress(step: int | None, total: int | None) -> float | None:
    if not step or not total:
        return None
    return min(1.0, step / total)


# -- compare ----------------------------------------------------------------------


def loss_frame(lake: Lake, run_id: str, *, max_points: int = MAX_POINTS) -> pl.DataFrame:
    """Loss (downsampled) and val loss (every eval step) of one run."""
    full = reader.run_metrics(lake, run_id, ["step", "loss", "val_loss"])
    dense = full.select("step", "loss")
    if dense.height > max_points:
        dense = reader.downsample(dense, max_points)
    val = full.select("step", "val_loss").filter(pl.col("val_loss").is_not_null())
    return dense.join(val, on="step", how="full", coalesce=True).sort("step")


def flat_config(run: dict[str, Any]) -> dict[str, Any]:
    """A run's train, model and symbio configs as one flat ``section.key -> value`` map."""
    out: dict[str, Any] = {}
    for section, col in (
        ("train", "train_config"),
        ("model", "model_config"),
        ("symbio", "symbio_config"),
    ):
        for key, value in parse_json(run.get(col)).items():
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
    for col in ("domain", "ffn_activation", "param_count", "device"):
        if run.get(col) is not None:
            out[f"run.{col}"] = run[col]
    return out


def config_diff(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Rows ``{"key", <run_id>: value, ...}`` for keys whose values differ; and the count of equal keys."""
    flats = [flat_config(r) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    rows, same = [], 0
    for key in keys:
        values = [f.get(key) for f in flats]
        if all(v == values[0] for v in values):
            same += 1
            continue
        rows.append(
            {"key": key, **{r["run_id"]: _cell(v) for r, v in zip(runs, values, strict=True)}}
        )
    return rows, same


def _cell(value: Any) -> str:
    return "—" if value is None else str(value)
