"""The engine features the search relies on: seeds, fixed eval, test split, spike guard, horizon."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ModelConfig, build_train_config
from model.data import split_tokens
from model.errors import CheckpointError, ConfigError
from model.gpt import GPT
from model.trainer import Trainer, lr_at, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(corpus: Path, run_dir: Path, **kw):
    values = dict(
        data=str(corpus), device="cpu", iters=12, batch=4, block=32, dim=32, heads=2,
        layers=1, dropout=0.0, lr=3e-3, warmup_iters=0, eval_interval=6, eval_iters=2,
        sample_tokens=0, run_dir=str(run_dir), seed=7,
    )  # fmt: skip
    values.update(kw)
    return build_train_config(values)


def test_init_seed_is_independent_of_the_global_rng_and_shared_across_activations():
    def model(act: str, seed: int) -> dict[str, torch.Tensor]:
        cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32,
                          ffn_activation=act)  # fmt: skip
        torch.manual_seed(torch.randint(0, 1000, ()).item())  # scramble the global RNG
        return GPT(cfg, seed=seed).state_dict()

    gelu, relu, swiglu, other = model("gelu", 3), model("relu", 3), model("swiglu", 3), model("gelu", 4)
    assert all(torch.equal(gelu[k], relu[k]) for k in gelu)  # same shapes: identical weights
    shared = [k for k in gelu if gelu[k].shape == swiglu[k].shape]
    assert all(torch.equal(gelu[k], swiglu[k]) for k in shared)
    assert {k for k in gelu if k not in shared} == {"blocks.0.mlp.c_fc.weight", "blocks.1.mlp.c_fc.weight"}
    assert not torch.equal(gelu["wte.weight"], other["wte.weight"])
    assert gelu["blocks.0.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / 2, rel=0.2)


def test_data_seed_sets_the_batch_order_and_seed_the_weights(corpus, tmp_path):
    a = Trainer(tiny(corpus, tmp_path / "a", seed=1, data_seed=9), progress=False)
    b = Trainer(tiny(corpus, tmp_path / "b", seed=2, data_seed=9), progress=False)
    c = Trainer(tiny(corpus, tmp_path / "c", seed=1), progress=False)  # data_seed = seed
    xa, xb, xc = (t.data.get_batch("train", 4)[0] for t in (a, b, c))
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert not torch.equal(a.model.wte.weight, b.model.wte.weight)
    assert torch.equal(a.model.wte.weight, c.model.wte.weight)


def test_every_eval_and_every_run_sees_the_same_val_windows(corpus, tmp_path):
    gelu = Trainer(tiny(corpus, tmp_path / "g", activation="gelu"), progress=False)
    swiglu = Trainer(tiny(corpus, tmp_path / "s", activation="swiglu", seed=3), progress=False)
    mine = [x for x, _ in gelu.data.fixed_batches("val", 2, 4)]
    theirs = [x for x, _ in swiglu.data.fixed_batches("val", 2, 4)]
    assert len(mine) == 2 and all(torch.equal(x, y) for x, y in zip(mine, theirs, strict=True))
    starts = gelu.data.fixed_starts("val", 8)
    assert starts[0] == 0 and starts[-1] == len(gelu.data.arrays["val"]) - 32 - 1
    assert np.all(np.diff(starts) > 0)  # strided over the whole split
    assert gelu.evaluate() == gelu.evaluate()


def test_test_split_is_held_out_of_val_and_train(corpus, tmp_path):
    tokens = np.arange(1000)
    plain, held = split_tokens(tokens, None, 8), split_tokens(tokens, None, 8, 0.5)
    assert np.array_equal(plain["train"], held["train"])  # training text unchanged
    assert np.array_equal(np.concatenate([held["val"], held["test"]]), plain["val"])
    assert len(held["test"]) == 50 and "test" not in plain
    with pytest.raises(ConfigError, match="--test-fraction"):
        split_tokens(tokens, None, 60, 0.5)
    res = train(tiny(corpus, tmp_path / "t", test_fraction=0.5), progress=False)  # default: yes
    assert res.test_loss is not None and math.isfinite(res.test_loss)
    assert res.test_loss != res.final_val_loss
    assert train(tiny(corpus, tmp_path / "u", test_fraction=0.5), progress=False,
                 eval_test=False).test_loss is None  # fmt: skip
    assert train(tiny(corpus, tmp_path / "w"), progress=False).test_loss is None  # no split
    trainer = Trainer(tiny(corpus, tmp_path / "v"), progress=False)
    with pytest.raises(ConfigError, match="no 'test' split"):
        trainer.evaluate("test")
    with pytest.raises(KeyError):
        trainer.data.get_batch("test", 2)  # no random stream draws from the test split


def test_spike_guard_rebaselines_instead_of_freezing(corpus, tmp_path):
    frozen = train(tiny(corpus, tmp_path / "f", spike_threshold=1e-6, spike_patience=0),
                   progress=False)  # fmt: skip
    assert frozen.n_spike_skips == 12 and frozen.n_spike_rebaselines == 0
    res = train(tiny(corpus, tmp_path / "r", spike_threshold=1e-6, spike_patience=4),
                progress=False)  # fmt: skip
    assert res.n_spike_rebaselines >= 1 and res.n_spike_skips < 12
    assert res.losses[-1] < res.losses[0]  # it trains again
    events = [line for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if "spike_rebaseline" in line]  # fmt: skip
    assert len(events) == res.n_spike_rebaselines
    # a re-baselined threshold survives a resume of the same run
    more = train(tiny(corpus, tmp_path / "r", iters=20, spike_threshold=1e-6, spike_patience=4,
                      resume=str(tmp_path / "r")), progress=False)  # fmt: skip
    assert more.n_spike_rebaselines == 0 and more.n_spike_skips == 0


def test_lr_horizon_and_continuation(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path / "x", iters=10, lr_decay_iters=40, warmup_iters=0)
    assert lr_at(cfg, 10) == pytest.approx(lr_at(cfg.model_copy(update={"iters": 40}), 10))
    assert lr_at(cfg, 40) == pytest.approx(cfg.lr_min) and lr_at(cfg, 10) > 0.8 * cfg.lr
    # continuing a checkpoint for 10 more steps equals 20 straight steps
    straight = train(tiny(corpus, tmp_path / "s", iters=20, lr_decay_iters=20), progress=False)
    first = train(tiny(corpus, tmp_path / "a", iters=10, lr_decay_iters=20), progress=False)
    second = train(tiny(corpus, tmp_path / "b", iters=20, lr_decay_iters=20,
                        resume=str(tmp_path / "a")), progress=False)  # fmt: skip
    assert first.losses + second.losses == straight.losses


def test_resume_under_another_activation_only_when_shapes_allow(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "g", iters=4), progress=False)
    ckpt = str(tmp_path / "g")
    with pytest.raises(CheckpointError, match="ffn_activation"):
        Trainer(tiny(corpus, tmp_path / "r1", iters=8, activation="relu", resume=ckpt),
                progress=False)  # fmt: skip
    res = train(tiny(corpus, tmp_path / "r2", iters=8, activation="relu", resume=ckpt),
                progress=False, allow_activation_change=True)  # fmt: skip
    assert res.status == "completed" and res.steps == 8
    with pytest.raises(CheckpointError):
        Trainer(tiny(corpus, tmp_path / "r3", iters=8, activation="swiglu", resume=ckpt),
                progress=False, allow_activation_change=True)  # fmt: skip
