"""The Discord notifier against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tasks.notify import (
    DiscordNotifier,
    NotifyHook,
    notifier_from_env,
    resolve_webhook_url,
    run_end_message,
    winner_message,
)

SECRET = "T0pS3cretW3bhookT0ken"


class Receiver:
    """A tiny webhook endpoint: records JSON bodies, answers ``status``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 204
        self.delay_s = 0.0
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                time.sleep(receiver.delay_s)
                receiver.bodies.append({"path": self.path, **body})
                receiver.arrived.set()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/webhooks/42/{SECRET}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def test_messages_arrive_and_alerts_are_throttled_per_signal(receiver: Receiver) -> None:
    notifier = DiscordNotifier(receiver.url, throttle_s=60)
    hook = NotifyHook(notifier)
    trainer = SimpleNamespace(run_id="r1", step=0)
    # grad alert twice (second throttled), then grad|tps: only tps is new.
    hook.on_step_end(trainer, {"run_id": "r1", "step": 10, "cusum_alerts": 0x01, "cusum_grad": 5.5})
    hook.on_step_end(trainer, {"run_id": "r1", "step": 11, "cusum_alerts": 0x01})
    hook.on_step_end(trainer, {"run_id": "r1", "step": 12, "cusum_alerts": 0x05})
    hook.on_step_end(trainer, {"run_id": "r1", "step": 13, "cusum_alerts": 0})
    assert notifier.send(winner_message("r1", {"activation": "swiglu", "best_val_loss": 1.5}))
    notifier.close()
    contents = [b["content"] for b in receiver.bodies]
    assert len(contents) == 3, contents
    assert "step 10" in contents[0] and "**grad**" in contents[0] and "5.5" in contents[0]
    assert "step 12" in contents[1] and "**tps**" in contents[1]
    assert "winner: **swiglu**" in contents[2]
    assert all(b["username"] == "alpha" and b["path"].endswith(SECRET) for b in receiver.bodies)
    assert notifier.sent == 3 and notifier.dropped == 2


def test_send_never_blocks_on_a_slow_webhook(receiver: Receiver) -> None:
    receiver.delay_s = 1.0
    notifier = DiscordNotifier(receiver.url, throttle_s=0)
    start = time.perf_counter()
    for i in range(5):
        notifier.send(f"m{i}")
    assert time.perf_counter() - start < 0.1
    notifier.close(timeout=15)
    assert [b["content"] for b in receiver.bodies] == [f"m{i}" for i in range(5)]


def test_failures_are_logged_without_the_url(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status = 500
    notifier = DiscordNotifier(receiver.url, throttle_s=0)
    notifier.send("will fail")
    notifier.close()
    assert notifier.failed == 1 and notifier.sent == 0
    assert "HTTP 500" in caplog.text
    # an unreachable webhook: connection refused, still no exception and no URL
    dead = DiscordNotifier("http://127.0.0.1:9/api/webhooks/1/" + SECRET, timeout_s=1)
    dead.send("nobody listens")
    dead.close()
    assert dead.failed == 1
    assert "ConnectError" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in repr(notifier) and SECRET not in str(dead)


def test_httpx_request_log_is_redacted(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    notifier = DiscordNotifier(receiver.url)
    notifier.send("hello")
    notifier.close()
    assert receiver.bodies and "HTTP Request" in caplog.text
    assert SECRET not in caplog.text and "<webhook>" in caplog.text


def test_configuration_from_environment(receiver: Receiver) -> None:
    assert resolve_webhook_url({}) is None
    assert notifier_from_env({}) is None
    env = {"ALPHA_DISCORD_WEBHOOK_URL": receiver.url, "ALPHA_NOTIFY_THROTTLE_S": "7"}
    notifier = notifier_from_env(env)
    assert notifier is not None and notifier.throttle_s == 7.0
    notifier.send("from env")
    notifier.close()
    assert receiver.bodies[0]["content"] == "from env"
    assert notifier_from_env({"ALPHA_DISCORD_WEBHOOK_URL": "not-a-url"}) is None


def test_configuration_from_a_prefect_secret_block(
    prefect_harness: str, receiver: Receiver
) -> None:
    from prefect.blocks.system import Secret

    Secret(value=receiver.url).save("alpha-discord-test", overwrite=True)
    assert (
        resolve_webhook_url({"ALPHA_DISCORD_WEBHOOK_BLOCK": "alpha-discord-test"}) == receiver.url
    )
    # a missing block means "no notifications", not an error
    assert resolve_webhook_url({"ALPHA_DISCORD_WEBHOOK_BLOCK": "no-such-block"}) is None


def test_run_end_message_and_hook_end_notice(receiver: Receiver) -> None:
    text = run_end_message(
        "r9", {"status": "failed", "steps": 12, "last_loss": 2.345678, "error": "boom"}
    )
    assert "r9" in text and "failed" in text and "2.346" in text and "error: boom" in text
    notifier = DiscordNotifier(receiver.url)
    hook = NotifyHook(notifier, notify_train_end=True)
    trainer = SimpleNamespace(run_id="r9", model_config=SimpleNamespace(ffn_activation="silu"))
    hook.on_train_end(trainer, SimpleNamespace(status="completed", steps=5, last_loss=1.0))
    notifier.close()
    assert "completed" in receiver.bodies[0]["content"]
    assert "activation=silu" in receiver.bodies[0]["content"]


def test_the_alpha_flow_notifies_run_end(
    prefect_harness: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from flows.alpha_flow import alpha

    monkeypatch.setenv("ALPHA_DISCORD_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ALPHA_DASHBOARD_URL", "http://dash.test:8050")
    state = alpha(
        iters=4, batch=4, block=16, dim=16, heads=2, layers=1, eval_interval=2, eval_iters=1,
        device="cpu", sample_tokens=0, run_dir=str(tmp_path / "run"),
        lake=str(tmp_path / "lake"), return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state
    run_id = state.result()["run_id"]
    (body,) = receiver.bodies
    assert f"`{run_id}` completed" in body["content"]
    assert f"http://dash.test:8050/runs/{run_id}" in body["content"]
    assert "steps=4" in body["content"]
