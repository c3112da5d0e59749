"""The one schema of the metric lake: the `runs`, `metrics` and `candidates` tables.

Column names are the PRD's DB column names (PRD §8.12, §8.13) plus the base
columns. Every producer (trainer rows, symbio hook, search orchestrator), the
Great Expectations suite and the dashboard take their names from here.

Schema *versions* play the role of the PRD's DB migrations: each column records
the version that introduced it. Files carry the version they were written with
in their Parquet metadata; readers read every file through the newest schema, so
columns an old file lacks come back as nulls. Versions are append-only: add a
column with ``since=<new version>`` and bump ``SCHEMA_VERSION``; never rename or
retype a column.

This module imports only pyarrow so that the engine's GPU machines can load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 2
VERSION_METADATA_KEY = b"alpha.schema_version"
TABLE_METADATA_KEY = b"alpha.table"

#: Hive partition key of every table: files live under ``<table>/run_id=<id>/``
#: and do not repeat the column inside the file.
PARTITION_KEY = "run_id"

#: Values of ``runs.status``.
RUN_STATUSES = ("running", "completed", "failed", "cancelled")

#: Bits of ``metrics.cusum_alerts`` (PRD §8.2).
CUSUM_GRAD, CUSUM_CLIP, CUSUM_TPS, CUSUM_VAL = 0x01, 0x02, 0x04, 0x08
CUSUM_BITS = {"grad": CUSUM_GRAD, "clip": CUSUM_CLIP, "tps": CUSUM_TPS, "val": CUSUM_VAL}

#: ``metrics.event`` values of a step whose loss was not finite: the engine skipped
#: the optimizer step and reports ``loss`` as null. The gate requires a non-null
#: ``loss`` on every other row.
NAN_SKIP_EVENTS = ("nan_skip", "nan_skip,checkpoint")

#: Values of ``metrics.batch_change_reason`` (PRD §8.10).
BATCH_CHANGE_REASONS = ("cusum_grad", "cusum_clip", "cusum_tps", "restore")

REAL, INT, TEXT, BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    since: int
    doc: str
    nullable: bool = True
    symbio: bool = False  # only symbio runs fill it
    #: Valid range of a numeric column (inclusive; None: unbounded). The gate
    #: quarantines a row with a value outside it. Only bounds that hold by
    #: construction are declared (a loss, a norm, a rate, a count, a fraction).
    ge: float | None = None
    le: float | None = None


def _c(name: str, type_: pa.DataType, since: int, doc: str, **kw: Any) -> Column:
    return Column(name, type_, since, doc, **kw)


METRICS_COLUMNS: tuple[Column, ...] = (
    # -- v1: the base table --------------------------------------------------
    _c("run_id", TEXT, 1, "run identifier (also the Hive partition)", nullable=False),
    _c(
        "step",
        INT,
        1,
        "global step; unique per run (search candidates are offset)",
        nullable=False,
        ge=0,
    ),
    _c("loss", REAL, 1, "training loss; null only on a nan_skip step (see NAN_SKIP_EVENTS)", ge=0),
    _c("val_loss", REAL, 1, "validation loss, on eval steps only", ge=0),
    _c("lr", REAL, 1, "learning rate used by the step", ge=0),
    _c("grad_norm", REAL, 1, "global gradient L2 norm before clipping", ge=0),
    _c("tokens_per_sec", REAL, 1, "training throughput of the step", ge=0),
    _c("ms_per_iter", REAL, 1, "wall time of the step in milliseconds", ge=0),
    _c("elapsed_ms", REAL, 1, "wall time since training started", ge=0),
    _c("batch_size", INT, 1, "micro-batch size the loader yielded", ge=1),
    _c("timestamp", TS, 1, "when the row was produced"),
    # -- v2: PRD migration v6 (clip telemetry, symbio) + engine extras ----------
    _c("clip_coef", REAL, 2, "min(1, grad_clip / grad_norm); every step of every run", ge=0, le=1),
    _c(
        "clip_pct",
        REAL,
        2,
        "fraction of the gradient norm removed by clipping, 1 - clip_coef",
        ge=0,
        le=1,
    ),
    _c("mfu", REAL, 2, "model FLOPs utilisation estimate", ge=0),
    _c("event", TEXT, 2, "engine event of the step: spike_skip, nan_skip, checkpoint, ..."),
    _c("cusum_grad", REAL, 2, "CUSUM accumulator on grad_norm", symbio=True, ge=0),
    _c("cusum_clip", REAL, 2, "CUSUM accumulator on clip_pct", symbio=True, ge=0),
    _c("cusum_tps", REAL, 2, "CUSUM accumulator on falling tokens_per_sec", symbio=True, ge=0),
    _c("cusum_val", REAL, 2, "CUSUM accumulator on val_loss (eval steps)", symbio=True, ge=0),
    _c(
        "cusum_alerts",
        INT,
        2,
        "alert bitmask 0x01 grad 0x02 clip 0x04 tps 0x08 val",
        symbio=True,
        ge=0,
        le=15,
    ),
    _c("cusum_alert_reason", TEXT, 2, "human-readable alert reason", symbio=True),
    _c("weight_entropy", REAL, 2, "Shannon entropy of |w| over 100 bins, bits", symbio=True, ge=0),
    _c("effective_rank", REAL, 2, "mean effective rank of 2-D weights", symbio=True, ge=0),
    _c("free_energy", REAL, 2, "loss + beta * weight_entropy", symbio=True),
    _c(
        "population_entropy",
        REAL,
        2,
        "entropy of softmax over recent losses/fitness, nats",
        symbio=True,
        ge=0,
    ),
    _c("activation_distribution", TEXT, 2, "JSON map activation -> count", symbio=True),
    _c("mi_input_repr", REAL, 2, "I(X;T) bits", symbio=True),
    _c("mi_repr_output", REAL, 2, "I(T;Y) bits", symbio=True),
    _c("mi_compression", REAL, 2, "I(T;Y) / I(X;T)", symbio=True),
    _c("fitness_score", REAL, 2, "multi-objective fitness, eval steps", symbio=True),
    _c("complexity_score", REAL, 2, "complexity term of fitness", symbio=True, ge=0),
    _c("adaptive_batch_size", INT, 2, "batch size chosen by adaptive batching", symbio=True, ge=1),
    _c(
        "batch_change_reason", TEXT, 2, "cusum_grad | cusum_clip | cusum_tps | restore", symbio=True
    ),
    _c("symbio_candidate_id", TEXT, 2, "search candidate of this row", symbio=True),
    _c("symbio_candidate_activation", TEXT, 2, "activation of that candidate", symbio=True),
    _c("symbio_generation", INT, 2, "search generation", symbio=True, ge=0),
    _c(
        "architecture_diversity",
        REAL,
        2,
        "fraction of unique architectures",
        symbio=True,
        ge=0,
        le=1,
    ),
)

RUNS_COLUMNS: tuple[Column, ...] = (
    _c("run_id", TEXT, 1, "run identifier (also the Hive partition)", nullable=False),
    _c("status", TEXT, 1, "running | completed | failed | cancelled", nullable=False),
    _c("domain", TEXT, 1, "domain preset"),
    _c("model_config", TEXT, 1, "JSON of the model config"),
    _c("train_config", TEXT, 1, "JSON of the resolved train config"),
    _c("started_at", TS, 1, "when training started"),
    _c(
        "updated_at", TS, 1, "when this version of the row was written; newest wins", nullable=False
    ),
    _c("finished_at", TS, 1, "when training ended"),
    _c("total_iters", INT, 1, "planned steps"),
    _c("latest_step", INT, 1, "last step reached"),
    _c("last_loss", REAL, 1, "training loss at latest_step"),
    _c("best_val_loss", REAL, 1, "lowest validation loss"),
    _c("param_count", INT, 1, "number of model parameters"),
    _c("host", TEXT, 1, "host name"),
    _c("device", TEXT, 1, "cpu | cuda"),
    _c("gpu_name", TEXT, 1, "accelerator name"),
    _c("run_dir", TEXT, 1, "local run directory"),
    _c("error", TEXT, 1, "one-line failure reason"),
    _c("symbio", INT, 2, "1 for a symbio run, else 0"),
    _c("symbio_config", TEXT, 2, "JSON of the resolved SymbioConfig", symbio=True),
    _c("ffn_activation", TEXT, 2, "FFN activation of the run"),
    _c("symbio_winner", TEXT, 2, "JSON: winning search candidate", symbio=True),
    _c("symbio_mode", TEXT, 2, "search mode, e.g. ffn-activation-search", symbio=True),
    _c("flow_run_id", TEXT, 2, "Prefect flow run that produced the run"),
)

CANDIDATES_COLUMNS: tuple[Column, ...] = (
    _c("run_id", TEXT, 2, "search run", nullable=False),
    _c("candidate_id", TEXT, 2, "candidate identifier", nullable=False),
    _c("generation", INT, 2, "generation number", nullable=False),
    _c("activation", TEXT, 2, "FFN activation", nullable=False),
    _c("parent_ids", TEXT, 2, "JSON list of parent candidate ids"),
    _c("mutation_ops", TEXT, 2, "JSON list of mutation operations"),
    _c("status", TEXT, 2, "ok | failed"),
    _c("failure_reason", TEXT, 2, "why the candidate failed"),
    _c("steps", INT, 2, "steps trained"),
    _c("step_offset", INT, 2, "offset of the candidate's rows in metrics.step"),
    _c("best_val_loss", REAL, 2, "lowest validation loss"),
    _c("final_loss", REAL, 2, "training loss at the end"),
    _c("fitness", REAL, 2, "fitness score (PRD §14.3)"),
    _c("instability", REAL, 2, "instability score"),
    _c("tokens_per_sec", REAL, 2, "mean throughput"),
    _c("param_count", INT, 2, "number of parameters"),
    _c("rank", INT, 2, "rank within its generation (1 = best)"),
    _c("is_winner", BOOL, 2, "the search's winner"),
    _c(
        "updated_at", TS, 2, "when this version of the row was written; newest wins", nullable=False
    ),
)

TABLES: dict[str, tuple[Column, ...]] = {
    "metrics": METRICS_COLUMNS,
    "runs": RUNS_COLUMNS,
    "candidates": CANDIDATES_COLUMNS,
}


def columns(table: str, version: int = SCHEMA_VERSION) -> tuple[Column, ...]:
    """Columns of ``table`` as of schema ``version``."""
    if table not in TABLES:
        raise KeyError(f"unknown lake table {table!r}")
    return tuple(c for c in TABLES[table] if c.since <= version)


def column_names(table: str, version: int = SCHEMA_VERSION) -> tuple[str, ...]:
    return tuple(c.name for c in columns(table, version))


def arrow_schema(
    table: str, version: int = SCHEMA_VERSION, *, with_partition: bool = True
) -> pa.Schema:
    """Arrow schema of ``table`` at ``version``, tagged with its version.

    ``with_partition=False`` drops ``run_id``: files on disk do not repeat the
    Hive partition column.
    """
    fields = [
        pa.field(c.name, c.type, nullable=c.nullable)
        for c in columns(table, version)
        if with_partition or c.name != PARTITION_KEY
    ]
    meta = {VERSION_METADATA_KEY: str(version).encode(), TABLE_METADATA_KEY: table.encode()}
    return pa.schema(fields, metadata=meta)


#: Names of metric columns only symbio runs fill; a plain run's rows carry none of them.
SYMBIO_METRIC_COLUMNS: frozenset[str] = frozenset(c.name for c in METRICS_COLUMNS if c.symbio)
#: Metric columns holding REAL values (checked finite-or-null by the gate).
REAL_METRIC_COLUMNS: tuple[str, ...] = tuple(c.name for c in METRICS_COLUMNS if c.type == REAL)


#: Columns a quarantined row carries besides its table's columns (all nullable there):
#: why it failed, when, and the row exactly as produced (JSON), so nothing is lost.
QUARANTINE_COLUMNS: tuple[Column, ...] = (
    _c("quarantine_reason", TEXT, 2, "why the row failed the gate", nullable=False),
    _c("quarantined_at", TS, 2, "when the row was quarantined"),
    _c("raw_row", TEXT, 2, "the row as produced, JSON (non-JSON values as strings)"),
)


def quarantine_schema(table: str, version: int = SCHEMA_VERSION) -> pa.Schema:
    """Schema of ``<lake>/quarantine/<table>/``: the table's columns, all nullable
    (a bad row may lack a required value), plus ``QUARANTINE_COLUMNS``."""
    base = arrow_schema(table, version, with_partition=False)
    fields = [f.with_nullable(True) for f in base]
    fields += [pa.field(c.name, c.type, nullable=c.nullable) for c in QUARANTINE_COLUMNS]
    return pa.schema(fields, metadata=base.metadata)
