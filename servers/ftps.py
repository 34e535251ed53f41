"""The FTPS file-drop server: explicit TLS, drop users only, one event per completed upload.

Built on pyftpdlib's ``TLS_FTPHandler`` with TLS required on the control *and* the data
channel (``AUTH TLS``, ``PBSZ 0``, ``PROT P`` before ``USER`` and before any transfer).
Each user with the drop flag sees ``DATA/drop/<user>/`` as ``/``.

An upload is written to a hidden temporary file next to its target
(``.flowmill-upload-XXXXXXXX``, hashed while it arrives) and renamed to its final name only
when the data connection ends cleanly (a TLS close_notify). Then a ``DropEvent`` goes to the
bounded ``DropQueue``; when the queue is full the file is removed again and the client gets
``421`` instead of ``226``. An aborted, truncated or timed-out upload leaves nothing behind
and fires nothing. ``docs/file-servers.md`` (section "FTPS") explains each decision.

Example::

    server = FtpsServer(data_dir=Path("data"), authenticate=check, drops=DropQueue())
    server.start()  # serves in a daemon thread
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from OpenSSL import SSL
from pyftpdlib.authorizers import AuthenticationFailed, AuthorizerError, DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS, FilesystemError
from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer
from pyftpdlib.utils import strerror

from engine.errors import FlowmillError
from servers.drops import DropEvent, DropQueue, drop_home
from servers.tls import certificate

__all__ = ["FtpsServer"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2121
UPLOAD_PREFIX = ".flowmill-upload-"
# e l r d f m w: change folder, list, download, delete, rename, make folder, upload.
# Not a (APPE changes a finished file in place), M (SITE CHMOD), T (MFMT).
PERMISSIONS = "elrdfmw"
STALE_UPLOAD_SECONDS = 3600  # far beyond the 300 s after which a stalled transfer is cut
BUSY_REPLY = "421 Server busy, upload not accepted; try again later."
_USER_NAME = re.compile(r"[a-z0-9_.-]{1,64}")  # the user store's names (engine/access/users.py)
_ANONYMOUS = frozenset({"anonymous", "ftp"})


class FtpsServer:
    """FTPS file-drop server for users with the drop flag; completed uploads go to ``drops``.

    ``authenticate(user, password)`` must return exactly True to let a user in; False, any
    other value or an exception refuses the login (after ``login_failure_delay`` seconds).
    It runs on a worker thread, so a slow password hash does not stall other transfers.

    Raises:
        FlowmillError: from the constructor for a bad FLOWMILL_FTPS_PORT, from ``start()``
            when the address cannot be bound or the TLS certificate cannot be used.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        authenticate: Callable[[str, str], bool],
        drops: DropQueue,
        host: str | None = None,
        port: int | None = None,
        passive_ports: range | None = None,
        max_cons: int = 256,
        max_cons_per_ip: int = 32,
        login_failure_delay: float = 3.0,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._authenticate = authenticate
        self._drops = drops
        self._host = host or os.environ.get("FLOWMILL_FTPS_HOST") or DEFAULT_HOST
        self._port = _port_setting(port)
        if passive_ports is None:
            passive_ports = _passive_setting()
        if passive_ports is not None and (
            len(passive_ports) == 0 or passive_ports[0] < 1024 or passive_ports[-1] > 65535
        ):
            raise FlowmillError(
                f"FTPS passive_ports {passive_ports!r}: give a non-empty range within 1024-65535"
            )
        self._passive_ports = passive_ports
        self._max_cons = max_cons
        self._max_cons_per_ip = max_cons_per_ip
        self._login_failure_delay = login_failure_delay
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wakeup: _Wakeup | None = None
        self._auth_pool: ThreadPoolExecutor | None = None
        self._authorizer = _DropAuthorizer(authenticate, self._data_dir)
        self._authenticating: set[_DropHandler] = set()
        # Counters: written only by the IO-loop thread, read by anyone.
        self._connections = 0
        self._received = 0
        self._refused_busy = 0
        self._incomplete = 0

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind, then serve in a background daemon thread."""
        if self._thread is not None:
            raise FlowmillError(f"FTPS server on {self._host}:{self._port} is already running")
        cert, key = certificate(self._data_dir)
        context = _tls_context(cert, key)
        handler = type(
            "FlowmillFtpsHandler",
            (_DropHandler,),
            {
                "ssl_context": context,
                "authorizer": self._authorizer,
                "passive_ports": list(self._passive_ports) if self._passive_ports else None,
                "auth_failed_timeout": self._login_failure_delay,
                "drop_server": self,
            },
        )
        # pyftpdlib configures stderr logging itself unless its logger has a handler.
        pyftpdlib_log = logging.getLogger("pyftpdlib")
        if not pyftpdlib_log.handlers:
            pyftpdlib_log.addHandler(logging.NullHandler())
        ioloop = IOLoop()  # our own loop: IOLoop.instance() is shared process-wide
        try:
            server = FTPServer((self._host, self._port), handler, ioloop=ioloop)
        except OSError as err:
            ioloop.close()
            raise FlowmillError(
                f"FTPS server cannot listen on {self._host}:{self._port}: "
                f"{err.strerror or err}; set FLOWMILL_FTPS_HOST / FLOWMILL_FTPS_PORT "
                "to a free address"
            ) from err
        server.max_cons = self._max_cons
        server.max_cons_per_ip = self._max_cons_per_ip
        bound_host, bound_port = server.address[:2]
        self._address = (bound_host, bound_port)
        _remove_stale_uploads(self._data_dir / "drop")
        self._stopping.clear()
        self._wakeup = _Wakeup(ioloop)
        self._auth_pool = ThreadPoolExecutor(2, thread_name_prefix="flowmill-ftps-auth")
        self._thread = threading.Thread(
            target=self._serve, args=(ioloop,), name="flowmill-ftps", daemon=True
        )
        self._thread.start()
        log.info("FTPS file-drop server listening on %s:%s", *self._address)

    def stop(self) -> None:
        """Close every session (uploads in progress are discarded) and the listening socket."""
        thread, wakeup, pool = self._thread, self._wakeup, self._auth_pool
        if thread is None or wakeup is None or pool is None:
            return
        self._stopping.set()
        wakeup.poke()
        thread.join(timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)
        self._thread = self._wakeup = self._auth_pool = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); before ``start()`` the configured one."""
        return self._address or (self._host, self._port)

    def describe(self) -> dict[str, Any]:
        host, port = self.address
        return {
            "host": host,
            "port": port,
            "running": self._thread is not None and self._thread.is_alive(),
            "connections": self._connections,
            "uploads_received": self._received,
            "uploads_refused_busy": self._refused_busy,
            "uploads_incomplete": self._incomplete,
        }

    def _serve(self, ioloop: Any) -> None:
        try:
            timeout = None
            while not self._stopping.is_set():
                timeout = ioloop.loop(timeout, blocking=False)
        except Exception:
            log.exception("FTPS server loop failed; the server stops")
        finally:
            for handler in list(self._authenticating):
                handler.close()
            self._authenticating.clear()
            ioloop.close()

    # -- called on the IO-loop thread by the handlers -------------------------------------

    def _authenticate_later(self, handler: _DropHandler, username: str, password: str) -> None:
        assert self._auth_pool is not None and self._wakeup is not None
        wakeup, authorizer = self._wakeup, self._authorizer
        self._authenticating.add(handler)

        def work() -> None:
            try:
                user = authorizer.check(username, password)
            except (AuthenticationFailed, AuthorizerError) as err:
                wakeup.call_soon(self._authenticated, handler, password, None, str(err))
            except Exception:
                log.exception("FTPS login of %r failed unexpectedly", username)
                wakeup.call_soon(self._authenticated, handler, password, None, "")
            else:
                wakeup.call_soon(self._authenticated, handler, password, user, "")

        self._auth_pool.submit(work)

    def _authenticated(
        self, handler: _DropHandler, password: str, user: str | None, message: str
    ) -> None:
        self._authenticating.discard(handler)
        if handler._closed:
            return
        handler.add_channel()
        if user is None:
            handler.handle_auth_failed(message or "Authentication failed.", password)
            return
        try:
            home = str(drop_home(self._data_dir, user))
        except OSError as err:
            log.error("FTPS: cannot prepare the drop folder of %s: %s", user, err)
            handler.respond("421 Drop folder unavailable; try again later.")
            handler.close_when_done()
            return
        handler.username = user
        handler.handle_auth_success(home, password, "Login successful.")

    def _connection_opened(self) -> None:
        self._connections += 1

    def _connection_closed(self) -> None:
        self._connections -= 1

    def _complete(self, upload: _Upload) -> tuple[str, bool]:
        """Rename a finished upload to its name and announce it: (reply, accepted)."""
        try:
            digest = upload.commit()
        except OSError as err:
            upload.close()
            self._incomplete += 1
            log.error(
                "FTPS upload %s of %s could not be saved: %s", upload.target, upload.user, err
            )
            return f"451 Upload not saved: {strerror(err)}; try again.", False
        name = os.path.relpath(upload.target, upload.home).replace(os.sep, "/")
        event = DropEvent(
            path=upload.target,
            name=name,
            size=upload.size,
            user=upload.user,
            source="ftps",
            sha256=digest,
        )
        if self._drops.offer(event):
            self._received += 1
            return "226 Transfer complete.", True
        # The client hears 421 and keeps its file, so removing ours loses nothing.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload.target)
        self._refused_busy += 1
        log.warning("FTPS upload %s of %s refused: the drop queue is full", name, upload.user)
        return BUSY_REPLY, False

    def _discarded(self) -> None:
        self._incomplete += 1


