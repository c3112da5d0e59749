"""The one small interface through which anything plugs into the trainer.

Symbio monitoring, the lake sink and notifiers are all ``TrainerHook``s. The
trainer calls them in list order; a hook that adds fields to a row must come
before hooks that consume rows (``[symbio_hook, lake_hook]``). With no hooks
the training loop iterates an empty tuple: nothing else runs on the hot path.

Per step the trainer does: train step -> eval (if due, sets ``row["val_loss"]``)
-> ``on_step_end`` of every hook -> row written to ``metrics.jsonl`` ->
checkpoint (if due). So hooks see the fresh ``val_loss`` of the step, and a
step's row has reached every hook before that step's checkpoint is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from model.trainer import Trainer


class TrainerHook:
    """Base class with no-op methods; override what you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once, after model, optimizer and data exist, before step 1."""

    def on_step_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Called after each optimizer step (and eval, when due).

        ``row`` is the step's metric row (keys are lake column names). A hook
        may add keys to it and may call ``trainer.set_batch_size(n)``, which
        takes effect on the next step's batch.
        """

    def on_train_end(self, trainer: Trainer, result: Any) -> None:
        """Called once when training stops: completed, failed or interrupted.

        ``result`` is the ``model.trainer.TrainResult`` (``result.status`` says
        which). Must not raise.
        """
