"""The GPT: FFN activations (PRD §18.3), parameter counts, init, config validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from model.config import ModelConfig, build_train_config, domain_defaults, swiglu_ffn_dim
from model.errors import ConfigError
from model.gpt import GPT, MLP, SwiGLU, gelu


def _cfg(activation: str, **kw) -> ModelConfig:
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.0)
    base.update(kw)
    return ModelConfig(ffn_activation=activation, **base)


def _gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), as nanoGPT's nn.GELU()."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def test_gelu_matches_reference_formula() -> None:
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(gelu(x), _gelu_reference(x), rtol=1e-12, atol=1e-12)
    torch.manual_seed(0)
    mlp = MLP(_cfg("gelu")).double()
    h = torch.randn(3, 5, 8, dtype=torch.float64)
    expected = mlp.c_proj(_gelu_reference(mlp.c_fc(h)))
    torch.testing.assert_close(mlp(h), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("activation", "reference"),
    [
        ("relu", lambda a: torch.clamp(a, min=0.0)),
        ("silu", lambda a: a / (1.0 + torch.exp(-a))),
    ],
)
def test_two_matrix_ffn_forward(activation: str, reference) -> None:
    torch.manual_seed(0)
    mlp = MLP(_cfg(activation)).double()
    h = torch.randn(2, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(mlp(h), mlp.c_proj(reference(mlp.c_fc(h))))


def test_swiglu_forward() -> None:
    torch.manual_seed(0)
    ffn = SwiGLU(_cfg("swiglu")).double()
    h = torch.randn(2, 4, 8, dtype=torch.float64)
    f = ffn.c_proj.in_features
    w_gate, w_up = ffn.c_fc.weight[:f], ffn.c_fc.weight[f:]
    a, b = h @ w_gate.T, h @ w_up.T
    expected = (a / (1.0 + torch.exp(-a)) * b) @ ffn.c_proj.weight.T
    torch.testing.assert_close(ffn(h), expected)


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "swiglu"])
def test_ffn_backward_gradcheck(activation: str) -> None:
    """Forward and backward w.r.t. input and every weight, in float64."""
    torch.manual_seed(0)
    cfg = _cfg(activation, n_embd=4, ffn_dim=6)
    ffn = (SwiGLU(cfg) if activation == "swiglu" else MLP(cfg)).double()
    names = [n for n, _ in ffn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in ffn.parameters())
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    if activation == "relu":  # keep pre-activations away from the kink at 0
        x = x + 0.1 * torch.sign(x)
    x.requires_grad_(True)

    def fn(x, *ps):
        return functional_call(ffn, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


def test_swiglu_ffn_dim_and_param_count() -> None:
    # PRD §10.2: L6 D256 -> ffn_dim 704; FFN params per block 2*(256*704) + 704*256.
    assert swiglu_ffn_dim(256) == 704
    assert swiglu_ffn_dim(384) == 1024
    cfg = ModelConfig(
        vocab_size=65, block_size=64, n_layer=6, n_head=8, n_embd=256, ffn_activation="swiglu"
    )
    assert cfg.ffn_dim == 704
    model = GPT(cfg)
    ffn = sum(p.numel() for p in model.blocks[0].mlp.parameters())
    assert ffn == 2 * (256 * 704) + 704 * 256
    C, F, L, V, T = 256, 704, 6, 65, 64
    per_block = 4 * C * C + 3 * C * F + 2 * C  # attention, FFN, two LayerNorm weights
    assert model.num_params() == V * C + T * C + L * per_block + C


def test_gelu_param_count_and_explicit_ffn_dim() -> None:
    model = GPT(_cfg("gelu", n_embd=16, n_head=4))
    assert model.config.ffn_dim == 64
    assert sum(p.numel() for p in model.blocks[0].mlp.parameters()) == 2 * 16 * 64
    model = GPT(_cfg("swiglu", n_embd=16, n_head=4, ffn_dim=40))
    assert sum(p.numel() for p in model.blocks[0].mlp.parameters()) == 3 * 16 * 40


def test_tied_embeddings_and_scaled_residual_init() -> None:
    torch.manual_seed(0)
    model = GPT(_cfg("gelu", n_embd=64, n_head=4, n_layer=8, vocab_size=50))
    assert model.lm_head.weight is model.wte.weight
    resid = torch.cat([b.attn.c_proj.weight.flatten() for b in model.blocks])
    other = torch.cat([b.attn.c_attn.weight.flatten() for b in model.blocks])
    assert resid.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert other.std().item() == pytest.approx(0.02, rel=0.1)


def test_init_matches_nanogpt() -> None:
    """Both embeddings start at N(0, 0.02) and there are no biases anywhere (bias=False)."""
    torch.manual_seed(0)
    model = GPT(_cfg("gelu", n_embd=64, n_head=4, vocab_size=50, block_size=64))
    assert model.wpe.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_optimizer_groups_decay_matrices_and_embeddings_only() -> None:
    """nanoGPT's groups: every >= 2-D tensor (tied wte once, wpe) decays; norms do not."""
    model = GPT(_cfg("gelu"))
    decay, no_decay = model.optimizer_groups(0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"wte.weight", "wpe.weight", "blocks.0.attn.c_attn.weight"} <= decayed
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n in names.values() if n.startswith("ln") or ".ln_" in n
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_forward_is_causal_and_loss_near_uniform() -> None:
    torch.manual_seed(0)
    model = GPT(_cfg("swiglu")).eval()
    idx = torch.randint(0, 11, (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 8, 11)
    assert abs(loss.item() - math.log(11)) < 0.5
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    logits2, _ = model(changed, changed)
    torch.testing.assert_close(logits[:, :-1], logits2[:, :-1])  # the future cannot leak back


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dim": 100, "heads": 3}, "--dim: 100 is not divisible by heads (3)"),
        ({"iters": -1}, "--iters: input should be greater than or equal to 1"),
        ({"lr": float("nan")}, "--lr: input should be a finite number"),
        ({"batch": 0}, "--batch: input should be greater than or equal to 1"),
        ({"activation": "tanh"}, "--activation: input should be"),
        ({"bogus": 1}, "unknown setting --bogus"),
    ],
)
def test_train_config_errors_are_one_line_and_name_the_flag(values, message) -> None:
    with pytest.raises(ConfigError) as err:
        build_train_config({**domain_defaults("shakespeare"), **values})
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_lr_min_defaults_to_a_tenth_of_lr() -> None:
    cfg = build_train_config({"lr": 1e-3})
    assert cfg.lr_min == pytest.approx(1e-4)
    assert cfg.resolved_ffn_dim == 4 * cfg.dim