# -- pyftpdlib parts -------------------------------------------------------------------------


class _DropAuthorizer(DummyAuthorizer):
    """Users come from ``authenticate``; all share one set of permissions in their home."""

    def __init__(self, authenticate: Callable[[str, str], bool], data_dir: Path) -> None:
        super().__init__()
        self._authenticate = authenticate
        self._data_dir = data_dir

    def check(self, username: str, password: str) -> str:
        """The user's folder name, or AuthenticationFailed. Runs on a worker thread."""
        user = _user_folder(username)
        if user is None:
            raise AuthenticationFailed("Authentication failed.")
        if user in _ANONYMOUS:
            raise AuthenticationFailed("Anonymous access not allowed.")
        try:
            allowed = self._authenticate(username, password)
        except Exception as exc:
            log.warning("FTPS login of %r refused: authenticate raised %r", username, exc)
            allowed = False
        if allowed is not True:
            raise AuthenticationFailed("Authentication failed.")
        return user

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        self.check(username, password)

    def get_home_dir(self, username: str) -> str:
        user = _user_folder(username)
        if user is None:
            raise AuthenticationFailed("Authentication failed.")
        return str(drop_home(self._data_dir, user))

    def has_user(self, username: str) -> bool:
        return _user_folder(username) is not None

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return perm in PERMISSIONS

    def get_perms(self, username: str) -> str:
        return PERMISSIONS

    def get_msg_login(self, username: str) -> str:
        return "Login successful."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."


