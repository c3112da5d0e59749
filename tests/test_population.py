"""The batched population trainer against the single trainer, on the CPU in fp32.

Each test trains the same candidates twice, once with ``model.trainer.train`` one
at a time and once as one batched population, and asserts the same per-step
losses, val losses, events and rows (within float tolerance: the batched matmuls
sum in another order).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import checkpoint as ckpt_io
from model.config import build_train_config
from model.hooks import TrainerHook
from model.population import Population, train_population
from model.trainer import Trainer, train
from symbio.config import SymbioConfig
from symbio.hook import SymbioHook

ROW_KEYS = {
    "run_id", "step", "loss", "val_loss", "lr", "grad_norm", "clip_coef", "clip_pct",
    "tokens_per_sec", "ms_per_iter", "elapsed_ms", "batch_size", "mfu", "timestamp", "event",
}  # fmt: skip
REL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(corpus: Path, run_dir: Path, **kw):
    values = dict(
        data=str(corpus), device="cpu", iters=20, batch=4, block=32, dim=32, heads=2,
        layers=2, dropout=0.0, lr=3e-3, warmup_iters=3, eval_interval=10, eval_iters=2,
        sample_tokens=0, run_dir=str(run_dir), seed=7,
    )  # fmt: skip
    values.update(kw)
    return build_train_config(values)


def rows(run_dir: Path | str) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def both(corpus: Path, tmp: Path, specs: list[dict], hooks=None, run_id=None, offsets=None):
    """Train ``specs`` one at a time and as a population; ``(single, batched)`` results."""
    hooks = hooks or (lambda i: [])
    offsets = offsets or [0] * len(specs)
    single = [
        train(
            tiny(corpus, tmp / f"single{i}", **s), hooks(i), run_id=run_id,
            step_offset=offsets[i], progress=False,
        )  # fmt: skip
        for i, s in enumerate(specs)
    ]
    cfgs = [tiny(corpus, tmp / f"batched{i}", **s) for i, s in enumerate(specs)]
    batched = train_population(
        cfgs, [hooks(i) for i in range(len(specs))], run_id=run_id, step_offsets=offsets
    )
    return single, batched


def assert_same_run(s, b) -> None:
    assert b.status == s.status, b.error
    assert b.steps == s.steps and len(b.losses) == len(s.losses)
    assert (b.n_spike_skips, b.n_nan_skips) == (s.n_spike_skips, s.n_nan_skips)
    for x, y in zip(s.losses, b.losses, strict=True):
        assert (x != x and y != y) or y == pytest.approx(x, rel=REL)  # NaN or close
    for key in ("final_val_loss", "best_val_loss"):
        x, y = getattr(s, key), getattr(b, key)
        assert (x is None and y is None) or y == pytest.approx(x, rel=REL), key
    srows, brows = rows(s.run_dir), rows(b.run_dir)
    assert [r["step"] for r in brows] == [r["step"] for r in srows]
    for rs, rb in zip(srows, brows, strict=True):
        assert set(rb) == set(rs)
        assert rb["event"] == rs["event"] and rb["batch_size"] == rs["batch_size"]
        assert rb["lr"] == rs["lr"]
        for key in ("val_loss", "grad_norm", "clip_coef"):
            assert (rs[key] is None) == (rb[key] is None), key
            if rs[key] is not None:
                assert rb[key] == pytest.approx(rs[key], rel=1e-4, abs=1e-7), key


def test_two_activations_of_one_family_match_single_runs(corpus: Path, tmp_path: Path) -> None:
    """gelu + relu share one stacked model; 20 steps, evals at 10 and 20."""
    specs = [{"activation": "gelu", "seed": 7}, {"activation": "relu", "seed": 8, "lr": 1e-3}]
    singles = [
        Trainer(tiny(corpus, tmp_path / f"s{i}", **s), run_id="r-pop", step_offset=20 * i,
                progress=False)
        for i, s in enumerate(specs)
    ]  # fmt: skip
    single = [t.fit() for t in singles]
    cfgs = [tiny(corpus, tmp_path / f"b{i}", **s) for i, s in enumerate(specs)]
    pop = Population(cfgs, run_id="r-pop", step_offsets=[0, 20])
    assert len(pop.families) == 1 and pop.families[0].P == 2
    batched = pop.fit()
    for s, b in zip(single, batched, strict=True):
        assert_same_run(s, b)
    for alone, member in zip(singles, pop.trainers, strict=True):
        # the candidate's own module holds its trained weights (views of the stacked ones)
        for (name, p), q in zip(member.model.named_parameters(), alone.model.parameters(),
                                strict=True):  # fmt: skip
            # fp32 sums in another order: ~2e-6 apart after 20 Adam steps
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    out = rows(batched[1].run_dir)
    assert set(out[0]) == ROW_KEYS and out[0]["run_id"] == "r-pop"
    assert [r["step"] for r in out] == list(range(21, 41))
    assert [r["step"] for r in out if r["val_loss"] is not None] == [30, 40]
    assert batched[0].losses != batched[1].losses  # two different candidates really trained


def test_swiglu_and_gelu_are_two_families(corpus: Path, tmp_path: Path) -> None:
    """Two stacked models in one step; the swiglu family finishes first and goes idle."""
    specs = [{"activation": "swiglu", "seed": 3, "iters": 12}, {"activation": "gelu", "seed": 3},
             {"activation": "silu", "seed": 4}]  # fmt: skip
    cfgs = [tiny(corpus, tmp_path / f"p{i}", **{**s, "iters": 1}) for i, s in enumerate(specs)]
    pop = Population(cfgs)
    assert sorted(f.P for f in pop.families) == [1, 2]
    single, batched = both(corpus, tmp_path, specs)
    for s, b in zip(single, batched, strict=True):
        assert_same_run(s, b)


def test_guards_and_hooks_act_per_candidate(corpus: Path, tmp_path: Path) -> None:
    """A spike-skipping, a NaN-poisoned and a healthy candidate do not affect each other."""

    class Poison(TrainerHook):
        def on_step_end(self, trainer, row):
            if row["step"] == 3:
                with torch.no_grad():
                    trainer.model.wte.weight[0, 0] = float("nan")  # a view of the stacked weights

    specs = [
        {"spike_threshold": 1e-6, "spike_patience": 0, "grad_clip": 1e-3},  # all skipped
        {"seed": 9},
        {"seed": 10, "iters": 12},
    ]
    single, batched = both(corpus, tmp_path, specs, hooks=lambda i: [Poison()] if i == 1 else [])
    for s, b in zip(single, batched, strict=True):
        assert_same_run(s, b)
    assert batched[0].n_spike_skips == 20 and batched[1].n_nan_skips >= 1
    assert batched[2].steps == 12 and batched[2].n_nan_skips == 0


def test_adaptive_batch_size_per_candidate(corpus: Path, tmp_path: Path) -> None:
    """One candidate shrinks its batch (padded rows in the stacked batch), one grows it."""

    class Resize(TrainerHook):
        def __init__(self, sizes: dict[int, int]) -> None:
            self.sizes = sizes

        def on_step_end(self, trainer, row):
            if row["step"] in self.sizes:
                trainer.set_batch_size(self.sizes[row["step"]])

    plans = [{2: 2, 8: 3}, {5: 6}]
    single, batched = both(
        corpus, tmp_path, [{"iters": 12}, {"iters": 12, "seed": 5}],
        hooks=lambda i: [Resize(plans[i])],
    )  # fmt: skip
    for s, b in zip(single, batched, strict=True):
        assert_same_run(s, b)
    assert [r["batch_size"] for r in rows(batched[0].run_dir)][:4] == [4, 4, 2, 2]


def test_checkpoints_resume_across_both_trainers(corpus: Path, tmp_path: Path) -> None:
    """Batched checkpoints resume in the single trainer, and single ones in a population."""
    const = {"lr_min": 3e-3, "warmup_iters": 0, "eval_interval": 5}  # lr does not depend on iters
    straight = [
        train(tiny(corpus, tmp_path / f"straight{i}", seed=s, **const), progress=False)
        for i, s in enumerate((1, 2))
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    first = train_population(
        [tiny(corpus, a, iters=10, seed=1, **const), tiny(corpus, b, iters=10, seed=2, **const)]
    )
    assert ckpt_io.read_meta(a).step == 10
    resumed_single = train(tiny(corpus, a, seed=1, resume=str(a), **const), progress=False)
    (resumed_batched,) = train_population([tiny(corpus, b, seed=2, resume=str(b), **const)])
    for s, head, tail in ((straight[0], first[0], resumed_single),
                          (straight[1], first[1], resumed_batched)):  # fmt: skip
        assert tail.status == "completed", tail.error
        assert head.losses + tail.losses == pytest.approx(s.losses, rel=REL)
        assert tail.final_val_loss == pytest.approx(s.final_val_loss, rel=REL)
    assert [r["step"] for r in rows(b)] == list(range(1, 21))


def test_a_failing_hook_fails_only_its_candidate(corpus: Path, tmp_path: Path) -> None:
    class Boom(TrainerHook):
        def on_step_end(self, trainer, row):
            if row["step"] == 4:
                raise RuntimeError("hook exploded")

    cfgs = [tiny(corpus, tmp_path / "x", iters=8), tiny(corpus, tmp_path / "y", iters=8, seed=3)]
    bad, good = train_population(cfgs, [[Boom()], []])
    assert bad.status == "failed" and "hook exploded" in bad.error and bad.steps == 4
    assert (Path(bad.run_dir) / "error.log").exists()
    alone = train(tiny(corpus, tmp_path / "z", iters=8, seed=3), progress=False)
    assert good.status == "completed" and good.losses == pytest.approx(alone.losses, rel=REL)


def test_symbio_hook_sees_each_candidates_model(corpus: Path, tmp_path: Path) -> None:
    """Weight metrics and MI forward hooks on ``trainer.model`` give the single run's values."""
    cfg = SymbioConfig(metrics_interval=5, track_mi_profiles=True, adaptive_batch=False)
    columns = ("weight_entropy", "effective_rank", "free_energy", "mi_input_repr", "cusum_grad")
    specs = [{"iters": 10, "activation": "silu"}, {"iters": 10, "activation": "swiglu"}]
    single, batched = both(corpus, tmp_path, specs, hooks=lambda i: [SymbioHook(cfg)])
    for s, b in zip(single, batched, strict=True):
        assert_same_run(s, b)
        srows, brows = rows(s.run_dir), rows(b.run_dir)
        assert [r["step"] for r in brows if "weight_entropy" in r] == [5, 10]
        for rs, rb in zip(srows, brows, strict=True):
            for key in columns:
                assert (key in rs) == (key in rb), key
                if key in rs:
                    assert rb[key] == pytest.approx(rs[key], rel=1e-3, abs=1e-6), key


