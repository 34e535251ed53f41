"""The web app's process: gunicorn (threads) serving Flask and Socket.IO over WebSocket.

``flowmill serve`` binds the listening socket itself (so a port in use is reported at
once, and port 0 works), then starts the web app as a child process and restarts it if it
dies: a crash in the web app never takes the batch server down, and a busy batch server
never slows the pages. The web process receives the events of the batch server, its
workers and CLI commands through engine/run/eventlink.py and broadcasts them on ``/live``.

Gunicorn, not the Werkzeug development server: one worker process with a thread per
connection (``FLOWMILL_WEB_THREADS``, default 256), because a WebSocket holds its thread
for as long as the browser tab is open. Host and port: ``FLOWMILL_WEB_HOST`` (default
127.0.0.1) and ``FLOWMILL_WEB_PORT`` (default 8800; 0 switches the web app off).
``flowmill web`` runs the web app alone (a second web process next to a server, with
``FLOWMILL_SOCKETIO_QUEUE`` so both see every event).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.errors import FlowmillError

__all__ = ["WebServer", "bind", "run_web", "web_threads"]


def web_threads() -> int:
    return max(8, int(os.environ.get("FLOWMILL_WEB_THREADS", "256")))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket; a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FlowmillError(
            f"web app: cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(set FLOWMILL_WEB_PORT to another port, or 0 to switch the web app off)"
        ) from None
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def run_web(data_dir: str | None, sock: socket.socket) -> int:
    """Serve the web app on ``sock`` in this process until SIGTERM/SIGINT (gunicorn)."""
    from gunicorn.app.base import BaseApplication

    class FlowmillWeb(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": [f"fd://{sock.fileno()}"],
                "workers": 1,  # Socket.IO keeps per-client state in the process
                "worker_class": "gthread",
                "threads": web_threads(),
                "timeout": 60,
                "graceful_timeout": 5,
                "keepalive": 5,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": os.environ.get("FLOWMILL_WEB_LOGLEVEL", "warning"),
                "proc_name": "flowmill-web",
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return _load_app(data_dir)  # in the worker, after the fork

    FlowmillWeb().run()
    return 0


def _quiet_closed_websockets() -> None:
    """engineio's writer thread may close a WebSocket the client already closed (a race in
    the library under gunicorn): log that at debug level instead of a traceback."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else ""
        if isinstance(args.exc_value, OSError) and args.exc_value.errno == 9 and "writer" in name:
            logging.getLogger(__name__).debug("WebSocket already closed by the client")
            return
        default(args)

    threading.excepthook = hook


def _load_app(data_dir: str | None) -> Any:
    from designer.web.app import create_app
    from engine.run.eventlink import EventReceiver, socket_path
    from engine.service import Flowmill

    _quiet_closed_websockets()
    service = Flowmill.open(data_dir)
    service.stop_forwarding()  # this process publishes its own events directly
    app = create_app(service)
    hub = app.extensions["flowmill_live"]
    receiver = EventReceiver(socket_path(service.settings.data_dir), hub.publish)
    receiver.start()
    app.extensions["flowmill_events_in"] = receiver
    return app


class WebServer:
    """The web app as a supervised child process of ``flowmill serve``."""

    def __init__(self, service: Any, echo: Callable[[str], None]) -> None:
        self.service = service
        self.echo = echo
        self.host = os.environ.get("FLOWMILL_WEB_HOST", "127.0.0.1")
        self.port = int(os.environ.get("FLOWMILL_WEB_PORT", "8800"))
        self._sock: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._spawned_at = 0.0
        self._watch: threading.Thread | None = None

    @property
    def address(self) -> str:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}/"

    def start(self) -> None:
        if self.port == 0:
            self.echo("web app: off (FLOWMILL_WEB_PORT=0)")
            return
        password = self.service.ensure_admin()
        if password:
            path = self.service.settings.data_dir / "initial-admin-password"
            self.echo(f"first start: created user 'admin' with password {password}")
            self.echo(f"(also written to {path}, readable by you only; change it soon)")
        self._sock = bind(self.host, self.port)
        self._spawn()
        self._watch = threading.Thread(
            target=self._supervise, name="flowmill-web-watch", daemon=True
        )
        self._watch.start()
        self.echo(f"web app: {self.address}")

    def _spawn(self) -> None:
        assert self._sock is not None
        fd = self._sock.fileno()
        command = [sys.executable, "-m", "designer.web.webserver", "--fd", str(fd)]
        command += ["--data-dir", str(self.service.settings.data_dir)]
        command += ["--parent", str(os.getpid())]
        # its own process group: a Ctrl-C for `flowmill serve` must not end the web app
        # behind the server's back (it would be taken for a crash and restarted); the
        # server stops it last, and it dies with the server (see main)
        self._child = subprocess.Popen(command, pass_fds=(fd,), process_group=0)
        self._spawned_at = time.monotonic()

    def _supervise(self) -> None:
        """Restart a web process that died; back off while it keeps dying at once."""
        delay = 1.0
        while not self._stopping.is_set():
            child = self._child
            while child is not None and child.poll() is None:
                if self._stopping.wait(0.5):
                    return
            if self._stopping.is_set() or child is None:
                return
            if time.monotonic() - self._spawned_at > 60:
                delay = 1.0
            self.echo(f"web app: exited with code {child.returncode}; restarting in {delay:.0f} s")
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self._spawn()

    def stopping(self) -> None:
        """From now on a web process that exits is not restarted (the server stops)."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.echo("web app: stopped")


def _die_with(parent: int) -> None:
    """Get SIGTERM when the parent dies, even by kill -9, so no orphan keeps the port
    (Linux: PR_SET_PDEATHSIG). A parent already gone means exit now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m designer.web.webserver")
    parser.add_argument("--fd", type=int, required=True, help="listening socket from the parent")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--parent", type=int, default=None, help="exit when this pid is gone")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _die_with(args.parent)
    sock = socket.socket(fileno=args.fd)
    with contextlib.suppress(KeyboardInterrupt):
        return run_web(args.data_dir, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
