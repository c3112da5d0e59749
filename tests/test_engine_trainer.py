"""The training loop on the CPU: resume exactness, rows, hooks, guards, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import checkpoint as ckpt_io
from model.config import build_train_config
from model.errors import CheckpointError, ConfigError
from model.hooks import TrainerHook
from model.trainer import Trainer, lr_at, train

ROW_KEYS = {
    "run_id", "step", "loss", "val_loss", "lr", "grad_norm", "clip_coef", "clip_pct",
    "tokens_per_sec", "ms_per_iter", "elapsed_ms", "batch_size", "mfu", "timestamp", "event",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(corpus: Path, run_dir: Path, **kw):
    values = dict(
        data=str(corpus), device="cpu", iters=40, batch=4, block=32, dim=32, heads=2,
        layers=2, dropout=0.1, lr=3e-3, lr_min=3e-3, warmup_iters=0, eval_interval=10,
        eval_iters=2, sample_tokens=0, run_dir=str(run_dir), seed=7,
    )  # fmt: skip
    values.update(kw)
    return build_train_config(values)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(corpus: Path, tmp_path: Path) -> None:
    """20 steps + resume 20 steps gives the very losses of 40 straight steps."""
    straight = train(tiny(corpus, tmp_path / "a", iters=40), progress=False)
    first = train(tiny(corpus, tmp_path / "b", iters=20), progress=False)
    resumed = train(
        tiny(corpus, tmp_path / "b", iters=40, resume=str(tmp_path / "b")), progress=False
    )
    assert straight.status == first.status == resumed.status == "completed"
    assert resumed.run_id == first.run_id
    assert len(straight.losses) == 40 and len(resumed.losses) == 20
    assert first.losses + resumed.losses == straight.losses  # bit-identical
    steps = [r["step"] for r in rows(tmp_path / "b")]
    assert steps == list(range(1, 41))


def test_rows_hooks_order_and_outputs(corpus: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, object]] = []

    class Recorder(TrainerHook):
        def on_train_start(self, trainer):
            seen.append(("start", trainer.step, trainer.param_count))

        def on_step_end(self, trainer, row):
            assert trainer.step == row["step"]
            on_disk = (trainer.run_dir / "metrics.jsonl").read_text().count("\n")
            assert on_disk == row["step"] - 1 - 100  # the row is written after the hooks
            seen.append(("step", row["step"], row["val_loss"]))
            row["weight_entropy"] = 1.5  # hooks may add lake columns

        def on_train_end(self, trainer, result):
            seen.append(("end", result.steps, result.status))

    run_dir = tmp_path / "run"
    result = train(
        tiny(corpus, run_dir, iters=12, warmup_iters=4, lr_min=3e-4, sample_tokens=20),
        [Recorder()],
        run_id="r-test",
        step_offset=100,
        progress=False,
    )
    assert result.status == "completed" and result.steps == 12, result.error
    assert seen[0][0] == "start" and seen[-1] == ("end", 12, "completed")
    evals = {s: v for kind, s, v in seen if kind == "step" and v is not None}
    assert sorted(evals) == [110, 112]  # eval ran before the hooks saw the row
    out = rows(run_dir)
    assert [r["step"] for r in out] == list(range(101, 113))
    for r in out:
        assert set(r) == ROW_KEYS | {"weight_entropy"}
        assert 0.0 <= r["clip_pct"] <= 1.0 and r["clip_coef"] == pytest.approx(1 - r["clip_pct"])
        assert r["run_id"] == "r-test" and r["batch_size"] == 4
    assert out[0]["lr"] == pytest.approx(3e-3 / 4)  # warmup
    assert out[-1]["lr"] == pytest.approx(3e-4)  # cosine reaches lr_min
    assert out[-1]["event"] == "checkpoint"
    config = json.loads((run_dir / "config.json").read_text())
    for key in ("lr", "grad_clip", "warmup_iters", "spike_threshold", "ffn_activation"):
        assert key in config
    assert config["ffn_dim"] == 128 and config["run_id"] == "r-test"
    assert (run_dir / "samples.txt").read_text().strip()
    assert ckpt_io.read_meta(run_dir).step == 12


def test_clipping_and_spike_skip(corpus: Path, tmp_path: Path) -> None:
    cfg = tiny(corpus, tmp_path / "run", iters=5, grad_clip=1e-3, spike_threshold=1e-6)
    trainer = Trainer(cfg, progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert result.n_spike_skips == 5
    for p, q in zip(trainer.model.parameters(), before, strict=True):
        assert torch.equal(p, q)  # no optimizer step was taken
    for r in rows(tmp_path / "run"):
        assert r["event"].startswith("spike_skip")
        assert r["clip_coef"] == pytest.approx(1e-3 / r["grad_norm"])
        assert r["clip_pct"] > 0.9


def test_nan_guard_skips_and_continues(corpus: Path, tmp_path: Path) -> None:
    class Poison(TrainerHook):
        def on_step_end(self, trainer, row):
            if row["step"] == 3:
                with torch.no_grad():
                    trainer.model.wte.weight[0, 0] = float("nan")

    result = train(tiny(corpus, tmp_path / "run", iters=6), [Poison()], progress=False)
    assert result.status == "completed"
    assert result.n_nan_skips >= 1
    bad = [r for r in rows(tmp_path / "run") if r["event"] and "nan_skip" in r["event"]]
    assert bad and all(r["loss"] is None and r["grad_norm"] is None for r in bad)
    assert all(r["clip_coef"] is None and r["clip_pct"] is None for r in bad)


def test_set_batch_size_takes_effect_next_step(corpus: Path, tmp_path: Path) -> None:
    class Shrink(TrainerHook):
        def on_step_end(self, trainer, row):
            if row["step"] == 2:
                trainer.set_batch_size(2)
            x, y = trainer.get_batch("val", 3)
            assert x.shape == y.shape == (3, 32)

    train(tiny(corpus, tmp_path / "run", iters=4), [Shrink()], progress=False)
    assert [r["batch_size"] for r in rows(tmp_path / "run")] == [4, 4, 2, 2]


def test_compile_batch_dim_is_dynamic(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """Changing the batch size under --compile must not recompile per size."""
    graphs: list[int] = []

    def counting_backend(gm, example_inputs):
        graphs.append(1)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend=counting_backend))

    class Vary(TrainerHook):
        def on_step_end(self, trainer, row):
            trainer.set_batch_size([4, 6, 3, 5, 8, 2][row["step"] % 6])

    torch._dynamo.reset()
    result = train(
        tiny(corpus, tmp_path / "run", iters=8, eval_interval=4, compile=True),
        [Vary()],
        progress=False,
    )
    assert result.status == "completed", result.error
    assert len({r["batch_size"] for r in rows(tmp_path / "run")}) >= 5
    # static train + eval graphs, then one train graph with a symbolic batch dim
    assert len(graphs) <= 4, len(graphs)


def test_lr_schedule() -> None:
    cfg = build_train_config({"iters": 100, "lr": 1.0, "lr_min": 0.1, "warmup_iters": 10})
    assert lr_at(cfg, 5) == pytest.approx(0.5)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 55) == pytest.approx(0.55)
    assert lr_at(cfg, 100) == pytest.approx(0.1)


def test_foreign_unreadable_and_mismatched_checkpoints(corpus: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an Alpha checkpoint"):
        ckpt_io.read_meta(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        ckpt_io.read_meta(garbage)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ckpt_io.read_meta(tmp_path / "nope")

    run = tmp_path / "run"
    train(tiny(corpus, run, iters=2), progress=False)
    other = tiny(corpus, tmp_path / "other", iters=4, dim=64, resume=str(run))
    with pytest.raises(CheckpointError, match="shape mismatch.*n_embd=32 in the checkpoint but 64"):
        Trainer(other, progress=False)
    assert not (tmp_path / "other").exists()  # nothing half-written
    data = (run / "checkpoint.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    damaged = tiny(corpus, tmp_path / "damaged", iters=4, resume=str(truncated))
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        Trainer(damaged, progress=False)
    assert not (tmp_path / "damaged").exists()
    with pytest.raises(ConfigError, match="not beyond the checkpoint's step"):
        Trainer(tiny(corpus, run, iters=2, resume=str(run)), progress=False)


def test_checkpoint_without_ffn_activation_loads_as_gelu(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(tiny(corpus, run, iters=1), progress=False)
    trainer.fit()
    meta = ckpt_io.read_meta(run)
    legacy = dict(meta.meta)
    legacy["model_config"] = {
        k: v for k, v in legacy["model_config"].items() if k not in ("ffn_activation", "ffn_dim")
    }
    path = tmp_path / "legacy.safetensors"
    ckpt_io.save(path, model=trainer.model, optimizer=trainer.optimizer, meta=legacy)
    loaded = ckpt_io.read_meta(path)
    assert loaded.model_config.ffn_activation == "gelu"
    assert loaded.model_config.ffn_dim == 4 * 32
    from model.sample import generate_text, load_for_sampling

    model, tok = load_for_sampling(path)
    assert len(generate_text(model, tok, "ROMEO:", 10)) == len("ROMEO:") + 10


def test_evaluate_runs_without_dropout_on_a_fixed_val_set(corpus: Path, tmp_path: Path) -> None:
    """Eval is deterministic (dropout off) and sees the same windows every time."""
    trainer = Trainer(tiny(corpus, tmp_path / "run", dropout=0.5, eval_iters=3), progress=False)
    state = trainer.data.state_dict()
    first = trainer.evaluate()
    assert trainer.model.training  # back in training mode
    assert trainer.evaluate() == first  # the same windows, no dropout noise
    assert trainer.data.state_dict() == state  # eval draws nothing from the streams