class _DropFS(AbstractedFS):
    """The user's home as ``/``; upload temporaries are invisible and untouchable."""

    def validpath(self, path: str) -> bool:
        # realpath inside: a symlink leading out of the home is refused, not followed
        if not super().validpath(path):
            return False
        relative = os.path.relpath(os.path.normpath(path), os.path.normpath(self.root))
        return not any(part.startswith(UPLOAD_PREFIX) for part in relative.split(os.sep))

    def chdir(self, path: str) -> None:
        # pyftpdlib's chdir sets the process-wide cwd, which other threads of the app share
        if not os.path.isdir(path):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if not os.access(path, os.R_OK | os.X_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        self.cwd = self.fs2ftp(path)

    def listdir(self, path: str) -> list[str]:
        return [n for n in os.listdir(path) if not n.startswith(UPLOAD_PREFIX)]

    def listdirinfo(self, path: str) -> list[str]:
        return self.listdir(path)


class _Upload:
    """What STOR writes to: a temporary file next to the target, hashed as data arrives.

    ``close()`` without ``commit()`` removes the temporary file, so every pyftpdlib path
    that gives up on a transfer (ABOR, timeout, disconnect, a second STOR) cleans up.
    """

    def __init__(self, target: str, home: str, user: str) -> None:
        fd, self.temp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=os.path.dirname(target))
        self._file = os.fdopen(fd, "wb")
        self.target, self.home, self.user = target, home, user
        self.name = target  # what pyftpdlib logs
        self.size = 0
        self._digest = hashlib.sha256()
        self._cleanup = weakref.finalize(self, _discard, self._file, self.temp)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self._digest.update(data)
        self.size += len(data)
        return written

    def commit(self) -> str:
        """Give the file its final name; returns its sha256."""
        self._file.close()
        os.replace(self.temp, self.target)
        self._cleanup.detach()
        return self._digest.hexdigest()

    def close(self) -> None:
        self._cleanup()


