"""Discord webhook notifications for Symbio events (PRD §4.1).

Three kinds of message: CUSUM alerts (throttled per signal), run end, and the
winner of an FFN-activation search. Delivery happens on a background thread
that owns one ``httpx.Client`` with short timeouts, so a slow or dead webhook
never blocks a training step; failures are logged (without the URL) and
dropped, never raised into the run.

The webhook URL is a secret: it comes from ``$ALPHA_DISCORD_WEBHOOK_URL`` or
from a Prefect ``Secret`` block named by ``$ALPHA_DISCORD_WEBHOOK_BLOCK``, is
masked in every ``repr`` and is redacted from the ``httpx`` request log.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from model.hooks import TrainerHook

log = logging.getLogger("alpha.notify")

ENV_URL = "ALPHA_DISCORD_WEBHOOK_URL"
ENV_BLOCK = "ALPHA_DISCORD_WEBHOOK_BLOCK"
ENV_THROTTLE = "ALPHA_NOTIFY_THROTTLE_S"

#: Discord rejects message content longer than this.
MAX_CONTENT = 2000
DEFAULT_THROTTLE_S = 300.0
#: Bits of ``metrics.cusum_alerts`` (mirrors ``storage.schema.CUSUM_BITS``;
#: kept here so that the notifier does not import pyarrow).
CUSUM_SIGNALS = {"grad": 0x01, "clip": 0x02, "tps": 0x04, "val": 0x08}
_SIGNAL_VALUE = {"grad": "cusum_grad", "clip": "cusum_clip", "tps": "cusum_tps", "val": "cusum_val"}
_STOP = object()


class _Redact(logging.Filter):
    """Replace the webhook URL in any log record of the logger it is attached to."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "<webhook>"), None
        return True


class DiscordNotifier:
    """Post messages to a Discord webhook from a background thread.

    ``send`` only enqueues; ``close`` drains the queue (bounded by a timeout).
    ``key`` throttles: a message whose key was sent less than ``throttle_s``
    seconds ago is dropped (CUSUM alerts use one key per signal).
    """

    def __init__(
        self,
        url: str,
        *,
        username: str = "alpha",
        throttle_s: float = DEFAULT_THROTTLE_S,
        timeout_s: float = 5.0,
        max_queue: int = 100,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("Discord webhook URL must start with https:// (or http://)")
        self._url = url
        self.username = username
        self.throttle_s = throttle_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._redact = _Redact(url)
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).addFilter(self._redact)
        self._thread = threading.Thread(target=self._worker, name="alpha-notify", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"DiscordNotifier(url=<masked>, throttle_s={self.throttle_s})"

    __str__ = __repr__

    def send(self, content: str, *, key: str | None = None) -> bool:
        """Queue ``content`` for delivery; False when throttled, full or closed."""
        now = time.monotonic()
        with self._lock:
            if key is not None:
                last = self._last.get(key)
                if last is not None and now - last < self.throttle_s:
                    self.dropped += 1
                    return False
                self._last[key] = now
        if not self._thread.is_alive():
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(content[:MAX_CONTENT])
        except queue.Full:
            self.dropped += 1
            log.warning("notification dropped: queue full")
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (at most ``timeout`` seconds), then stop."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.warning("notifier queue still full at close; pending messages dropped")
            self._thread.join(timeout)
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).removeFilter(self._redact)

    def __enter__(self) -> DiscordNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- delivery thread ----------------------------------------------------
    def _worker(self) -> None:
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                self._deliver(client, item)

    def _deliver(self, client: httpx.Client, content: str) -> None:
        payload = {"content": content, "username": self.username}
        for attempt in range(2):
            try:
                response = client.post(self._url, json=payload)
            except httpx.HTTPError as exc:
                # The exception text may contain the URL: log only its type.
                log.warning("notification failed: %s", type(exc).__name__)
                self.failed += 1
                return
            if response.status_code == 429 and attempt == 0:
                time.sleep(_retry_after(response))
                continue
            if response.is_success:
                self.sent += 1
            else:
                log.warning("notification failed: HTTP %d", response.status_code)
                self.failed += 1
            return


def _retry_after(response: httpx.Response, cap: float = 5.0) -> float:
    try:
        return min(cap, max(0.0, float(response.json().get("retry_after", 1.0))))
    except (ValueError, AttributeError):
        return 1.0


