"""Serving the app: a threaded WSGI server in the foreground (CLI) or a background
thread (tests, benchmarks), both on an explicit host and port.

The dashboard is a read-only view for a handful of people; Werkzeug's threaded
server is enough for that. For more, mount ``app.server`` (a Flask WSGI app)
in any WSGI server.
"""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType

from dash import Dash
from werkzeug.serving import BaseWSGIServer, make_server


def _server(app: Dash, host: str, port: int) -> BaseWSGIServer:
    """A threaded server on ``host:port``; raises ``OSError`` if it cannot listen.

    The socket is bound here, not by Werkzeug, which would print its own advice
    and exit the process when the port is taken.
    """
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        # Werkzeug duplicates the descriptor; ours closes with the block.
        return make_server(host, sock.getsockname()[1], app.server, threaded=True, fd=sock.fileno())


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app: Dash, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve ``app`` until interrupted (raises ``OSError`` if the port is taken)."""
    server = _server(app, host, port)
    print(f"alpha dashboard on {_url(host, server.port)}/  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class BackgroundServer:
    """``with BackgroundServer(app) as srv: srv.url`` -- serves on a free port, then stops."""

    def __init__(self, app: Dash, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _server(app, host, port)
        self.host, self.port = host, self._server.port
        self.url = _url(host, self.port)
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
