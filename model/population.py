"""Batched population training: P candidates trained at once on one device.

``train_population(cfgs, hooks)`` trains every config like ``model.trainer.train``
would, but one step of the whole population is one forward and one backward pass
per *shape family* instead of P of each, so a small model's kernel launches serve
all candidates.

How it is put together (and why it matches the single trainer):

- **Setup is the single trainer's.** One ``model.trainer.Trainer`` per config
  validates, seeds and initialises the model, builds data, optimizer, run dir and
  ``config.json`` and restores ``cfg.resume`` exactly as ``train()`` does.
- **Stacked storage, per-candidate views.** Candidates whose parameters have the
  same shapes (vocab, block, layers, heads, dim, FFN kind and width, dropout,
  dtype, grad accumulation) form a family. Every parameter of a family is one
  ``[P, *shape]`` tensor (a leaf with a persistent ``.grad``); each candidate's
  ``GPT`` module gets ``nn.Parameter`` aliases of its slice, whose ``.grad`` is
  the slice of the stacked grad. So ``trainer.model`` always holds the current
  weights (hooks, MI forward hooks, samples and checkpoints just work), and each
  candidate's own ``torch.optim.AdamW`` (the trainer's, fused on CUDA) updates
  them in place: per-candidate lr, weight-decay groups, moments and step count
  with torch's numerics, and checkpoints in the unchanged format.
- **One batched forward per family** (``_Family.losses``, plain torch ops):
  embeddings through a ``[P*V, C]`` table, ``torch.bmm`` for every linear layer
  (LayerNorm gains folded into the next layer's weight), flash SDPA over a
  ``P*B`` batch, each activation applied to its candidates' slice (members are
  sorted by activation), per-candidate mean cross-entropy. The backward of the
  summed losses gives every candidate exactly its own gradient. (``torch.func``
  ``vmap`` over ``GPT.forward`` was tried: it has no batching rule for flash
  SDPA, falls back to a per-candidate loop, and cannot mix activations.)
- **Per candidate:** its own data stream (its trainer's prefetching sampler),
  gradient clipping (``clip_grad_norm_`` over its parameters), NaN/spike guard
  (its update is skipped, the others go on), eval on its own validation batches
  (batched across the family), checkpoints at the same steps, ``metrics.jsonl``
  rows with the same keys, hooks with its own ``Trainer`` object.
- **Adaptive batch** (``set_batch_size``): a family runs its largest batch; a
  smaller candidate's batch is padded with rows whose targets are ignored, so
  its loss is the mean over its own rows only and padded rows add no gradient.
- **Timing:** ``ms_per_iter`` of a candidate's row is the wall time of the
  population step that trained it (all candidates together) and
  ``tokens_per_sec`` its own tokens over that time; summed over the population it
  is the device's throughput.

Differences from the single trainer, by design: with dropout > 0 the masks are
drawn for the whole family at once (same distribution, other draws); on CUDA
bf16 matmuls of another shape round differently, so losses agree within bf16
noise, not bitwise (fp32 on CPU: ~1e-6). ``cfg.compile`` compiles the batched
forward of a family (when every member asked for it), not each candidate's
``GPT``. A candidate that finishes early or whose hook raises stops being
updated while its family still computes its slice (wasted work, not wrong).

Imports torch, numpy and ``model.*`` only.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model import signals
from model.config import TrainConfig, check_inputs
from model.errors import ConfigError
from model.hooks import TrainerHook
from model.trainer import (
    Trainer,
    TrainResult,
    _atomic_write,
    _finite,
    _json_default,
    lr_at,
)

IGNORE = -100  # F.cross_entropy's ignore_index: targets of padded rows


def train_population(
    cfgs: Sequence[TrainConfig],
    hooks: Sequence[Sequence[TrainerHook]] | None = None,
    *,
    run_id: str | Sequence[str | None] | None = None,
    step_offsets: Sequence[int] | None = None,
    progress: bool = False,
    run_metas: Sequence[dict[str, Any] | None] | None = None,
    eval_test: bool | None | Sequence[bool | None] = None,
    allow_activation_change: bool | Sequence[bool] = False,
    on_setup_error: Callable[[int, Exception], None] | None = None,
) -> list[TrainResult]:
    """Train ``cfgs`` as one batched population; one ``TrainResult`` per config, in order.

    Per candidate the semantics are those of ``model.trainer.train(cfgs[i],
    hooks[i], run_id=..., step_offset=step_offsets[i], run_meta=run_metas[i],
    eval_test=..., allow_activation_change=...)``; those two take one value for
    all or one per candidate. ``run_id``: one id for all (a search) or one per
    candidate. ``ConfigError`` for bad input, raised before anything is written
    where it can be checked up front (data files, devices, distinct run dirs).

    ``on_setup_error``: without it, a candidate whose setup (``Trainer(...)``)
    raises stops the whole population (``train()`` would raise too). With it, it
    is called with the candidate's index and the exception; if it returns, that
    candidate is left out (its result: ``failed`` with the error) and the others
    train; if it raises, the population stops with that exception.
    """
    return Population(
        cfgs, hooks, run_id=run_id, step_offsets=step_offsets, progress=progress,
        run_metas=run_metas, eval_test=eval_test,
        allow_activation_change=allow_activation_change, on_setup_error=on_setup_error,
    ).fit()  # fmt: skip


class _Member:
    """One candidate: its trainer, its slot in a family and its running totals."""

    def __init__(self, index: int, trainer: Trainer) -> None:
        self.index = index
        self.trainer = trainer
        self.result = TrainResult(
            trainer.run_id, str(trainer.run_dir), "completed", param_count=trainer.param_count
        )
        trainer._result = self.result
        self.local = trainer.start_step + 1  # the next local step
        self.active = True
        self.times: list[float] = []
        self.tps: list[float] = []
        self.t_end: float | None = None
        self.jsonl = None
        self.checkpoint_due = False  # this step's checkpoint, written after its row
        self.params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        self.family: _Family | None = None
        self.slot = 0  # position in its family
        self.pos = 0  # position in the step's loss/norm vectors
        # per-step scratch
        self.lr = 0.0
        self.batch_size = trainer.batch_size

    @property
    def cfg(self) -> TrainConfig:
        return self.trainer.cfg

    @property
    def done(self) -> bool:
        return self.local > self.cfg.iters


def _family_key(t: Trainer) -> tuple:
    mc = t.model_config
    swiglu = mc.ffn_activation == "swiglu"
    return (
        mc.vocab_size, mc.block_size, mc.n_layer, mc.n_head, mc.n_embd, swiglu, mc.ffn_dim,
        mc.dropout, t.dtype, t.cfg.grad_accum,
    )  # fmt: skip


class _Family:
    """Candidates of one parameter shape, their stacked parameters and batched forward."""

    def __init__(self, members: list[_Member]) -> None:
        members.sort(key=lambda m: (m.trainer.model_config.ffn_activation, m.index))
        self.members = members
        first = members[0].trainer
        self.mc = first.model_config
        self.device = first.device
        self.autocast = first.autocast
        self.accum = first.cfg.grad_accum
        self.P = len(members)
        models = [m.trainer.model for m in members]
        names = [n for n, _ in models[0].named_parameters()]  # tied lm_head counted once
        per_model = [dict(model.named_parameters()) for model in models]
        self.w: dict[str, nn.Parameter] = {}
        with torch.no_grad():
            for name in names:
                stacked = nn.Parameter(torch.stack([pm[name].detach() for pm in per_model]))
                stacked.grad = torch.zeros_like(stacked)
                self.w[name] = stacked
        for slot, m in enumerate(members):
            m.family, m.slot = self, slot
            _rebind(m, self.w, slot)
        self.grads = [p.grad for p in self.w.values()]
        self.acts = self._activation_slices()
        P, V = self.P, self.mc.vocab_size
        self.vocab_offsets = (torch.arange(P, device=self.device) * V).view(P, 1, 1)
        self._consts: dict[tuple, torch.Tensor] = {}
        self.base_batch = first.cfg.batch
        self._compiled = (
            torch.compile(self.losses) if all(m.cfg.compile for m in members) else None
        )

    def run(
        self, idx: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor | None, train: bool
    ) -> torch.Tensor:
        """``losses``, through ``torch.compile`` when every member asked for ``--compile``.

        As in ``Trainer``: the configured batch runs a static-shape graph; the first
        other size compiles one graph with a symbolic batch dim for all later sizes.
        """
        if self._compiled is None:
            return self.losses(idx, targets, counts, train)
        if idx.size(1) != self.base_batch:
            torch._dynamo.maybe_mark_dynamic(idx, 1)
            torch._dynamo.maybe_mark_dynamic(targets, 1)
        return self._compiled(idx, targets, counts, train)

    def _activation_slices(self) -> list[tuple[int, int, Callable]]:
        """``(start, end, fn)`` per run of equal activations (members are sorted by it)."""
        if self.mc.ffn_activation == "swiglu":
            return []
        out: list[tuple[int, int, Callable]] = []
        for slot, m in enumerate(self.members):
            act = m.trainer.model_config.ffn_activation
            fn = m.trainer.model.blocks[0].mlp.act  # the module's own function
            if out and self.members[out[-1][0]].trainer.model_config.ffn_activation == act:
                out[-1] = (out[-1][0], slot + 1, fn)
            else:
                out.append((slot, slot + 1, fn))
        return out

    def const(self, values: Sequence[float]) -> torch.Tensor:
        """A small float tensor on the device, cached (avoids a blocking copy per step)."""
        key = tuple(values)
        t = self._consts.get(key)
        if t is None:
            t = self._consts[key] = torch.tensor(key, dtype=torch.float32, device=self.device)
        return t

    # -- the batched model ----------------------------------------------------------

    def losses(
        self, idx: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor | None, train: bool
    ) -> torch.Tensor:
        """Mean cross-entropy per candidate, ``[P]``; ``idx``/``targets`` are ``[P, B, T]``.

        ``counts`` (valid tokens per candidate) when some rows are padding, else None.
        """
        mc, w = self.mc, self.w
        P, B, T = idx.shape
        V, C, p = mc.vocab_size, mc.n_embd, mc.dropout if train else 0.0
        table = w["wte.weight"].view(P * V, C)
        x = F.embedding(idx + self.vocab_offsets, table) + w["wpe.weight"][:, :T].unsqueeze(1)
        x = _dropout(x, p).view(P, B * T, C)
        for i in range(mc.n_layer):
            pre = f"blocks.{i}."
            x = x + self._attn(_norm(x), w[pre + "ln_1.weight"], pre, B, T, p)
            x = x + self._mlp(_norm(x), w[pre + "ln_2.weight"], pre, p)
        logits = _linear(_norm(x), _fold(w["wte.weight"], w["ln_f.weight"]))  # tied lm_head
        ce = F.cross_entropy(
            logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none",
            ignore_index=IGNORE,
        ).view(P, -1)  # fmt: skip
        return ce.mean(1) if counts is None else ce.sum(1) / counts

    def _attn(
        self, x: torch.Tensor, ln: torch.Tensor, pre: str, B: int, T: int, p: float
    ) -> torch.Tensor:
        P, _, C = x.shape
        H = self.mc.n_head
        qkv = _linear(x, _fold(self.w[pre + "attn.c_attn.weight"], ln)).view(P * B, T, 3 * C)
        q, k, v = (t.view(P * B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(P, B * T, C)
        return _dropout(_linear(y, self.w[pre + "attn.c_proj.weight"]), p)

    def _mlp(self, x: torch.Tensor, ln: torch.Tensor, pre: str, p: float) -> torch.Tensor:
        h = _linear(x, _fold(self.w[pre + "mlp.c_fc.weight"], ln))
        if not self.acts:  # swiglu: [W_gate; W_up] in one matrix, as in model.gpt.SwiGLU
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif len(self.acts) == 1:
            h = self.acts[0][2](h)
        else:
            h = torch.cat([fn(h[a:b]) for a, b, fn in self.acts])
        return _dropout(_linear(h, self.w[pre + "mlp.c_proj.weight"]), p)

    # -- inputs ---------------------------------------------------------------------

    def stack(
        self, batches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``[P, B, T]`` inputs and targets, padded to the largest batch; counts if padded."""
        sizes = [x.size(0) for x, _ in batches]
        top = max(sizes)
        if all(s == top for s in sizes):
            return torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches]), None
        xs = [F.pad(x, (0, 0, 0, top - x.size(0))) for x, _ in batches]
        ys = [F.pad(y, (0, 0, 0, top - y.size(0)), value=IGNORE) for _, y in batches]
        T = batches[0][0].size(1)
        counts = self.const([max(1, s * T) for s in sizes])
        return torch.stack(xs), torch.stack(ys), counts