def _discard(file: Any, name: str) -> None:
    file.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


class _FinishUpload(DTPHandler):
    """Ends transfers cleanly over TLS; decides an upload's reply before DTPHandler sends it.

    (DTPHandler answers 226 before it calls ``on_file_received``: too late to say 421.)
    """

    def handle_close(self) -> None:
        # Stream mode ends a file with EOF; only a TLS close_notify tells a finished upload
        # from a connection that was cut (pyftpdlib counts both as complete).
        if (
            self.receive
            and not self._closed
            and getattr(self, "_ssl_requested", False)
            and not self.socket.get_shutdown() & SSL.RECEIVED_SHUTDOWN
        ):
            self._resp = (
                "426 Connection closed without TLS close_notify; upload discarded.",
                logging.getLogger("pyftpdlib").info,
            )
            self.close()
            return
        if (
            not self.receive
            and self._initialized
            and not self._closed
            and getattr(self, "_ssl_accepting", False)
        ):
            # Sending nothing (an empty listing) before the client's TLS handshake arrived
            # reads as EOF to pyOpenSSL; closing then breaks the client (ftplib:
            # SHUTDOWN_WHILE_IN_INIT). The end-of-data marker queued after every push closes
            # it after the handshake; a client that goes away fails the handshake instead.
            return
        super().handle_close()

    def close(self) -> None:
        upload, busy = self.file_obj, False
        if not self._closed and isinstance(upload, _Upload) and not upload.closed:
            server = self.cmd_channel.drop_server
            if self.receive and self.transfer_finished:
                reply, accepted = server._complete(upload)
                self.transfer_finished = accepted
                self._resp = (reply, logging.getLogger("pyftpdlib").debug)
                busy = reply == BUSY_REPLY
            else:
                upload.close()
                server._discarded()
        super().close()
        if busy and not self.cmd_channel._closed:
            # 421 means "closing the control connection" (RFC 959): the client reconnects later
            self.cmd_channel.close_when_done()


# MRO: TLS_DTPHandler -> SSLConnectionMixin -> _FinishUpload -> DTPHandler, so the TLS
# layer's EOF and shutdown calls reach _FinishUpload before DTPHandler answers the client.
class _UploadDTP(TLS_DTPHandler, _FinishUpload):
    pass


