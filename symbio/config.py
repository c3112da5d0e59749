"""Symbio configuration: the ``SymbioConfig`` model and the JSON file loader.

Field names are snake_case in Python and camelCase in JSON (PRD §7.3, §7.4);
both spellings are accepted. A config file may also carry a small, fixed set
of training keys (``TRAIN_KEYS``) that the run resolver applies as the
"symbio config file" layer (PRD §5.2: domain defaults < preset < file < flags).

Bad input raises ``SymbioConfigError`` with a one-line message naming the
field, e.g. ``symbio config: cusumSensitivity: must be > 0 (got -1)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

ACTIVATIONS = ("gelu", "relu", "silu", "swiglu")
Activation = Literal["gelu", "relu", "silu", "swiglu"]


class SymbioConfigError(ValueError):
    """Bad symbio configuration: the message is one line naming the field."""


_MODEL_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    extra="forbid",
    strict=True,
    frozen=True,
)


class SymbioConfig(BaseModel):
    """Every knob of Symbio mode, with the defaults of PRD §7.3."""

    model_config = _MODEL_CONFIG

    # -- CUSUM monitoring --
    cusum_sensitivity: float = Field(4.0, gt=0)
    cusum_baseline_window: int = Field(10, ge=2)
    # -- metric collection --
    metrics_interval: int = Field(50, ge=1)
    track_weight_entropy: bool = True
    track_effective_rank: bool = True
    track_free_energy: bool = True
    track_mi_profiles: bool = Field(False, alias="trackMIProfiles")
    track_population_metrics: bool = True
    free_energy_beta: float = Field(0.01, ge=0)
    mi_num_bins: int = Field(30, ge=2, le=1024)
    # -- adaptive batch sizing --
    adaptive_batch: bool = True
    batch_min: int = Field(8, ge=1)
    batch_max: int = Field(64, ge=1)
    batch_step: int = Field(4, ge=1)
    calm_steps_before_restore: int = Field(200, ge=1)
    # -- fitness / ranking --
    fitness_alpha: float = Field(1.0, ge=0)
    complexity_mode: Literal["params", "entropy", "mdl"] = "entropy"
    diversity_bonus: float = Field(0.0, ge=0)
    diversity_decay: Literal["none", "linear", "cosine"] = "none"
    # -- FFN activation search --
    search_mode: Literal["ffn-activation-search", "none"] = "ffn-activation-search"
    activation_pool: tuple[Activation, ...] = Field(ACTIVATIONS, strict=False)  # JSON lists
    search_strategy: Literal["evolutionary", "exhaustive"] = "evolutionary"
    population_size: int = Field(6, ge=1)
    generations: int = Field(4, ge=1)
    selection_strategy: Literal["topk", "tournament"] = "topk"
    tournament_k: int = Field(3, ge=1)
    mutation_rate: float = Field(0.25, ge=0, le=1)
    steps_per_candidate: int = Field(1000, ge=1)
    rank_by: Literal["valLoss", "fitness"] = "valLoss"
    perf_weight: float = Field(0.0, ge=0)
    stability_weight: float = Field(0.0, ge=0)
    # -- multi-fidelity, lr gene, confirmation (docs/search.md; not in PRD §7.3) --
    halving_eta: float = Field(2.0, ge=1)  # a generation keeps ceil(n / eta) candidates
    lr_gene: bool = False  # co-evolve the peak lr with the activation
    lr_gene_range: tuple[float, float] = Field((1e-4, 3e-3), strict=False)  # JSON lists
    confirm_seeds: int = Field(3, ge=0, le=30)  # paired seeds per confirmed activation
    confirm_steps: int | None = Field(None, ge=1)  # None: the search's longest candidate
    # -- output --
    write_report: bool = True
    write_candidates: bool = True
    write_summary: bool = True

    @model_validator(mode="after")
    def _check_relations(self) -> SymbioConfig:
        if self.batch_min > self.batch_max:
            raise ValueError(
                f"batchMin: must be <= batchMax ({self.batch_max}) (got {self.batch_min})"
            )
        if not self.activation_pool:
            raise ValueError("activationPool: must name at least one activation (got [])")
        if len(set(self.activation_pool)) != len(self.activation_pool):
            raise ValueError(
                f"activationPool: must not repeat an activation (got {list(self.activation_pool)})"
            )
        lo, hi = self.lr_gene_range
        if not 0 < lo < hi:
            raise ValueError(
                f"lrGeneRange: must be [low, high] with 0 < low < high (got {[lo, hi]})"
            )
        return self

    def to_camel_dict(self) -> dict[str, Any]:
        """The resolved config with the PRD's camelCase keys (JSON-ready)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_camel_json(self) -> str:
        """Compact camelCase JSON, as recorded in ``runs.symbio_config``."""
        return json.dumps(self.to_camel_dict(), separators=(",", ":"))


