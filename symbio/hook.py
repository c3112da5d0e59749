"""``SymbioHook``: Symbio mode plugged into the trainer through ``TrainerHook``.

Per step, after the trainer's step and eval (so ``val_loss`` is fresh), in
this order:

1. CUSUM monitors on ``grad_norm``, ``clip_pct``, ``tokens_per_sec`` and, on
   eval steps, ``val_loss`` -> ``cusum_*`` columns;
2. adaptive batch: alerts change the batch the loader yields on the *next*
   step (``trainer.set_batch_size``) -> ``adaptive_batch_size`` every step,
   ``batch_change_reason`` on a change; a change re-baselines the grad, clip
   and tokens/s monitors (the new batch size shifts those signals by design);
3. every ``metricsInterval`` steps: the sparse metrics (weight entropy,
   effective rank, free energy, population entropy, activation distribution,
   complexity, MI profiles when enabled). On CUDA, weight entropy and
   effective rank are launched one step earlier on a side stream
   (``AsyncWeightMetrics``) and read at the metrics step: they describe the
   weights after the previous step's update. Without a pending result (first
   collection after a resume, a failed launch) they are computed synchronously;
4. on eval steps: ``fitness_score`` from the best val loss so far, mean
   throughput and the running instability score;
5. in search mode: the candidate's fields on every row.

Rows only ever gain lake column names (``storage.schema``). Non-finite values
are dropped (the column stays null) rather than written.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from model.hooks import TrainerHook
from symbio.config import SymbioConfig
from symbio.metrics.async_weights import AsyncWeightMetrics
from symbio.metrics.collector import SymbioMetricsCollector
from symbio.metrics.fitness import InstabilityTracker, fitness
from symbio.metrics.mi import MIProbe
from symbio.monitor.adaptive_batch import AdaptiveBatch
from symbio.monitor.dashboard import CusumDashboard

if TYPE_CHECKING:  # pragma: no cover
    from model.trainer import Trainer

log = logging.getLogger(__name__)

#: Keys a search candidate dict may carry onto every row.
CANDIDATE_KEYS = frozenset(
    {
        "symbio_candidate_id",
        "symbio_candidate_activation",
        "symbio_generation",
        "architecture_diversity",
        "activation_distribution",
        "population_entropy",
    }
)


class SymbioHook(TrainerHook):
    """CUSUM, adaptive batch and symbio metrics for one run or one search candidate."""

    def __init__(
        self,
        config: SymbioConfig,
        *,
        candidate: dict[str, Any] | None = None,
        async_weights: bool = True,
        cuda_graph: bool = True,
    ) -> None:
        """``async_weights``/``cuda_graph``: on CUDA, compute weight entropy and rank on a
        side stream one step ahead (``cuda_graph``: replayed from a CUDA graph); off,
        they are computed synchronously at the metrics step as on CPU."""
        unknown = set(candidate or {}) - CANDIDATE_KEYS
        if unknown:
            raise ValueError(f"SymbioHook: unknown candidate fields {sorted(unknown)}")
        self.config = config
        self.candidate = dict(candidate or {})
        self.dashboard = CusumDashboard(config.cusum_sensitivity, config.cusum_baseline_window)
        self.adaptive: AdaptiveBatch | None = None
        self.collector: SymbioMetricsCollector | None = None
        self.instability = InstabilityTracker()
        self.best_val_loss = math.inf
        self._tps_sum = 0.0
        self._tps_n = 0
        self.async_weights = async_weights
        self.cuda_graph = cuda_graph
        self.weights_async: AsyncWeightMetrics | None = None
        self._last_step: int | None = None

    # -- TrainerHook -----------------------------------------------------------

    def on_train_start(self, trainer: Trainer) -> None:
        """Fresh state for this run/candidate; fixes the MI probe batch."""
        cfg = self.config
        self.dashboard.reset()
        self.adaptive = None
        if cfg.adaptive_batch:
            self.adaptive = AdaptiveBatch(
                trainer.batch_size,
                cfg.batch_min,
                cfg.batch_max,
                cfg.batch_step,
                cfg.calm_steps_before_restore,
            )
        tcfg = trainer.cfg
        self.instability = InstabilityTracker(tcfg.spike_threshold, tcfg.warmup_iters)
        self.best_val_loss = math.inf
        self._tps_sum, self._tps_n = 0.0, 0
        mcfg = trainer.model_config
        self.collector = SymbioMetricsCollector(
            cfg,
            param_count=trainer.param_count,
            activation=mcfg.ffn_activation,
            n_layer=mcfg.n_layer,
            probe=self._make_probe(trainer) if cfg.track_mi_profiles else None,
        )
        self._close_async()
        self.weights_async = self._make_async(trainer)
        self._last_step = getattr(trainer, "step_offset", 0) + tcfg.iters

    def on_step_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        out = self.dashboard.update(row)
        out.update(self._adapt_batch(trainer, out["cusum_alerts"]))
        self._track(row)
        step = row.get("step", trainer.step)
        interval = self.config.metrics_interval
        if self.collector is not None and step % interval == 0:
            out.update(self._collect(trainer, row))
        if self.weights_async is not None and (step + 1) % interval == 0:
            self._launch_async(step)
        if row.get("val_loss") is not None:
            out["fitness_score"] = self._fitness()
        out.update(self.candidate)
        row.update(_finite_only(out))

    def on_train_end(self, trainer: Trainer, result: Any) -> None:
        self._close_async()

    # -- steps -----------------------------------------------------------------

    def _adapt_batch(self, trainer: Trainer, alerts: int) -> dict[str, Any]:
        if self.adaptive is None:
            return {"adaptive_batch_size": trainer.batch_size}
        size, reason = self.adaptive.update(alerts)
        if reason is None:
            return {"adaptive_batch_size": size}
        trainer.set_batch_size(size)
        self.dashboard.rebaseline_step_signals()
        log.info("symbio: batch size -> %d (%s)", size, reason)
        return {"adaptive_batch_size": size, "batch_change_reason": reason}

    def _collect(self, trainer: Trainer, row: dict[str, Any]) -> dict[str, Any]:
        """The sparse metrics; a failure is logged, never fatal to the training run."""
        try:
            weights = self.weights_async.result() if self.weights_async is not None else None
            return self.collector.collect(
                trainer.model, _or_nan(row.get("loss")), trainer.autocast, weights
            )
        except (RuntimeError, ValueError) as exc:  # e.g. CUDA OOM in a decomposition
            log.warning("symbio: metrics at step %s failed: %s", row.get("step"), exc)
            return {}

    def _make_async(self, trainer: Trainer) -> AsyncWeightMetrics | None:
        collector = self.collector
        if not self.async_weights or trainer.device.type != "cuda":
            return None
        if not (collector.needs_entropy or collector.needs_rank):
            return None
        try:
            metrics = AsyncWeightMetrics(
                trainer.model,
                entropy=collector.needs_entropy,
                rank=collector.needs_rank,
                use_graph=self.cuda_graph,
            )
            metrics.prepare()  # one-time graph capture, before the first step
            return metrics
        except (RuntimeError, ValueError) as exc:
            log.warning("symbio: async weight metrics unavailable (%s); synchronous", exc)
            return None

    def _launch_async(self, step: int) -> None:
        """Start next step's weight metrics on the side stream; on failure go synchronous."""
        if self._last_step is not None and step >= self._last_step:
            return  # no metrics step follows
        try:
            self.weights_async.launch()
        except RuntimeError as exc:
            log.warning("symbio: async weight metrics off after step %s: %s", step, exc)
            self.weights_async = None

    def _close_async(self) -> None:
        if self.weights_async is not None:
            try:
                self.weights_async.close()
            except RuntimeError as exc:  # on_train_end must not raise
                log.warning("symbio: closing async weight metrics failed: %s", exc)
            self.weights_async = None

    def _track(self, row: dict[str, Any]) -> None:
        loss = row.get("loss")
        if self.collector is not None:
            self.collector.observe_loss(loss)
        self.instability.add(
            row.get("grad_norm"), row.get("clip_coef"), row.get("event"), row.get("ms_per_iter")
        )
        tps = row.get("tokens_per_sec")
        if tps is not None and math.isfinite(tps):
            self._tps_sum += tps
            self._tps_n += 1
        val = row.get("val_loss")
        if val is not None and math.isfinite(val):
            self.best_val_loss = min(self.best_val_loss, float(val))

    def _fitness(self) -> float:
        cfg = self.config
        return fitness(
            self.best_val_loss,
            tokens_per_sec_mean=self._tps_sum / self._tps_n if self._tps_n else None,
            instability=self.instability.result().score,
            alpha=cfg.fitness_alpha,
            perf_weight=cfg.perf_weight,
            stability_weight=cfg.stability_weight,
        )

    def _make_probe(self, trainer: Trainer) -> MIProbe | None:
        # Draw the probe without moving the RNG streams training samples from,
        # so a symbio run sees the same training batches as a plain run.
        cpu_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            x, y = trainer.get_batch("val")
        except Exception as exc:  # MI is optional: never fail a run for it
            log.warning("symbio: no MI probe batch (%s); MI profiles off", exc)
            return None
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
        return MIProbe(x, y, num_bins=self.config.mi_num_bins, seed=trainer.cfg.seed)


def _finite_only(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _or_nan(x: float | None) -> float:
    """The engine reports a non-finite loss as None (NaN-skip steps)."""
    return math.nan if x is None else float(x)