class _DropHandler(TLS_FTPHandler):
    """TLS-only control channel; uploads through ``_Upload``; logins on a worker thread."""

    drop_server: FtpsServer  # set on the per-server subclass
    tls_control_required = True
    tls_data_required = True
    permit_foreign_addresses = False  # PORT/EPRT only back to the client (no FTP bounce)
    permit_privileged_ports = False
    abstracted_fs = _DropFS
    dtp_handler = _UploadDTP
    banner = "Flowmill file drop (FTPS: AUTH TLS required)."
    # STOU writes straight to its final name; SITE CHMOD is not granted to anyone.
    proto_cmds: ClassVar[dict[str, dict[str, Any]]] = {
        k: v for k, v in TLS_FTPHandler.proto_cmds.items() if k not in ("STOU", "SITE CHMOD")
    }

    def on_connect(self) -> None:
        self._counted = True
        self.drop_server._connection_opened()

    def close(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.drop_server._connection_closed()
        super().close()

    def ftp_PASS(self, line: str) -> None:
        if self.authenticated:
            self.respond("503 User already authenticated.")
            return
        if not self.username:
            self.respond("503 Login with USER first.")
            return
        # Read no further commands until the answer is in (as pyftpdlib's login delay does).
        self.del_channel()
        self.drop_server._authenticate_later(self, self.username, line)

    def ftp_CWD(self, path: str) -> str | None:
        try:
            self.fs.chdir(path)
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        self.respond(f'250 "{self.fs.cwd}" is the current directory.')
        return path

    def ftp_STOR(self, file: str, mode: str = "w") -> str | None:
        resume, self._restart_position = self._restart_position, 0
        if resume or mode != "w":
            self.respond("554 Resuming or appending is not supported; send the whole file.")
            return None
        if os.path.isdir(file):
            self.respond("550 Is a directory.")
            return None
        try:
            upload = _Upload(file, home=self.fs.root, user=self.username)
        except OSError as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        if self._in_dtp_queue is not None:  # a STOR that never got its data connection
            self._in_dtp_queue[0].close()
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = upload
            self.data_channel.enable_receiving(self._current_type, "STOR")
        else:
            self.respond("150 File status okay. About to open data connection.")
            self._in_dtp_queue = (upload, "STOR")
        return file


class _Wakeup:
    """A socket pair in the IO loop: other threads hand it calls to run on the loop thread."""

    def __init__(self, ioloop: Any) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._fileno = self._reader.fileno()
        self._calls: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        ioloop.register(self._fileno, self, ioloop.READ)

    def call_soon(self, function: Callable[..., None], *args: Any) -> None:
        self._calls.append((function, args))
        self.poke()

    def poke(self) -> None:
        # OSError: the pipe is full (a wake-up is pending anyway) or already closed
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._calls:
            function, args = self._calls.popleft()
            try:
                function(*args)
            except Exception:
                log.exception("FTPS: %r failed on the IO loop", function)

    def handle_close(self) -> None:
        pass

    def handle_error(self) -> None:
        log.exception("FTPS wake-up channel failed")

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


# -- helpers -----------------------------------------------------------------------------------


def _port_setting(port: int | None) -> int:
    if port is not None:
        value, source = port, "port"
    else:
        raw = os.environ.get("FLOWMILL_FTPS_PORT")
        if not raw:
            return DEFAULT_PORT
        source = "FLOWMILL_FTPS_PORT"
        try:
            value = int(raw)
        except ValueError:
            value = -1
    if not 0 <= value <= 65535:
        raise FlowmillError(f"FTPS {source}: {value!r} is not a port number (0-65535)")
    return value


def _passive_setting() -> range | None:
    """``FLOWMILL_FTPS_PASSIVE_PORTS=60000-60099`` (for a firewall); unset: any free port."""
    raw = os.environ.get("FLOWMILL_FTPS_PASSIVE_PORTS", "").strip()
    if not raw:
        return None
    first, _, last = raw.partition("-")
    try:
        return range(int(first), int(last or first) + 1)
    except ValueError:
        raise FlowmillError(
            f"FLOWMILL_FTPS_PASSIVE_PORTS: {raw[:40]!r} is not a range like 60000-60099"
        ) from None


def _user_folder(username: str) -> str | None:
    """The drop-folder name of a login name, as the user store spells names; None if unusable."""
    name = username.strip().lower()
    if not _USER_NAME.fullmatch(name) or name in (".", ".."):
        return None
    return name


def _tls_context(cert: Path, key: Path) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    try:
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey_file(str(key))
        context.check_privatekey()
    except SSL.Error as err:
        raise FlowmillError(
            f"FTPS cannot use TLS certificate {cert} with key {key}: {err}; "
            "fix FLOWMILL_TLS_CERT / FLOWMILL_TLS_KEY"
        ) from err
    return context


def _remove_stale_uploads(root: Path) -> None:
    """Temporaries left by a crash: nothing live is that old (stalled transfers end at 300 s)."""
    cutoff = time.time() - STALE_UPLOAD_SECONDS
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(UPLOAD_PREFIX):
                path = os.path.join(folder, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
