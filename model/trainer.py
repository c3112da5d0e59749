"""The training loop.

One step: forward/backward over ``grad_accum`` micro-batches (the next batch is
fetched while the GPU works) -> global grad norm and clipping -> one host sync
that reads ``(loss, grad_norm)`` -> NaN/inf guard and spike guard (skip the
optimizer step, record an event) -> optimizer step -> eval (if due) -> hooks in
list order -> the row is appended to ``metrics.jsonl`` -> checkpoint (if due).
The row of a step is therefore recorded (in ``metrics.jsonl``, fsynced before a
checkpoint, and handed to the hooks) before that step's checkpoint exists: a
crash can lose work since the last checkpoint, never a row of a checkpointed
step. With no hooks nothing else runs per step.

A run holds an exclusive lock on its run dir (``model.rundir``) from before its
first write to the end of ``fit()``. On resume in the run's own folder, rows of
``metrics.jsonl`` after the checkpoint's step (work lost with the crash, which the
resumed run re-does) move to ``metrics.superseded.jsonl``, so ``metrics.jsonl``
holds each step once. Under ``model.signals.sigterm_as_interrupt`` a SIGTERM
ends the loop after the current step, like Ctrl-C (status ``interrupted``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import checkpoint as ckpt_io
from model import signals
from model.config import (
    ENV_MEMORY_LIMIT,
    ModelConfig,
    TrainConfig,
    check_inputs,
    check_size,
    memory_limit,
    new_run_id,
)
from model.data import SPLITS, TokenData, read_text, split_tokens, write_token_files
from model.errors import ConfigError
from model.gpt import GPT
from model.hooks import TrainerHook
from model.rundir import is_empty_run_dir, lock_run_dir, remove_stale_temps, tmp_name
from model.sample import generate_text
from model.tokenizer import Tokenizer, tokenizer_from_json, train_tokenizer

#: Dense bf16 peak FLOP/s by accelerator name, for the MFU estimate.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


@dataclass
class TrainResult:
    run_id: str
    run_dir: str
    status: str  # "completed" | "failed" | "interrupted"
    steps: int = 0
    last_loss: float | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    tokens_per_sec_mean: float | None = None
    ms_per_iter_median: float | None = None
    mfu: float | None = None
    param_count: int = 0
    n_spike_skips: int = 0
    n_nan_skips: int = 0
    n_spike_rebaselines: int = 0
    test_loss: float | None = None  # only with eval_test: the held-out split, at the end
    checkpoint_path: str | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    losses: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("losses")
        return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda requested but no CUDA device is available")
    return torch.device(name)


def peak_flops(device: torch.device) -> float | None:
    if env := os.environ.get("ALPHA_PEAK_FLOPS"):
        return float(env)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_iters``, then cosine decay to ``lr_min``.

    The cosine ends at ``lr_decay_iters`` (default ``iters``): a run that will be
    continued later (a search candidate) decays over its whole planned length.
    """
    if step <= cfg.warmup_iters:
        return cfg.lr * step / max(1, cfg.warmup_iters)
    horizon = cfg.lr_decay_iters or cfg.iters
    progress = (step - cfg.warmup_iters) / max(1, horizon - cfg.warmup_iters)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Builds everything a run needs (validating first), then ``fit()`` trains it.

    Hook-facing attributes: ``model, cfg, model_config, device, run_id, run_dir,
    step, batch_size, set_batch_size(), get_batch(), param_count, autocast()``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        hooks: Sequence[TrainerHook] = (),
        *,
        run_id: str | None = None,
        step_offset: int = 0,
        progress: bool = True,
        run_meta: dict[str, Any] | None = None,
        eval_test: bool | None = None,
        allow_activation_change: bool = False,
    ) -> None:
        self.cfg = cfg
        #: evaluate the held-out ``test`` split once, at the end (``TrainResult.test_loss``);
        #: None: when there is one (``test_fraction > 0``). The search passes False for its
        #: candidates: nothing it selects on may see the test split.
        self.eval_test = cfg.test_fraction > 0 if eval_test is None else eval_test
        #: resume a checkpoint of another FFN activation with the same shapes (gelu/relu/silu)
        self.allow_activation_change = allow_activation_change
        self.hooks = tuple(hooks)
        self.step_offset = step_offset
        self.progress = progress
        self.run_meta = dict(run_meta or {})
        # Everything that can reject user input happens before the run dir exists.
        check_inputs(cfg)
        self.device = resolve_device(cfg.device)
        self.ckpt = ckpt_io.read_meta(cfg.resume) if cfg.resume else None
        self.start_step = self.ckpt.step if self.ckpt else 0
        if cfg.iters <= self.start_step:
            raise ConfigError(
                f"--iters: {cfg.iters} is not beyond the checkpoint's step "
                f"{self.start_step}; nothing to resume"
            )
        self.run_id = run_id or (self.ckpt and self.ckpt.run_id) or new_run_id(cfg.domain)
        self.run_dir = self._choose_run_dir()
        if self.ckpt:
            ckpt_io.check_data_state(self.ckpt, SPLITS)
        self.dtype = self._choose_dtype()
        torch.manual_seed(cfg.seed)
        self.tokenizer, parts = self._load_data()
        self._check_size()
        self._build_model()
        # From here on we write, holding the run dir's lock.
        self._lock = lock_run_dir(self.run_dir, fresh=not self._resuming_here)
        try:
            self._prepare_run_dir(parts)
        except BaseException:
            self._lock.release()
            raise
        self.batch_size = cfg.batch
        self.step = step_offset + self.start_step
        self._forward = self._build_forward()
        self._peak = peak_flops(self.device)
        self._flops_per_token = self.model.flops_per_token()

    def _build_model(self) -> None:
        """Model and optimizer; restored from the checkpoint when resuming."""
        cfg = self.cfg
        self.model_config = ModelConfig.from_train(cfg, self.tokenizer.vocab_size)
        if self.ckpt:
            wanted = self.model_config
            if self.allow_activation_change:
                wanted = wanted.model_copy(
                    update={"ffn_activation": self.ckpt.model_config.ffn_activation}
                )
            ckpt_io.check_model_config(self.ckpt, wanted)  # shapes still checked on load
        self.model = GPT(self.model_config, seed=cfg.seed).to(self.device)
        self.param_count = self.model.num_params()
        self.optimizer = torch.optim.AdamW(
            self.model.optimizer_groups(cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=self.device.type == "cuda",
        )
        if self.ckpt:
            ckpt_io.load_model(self.ckpt.path, self.model)
            ckpt_io.load_training_state(self.ckpt.path, self.ckpt, self.optimizer)

    def _prepare_run_dir(self, parts: dict[str, np.ndarray]) -> None:
        """Token files, samplers, tokenizer.json and config.json in the run dir."""
        cfg, vocab = self.cfg, self.tokenizer.vocab_size
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._resuming_here:  # temp files of a killed writer (we hold the lock): free the space
            remove_stale_temps(self.run_dir)
        paths = write_token_files(parts, vocab, self.run_dir / "data")
        data_seed = cfg.resolved_data_seed
        self.data = TokenData(paths, vocab, cfg.block, self.device, data_seed)
        self._probe = TokenData(paths, vocab, cfg.block, self.device, data_seed + 1)  # for hooks
        if self.ckpt and self.ckpt.meta.get("data_state"):
            self.data.load_state_dict(self.ckpt.meta["data_state"])
        self._init_spike_guard()
        self.best_val_loss = self.ckpt.meta.get("best_val_loss") if self.ckpt else None
        self.checkpoint_path = self.run_dir / ckpt_io.FILENAME
        if self._resuming_here:
            self._supersede_rows_after(self.step_offset + self.start_step)
        _atomic_write(self.run_dir / "tokenizer.json", self.tokenizer.to_json())
        _atomic_write(self.run_dir / "config.json", json.dumps(self.config_dict(), indent=2))

    # -- setup helpers ----------------------------------------------------------

    def _choose_run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.run_dir:
            path = Path(cfg.run_dir).expanduser()
        elif self.ckpt:
            path = self.ckpt.path.parent
        else:
            path = Path("runs") / self.run_id
        resuming_here = self.ckpt is not None and path.resolve() == self.ckpt.path.parent.resolve()
        self._resuming_here = resuming_here
        if path.exists() and not resuming_here:
            if not path.is_dir():
                raise ConfigError(f"--run-dir: {path} exists and is not a directory")
            if not is_empty_run_dir(path):
                raise ConfigError(
                    f"--run-dir: {path} is not empty (use --resume to continue a run)"
                )
        return path

    def _check_size(self) -> None:
        """Refuse a model or batch that cannot fit, before anything is allocated.

        The limit is the GPU's memory on CUDA, else the host's (``$ALPHA_MEMORY_LIMIT``
        wins); under bf16 autocast activations count 2 bytes.
        """
        limit = memory_limit("cpu")
        if self.device.type == "cuda" and not os.environ.get(ENV_MEMORY_LIMIT, "").strip():
            limit = torch.cuda.get_device_properties(self.device).total_memory
        act_bytes = 2 if self.dtype == torch.bfloat16 else 4
        check_size(self.cfg, self.tokenizer.vocab_size, limit=limit, activation_bytes=act_bytes)

    def _supersede_rows_after(self, step: int) -> None:
        """Move rows after ``step`` (the checkpoint) to ``metrics.superseded.jsonl``."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep, drop = [], []
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                row_step = json.loads(line).get("step")
                ok = isinstance(row_step, int) and row_step <= step
            except (ValueError, AttributeError):
                ok = False  # a torn last line of a crash
            (keep if ok else drop).append(line if line.endswith("\n") else line + "\n")
        if not drop:
            return
        with (self.run_dir / "metrics.superseded.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(drop)
            f.flush()
            os.fsync(f.fileno())
        _atomic_write(path, "".join(keep))

    def _choose_dtype(self) -> torch.dtype:
        if self.cfg.dtype == "float32" or (self.cfg.dtype == "auto" and self.device.type != "cuda"):
            return torch.float32
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
            torch.backends.cudnn.allow_tf32 = True
        return torch.bfloat16

    def _load_data(self) -> tuple[Tokenizer, dict[str, np.ndarray]]:
        cfg = self.cfg
        text = read_text(cfg.data, "--data")
        val_text = read_text(cfg.val_data, "--val-data") if cfg.val_data else None
        if self.ckpt:
            tok = tokenizer_from_json(self.ckpt.meta.get("tokenizer", ""))
        else:
            texts = [text] if val_text is None or cfg.tokenizer == "bpe" else [text, val_text]
            tok = train_tokenizer(cfg.tokenizer, texts, cfg.vocab_size)
        try:
            tokens = tok.encode(text)
            val_tokens = tok.encode(val_text) if val_text is not None else None
        except ConfigError as exc:
            raise ConfigError(f"--data: {exc}") from None
        return tok, split_tokens(tokens, val_tokens, cfg.block, cfg.test_fraction)

    def _build_forward(self):
        if not self.cfg.compile:
            return self.model
        compiled = torch.compile(self.model)
        base = self.cfg.batch

        def forward(x: torch.Tensor, y: torch.Tensor):
            # The configured batch size runs a static-shape graph (fastest kernels). The
            # first other size compiles one graph with a symbolic batch dim that serves
            # every later size: set_batch_size() costs one recompile, not one per size.
            if x.size(0) != base:
                torch._dynamo.maybe_mark_dynamic(x, 0)
                torch._dynamo.maybe_mark_dynamic(y, 0)
            return compiled(x, y)

        return forward

    def config_dict(self) -> dict[str, Any]:
        mc = self.model_config
        return {
            **self.cfg.model_dump(),
            "ffn_activation": mc.ffn_activation,
            "ffn_dim": mc.ffn_dim,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "model_config": mc.model_dump(),
            "param_count": self.param_count,
            "device": self.device.type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "tokenizer_vocab_size": self.tokenizer.vocab_size,
            "data_tokens": {s: len(a) for s, a in self.data.arrays.items()},
            "resumed_from": str(self.ckpt.path) if self.ckpt else None,
            "start_step": self.start_step,
            "step_offset": self.step_offset,
            **self.run_meta,  # e.g. symbio, symbio_config (the resolved symbio section), symbio_mode
        }

    # -- hook-facing API ----------------------------------------------------------

    def set_batch_size(self, n: int) -> None:
        """Change the micro-batch size from the next step on."""
        if int(n) < 1:
            raise ValueError(f"batch size must be >= 1, got {n}")
        self.batch_size = int(n)

    def get_batch(
        self, split: str, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch for hooks; drawn from its own stream so training batches are unaffected."""
        return self._probe.get_batch(split, batch_size or self.batch_size)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- the loop ----------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to ``cfg.iters``; the run dir's lock is released at the end."""
        try:
            return self._fit()
        finally:
            self.release_lock()

    def release_lock(self) -> None:
        """Let another process use the run dir (``fit()`` does this when it ends)."""
        self._lock.release()

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        result = TrainResult(
            self.run_id, str(self.run_dir), "completed", param_count=self.param_count
        )
        self._result = result
        times: list[float] = []
        tps: list[float] = []
        t_start = time.perf_counter()
        bar = self._progress_bar()
        jsonl = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8", buffering=1)
        try:
            for hook in self.hooks:
                hook.on_train_start(self)
            self.model.train()
            self._next = self._fetch(self.batch_size)
            with signals.training_loop():
                for local in range(self.start_step + 1, cfg.iters + 1):
                    row = self._step(local, t_start, result)
                    times.append(row["ms_per_iter"])
                    tps.append(row["tokens_per_sec"])
                    for hook in self.hooks:
                        hook.on_step_end(self, row)
                    jsonl.write(json.dumps(row, default=_json_default) + "\n")  # line-buffered
                    if self._checkpoint_due:  # only once the step's row is recorded
                        os.fsync(jsonl.fileno())
                        self.save_checkpoint(local)
                        result.checkpoint_path = str(self.checkpoint_path)
                    self._update_bar(bar, local, row)
                    if signals.stop_requested():
                        raise signals.Terminated
        except KeyboardInterrupt:
            result.status = "interrupted"
        except Exception as exc:  # noqa: BLE001 - recorded in the result, traceback in the run dir
            result.status = "failed"
            result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            with contextlib.suppress(OSError):  # e.g. the disk that failed the run is full
                _atomic_write(self.run_dir / "error.log", traceback.format_exc())
        finally:
            jsonl.close()
            if bar is not None:
                bar.close()
        return self.finish_result(result, times, tps, time.perf_counter() - t_start)

    def finish_result(
        self, result: TrainResult, times: list[float], tps: list[float], elapsed_s: float
    ) -> TrainResult:
        """The run's epilogue: step-time summary, sample, ``on_train_end`` hooks.

        Shared with ``model.population``, which steps many trainers at once.
        """
        warm = slice(1, None) if len(times) > 1 else slice(None)  # step 1 pays the warm-up
        result.elapsed_s = elapsed_s
        result.ms_per_iter_median = statistics.median(times[warm]) if times else None
        result.tokens_per_sec_mean = statistics.fmean(tps[warm]) if tps else None
        result.mfu = self._mfu(result.tokens_per_sec_mean)
        result.best_val_loss = self.best_val_loss
        if result.status == "completed":
            self._write_sample()
        for hook in self.hooks:
            try:
                hook.on_train_end(self, result)
            except Exception as exc:  # noqa: BLE001 - on_train_end must not break the run
                print(
                    f"warning: hook {type(hook).__name__}.on_train_end failed: {exc}",
                    file=sys.stderr,
                )
        return result

    def _fetch(self, batch_size: int):
        state = self.data.rngs["train"].bit_generator.state  # data position before the draw
        return state, self.data.get_batch("train", batch_size)

    def _step(self, local: int, t_start: float, result: TrainResult) -> dict[str, Any]:
        """One optimizer step, then eval and checkpoint when due; returns the step's row."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = lr_at(cfg, local)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch_size = self.batch_size
        loss_t, norm_t = self._forward_backward(batch_size)
        loss_v, norm_v = torch.stack([loss_t, norm_t.float()]).tolist()  # the one host sync
        events = self._update(loss_v, norm_v, result)
        dt = time.perf_counter() - t0
        self.step = self.step_offset + local
        result.steps, result.last_loss = local, _finite(loss_v)
        result.losses.append(loss_v)
        val_loss = self._evaluate_if_due(local, result)
        self._checkpoint_due = self.is_checkpoint_step(local, val_loss)
        if self._checkpoint_due:
            events.append("checkpoint")  # written by fit() once this row is recorded
        return self.step_row(loss_v, norm_v, val_loss, lr, batch_size, dt, t_start, events)

    def step_row(
        self,
        loss_v: float,
        norm_v: float,
        val_loss: float | None,
        lr: float,
        batch_size: int,
        dt: float,
        t_start: float,
        events: list[str],
    ) -> dict[str, Any]:
        """The ``metrics`` row of the step just taken (shared with ``model.population``)."""
        cfg = self.cfg
        clip_coef = _clip_coef(cfg.grad_clip, norm_v)
        tokens = batch_size * cfg.block * cfg.grad_accum
        return {
            "run_id": self.run_id,
            "step": self.step,
            "loss": _finite(loss_v),
            "val_loss": val_loss,
            "lr": lr,
            "grad_norm": _finite(norm_v),
            "clip_coef": clip_coef,
            "clip_pct": None if clip_coef is None else 1.0 - clip_coef,
            "tokens_per_sec": tokens / dt,
            "ms_per_iter": dt * 1000.0,
            "elapsed_ms": (time.perf_counter() - t_start) * 1000.0,
            "batch_size": batch_size,
            "mfu": self._mfu(tokens / dt),
            "timestamp": datetime.now(UTC),
            "event": ",".join(events) or None,
        }

    def _forward_backward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate gradients over ``grad_accum`` micro-batches; clip; (mean loss, norm)."""
        accum = self.cfg.grad_accum
        if self._next[1][0].size(0) != batch_size:  # a hook changed the batch size
            self._next = self._fetch(batch_size)
        loss_sum = None
        for _ in range(accum):
            x, y = self._next[1]
            with self.autocast():
                _, loss = self._forward(x, y)
            self._next = self._fetch(batch_size)  # overlaps with the GPU work
            (loss / accum).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        return loss_sum / accum, norm

    def _init_spike_guard(self) -> None:
        """The spike threshold in force; a re-baselined one survives a resume."""
        cfg, saved = self.cfg, (self.ckpt.meta if self.ckpt else {})
        self.spike_threshold = cfg.spike_threshold
        same_flag = saved.get("train_config", {}).get("spike_threshold") == cfg.spike_threshold
        if same_flag and saved.get("spike_threshold"):
            self.spike_threshold = float(saved["spike_threshold"])
        self._spike_run: list[float] = []  # grad norms of the current run of spike skips

    def _update(self, loss_v: float, norm_v: float, result: TrainResult) -> list[str]:
        """The optimizer step, unless the NaN/inf guard or the spike guard skips it."""
        events = []
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            events.append("nan_skip")
            result.n_nan_skips += 1
        elif self._is_spike(norm_v, result, events):
            events.append("spike_skip")
            result.n_spike_skips += 1
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return events

    def _is_spike(self, norm_v: float, result: TrainResult, events: list[str]) -> bool:
        """Is this step a spike to skip (grad norm above the threshold)?

        After ``spike_patience`` spikes in a row the norms have a new scale, not
        a spike: the threshold is re-baselined to twice their median (event
        ``spike_rebaseline``), so the guard cannot freeze a run forever.
        """
        if not (self.spike_threshold > 0 and norm_v > self.spike_threshold):
            self._spike_run.clear()
            return False
        self._spike_run.append(norm_v)
        patience = self.cfg.spike_patience
        if not patience or len(self._spike_run) < patience:
            return True
        self.spike_threshold = 2.0 * statistics.median(self._spike_run)
        self._spike_run.clear()
        result.n_spike_rebaselines += 1
        events.append("spike_rebaseline")
        return norm_v > self.spike_threshold

    def _evaluate_if_due(self, local: int, result: TrainResult) -> float | None:
        cfg = self.cfg
        if not (local % cfg.eval_interval == 0 or local == cfg.iters):
            return None
        val_loss = self.evaluate()
        result.final_val_loss = val_loss
        if val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss):
            self.best_val_loss = val_loss
        if self.eval_test and local == cfg.iters:
            result.test_loss = self.evaluate("test")
        return val_loss

    def is_checkpoint_step(self, local: int, val_loss: float | None) -> bool:
        """The last step, every ``checkpoint_interval``, else every eval (shared with population)."""
        cfg = self.cfg
        if local == cfg.iters:
            return True
        if cfg.checkpoint_interval:
            return local % cfg.checkpoint_interval == 0
        return val_loss is not None

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> float | None:
        """Mean loss over the fixed evaluation set of ``split``.

        ``eval_iters`` batches of ``cfg.batch`` windows evenly strided over the
        split (``TokenData.fixed_batches``): every evaluation of the run, and
        every run on the same data, sees the same windows.
        """
        if split not in self.data.arrays:
            raise ConfigError(f"evaluate: no {split!r} split (set --test-fraction for a test split)")
        self.model.eval()
        losses = torch.zeros(self.cfg.eval_iters, device=self.device)
        batches = self.data.fixed_batches(split, self.cfg.eval_iters, self.cfg.batch)
        for k, (x, y) in enumerate(batches):
            with self.autocast():
                _, loss = self._forward(x, y)
            losses[k] = loss
        self.model.train()
        return _finite(losses.mean().item())

    def save_checkpoint(self, local: int) -> Path:
        meta = {
            "run_id": self.run_id,
            "step": local,
            "model_config": self.model_config.model_dump(),
            "train_config": self.cfg.model_dump(),
            "tokenizer": self.tokenizer.to_json(),
            "data_state": self._data_state_for_checkpoint(),
            "best_val_loss": self.best_val_loss,
            "spike_threshold": self.spike_threshold,
            "run_meta": self.run_meta,
            "created_at": datetime.now(UTC).isoformat(),
            "torch_version": torch.__version__,
        }
        return ckpt_io.save(
            self.checkpoint_path, model=self.model, optimizer=self.optimizer, meta=meta
        )

    def _data_state_for_checkpoint(self) -> dict[str, Any]:
        state = self.data.state_dict()
        state["train"] = self._next[0]  # the prefetched batch is drawn again on resume
        return state

    def _mfu(self, tokens_per_sec: float | None) -> float | None:
        if self._peak is None or not tokens_per_sec:
            return None
        return self._flops_per_token * tokens_per_sec / self._peak

    def _write_sample(self) -> None:
        if self.cfg.sample_tokens <= 0:
            return
        try:
            text = generate_text(
                self.model, self.tokenizer, "\n", self.cfg.sample_tokens, seed=self.cfg.seed
            )
            _atomic_write(self.run_dir / "samples.txt", text)
        except Exception as exc:  # noqa: BLE001 - a sample is a nicety, never a failure
            print(f"warning: could not write a sample: {exc}", file=sys.stderr)

    # -- progress ------------------------------------------------------------------

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.cfg.iters,
            initial=self.start_step,
            desc=self.run_id,
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
            leave=True,
        )

    def _update_bar(self, bar, local: int, row: dict[str, Any]) -> None:
        if bar is None:
            return
        if (
            row["val_loss"] is not None
            or local % self.cfg.log_interval == 0
            or local == self.cfg.iters
        ):
            bar.update(local - bar.n)
            val = f"{self.best_val_loss:.4f}" if self.best_val_loss is not None else "-"
            loss = f"{row['loss']:.4f}" if row["loss"] is not None else "nan"
            bar.set_postfix_str(
                f"loss {loss} val {val} {row['tokens_per_sec']:,.0f} tok/s", refresh=False
            )


def train(
    cfg: TrainConfig,
    hooks: Sequence[TrainerHook] = (),
    *,
    run_id: str | None = None,
    step_offset: int = 0,
    progress: bool = True,
    run_meta: dict[str, Any] | None = None,
    **options: Any,
) -> TrainResult:
    """Train one run; ``ConfigError`` for bad input (raised before anything is written).

    ``options``: ``Trainer`` keywords (``eval_test``, ``allow_activation_change``).
    """
    trainer = Trainer(
        cfg,
        hooks,
        run_id=run_id,
        step_offset=step_offset,
        progress=progress,
        run_meta=run_meta,
        **options,
    )
    return trainer.fit()


def _clip_coef(grad_clip: float, norm: float) -> float | None:
    """min(1, grad_clip / grad_norm); 1 when clipping is off; None for a non-finite norm."""
    if not math.isfinite(norm):
        return None
    return min(1.0, grad_clip / norm) if grad_clip > 0 and norm > 0 else 1.0


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def _atomic_write(path: Path, text: str) -> None:
    tmp = tmp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
