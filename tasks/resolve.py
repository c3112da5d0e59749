"""Config resolution shared by ``alpha train`` and the Prefect ``alpha`` flow.

Layers, later wins (PRD §5.2):

1. domain defaults (``model.config.domain_defaults``)
2. the ``--symbio`` preset (``symbio.preset.SYMBIO_PRESET``)
3. the ``--symbio-config`` file (its training keys)
4. explicit flags

With ``--resume`` the checkpoint's own resolved config replaces layers 1-2 (it
already contains them); a ``--symbio-config`` file and explicit flags still
apply on top. Nothing here imports torch, and nothing is written: every bad
input is a one-line ``ConfigError`` before a run directory exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import (
    TrainConfig,
    build_train_config,
    check_inputs,
    domain_defaults,
    new_run_id,
)
from model.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from symbio.config import SymbioConfig

#: Keys of the explicit-flags dict that are not ``TrainConfig`` fields.
SYMBIO_KEYS = ("symbio", "symbio_config")


@dataclass(frozen=True)
class ResolvedRun:
    """A fully resolved run: what to train, in which mode, where, and why so."""

    train: TrainConfig
    symbio: bool
    symbio_config: SymbioConfig | None
    run_id: str
    run_dir: Path
    explicit: dict[str, Any] = field(default_factory=dict)
    #: field -> layer that set it: default | domain | checkpoint | symbio-preset | symbio-config | flag
    sources: dict[str, str] = field(default_factory=dict)
    resumed_step: int | None = None

    @property
    def search_mode(self) -> str:
        """``"none"`` for a single run, else the symbio search mode."""
        return self.symbio_config.search_mode if self.symbio_config is not None else "none"

    @property
    def ffn_activation(self) -> str:
        return self.train.activation

    def run_meta(self) -> dict[str, Any]:
        """What the engine records with the run (config.json, checkpoints) for resume."""
        return {
            "symbio": self.symbio,
            "symbio_config": self.symbio_config.to_camel_dict()
            if self.symbio_config is not None
            else None,
            "symbio_mode": self.search_mode if self.symbio else None,
        }

    def summary_lines(self) -> list[str]:
        """The resolved config, one ``key = value  (layer)`` line per field."""
        lines = []
        for name, value in self.train.model_dump().items():
            src = self.sources.get(name, "default")
            if name == "ffn_dim" and value is None:
                value, src = self.train.resolved_ffn_dim, f"derived from {self.train.activation}"
            elif name == "lr_min" and src == "default":
                src = "derived: lr / 10"
            lines.append(f"  {name:<20} {value!r:<28} ({src})")
        return lines


def resolve_run_config(explicit: dict[str, Any]) -> ResolvedRun:
    """Layer the config sources for one run; ``explicit`` holds only the flags given."""
    explicit = dict(explicit)
    symbio_flag = explicit.pop("symbio", None)
    symbio_file = explicit.pop("symbio_config", None)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def layer(name: str, new: dict[str, Any]) -> None:
        values.update(new)
        sources.update(dict.fromkeys(new, name))

    ckpt = None
    if explicit.get("resume"):
        from model.checkpoint import read_meta

        ckpt = read_meta(explicit["resume"], "--resume")
        saved = {k: v for k, v in ckpt.train_config.items() if k in TrainConfig.model_fields}
        for k in ("run_dir", "resume"):
            saved.pop(k, None)
        layer("checkpoint", saved)
        meta = ckpt.meta.get("run_meta") or {}
        symbio = bool(meta.get("symbio")) if symbio_flag is None else bool(symbio_flag)
        saved_symbio = meta.get("symbio_config") if symbio else None
    else:
        layer("domain", domain_defaults(str(explicit.get("domain", "shakespeare"))))
        symbio = bool(symbio_flag)
        saved_symbio = None

    symbio_config = None
    if symbio_file is not None and not symbio:
        raise ConfigError("--symbio-config: only valid together with --symbio")
    if symbio:
        symbio_config, file_overrides = _load_symbio(symbio_file, saved_symbio)
        if ckpt is None:
            from symbio.preset import SYMBIO_PRESET

            layer("symbio-preset", dict(SYMBIO_PRESET))
        layer("symbio-config", file_overrides)
    layer("flag", explicit)

    cfg = build_train_config(values)
    check_inputs(cfg)
    run_id = (ckpt.run_id if ckpt else None) or new_run_id(cfg.domain)
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir).expanduser()
    elif ckpt is not None:
        run_dir = ckpt.path.parent
    else:
        run_dir = Path("runs") / run_id
    _check_run_dir(run_dir, resuming_in=ckpt.path.parent if ckpt else None)
    cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
    return ResolvedRun(
        train=cfg,
        symbio=symbio,
        symbio_config=symbio_config,
        run_id=run_id,
        run_dir=run_dir,
        explicit=dict(explicit),
        sources=sources,
        resumed_step=ckpt.step if ckpt else None,
    )


def _load_symbio(
    path: str | None, saved: dict[str, Any] | None
) -> tuple[SymbioConfig, dict[str, Any]]:
    from symbio.config import SymbioConfigError, load_symbio_config

    try:
        if path is None and saved is not None:  # resuming a symbio run: its own config
            return load_symbio_config(saved)[0], {}
        return load_symbio_config(path)
    except SymbioConfigError as exc:
        flag = "--symbio-config" if path is not None else "--resume"
        raise ConfigError(f"{flag}: {str(exc).removeprefix('symbio config: ')}") from None


def _check_run_dir(path: Path, *, resuming_in: Path | None) -> None:
    if resuming_in is not None and path.resolve() == resuming_in.resolve():
        return
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--run-dir: {path} exists and is not a directory")
        from model.rundir import is_empty_run_dir

        if not is_empty_run_dir(path):  # the lock file of a run dir does not count
            raise ConfigError(f"--run-dir: {path} is not empty (use --resume to continue a run)")
