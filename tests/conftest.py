"""Shared fixtures.

``prefect_harness`` starts ONE temporary Prefect API (SQLite in a tmp dir)
for the whole test session, with its own ``PREFECT_HOME``; its cold start
costs ~17 s, so it is session-scoped and only tests that ask for it pay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect API for this session; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("PREFECT_API_URL", raising=False)
        mp.delenv("PREFECT_PROFILES_PATH", raising=False)
        import prefect.settings
        from prefect.testing.utilities import prefect_test_harness

        with prefect.settings.temporary_settings(updates={prefect.settings.PREFECT_HOME: home}):
            with prefect_test_harness(server_startup_timeout=90):
                yield str(prefect.settings.PREFECT_API_URL.value())


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread than on two contended ones."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30k characters of the shipped corpus: enough for tiny models."""
    from model.config import SHIPPED_CORPUS

    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path
