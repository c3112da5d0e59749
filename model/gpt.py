"""A GPT language model, in the spirit of nanoGPT.

Pre-LayerNorm blocks, causal ``scaled_dot_product_attention`` (flash kernels on
CUDA), tied input/output embeddings, dropout, GPT-2 initialisation (residual
projections scaled by ``1/sqrt(2 * n_layer)``), and an FFN whose activation is
chosen by ``ModelConfig.ffn_activation``:

- ``gelu`` (default, the fast path): ``gelu(x W_fc) W_proj`` with the exact (erf)
  GELU, as nanoGPT's ``nn.GELU()``
- ``relu`` / ``silu``: same shape, other nonlinearity
- ``swiglu``: ``(silu(x W_gate) * (x W_up)) W_proj`` with ``ffn_dim`` defaulting
  to ``ceil(8/3 * dim / 64) * 64`` so that the parameter count stays close to gelu's.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, ``0.5 x (1 + erf(x / sqrt(2)))`` (one fused kernel).

    nanoGPT, the reference recipe of the engine benchmark, uses this form
    (``nn.GELU()``), not GPT-2's tanh approximation; the cost is the same.
    """
    return F.gelu(x)


class MLP(nn.Module):
    """Two-matrix FFN for gelu/relu/silu."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.c_proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.act = {"gelu": gelu, "relu": F.relu, "silu": F.silu}[cfg.ffn_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Gated FFN. W_gate and W_up are stored as one matrix so they run as one matmul."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 2 * cfg.ffn_dim, bias=False)  # [W_gate; W_up]
        self.c_proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = SwiGLU(cfg) if cfg.ffn_activation == "swiglu" else MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """``seed`` makes the initial weights independent of torch's global RNG.

    With a seed, each parameter is drawn from its own generator seeded by
    ``(seed, parameter name)``: models trained in concurrent threads do not race
    on the global RNG, and models of different FFN activations share every
    parameter whose name and shape agree (attention, embeddings, and the whole
    FFN among gelu/relu/silu), so comparing them compares activations, not
    initialisations. ``seed=None`` draws from the global RNG.
    """

    def __init__(self, cfg: ModelConfig, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        self.register_buffer("pos", torch.arange(cfg.block_size), persistent=False)
        self._init_weights(seed)

    def _init_weights(self, seed: int | None) -> None:
        """GPT-2 init: N(0, 0.02) matrices and embeddings, residual projections scaled."""
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():  # the tied lm_head weight is wte's
            if p.dim() < 2:
                continue  # LayerNorm weights keep their ones (there are no biases)
            std = resid_std if name.endswith("c_proj.weight") else 0.02
            gen = None if seed is None else torch.Generator().manual_seed(_param_seed(seed, name))
            nn.init.normal_(p, mean=0.0, std=std, generator=gen)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.size(1)
        x = self.drop(self.wte(idx) + self.wpe(self.pos[:T]))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:  # generation: only the last position is needed
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N + 12 * L * T * C."""
        cfg = self.config
        return (
            6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd
        )

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices (2-D+), not norms or biases."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size :]
            logits, _ = self(ctx)
            logits = logits[:, -1, :].float() / max(temperature, 1e-6)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


def _param_seed(seed: int, name: str) -> int:
    """A generator seed per (run seed, parameter name), stable across runs and processes."""
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (1 << 63)
