"""Tokenizers: character-level and byte-level BPE (trained offline with ``tokenizers``).

Both serialise to a JSON string that is saved in the run directory and inside
every checkpoint, so a checkpoint is enough to sample from.
"""

from __future__ import annotations

import json
from typing import Protocol

import numpy as np

from model.errors import ConfigError


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: list[int]) -> str: ...
    def to_json(self) -> str: ...


class CharTokenizer:
    """One token per Unicode code point seen in the training text."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.vocab_size = len(chars)
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, self.vocab_size - 1)
        bad = self._codes[ids] != codes
        if bad.any():
            unknown = sorted({chr(c) for c in codes[bad][:1000]})
            raise ConfigError(
                f"text has {int(bad.sum())} characters outside the tokenizer's vocabulary "
                f"(e.g. {''.join(unknown[:10])!r})"
            )
        return ids.astype(np.uint32)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < self.vocab_size)

    def to_json(self) -> str:
        return json.dumps({"kind": "char", "chars": self.chars})


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` library."""

    kind = "bpe"

    def __init__(self, tok) -> None:  # tok: tokenizers.Tokenizer
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(texts), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> np.ndarray:
        ids: list[int] = []
        for piece in _chunks([text]):
            ids.extend(self._tok.encode(piece).ids)
        return np.asarray(ids, dtype=np.uint32)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids))

    def to_json(self) -> str:
        return json.dumps({"kind": "bpe", "tokenizer": self._tok.to_str()})


def _chunks(texts: list[str], size: int = 1 << 16):
    """Split texts at line ends into ~64 KB pieces (bounded memory in ``tokenizers``)."""
    for text in texts:
        start = 0
        while start < len(text):
            end = text.find("\n", start + size)
            end = len(text) if end < 0 else end + 1
            yield text[start:end]
            start = end


def train_tokenizer(kind: str, texts: list[str], vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train("".join(texts))
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise ConfigError(f"--tokenizer: unknown tokenizer {kind!r} (choose from char, bpe)")


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_json``; ``ConfigError`` if it is not one."""
    try:
        obj = json.loads(text)
        if obj["kind"] == "char":
            return CharTokenizer(str(obj["chars"]))
        if obj["kind"] == "bpe":
            from tokenizers import Tokenizer as HFTokenizer

            return BPETokenizer(HFTokenizer.from_str(obj["tokenizer"]))
    except Exception as exc:  # noqa: BLE001 - any malformed payload is the same user error
        raise ConfigError(f"unreadable tokenizer: {exc}") from None
    raise ConfigError(f"unknown tokenizer kind {obj.get('kind')!r}")