class _TrainOverrides(BaseModel):
    """Training keys a symbio config file may set (the resolver's file layer)."""

    model_config = _MODEL_CONFIG

    activation: Activation | None = None
    ffn_dim: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    lr_min: float | None = Field(None, ge=0)
    grad_clip: float | None = Field(None, ge=0)
    warmup_iters: int | None = Field(None, ge=0)
    spike_threshold: float | None = Field(None, ge=0)
    batch: int | None = Field(None, ge=1)
    weight_decay: float | None = Field(None, ge=0)


#: camelCase keys of a config file that become TrainConfig overrides.
#: ``ffnActivation`` is the PRD's ModelConfig spelling of ``activation``.
TRAIN_KEYS: dict[str, str] = {
    "activation": "activation",
    "ffnActivation": "activation",
    "ffnDim": "ffn_dim",
    "lr": "lr",
    "lrMin": "lr_min",
    "gradClip": "grad_clip",
    "warmupIters": "warmup_iters",
    "spikeThreshold": "spike_threshold",
    "batch": "batch",
    "weightDecay": "weight_decay",
}


def load_symbio_config(
    source: str | Path | dict[str, Any] | None,
) -> tuple[SymbioConfig, dict[str, Any]]:
    """Load and validate a symbio config.

    ``source`` is a path to a JSON file (PRD §7.4), an already-parsed dict, or
    ``None`` for the defaults. Returns ``(config, train_overrides)`` where
    ``train_overrides`` holds the file's training keys as snake_case
    ``TrainConfig`` field names (empty when the file has none).
    """
    if source is None:
        return SymbioConfig(), {}
    raw = _read_json(source) if isinstance(source, (str, Path)) else source
    if not isinstance(raw, dict):
        raise SymbioConfigError(f"symbio config: must be a JSON object (got {type(raw).__name__})")
    symbio_keys = {k: v for k, v in raw.items() if k not in TRAIN_KEYS}
    train_keys = {TRAIN_KEYS[k]: v for k, v in raw.items() if k in TRAIN_KEYS}
    if "activation" in raw and "ffnActivation" in raw and raw["activation"] != raw["ffnActivation"]:
        raise SymbioConfigError(
            "symbio config: ffnActivation: conflicts with activation "
            f"(got {raw['ffnActivation']!r} and {raw['activation']!r})"
        )
    names = {TRAIN_KEYS[k]: k for k in raw if k in TRAIN_KEYS}  # error messages use the file's key
    config = _validate(SymbioConfig, symbio_keys)
    overrides = _validate(_TrainOverrides, train_keys, names)
    return config, overrides.model_dump(exclude_none=True)


def _read_json(path: str | Path) -> Any:
    p = Path(path)
    if p.exists() and not (p.is_file() or p.is_dir()):  # a FIFO would block forever
        raise SymbioConfigError(f"symbio config: not a regular file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SymbioConfigError(f"symbio config: file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise SymbioConfigError(f"symbio config: cannot read {p}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SymbioConfigError(
            f"symbio config: {p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def _validate(
    model: type[BaseModel], data: dict[str, Any], names: dict[str, str] | None = None
) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SymbioConfigError(_one_line(exc, names or {})) from None


def _one_line(exc: ValidationError, names: dict[str, str]) -> str:
    """First validation error as ``symbio config: <field>: <problem> (got <value>)``."""
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    field = loc[0] if loc else ""
    field = names.get(field, field)
    if err["type"] == "extra_forbidden":
        return f"symbio config: {field}: unknown key"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):  # our model validator already names the field
        return f"symbio config: {msg.removeprefix('Value error, ')}"
    ctx = err.get("ctx") or {}
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if err["type"] in bounds:
        msg = "must be " + bounds[err["type"]].format(**ctx)
    else:
        msg = msg.replace("Input should be", "must be").replace("a valid tuple", "a list")
    where = f"{field}[{loc[1]}]" if len(loc) > 1 else field
    return f"symbio config: {where}: {msg} (got {_short(err.get('input'))})"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