def _rebind(m: _Member, stacked: dict[str, nn.Parameter], slot: int) -> None:
    """Point the candidate's module and optimizer at aliases of its slice of ``stacked``."""
    t = m.trainer
    new: dict[int, nn.Parameter] = {}
    keep = []  # the old tensors stay alive until the id() map is no longer needed
    for name, old in t.model.named_parameters():
        p = nn.Parameter(stacked[name].detach()[slot], requires_grad=old.requires_grad)
        p.grad = stacked[name].grad[slot]
        new[id(old)] = p
        keep.append(old)
    for module in t.model.modules():
        for key, old in list(module._parameters.items()):
            if old is not None and id(old) in new:
                module._parameters[key] = new[id(old)]
    opt = t.optimizer
    for group in opt.param_groups:
        group["params"] = [new[id(p)] for p in group["params"]]
    for old in keep:
        if old in opt.state:  # resumed: moments and step move over unchanged
            opt.state[new[id(old)]] = opt.state.pop(old)
    m.params = [p for g in opt.param_groups for p in g["params"]]


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ W^T`` per candidate: ``[P, M, in] x [P, out, in] -> [P, M, out]``."""
    return torch.bmm(x, weight.transpose(1, 2))


def _norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine part (eps 1e-5, as ``nn.LayerNorm``); see ``_fold``."""
    return F.layer_norm(x, x.shape[-1:])


