"""Run configuration: the flat ``TrainConfig``, the ``ModelConfig`` and domain presets.

``TrainConfig`` has one field per ``alpha train`` flag (snake_case). Values are
layered by ``tasks.resolve`` (domain defaults < symbio preset < symbio config
file < explicit flags) and validated here; every validation failure becomes a
one-line ``ConfigError`` that names the flag.

This module imports only pydantic and the standard library so that bad input is
rejected before torch is even imported.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.errors import ConfigError

ACTIVATIONS = ("gelu", "relu", "silu", "swiglu")
DOMAINS = ("shakespeare", "chat", "code")
DEVICES = ("auto", "cpu", "cuda")
TOKENIZERS = ("char", "bpe")
DTYPES = ("auto", "bfloat16", "float32")

#: The small corpus the project ships, the default data of the shakespeare domain.
SHIPPED_CORPUS = Path(__file__).resolve().parent / "corpus" / "shakespeare.txt"

Activation = Literal["gelu", "relu", "silu", "swiglu"]


def swiglu_ffn_dim(n_embd: int) -> int:
    """SwiGLU inner width that roughly matches a 4x GELU FFN: ceil(8/3 * dim / 64) * 64."""
    return math.ceil(8 / 3 * n_embd / 64) * 64


def default_ffn_dim(n_embd: int, activation: str) -> int:
    return swiglu_ffn_dim(n_embd) if activation == "swiglu" else 4 * n_embd


class TrainConfig(BaseModel):
    """Everything one training run needs, one field per ``alpha train`` flag."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # data
    data: str | None = None
    val_data: str | None = None
    domain: Literal["shakespeare", "chat", "code"] = "shakespeare"
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = Field(4096, ge=260, le=1 << 20)  # BPE only
    # device
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    compile: bool = False
    # model
    block: int = Field(256, ge=1, le=1 << 16)
    dim: int = Field(384, ge=1)
    heads: int = Field(6, ge=1)
    layers: int = Field(6, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    activation: Activation = "gelu"
    ffn_dim: int | None = Field(None, ge=1)
    # optimisation
    iters: int = Field(2000, ge=1)
    batch: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    lr_min: float | None = Field(None, ge=0.0)  # None: lr / 10
    warmup_iters: int = Field(0, ge=0)
    lr_decay_iters: int | None = Field(None, ge=1)  # None: iters (the cosine's horizon)
    grad_clip: float = Field(1.0, ge=0.0)  # 0: no clipping
    spike_threshold: float = Field(0.0, ge=0.0)  # 0: off
    spike_patience: int = Field(10, ge=0)  # spike skips in a row before re-baselining; 0: never
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    seed: int = Field(1337, ge=0, lt=1 << 63)  # initial weights (and dropout, sampling)
    data_seed: int | None = Field(None, ge=0, lt=1 << 63)  # training batch order; None: seed
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # share of the non-train part held out
    # evaluation, logging, outputs
    eval_interval: int = Field(250, ge=1)
    eval_iters: int = Field(20, ge=1, le=1 << 20)
    log_interval: int = Field(10, ge=1)
    checkpoint_interval: int = Field(0, ge=0)  # 0: with every eval; always at the end
    sample_tokens: int = Field(200, ge=0, le=1 << 20)
    run_dir: str | None = None
    resume: str | None = None

    @model_validator(mode="after")
    def _check_relations(self) -> TrainConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim: {self.dim} is not divisible by heads ({self.heads})")
        if self.lr_min is None:
            self.lr_min = self.lr / 10
        elif self.lr_min > self.lr:
            raise ValueError(f"lr_min: {self.lr_min:g} is larger than lr ({self.lr:g})")
        return self

    @property
    def resolved_ffn_dim(self) -> int:
        return self.ffn_dim or default_ffn_dim(self.dim, self.activation)

    @property
    def resolved_data_seed(self) -> int:
        """Seed of the training batch stream: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed


class ModelConfig(BaseModel):
    """Shape of the GPT; saved in every checkpoint."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    vocab_size: int = Field(ge=1)
    block_size: int = Field(ge=1)
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_embd: int = Field(ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    ffn_activation: Activation = "gelu"
    ffn_dim: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _fill_ffn_dim(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.ffn_dim is None:
            self.ffn_dim = default_ffn_dim(self.n_embd, self.ffn_activation)
        return self

    @classmethod
    def from_train(cls, cfg: TrainConfig, vocab_size: int) -> ModelConfig:
        return cls(
            vocab_size=vocab_size,
            block_size=cfg.block,
            n_layer=cfg.layers,
            n_head=cfg.heads,
            n_embd=cfg.dim,
            dropout=cfg.dropout,
            ffn_activation=cfg.activation,
            ffn_dim=cfg.ffn_dim,
        )


# -- domain presets (PRD §5.2 "domain defaults") ----------------------------------

_DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    # Character-level on the shipped corpus; sized to train in about a minute on a
    # 2-core CPU. The GPU benchmark (bench/bench_engine.py) uses a bigger config.
    "shakespeare": {
        "tokenizer": "char",
        "data": str(SHIPPED_CORPUS),
        "iters": 300,
        "batch": 32,
        "block": 64,
        "dim": 128,
        "heads": 4,
        "layers": 4,
        "dropout": 0.0,  # 300 steps cannot overfit; dropout only slows learning here
        "lr": 4e-3,
        "warmup_iters": 20,
        "beta2": 0.99,
        "eval_interval": 100,
        "eval_iters": 10,
    },
    # Byte-level BPE, trained offline on the run's data and saved with the run.
    "chat": {
        "tokenizer": "bpe",
        "vocab_size": 4096,
        "iters": 2000,
        "batch": 16,
        "block": 256,
        "dim": 256,
        "heads": 8,
        "layers": 6,
        "dropout": 0.1,
        "lr": 6e-4,
        "warmup_iters": 100,
    },
    "code": {
        "tokenizer": "bpe",
        "vocab_size": 8192,
        "iters": 2000,
        "batch": 16,
        "block": 512,
        "dim": 256,
        "heads": 8,
        "layers": 6,
        "dropout": 0.0,
        "lr": 6e-4,
        "warmup_iters": 100,
    },
}


def domain_defaults(domain: str) -> dict[str, Any]:
    """The domain defaults layer: snake_case ``TrainConfig`` values for ``domain``."""
    if domain not in _DOMAIN_DEFAULTS:
        raise ConfigError(f"--domain: unknown domain {domain!r} (choose from {', '.join(DOMAINS)})")
    return {"domain": domain, **_DOMAIN_DEFAULTS[domain]}


def new_run_id(domain: str) -> str:
    """``<domain>-<UTC yyyymmdd-HHMMSS>-<4 hex>``: sortable, unique, path- and URL-safe."""
    return f"{domain}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


# -- validation -------------------------------------------------------------------


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_train_config(values: dict[str, Any]) -> TrainConfig:
    """Validate ``values`` into a ``TrainConfig``; one-line ``ConfigError`` on failure."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def build_model_config(values: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError("model config: " + _one_line(exc, flags=False)) from None


def _one_line(exc: ValidationError, *, flags: bool = True) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err.get("loc", ())]
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        name = flag_name(loc[0]) if flags and loc else ".".join(loc)
        return f"unknown setting {name}"
    if not loc:  # a model-level check: "field: message"
        field, _, rest = msg.partition(": ")
        return f"{flag_name(field) if flags else field}: {rest}" if rest else msg
    name = flag_name(loc[0]) if flags else ".".join(loc)
    got = err.get("input")
    text = msg[0].lower() + msg[1:] if msg else msg
    return f"{name}: {text} (got {got!r})" if "input" in err else f"{name}: {text}"


def check_text_file(path: str | os.PathLike[str], flag: str) -> Path:
    """A readable, non-empty UTF-8 text file, or a ``ConfigError`` naming ``flag``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{flag}: file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"{flag}: is a directory, not a text file: {p}")
    if not p.is_file():  # a FIFO would block forever, /dev/zero never ends
        raise ConfigError(f"{flag}: not a regular file: {p}")
    try:
        with p.open("rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {p}: {exc.strerror or exc}") from None
    if not head.strip():
        raise ConfigError(f"{flag}: file is empty: {p}")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte char cut at the read boundary is fine
            raise ConfigError(f"{flag}: not a UTF-8 text file: {p}") from None
    return p


def check_inputs(cfg: TrainConfig) -> None:
    """Checks of a validated config against the machine: data files, size."""
    if cfg.data is None and cfg.resume is None:
        raise ConfigError(f"--data: required for domain {cfg.domain!r}")
    if cfg.data is not None:
        check_text_file(cfg.data, "--data")
    if cfg.val_data is not None:
        check_text_file(cfg.val_data, "--val-data")
    check_size(cfg, limit=memory_limit(cfg.device))


# -- size validation (before anything is allocated) ---------------------------------

#: Bytes per parameter while training: fp32 weight, gradient and AdamW's two moments.
TRAIN_BYTES_PER_PARAM = 16
#: Bytes per parameter of a model loaded for sampling (fp32 weights only).
SAMPLE_BYTES_PER_PARAM = 4
#: Char vocabularies are only known after reading the data; estimate with printable ASCII.
CHAR_VOCAB_ESTIMATE = 96
#: Memory an accelerator may add to host RAM before the device is known (the largest
#: GPU memory the project targets); the trainer re-checks against the real device.
ACCELERATOR_BYTES = 192 << 30
#: Memory limit override: bytes with an optional K/M/G/T suffix, or ``off``.
ENV_MEMORY_LIMIT = "ALPHA_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class SizeEstimate:
    """Training memory from the config alone: a lower bound, so only absurd configs fail."""

    params: int
    param_bytes: int  # weights, grads and optimizer moments
    activation_bytes: int  # tensors one micro-batch keeps for backward, logits included

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.activation_bytes


def count_params(
    vocab_size: int, block: int, dim: int, layers: int, ffn_dim: int, activation: str
) -> int:
    """Exact parameter count of ``model.gpt.GPT`` (tied embeddings, no biases)."""
    fc = 2 * ffn_dim if activation == "swiglu" else ffn_dim
    per_layer = 4 * dim * dim + dim * fc + ffn_dim * dim + 2 * dim
    return vocab_size * dim + block * dim + layers * per_layer + dim


def estimate_size(
    cfg: TrainConfig, vocab_size: int | None = None, *, activation_bytes: int = 4
) -> SizeEstimate:
    """Parameters and training memory of ``cfg`` (``vocab_size``: the real one, if known).

    Activations count what every layer saves for backward per token (8 x dim plus the
    FFN's inner tensors; no attention matrix, which fused SDPA kernels never store)
    and the logits with their gradient; the micro-batch is ``batch x block`` tokens.
    """
    vocab = vocab_size or (cfg.vocab_size if cfg.tokenizer == "bpe" else CHAR_VOCAB_ESTIMATE)
    dim, ffn = cfg.dim, cfg.resolved_ffn_dim
    fc = 2 * ffn if cfg.activation == "swiglu" else ffn
    params = count_params(vocab, cfg.block, dim, cfg.layers, ffn, cfg.activation)
    per_token = cfg.layers * (8 * dim + fc + ffn) + 2 * vocab
    acts = cfg.batch * cfg.block * per_token * activation_bytes
    return SizeEstimate(params, params * TRAIN_BYTES_PER_PARAM, acts)


def check_size(
    cfg: TrainConfig,
    vocab_size: int | None = None,
    *,
    limit: int | None,
    activation_bytes: int = 4,
) -> None:
    """Refuse a config whose training memory cannot fit in ``limit`` bytes (None: no limit)."""
    if limit is None:
        return
    est = estimate_size(cfg, vocab_size, activation_bytes=activation_bytes)
    if est.total_bytes <= limit:
        return
    need = (
        f"~{format_bytes(est.total_bytes)} to train ({est.params:.3g} parameters: "
        f"{format_bytes(est.param_bytes)} with AdamW; {format_bytes(est.activation_bytes)} of "
        f"activations for batch {cfg.batch} x block {cfg.block} over {cfg.layers} layers)"
    )
    raise ConfigError(
        f"{_largest_knob(cfg)}: this config needs {need}; the memory limit is {format_bytes(limit)} "
        f"(override: {ENV_MEMORY_LIMIT})"
    )


def check_model_size(mc: ModelConfig, *, limit: int | None, flag: str) -> None:
    """Refuse to load a checkpoint whose model (fp32 weights) cannot fit in ``limit``."""
    params = count_params(
        mc.vocab_size, mc.block_size, mc.n_embd, mc.n_layer, mc.ffn_dim or 0, mc.ffn_activation
    )
    need = params * SAMPLE_BYTES_PER_PARAM
    if limit is not None and need > limit:
        raise ConfigError(
            f"{flag}: the checkpoint's model has {params:.3g} parameters (~{format_bytes(need)}); "
            f"the memory limit is {format_bytes(limit)} (override: {ENV_MEMORY_LIMIT})"
        )


def _largest_knob(cfg: TrainConfig) -> str:
    """The size flag furthest above its default: the likeliest culprit to name."""
    knobs = ["dim", "layers", "batch", "block"] + (["ffn_dim"] if cfg.ffn_dim else [])
    fields = TrainConfig.model_fields
    ratio = {k: getattr(cfg, k) / (fields[k].default or fields["dim"].default) for k in knobs}
    return flag_name(max(ratio, key=ratio.__getitem__))


def memory_limit(device: str = "cpu") -> int | None:
    """Bytes a run may use: ``$ALPHA_MEMORY_LIMIT``, else RAM (plus an accelerator's
    worth when the device may be a GPU); None when the limit is off or unknown."""
    env = os.environ.get(ENV_MEMORY_LIMIT, "").strip()
    if env:
        return parse_bytes(env, ENV_MEMORY_LIMIT)
    ram = host_memory()
    if ram is None:
        return None
    return ram if device == "cpu" else ram + ACCELERATOR_BYTES


def parse_bytes(text: str, name: str) -> int | None:
    """``"64G"`` -> bytes; ``off``/``0`` -> None; ``ConfigError`` naming ``name`` otherwise."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t in ("OFF", "NONE", "0"):
        return None
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: expected bytes such as 64G or 'off' (got {text!r})")
    return int(value * _UNITS[unit])


def host_memory() -> int | None:
    """Physical RAM, or the cgroup (container) limit when that is lower."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < ram:
            ram = int(text)
    return ram


def format_bytes(n: float) -> str:
    """``25266987008`` -> ``"23.5 GiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{int(n)} B" if i == 0 else f"{n:.3g} {units[i]}"
