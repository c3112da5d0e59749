"""Optional HTTP basic auth for the dashboard, from environment variables.

Set both ``ALPHA_DASH_USER`` and ``ALPHA_DASH_PASSWORD`` and every request
(pages, callbacks, assets) needs them. Basic auth sends the password with each
request: use it behind TLS (a reverse proxy) when the dashboard leaves
localhost.
"""

from __future__ import annotations

import hmac
import os

from flask import Flask, Response, request

ENV_USER = "ALPHA_DASH_USER"
ENV_PASSWORD = "ALPHA_DASH_PASSWORD"
REALM = "alpha dashboard"


def credentials_from_env(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """``(user, password)`` when both variables are set, ``None`` when neither is.

    Raises ``ValueError`` when only one is set (a half-configured lock is a mistake).
    """
    env = os.environ if environ is None else environ
    user, password = env.get(ENV_USER, ""), env.get(ENV_PASSWORD, "")
    if not user and not password:
        return None
    if not user or not password:
        raise ValueError(f"set both {ENV_USER} and {ENV_PASSWORD} (or neither) for basic auth")
    return user, password


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def install_basic_auth(server: Flask, user: str, password: str) -> None:
    """Require ``user``/``password`` on every request to ``server``."""

    @server.before_request
    def _require_auth() -> Response | None:
        given = request.authorization
        if given is not None and given.type == "basic":
            if _same(given.username or "", user) & _same(given.password or "", password):
                return None
        return Response(
            "authentication required\n",
            401,
            {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
        )
