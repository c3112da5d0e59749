"""Checkpoints: one safetensors file holding weights, optimizer state and RNG state.

Layout of ``checkpoint.safetensors``:

- tensors ``model/<name>`` (tied ``lm_head.weight`` stored once, as ``wte``),
  ``optim/<param index>/<key>`` (AdamW moments and step), ``rng/torch_cpu``,
  ``rng/cuda/<device>``;
- header metadata ``format = "alpha-checkpoint"``, ``version``, and ``meta``: a JSON
  object with the full model config (incl. ``ffn_activation``), the resolved train
  config, step, run id, tokenizer, data-sampler state, optimizer param groups.

Nothing is ever unpickled: safetensors stores raw tensors and JSON only. Writes
go to a temporary file that replaces the old checkpoint atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import ModelConfig, build_model_config
from model.errors import CheckpointError, ConfigError
from model.rundir import tmp_name

FORMAT = "alpha-checkpoint"
VERSION = 1
FILENAME = "checkpoint.safetensors"
_MAX_HEADER = 100 << 20  # safetensors' own limit
#: Same rule as ``storage.lake.validate_run_id`` (model imports nothing from storage).
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Metadata fields that must be JSON objects (or absent / null) when present.
_DICT_FIELDS = ("model_config", "train_config", "run_meta", "optim_scalars", "data_state")


@dataclass(frozen=True)
class CheckpointMeta:
    path: Path
    meta: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        cfg = dict(self.meta.get("model_config") or {})
        cfg.setdefault("ffn_activation", "gelu")  # checkpoints from before FFN dispatch
        try:
            return build_model_config(cfg)
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {self.path}: {exc}") from None

    @property
    def train_config(self) -> dict[str, Any]:
        return dict(self.meta.get("train_config") or {})

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")


def resolve_path(path: str | os.PathLike[str], flag: str = "--resume") -> Path:
    """A checkpoint file, or a run directory holding one."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FILENAME
    if not p.exists():
        raise CheckpointError(f"{flag}: checkpoint not found: {p}")
    if not p.is_file():  # a FIFO would block forever
        raise CheckpointError(f"{flag}: unreadable checkpoint {p}: not a regular file")
    return p


def read_meta(path: str | os.PathLike[str], flag: str = "--resume") -> CheckpointMeta:
    """Read and check a checkpoint's header without loading tensors (or torch)."""
    p = resolve_path(path, flag)
    try:
        with p.open("rb") as f:
            raw = f.read(8)
            (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (-1,)
            if not 0 < n <= _MAX_HEADER:
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
        fields = header.get("__metadata__") or {}
    except (OSError, ValueError, AttributeError) as exc:
        reason = (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a safetensors file"
        )
        raise CheckpointError(f"{flag}: unreadable checkpoint {p}: {reason}") from None
    if fields.get("format") != FORMAT:
        raise CheckpointError(f"{flag}: {p} is not an Alpha checkpoint (foreign safetensors file)")
    if fields.get("version") != str(VERSION):
        raise CheckpointError(
            f"{flag}: {p} has checkpoint version {fields.get('version')!r}; expected {VERSION}"
        )
    try:
        meta = json.loads(fields["meta"])
        if not isinstance(meta, dict):
            raise ValueError
    except (KeyError, ValueError):
        raise CheckpointError(f"{flag}: {p} has unreadable metadata") from None
    bad = _bad_meta_field(meta)
    if bad:
        raise CheckpointError(f"{flag}: {p} has a bad {bad} in its metadata")
    ckpt = CheckpointMeta(p, meta)
    _ = ckpt.model_config  # validates: one-line CheckpointError
    return ckpt


def _bad_meta_field(meta: dict[str, Any]) -> str | None:
    """The first metadata field of the wrong type or range, as ``name value``; else None."""
    step = meta.get("step", 0)
    if type(step) is not int or step < 0:
        return f"step {step!r}"
    run_id = meta.get("run_id")
    if run_id is not None and (
        not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or ".." in run_id
    ):
        return f"run_id {str(run_id)[:60]!r}"
    for name in _DICT_FIELDS:
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            return f"{name} (not an object)"
    best = meta.get("best_val_loss")
    if best is not None and (
        isinstance(best, bool) or not isinstance(best, int | float) or not math.isfinite(best)
    ):
        return f"best_val_loss {best!r}"
    groups = meta.get("optim_param_groups")
    if groups is not None and (
        not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups)
    ):
        return "optim_param_groups (not a list of objects)"
    if not isinstance(meta.get("tokenizer", ""), str):
        return "tokenizer (not a string)"
    return None


