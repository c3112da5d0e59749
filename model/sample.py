"""Text generation from a model or a checkpoint (``alpha sample``)."""

from __future__ import annotations

import os

import torch

from model import checkpoint as ckpt_io
from model.errors import ConfigError
from model.gpt import GPT
from model.tokenizer import Tokenizer, tokenizer_from_json


def load_for_sampling(
    path: str | os.PathLike[str], device: str = "cpu", flag: str = "--checkpoint"
) -> tuple[GPT, Tokenizer]:
    """Model (in eval mode) and tokenizer from a checkpoint file or run directory."""
    meta = ckpt_io.read_meta(path, flag)
    model = GPT(meta.model_config)
    ckpt_io.load_model(meta.path, model, flag)
    tokenizer = tokenizer_from_json(meta.meta.get("tokenizer", ""))
    return model.to(device).eval(), tokenizer


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 0,
) -> str:
    """Prompt plus a sampled continuation. Uses a private generator: global RNG untouched."""
    device = next(model.parameters()).device
    try:
        ids = tokenizer.encode(prompt).tolist() if prompt else []
    except ConfigError as exc:
        raise ConfigError(f"--prompt: {exc}") from None
    if not ids:
        ids = [0]
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = model.generate(
            idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0].tolist())
