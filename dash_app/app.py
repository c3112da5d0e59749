"""The Dash app: one shell, a small URL router and the pages' callbacks.

``create_app(lake)`` builds an app bound to one lake. Pages are routed by hand
(``dcc.Location`` -> ``route``) rather than with Dash's global page registry,
so several apps on different lakes can live in one process (tests do that).
Run ids taken from URLs go through ``storage.reader.validate_run_id`` before
anything reads the lake.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from dash import Dash, Input, Output, dcc, html

from dash_app import auth
from dash_app import components as c
from dash_app.pages import compare, run, runs
from storage import reader
from storage.lake import Lake, open_lake

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
#: How often a running run's page and the runs list poll the lake.
DEFAULT_POLL_MS = 3000


def create_app(
    lake: Lake | str,
    *,
    poll_ms: int = DEFAULT_POLL_MS,
    credentials: tuple[str, str] | None = None,
) -> Dash:
    """A dashboard app over ``lake`` (a ``Lake`` or a path/URL for ``open_lake``).

    ``credentials=(user, password)`` turns on HTTP basic auth for every request.
    """
    lake = lake if isinstance(lake, Lake) else open_lake(lake)
    app = Dash(
        __name__,
        title="Alpha · runs",
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        update_title=None,
        serve_locally=True,
    )
    app.layout = shell(lake)

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def _route(pathname: str | None, search: str | None) -> Any:
        return route(lake, pathname, search, poll_ms=poll_ms)

    runs.register(app, lake)
    run.register(app, lake)
    compare.register(app, lake)
    if credentials is not None:
        auth.install_basic_auth(app.server, *credentials)
    return app


def shell(lake: Lake) -> html.Div:
    return html.Div(
        [
            dcc.Location(id="url", refresh="callback-nav"),
            html.Header(
                [
                    dcc.Link(
                        [html.Span("α", className="logo"), "Alpha"], href="/", className="brand"
                    ),
                    html.Nav(
                        [dcc.Link("Runs", href="/"), dcc.Link("Compare", href="/compare")],
                        className="nav",
                    ),
                    html.Span(lake.url, className="lake-url muted", title="metric lake"),
                ],
                className="topbar",
            ),
            dcc.Loading(
                html.Main(id="page", className="page"),
                type="dot",
                delay_show=400,
                target_components={"page": "children"},
            ),
        ],
        className="app",
    )


def route(lake: Lake, pathname: str | None, search: str | None, *, poll_ms: int) -> Any:
    """The page for a URL; bad input and lake errors become an on-page message.

    Lake objects the reader had to skip (corrupt, wrong schema) do not fail
    the page: it shows what could be read under a warning banner.
    """
    with reader.read_report() as report:
        page = _page(lake, pathname, search, poll_ms=poll_ms)
    warning = report.warning()
    if warning is None:
        return page
    log.warning("page %s: %s", pathname, warning)
    return html.Div([c.warning_banner(warning, id="lake-warning"), page])


def _page(lake: Lake, pathname: str | None, search: str | None, *, poll_ms: int) -> Any:
    path = (pathname or "/").rstrip("/") or "/"
    try:
        if path == "/":
            return runs.layout(lake, poll_ms=poll_ms)
        if path.startswith("/runs/"):
            run_id = reader.validate_run_id(unquote(path[len("/runs/") :]))
            return run.layout(lake, run_id, poll_ms=poll_ms)
        if path == "/compare":
            return compare.layout(lake, search)
    except ValueError as exc:
        return c.empty_state("Bad request", str(exc).splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - show the reader's error, keep serving
        log.exception("page %s failed", path)
        return c.empty_state(
            "Could not read the lake",
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        )
    return c.empty_state("Not found", f"No page at {path}.")