def check_data_state(ckpt: CheckpointMeta, splits: tuple[str, ...], flag: str = "--resume") -> None:
    """The data-sampler state must restore numpy generators, checked before anything is written."""
    import numpy as np

    state = ckpt.meta.get("data_state")
    if not state:
        return
    try:
        for split in splits:
            np.random.default_rng(0).bit_generator.state = state[split]
    except Exception:  # noqa: BLE001 - any malformed state is the same user error
        raise CheckpointError(
            f"{flag}: {ckpt.path} has an unreadable data state (split {split!r})"
        ) from None


def save(path: Path, *, model, optimizer, meta: dict[str, Any]) -> Path:
    """Write model + optimizer + RNG state and ``meta`` to ``path`` atomically."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name != "lm_head.weight":  # tied to wte.weight
            tensors[f"model/{name}"] = t.detach().contiguous()
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {**meta, "optim_param_groups": opt_state["param_groups"], "optim_scalars": scalars}
    fields = {"format": FORMAT, "version": str(VERSION), "meta": json.dumps(meta)}
    tensors = {k: v.cpu() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)  # unique per writer: concurrent saves never share a temp file
    try:
        save_file(tensors, str(tmp), metadata=fields)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_model_config(ckpt: CheckpointMeta, wanted: ModelConfig, flag: str = "--resume") -> None:
    """Clear error when the run asks for another shape than the checkpoint has."""
    have = ckpt.model_config.model_dump()
    want = wanted.model_dump()
    diffs = [
        f"{k}={have[k]} in the checkpoint but {want[k]} here"
        for k in (
            "vocab_size",
            "block_size",
            "n_layer",
            "n_head",
            "n_embd",
            "ffn_activation",
            "ffn_dim",
        )
        if have[k] != want[k]
    ]
    if diffs:
        raise CheckpointError(f"{flag}: shape mismatch with {ckpt.path}: " + "; ".join(diffs))


def load_model(path: Path, model, flag: str = "--resume") -> None:
    """Load weights into ``model``; a missing/extra tensor or shape mismatch is a clear error."""
    try:
        _load_model(path, model, flag)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file (truncated, bad offsets)
        raise CheckpointError(f"{flag}: unreadable checkpoint {path}: {exc}") from None


def _load_model(path: Path, model, flag: str) -> None:
    from safetensors import safe_open

    own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = {k[len("model/") :] for k in f.keys() if k.startswith("model/")}
        missing, extra = sorted(own.keys() - keys), sorted(keys - own.keys())
        if missing or extra:
            raise CheckpointError(
                f"{flag}: checkpoint {path} does not fit the model "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
        state = {}
        for name, target in own.items():
            t = f.get_tensor(f"model/{name}")
            if t.shape != target.shape:
                raise CheckpointError(
                    f"{flag}: shape mismatch for {name}: {list(t.shape)} in the checkpoint, "
                    f"{list(target.shape)} in the model"
                )
            state[name] = t
    model.load_state_dict(state, strict=False)


def load_training_state(path: Path, ckpt: CheckpointMeta, optimizer) -> None:
    """Restore optimizer moments and RNG states saved by ``save``."""
    import torch
    from safetensors import safe_open

    groups = [dict(g) for g in ckpt.meta.get("optim_param_groups") or []]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    state: dict[int, dict[str, Any]] = {}
    cuda_rng: dict[int, torch.Tensor] = {}
    cpu_rng = None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                parts = key.split("/")
                if parts[0] == "optim":
                    state.setdefault(int(parts[1]), {})[parts[2]] = f.get_tensor(key)
                elif key == "rng/torch_cpu":
                    cpu_rng = f.get_tensor(key)
                elif parts[:2] == ["rng", "cuda"]:
                    cuda_rng[int(parts[2])] = f.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - a damaged file
        raise CheckpointError(f"--resume: unreadable checkpoint {path}: {exc}") from None
    try:
        for idx, scalars in (ckpt.meta.get("optim_scalars") or {}).items():
            state.setdefault(int(idx), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except Exception as exc:  # noqa: BLE001 - ValueError, KeyError, TypeError of a bad file
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"--resume: optimizer state does not fit: {detail}") from None
    try:
        if cpu_rng is not None:
            torch.set_rng_state(cpu_rng)
        if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([cuda_rng[i] for i in sorted(cuda_rng)])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"--resume: unreadable RNG state in {path}: {exc}") from None
