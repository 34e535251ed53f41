"""The web app inside ``flowmill serve``: waitress (a production WSGI server) in a thread.

Host and port: ``FLOWMILL_WEB_HOST`` (default 127.0.0.1) and ``FLOWMILL_WEB_PORT``
(default 8800); ``FLOWMILL_WEB_PORT=0`` switches the web app off. The first start creates
the ``admin`` user with a random password, printed once and written to
``DATA/initial-admin-password`` (mode 0600).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from designer.app import create_app
from engine.errors import FlowmillError

__all__ = ["WebServer"]


class WebServer:
    def __init__(self, service: Any, echo: Callable[[str], None]) -> None:
        self.service = service
        self.echo = echo
        self.host = os.environ.get("FLOWMILL_WEB_HOST", "127.0.0.1")
        self.port = int(os.environ.get("FLOWMILL_WEB_PORT", "8800"))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.port == 0:
            self.echo("web app: off (FLOWMILL_WEB_PORT=0)")
            return
        password = self.service.ensure_admin()
        if password:
            path = self.service.settings.data_dir / "initial-admin-password"
            self.echo(f"first start: created user 'admin' with password {password}")
            self.echo(f"(also written to {path}, readable by you only; change it soon)")
        from waitress import create_server

        app = create_app(self.service)
        try:
            self._server = create_server(app, host=self.host, port=self.port, threads=8)
        except OSError as exc:
            raise FlowmillError(
                f"web app: cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(set FLOWMILL_WEB_PORT to another port, or 0 to switch the web app off)"
            ) from None
        self._thread = threading.Thread(target=self._server.run, name="flowmill-web", daemon=True)
        self._thread.start()
        self.echo(f"web app: http://{self.host}:{self._server.effective_port}/")

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
