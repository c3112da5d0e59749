"""Token data: text -> memory-mapped token arrays in the run dir -> random blocks.

The train/val split is 90/10 of the data's tokens unless ``--val-data`` gives a
separate validation text. With ``test_fraction > 0`` the tail of that non-train
part becomes a held-out ``test`` split (the search confirms its winner there;
nothing selects on it). Training batches are random windows drawn with numpy
generators whose state is saved in checkpoints, so a resumed run draws exactly
the batches the uninterrupted run would have drawn.

Evaluation uses *fixed* windows (``fixed_batches``): ``n`` windows evenly
strided over the split, the same for every evaluation of a run and for every
run on the same data and ``--block``. Two runs compared on them differ only by
their models, never by which validation text they happened to draw.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import ConfigError

SPLITS = ("train", "val")  # always present; each has a random stream
OPTIONAL_SPLITS = ("test",)  # evaluated on fixed windows only: no random stream
TRAIN_FRACTION = 0.9


def read_text(path: str | os.PathLike[str], flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag}: not a UTF-8 text file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None


def split_tokens(
    tokens: np.ndarray, val_tokens: np.ndarray | None, block: int, test_fraction: float = 0.0
) -> dict[str, np.ndarray]:
    """90/10 split (or the given validation tokens), checked long enough for ``block``.

    ``test_fraction`` of the non-train part (its tail) becomes the ``test`` split;
    the train split is the same with or without it.
    """
    if val_tokens is None:
        n = int(len(tokens) * TRAIN_FRACTION)
        parts = {"train": tokens[:n], "val": tokens[n:]}
    else:
        parts = {"train": tokens, "val": val_tokens}
    if test_fraction > 0:
        rest = parts["val"]
        n_test = int(len(rest) * test_fraction)
        parts["val"], parts["test"] = rest[: len(rest) - n_test], rest[len(rest) - n_test :]
    for split, arr in parts.items():
        if len(arr) < block + 1:
            flag = "--val-data" if split == "val" and val_tokens is not None else "--data"
            if split == "test" or (split == "val" and test_fraction > 0):
                flag = "--test-fraction"
            raise ConfigError(
                f"{flag}: the {split} split has {len(arr)} tokens, fewer than --block + 1 "
                f"({block + 1}); use more text or a smaller --block"
            )
    return parts


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_token_files(
    parts: dict[str, np.ndarray], vocab_size: int, out_dir: Path
) -> dict[str, Path]:
    """Write each split as a flat binary token array (atomically); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    paths = {}
    for split, arr in parts.items():
        path = out_dir / f"{split}.bin"
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            arr.astype(dtype).tofile(tmp)
            os.replace(tmp, path)
        except BaseException:  # disk full: leave no partial temp file
            tmp.unlink(missing_ok=True)
            raise
        paths[split] = path
    return paths


class TokenData:
    """Random ``(x, y)`` blocks from memory-mapped token files, on a device."""

    def __init__(
        self,
        paths: dict[str, Path],
        vocab_size: int,
        block: int,
        device: torch.device,
        seed: int,
    ) -> None:
        dtype = token_dtype(vocab_size)
        present = SPLITS + tuple(s for s in OPTIONAL_SPLITS if s in paths)
        self.arrays = {s: np.memmap(paths[s], dtype=dtype, mode="r") for s in present}
        self.block = block
        self.device = device
        self._pin = device.type == "cuda"
        self._offsets = np.arange(block + 1, dtype=np.int64)
        # Independent streams: eval never shifts the training batches.
        self.rngs = {s: np.random.default_rng([seed, i]) for i, s in enumerate(SPLITS)}
        self._fixed: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.arrays["train"])

    def get_batch(self, split: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``split`` (``train`` or ``val``) from its stream."""
        data = self.arrays[split]
        starts = self.rngs[split].integers(0, len(data) - self.block, size=batch_size)
        return self._windows(data, starts)

    def fixed_starts(self, split: str, n: int) -> np.ndarray:
        """``n`` window starts evenly strided over ``split``: no randomness, cached."""
        key = (split, n)
        if key not in self._fixed:
            last = len(self.arrays[split]) - self.block - 1
            self._fixed[key] = np.linspace(0, last, n).round().astype(np.int64)
        return self._fixed[key]

    def fixed_batches(
        self, split: str, n_batches: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation set of ``split``: ``n_batches`` batches of fixed strided windows."""
        starts = self.fixed_starts(split, n_batches * batch_size)
        data = self.arrays[split]
        for k in range(n_batches):
            yield self._windows(data, starts[k * batch_size : (k + 1) * batch_size])

    def _windows(self, data: np.ndarray, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        windows = torch.from_numpy(data[starts[:, None] + self._offsets].astype(np.int64))
        if self._pin:
            windows = windows.pin_memory()
        windows = windows.to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable generator states (the data "position" of a random sampler)."""
        return {s: self.rngs[s].bit_generator.state for s in SPLITS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s in SPLITS:
            self.rngs[s].bit_generator.state = state[s]