def resolve_webhook_url(env: Mapping[str, str] | None = None) -> str | None:
    """The webhook URL from the environment or a Prefect Secret block, else None.

    ``$ALPHA_DISCORD_WEBHOOK_URL`` wins; otherwise ``$ALPHA_DISCORD_WEBHOOK_BLOCK``
    names a ``prefect.blocks.system.Secret`` holding the URL. A block that cannot
    be loaded is logged and treated as "no notifications".
    """
    env = os.environ if env is None else env
    if url := env.get(ENV_URL, "").strip():
        return url
    block = env.get(ENV_BLOCK, "").strip()
    if not block:
        return None
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(block).get()
    except Exception as exc:  # noqa: BLE001 - notifications must never fail a run
        log.warning("cannot load Discord webhook Secret block %r: %s", block, type(exc).__name__)
        return None
    return str(value).strip() or None


def notifier_from_env(env: Mapping[str, str] | None = None) -> DiscordNotifier | None:
    """A notifier when a webhook is configured, else None."""
    env = os.environ if env is None else env
    url = resolve_webhook_url(env)
    if url is None:
        return None
    try:
        throttle = float(env.get(ENV_THROTTLE, DEFAULT_THROTTLE_S))
        return DiscordNotifier(url, throttle_s=throttle)
    except ValueError as exc:
        log.warning("notifications disabled: %s", exc)
        return None


# -- messages ---------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def alert_message(run_id: str, step: int, signal: str, row: Mapping[str, Any]) -> str:
    value = row.get(_SIGNAL_VALUE[signal])
    reason = row.get("cusum_alert_reason") or f"{signal} regime shift"
    text = f"**alpha** `{run_id}` step {step}: CUSUM alert on **{signal}** ({reason})"
    text += f", cusum={_fmt(value)}"
    if row.get("batch_change_reason"):
        text += f"; batch -> {_fmt(row.get('adaptive_batch_size'))}"
    return text


def run_end_message(run_id: str, summary: Mapping[str, Any]) -> str:
    status = summary.get("status", "?")
    icon = {"completed": "✅", "failed": "❌", "cancelled": "⏹️"}.get(str(status), "ℹ️")
    parts = [f"{icon} **alpha** run `{run_id}` {status}"]
    for key in ("activation", "steps", "last_loss", "best_val_loss", "tokens_per_sec_mean"):
        if summary.get(key) is not None:
            parts.append(f"{key}={_fmt(summary[key])}")
    if summary.get("error"):
        parts.append(f"error: {str(summary['error'])[:300]}")
    if summary.get("url"):
        parts.append(str(summary["url"]))
    return " · ".join(parts)


def winner_message(run_id: str, winner: Mapping[str, Any]) -> str:
    activation = winner.get("activation") or winner.get("symbio_candidate_activation")
    parts = [f"🏆 **alpha** search `{run_id}` winner: **{activation}**"]
    for key in ("candidate_id", "generation", "best_val_loss", "fitness"):
        if winner.get(key) is not None:
            parts.append(f"{key}={_fmt(winner[key])}")
    return " · ".join(parts)


class NotifyHook(TrainerHook):
    """Trainer hook that sends CUSUM alerts (and optionally the run end).

    Place it after the symbio hook, which fills ``cusum_alerts``. Throttling
    is by signal, so a flapping gradient alert sends at most one message per
    ``notifier.throttle_s`` while a new tokens/s alert still gets through.
    In search mode the trainer runs once per candidate: leave
    ``notify_train_end`` off there and send one run-end message for the search.
    """

    def __init__(self, notifier: DiscordNotifier, *, notify_train_end: bool = False) -> None:
        self.notifier = notifier
        self.notify_train_end = notify_train_end

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        alerts = row.get("cusum_alerts")
        if not alerts:
            return
        run_id = str(row.get("run_id") or getattr(trainer, "run_id", "?"))
        step = int(row.get("step") or getattr(trainer, "step", 0))
        for signal, bit in CUSUM_SIGNALS.items():
            if alerts & bit:
                message = alert_message(run_id, step, signal, row)
                self.notifier.send(message, key=f"cusum:{run_id}:{signal}")

    def on_train_end(self, trainer: Any, result: Any) -> None:
        if not self.notify_train_end:
            return
        try:
            summary = {
                k: getattr(result, k, None)
                for k in ("status", "steps", "last_loss", "best_val_loss", "error")
            }
            summary["activation"] = getattr(trainer.model_config, "ffn_activation", None)
            self.notifier.send(run_end_message(str(trainer.run_id), summary))
        except Exception as exc:  # noqa: BLE001 - must not raise (hook contract)
            log.warning("run-end notification skipped: %s", type(exc).__name__)