def test_eval_test_activation_change_and_setup_errors_per_candidate(
    corpus: Path, tmp_path: Path
) -> None:
    """What the search passes ``train()`` per candidate, given per candidate here too:
    a continuation under another activation (gelu -> relu), a confirmation-style run
    evaluated on the test split, and a candidate whose parent checkpoint is missing."""
    from model.errors import CheckpointError
    from model.rundir import run_dir_holder

    split = {"test_fraction": 0.5, "eval_interval": 5}
    (parent,) = train_population([tiny(corpus, tmp_path / "parent", iters=10, **split)])
    resume = {"activation": "relu", "resume": str(tmp_path / "parent"), **split}
    fresh = {"activation": "silu", "seed": 4, "iters": 12, **split}
    alone = [
        train(tiny(corpus, tmp_path / "s0", **resume), progress=False,
              allow_activation_change=True, eval_test=False),
        train(tiny(corpus, tmp_path / "s1", **fresh), progress=False, eval_test=True),
    ]  # fmt: skip
    cfgs = [
        tiny(corpus, tmp_path / "b0", **resume),
        tiny(corpus, tmp_path / "b1", resume=str(tmp_path / "gone"), **split),
        tiny(corpus, tmp_path / "b2", **fresh),
    ]
    options = {"eval_test": [False, None, True], "allow_activation_change": [True, False, False]}
    with pytest.raises(CheckpointError):  # without on_setup_error: train()'s behaviour
        train_population(cfgs, **options)
    assert run_dir_holder(tmp_path / "b0") is None  # the lock of the member set up is released
    seen: list[tuple[int, str]] = []
    cfgs[0] = tiny(corpus, tmp_path / "b0bis", **resume)  # b0 holds its config.json now
    moved, missing, confirm = train_population(
        cfgs, on_setup_error=lambda i, exc: seen.append((i, type(exc).__name__)), **options
    )
    assert seen == [(1, "CheckpointError")]
    assert missing.status == "failed" and missing.error.startswith("CheckpointError: ")
    assert missing.steps == 0 and not missing.losses
    for s, b in zip(alone, (moved, confirm), strict=True):
        assert_same_run(s, b)
    assert moved.test_loss is None and alone[0].test_loss is None
    assert confirm.test_loss == pytest.approx(alone[1].test_loss, rel=REL)
    assert confirm.test_loss != confirm.final_val_loss  # another split
    assert parent.test_loss is not None  # eval_test None: whenever there is a test split
