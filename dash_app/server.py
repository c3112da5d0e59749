"""Serving the app: a threaded WSGI server in the foreground (CLI) or a background
thread (tests, benchmarks), both on an explicit host and port.

The dashboard is a read-only view for a handful of people; Werkzeug's threaded
server is enough for that. For more, mount ``app.server`` (a Flask WSGI app)
in any WSGI server.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from dash import Dash
from werkzeug.serving import BaseWSGIServer, make_server


def _server(app: Dash, host: str, port: int) -> BaseWSGIServer:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return make_server(host, port, app.server, threaded=True)


def serve(app: Dash, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve ``app`` until interrupted (raises ``OSError`` if the port is taken)."""
    server = _server(app, host, port)
    print(f"alpha dashboard on http://{host}:{server.server_port}/  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class BackgroundServer:
    """``with BackgroundServer(app) as srv: srv.url`` -- serves on a free port, then stops."""

    def __init__(self, app: Dash, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _server(app, host, port)
        self.host, self.port = host, self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dash-server", daemon=True
        )

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