def _fold(weight: torch.Tensor, ln_weight: torch.Tensor) -> torch.Tensor:
    """``W * g`` so that ``norm(x) @ (W * g)^T == (norm(x) * g) @ W^T``.

    Every LayerNorm feeds exactly one linear layer, so its gain is applied to the
    (small) weight instead of the (large) activations: no activation-sized
    multiply forward or backward. Autograd still gives both their gradients.
    """
    return weight * ln_weight.unsqueeze(1)


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p) if p > 0 else x


class Population:
    """Builds the candidates' trainers and families; ``fit()`` trains them together."""

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        hooks: Sequence[Sequence[TrainerHook]] | None = None,
        *,
        run_id: str | Sequence[str | None] | None = None,
        step_offsets: Sequence[int] | None = None,
        progress: bool = False,
        run_metas: Sequence[dict[str, Any] | None] | None = None,
        eval_test: bool | None | Sequence[bool | None] = None,
        allow_activation_change: bool | Sequence[bool] = False,
        on_setup_error: Callable[[int, Exception], None] | None = None,
    ) -> None:
        n = len(cfgs)
        if n == 0:
            raise ConfigError("population: no candidates to train")
        hooks = list(hooks) if hooks is not None else [()] * n
        ids = [run_id] * n if run_id is None or isinstance(run_id, str) else list(run_id)
        offsets = list(step_offsets) if step_offsets is not None else [0] * n
        metas = list(run_metas) if run_metas is not None else [None] * n
        tests, acts = _per_candidate(eval_test, n), _per_candidate(allow_activation_change, n)
        if not len(hooks) == len(ids) == len(offsets) == len(metas) == len(tests) == len(acts) == n:
            raise ValueError(
                "population: hooks, run ids, step offsets, run metas, eval_test, "
                "allow_activation_change: one per config"
            )
        _check_up_front(cfgs)
        self.progress = progress
        self.members: list[_Member] = []
        self.setup_failed: dict[int, TrainResult] = {}  # index -> result, with on_setup_error
        try:
            for i, cfg in enumerate(cfgs):
                try:
                    trainer = Trainer(
                        cfg, hooks[i], run_id=ids[i], step_offset=offsets[i], progress=False,
                        run_meta=metas[i], eval_test=tests[i], allow_activation_change=acts[i],
                    )  # fmt: skip
                except Exception as exc:
                    if on_setup_error is None:
                        raise
                    on_setup_error(i, exc)
                    self.setup_failed[i] = TrainResult(
                        ids[i] or "", str(cfg.run_dir or ""), "failed", error=_error_line(exc)
                    )
                    continue
                self.members.append(_Member(i, trainer))
            if len({m.trainer.device for m in self.members}) > 1:
                raise ConfigError("population: all candidates must train on one device")
            groups: dict[tuple, list[_Member]] = {}
            for m in self.members:
                groups.setdefault(_family_key(m.trainer), []).append(m)
            self.families = [_Family(ms) for ms in groups.values()]
        except BaseException:
            for m in self.members:  # the run dirs set up so far are usable again
                m.trainer.release_lock()
            raise

    @property
    def trainers(self) -> list[Trainer]:
        return [m.trainer for m in self.members]

    # -- the loop -------------------------------------------------------------------

    def fit(self) -> list[TrainResult]:
        """Train every candidate; their run dirs' locks are released at the end."""
        try:
            return self._fit()
        finally:
            for t in self.trainers:
                t.release_lock()

    def _fit(self) -> list[TrainResult]:
        t_start = time.perf_counter()
        bar = self._progress_bar()
        try:
            for m in self.members:
                m.jsonl = (m.trainer.run_dir / "metrics.jsonl").open(
                    "a", encoding="utf-8", buffering=1
                )
                self._guarded(m, lambda m=m: self._start(m))
            with signals.training_loop():  # a SIGTERM stops after the step, as in train()
                while any(m.active for m in self.members):
                    self._step(t_start)
                    if bar is not None:
                        bar.update(1)
                    if signals.stop_requested():
                        raise signals.Terminated
        except KeyboardInterrupt:
            self._stop_all("interrupted", None)
        except Exception as exc:  # noqa: BLE001 - recorded in every active candidate's result
            self._stop_all("failed", exc)
        finally:
            for m in self.members:
                if m.jsonl is not None:
                    m.jsonl.close()
            if bar is not None:
                bar.close()
        done = {m.index: self._finish(m, t_start) for m in self.members}
        done.update(self.setup_failed)
        return [done[i] for i in sorted(done)]

    def _start(self, m: _Member) -> None:
        t = m.trainer
        for hook in t.hooks:
            hook.on_train_start(t)
        t.model.train()
        t._next = t._fetch(t.batch_size)

    def _step(self, t_start: float) -> None:
        """One optimizer step of every active candidate, then eval, checkpoints, rows."""
        t0 = time.perf_counter()
        active = [m for m in self.members if m.active]
        for m in active:
            m.lr = lr_at(m.cfg, m.local)
            for group in m.trainer.optimizer.param_groups:
                group["lr"] = m.lr
            m.batch_size = m.trainer.batch_size
        losses, norms = self._forward_backward()
        loss_v, norm_v = torch.stack([losses, norms]).tolist()  # the one host sync
        events = {m.index: self._update(m, loss_v[m.pos], norm_v[m.pos]) for m in active}
        for fam in self.families:
            torch._foreach_zero_(fam.grads)
        dt = time.perf_counter() - t0
        for m in active:
            t, local, lv = m.trainer, m.local, loss_v[m.pos]
            t.step = t.step_offset + local
            m.result.steps, m.result.last_loss = local, _finite(lv)
            m.result.losses.append(lv)
        due = [m for m in active if _eval_due(m.cfg, m.local)]
        vals = self._evaluate(due)
        self._evaluate_test([m for m in due if m.trainer.eval_test and m.local == m.cfg.iters])
        for m in active:
            row = self._row(m, loss_v[m.pos], norm_v[m.pos], dt, t_start, vals, events[m.index])
            self._guarded(m, lambda m=m, row=row: self._after_step(m, row))
            m.local += 1
            if m.active and m.done:
                m.active, m.t_end = False, time.perf_counter()

    def _forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate every family's gradients; clip per candidate; ``([N] loss, [N] norm)``.

        Sets ``m.pos``, the candidate's index in the returned vectors.
        """
        all_losses, all_norms, pos = [], [], 0
        for fam in self.families:
            for m in fam.members:
                m.pos = pos + m.slot
            pos += fam.P
            if not any(m.active for m in fam.members):  # a finished family costs nothing
                idle = torch.zeros(fam.P, device=fam.device)
                all_losses.append(idle)
                all_norms.append(idle)
                continue
            weights = fam.const([(1.0 if m.active else 0.0) / fam.accum for m in fam.members])
            loss_sum = None
            for _ in range(fam.accum):
                batches = []
                for m in fam.members:
                    t = m.trainer
                    if not m.active:
                        batches.append(_dummy(t, t.batch_size))
                        continue
                    if t._next[1][0].size(0) != m.batch_size:  # a hook changed the batch size
                        t._next = t._fetch(m.batch_size)
                    batches.append(t._next[1])
                x, y, counts = fam.stack(batches)
                with fam.autocast():
                    loss = fam.run(x, y, counts, train=True)
                for m in fam.members:
                    if m.active:
                        m.trainer._next = m.trainer._fetch(m.batch_size)  # overlaps the GPU
                (loss * weights).sum().backward()
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            all_losses.append(loss_sum / fam.accum)
            all_norms.append(torch.stack([self._clip(m) for m in fam.members]))
        return torch.cat(all_losses), torch.cat(all_norms)

    @staticmethod
    def _clip(m: _Member) -> torch.Tensor:
        """The candidate's global grad norm, clipped as ``Trainer._forward_backward`` does."""
        if not m.active:
            return torch.zeros((), device=m.trainer.device)
        if m.cfg.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(m.params, m.cfg.grad_clip, foreach=True)
        return torch.nn.utils.get_total_norm([p.grad for p in m.params])

    @staticmethod
    def _update(m: _Member, loss_v: float, norm_v: float) -> list[str]:
        """``Trainer._update`` for one candidate (grads are zeroed for the family after)."""
        events, result = [], m.result
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            events.append("nan_skip")
            result.n_nan_skips += 1
        elif m.trainer._is_spike(norm_v, result, events):  # threshold, re-baselining
            events.append("spike_skip")
            result.n_spike_skips += 1
        else:
            m.trainer.optimizer.step()
        return events

    def _evaluate_test(self, due: list[_Member]) -> None:
        """``TrainResult.test_loss`` at the last step, as ``Trainer`` does with ``eval_test``."""
        for m in due:  # no test split: that candidate fails, as Trainer.evaluate would
            self._guarded(m, lambda m=m: _require_split(m.trainer, "test"))
        tests = self._evaluate([m for m in due if m.active], "test")
        for m in due:
            if m.index in tests:
                m.result.test_loss = tests[m.index]

    @torch.no_grad()
    def _evaluate(self, due: list[_Member], split: str = "val") -> dict[int, float | None]:
        """Mean ``split`` loss over each due candidate's ``eval_iters`` batches of ``cfg.batch``.

        Batched per family; a candidate that is not due runs ignored dummy rows.
        """
        out: dict[int, float | None] = {}
        due_ids = {m.index for m in due}
        for fam in self.families:
            mine = [m for m in fam.members if m.index in due_ids]
            if not mine:
                continue
            rounds = max(m.cfg.eval_iters for m in mine)
            fixed = {  # each candidate's fixed evaluation set, as Trainer.evaluate uses
                m.index: list(m.trainer.data.fixed_batches(split, m.cfg.eval_iters, m.cfg.batch))
                for m in mine
            }
            per_round = []
            for k in range(rounds):
                batches = []
                for m in fam.members:
                    if m.index in due_ids and k < m.cfg.eval_iters:
                        batches.append(fixed[m.index][k])
                    else:
                        batches.append(_dummy(m.trainer, m.cfg.batch))
                x, y, counts = fam.stack(batches)
                with fam.autocast():
                    per_round.append(fam.run(x, y, counts, train=False))
            table = torch.stack(per_round)  # [rounds, P]
            means = torch.stack([table[: m.cfg.eval_iters, m.slot].mean() for m in mine])
            for m, v in zip(mine, means.tolist(), strict=True):
                out[m.index] = _finite(v)
        return out

    # -- per candidate after the step --------------------------------------------------

    def _row(
        self,
        m: _Member,
        loss_v: float,
        norm_v: float,
        dt: float,
        t_start: float,
        vals: dict[int, float | None],
        events: list[str],
    ) -> dict[str, Any]:
        """Eval bookkeeping and the checkpoint decision (as ``Trainer._step``); the row."""
        t, result = m.trainer, m.result
        val_loss = vals.get(m.index)
        if m.index in vals:
            result.final_val_loss = val_loss
            if val_loss is not None and (t.best_val_loss is None or val_loss < t.best_val_loss):
                t.best_val_loss = val_loss
        m.checkpoint_due = t.is_checkpoint_step(m.local, val_loss)
        if m.checkpoint_due:
            events.append("checkpoint")  # written by _after_step once the row is recorded
        return t.step_row(loss_v, norm_v, val_loss, m.lr, m.batch_size, dt, t_start, events)

    @staticmethod
    def _after_step(m: _Member, row: dict[str, Any]) -> None:
        """Hooks, the row in ``metrics.jsonl``, then the checkpoint: ``Trainer.fit``'s order."""
        m.times.append(row["ms_per_iter"])
        m.tps.append(row["tokens_per_sec"])
        t = m.trainer
        for hook in t.hooks:
            hook.on_step_end(t, row)
        m.jsonl.write(json.dumps(row, default=_json_default) + "\n")  # line-buffered
        if m.checkpoint_due:  # only once the step's row is recorded
            os.fsync(m.jsonl.fileno())
            t.save_checkpoint(m.local)
            m.result.checkpoint_path = str(t.checkpoint_path)

    def _guarded(self, m: _Member, fn: Callable[[], None]) -> None:
        """Run ``fn``; an exception fails this candidate only (Ctrl-C stops everyone)."""
        if not m.active:
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the candidate's result
            self._fail(m, "failed", exc)

    def _fail(self, m: _Member, status: str, exc: BaseException | None) -> None:
        m.active, m.t_end = False, time.perf_counter()
        m.result.status = status
        if exc is not None:
            m.result.error = _error_line(exc)
            _atomic_write(m.trainer.run_dir / "error.log", traceback.format_exc())

    def _stop_all(self, status: str, exc: BaseException | None) -> None:
        for m in self.members:
            if m.active:
                self._fail(m, status, exc)

    def _finish(self, m: _Member, t_start: float) -> TrainResult:
        """``Trainer.fit``'s epilogue for one candidate: summary, sample, ``on_train_end``."""
        elapsed = (m.t_end or time.perf_counter()) - t_start
        return m.trainer.finish_result(m.result, m.times, m.tps, elapsed)

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        total = max((m.cfg.iters - m.trainer.start_step for m in self.members), default=0)
        return tqdm(
            total=total, desc=f"population of {len(self.members)}", unit="it",
            dynamic_ncols=True, file=sys.stderr, leave=True,
        )  # fmt: skip


def _per_candidate(value: Any, n: int) -> list[Any]:
    """One value for all candidates, or a sequence with one per candidate."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _require_split(t: Trainer, split: str) -> None:
    if split not in t.data.arrays:
        raise ConfigError(f"evaluate: no {split!r} split (set --test-fraction for a test split)")


def _eval_due(cfg: TrainConfig, local: int) -> bool:
    return local % cfg.eval_interval == 0 or local == cfg.iters


def _dummy(t: Trainer, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that cost compute but count for nothing (a candidate not evaluated now)."""
    shape = (batch, t.cfg.block)
    x = torch.zeros(shape, dtype=torch.long, device=t.device)
    return x, torch.full(shape, IGNORE, dtype=torch.long, device=t.device)


def _check_up_front(cfgs: Sequence[TrainConfig]) -> None:
    """What can be checked before any candidate writes its run dir."""
    dirs: set[Path] = set()
    for cfg in cfgs:
        check_inputs(cfg)
        if cfg.run_dir:
            path = Path(cfg.run_dir).expanduser().resolve()
            if path in dirs:
                raise ConfigError(f"--run-dir: {cfg.run_dir} is used by two candidates")
            dirs.add(path)
