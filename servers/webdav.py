"""WebDAV file drops: pywebdav3 with our own containment, streaming uploads and events.

Each drop user logs in with HTTP Basic auth and sees ``DATA/drop/<user>/`` as ``/``. A PUT
streams its body (``Content-Length`` or chunked) to ``.flowmill-upload-*`` beside the
target, fsyncs it, renames it to its name and only then offers a ``DropEvent``; a body
that does not arrive whole leaves nothing behind and fires nothing. When the drop queue
is full the new file is removed again and the client gets ``503`` with ``Retry-After``.

pywebdav3 0.11.0 provides the HTTP server, PROPFIND and the filesystem model; this module
replaces what it gets wrong (see docs/file-servers.md, "WebDAV"): it decodes paths after
joining them to its root (``%2e%2e`` escapes), stores chunked PUTs as empty files unless
spoken to in HTTP/1.1, reads uploads into memory, gzips PROPFIND answers, keeps one lock
table for every server and user, and has no PROPPATCH. Locks and dead properties live in
memory, per server and user.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import html
import logging
import mimetypes
import os
import posixpath
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from base64 import b64decode
from binascii import Error as Base64Error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.dom import minidom
from xml.parsers.expat import ExpatError

from pywebdav.lib.errors import DAV_Error, DAV_Forbidden, DAV_NotFound
from pywebdav.lib.propfind import PROPFIND
from pywebdav.lib.WebDAVServer import DAVRequestHandler
from pywebdav.server.fshandler import FilesystemHandler

from engine.errors import FlowmillError
from servers.drops import DropEvent, DropQueue, drop_home
from servers.tls import certificate

__all__ = ["WebDavServer"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8821
UPLOAD_PREFIX = ".flowmill-upload-"  # in-progress uploads: hidden, unreachable by URL
CHUNK = 1 << 20  # bytes per read of an upload body
MAX_XML_BODY = 1 << 20  # PROPFIND / PROPPATCH / LOCK bodies
DRAIN_LIMIT = 1 << 20  # a refused request's body up to this size is read, so 4xx arrives
RETRY_AFTER = "5"  # seconds, on 503 when the drop queue is full
SOCKET_TIMEOUT = 120.0  # seconds a client may stay silent mid-request
MAX_CONNECTIONS = 256  # one thread each; past this a client gets 503 at once
MAX_LOCK_SECONDS = 7 * 24 * 3600
MAX_DEAD_PROPS = 4 << 20  # bytes of PROPPATCH values kept per user (in memory)
MAX_LOCKS = 10_000  # per user
REALM = 'Basic realm="Flowmill drop", charset="UTF-8"'
METHODS = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, LOCK, UNLOCK"
DAV_NS = "DAV:"
LIVE_PROPS = (
    "creationdate",
    "displayname",
    "getcontentlength",
    "getcontenttype",
    "getetag",
    "getlastmodified",
    "lockdiscovery",
    "resourcetype",
    "supportedlock",
)
_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_USER_NAME = re.compile(r"[a-z0-9_.-]{1,64}")  # the user store's names (engine/access/users.py)


class _Refused(Exception):
    """Answer the request with ``code`` and stop handling it."""

    def __init__(self, code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.headers = headers or {}


class _BodyAborted(Exception):
    """The client stopped sending before the body was complete."""


class _BodyMalformed(_BodyAborted):
    """The body is not valid chunked encoding: nothing of it can be trusted."""


# --- paths ---------------------------------------------------------------------------------


def _fully_decoded(path: str) -> str:
    """Percent-decode until nothing changes, so ``%252e%252e`` is seen as ``..``."""
    for _ in range(10):
        decoded = unquote(path)
        if decoded == path:
            return decoded
        path = decoded
    raise _Refused(403)  # still encoded after ten rounds: nobody means that


def _climbs_out(path: str) -> bool:
    """Does ``path`` (``/`` or ``\\`` separated) go above its starting folder?"""
    depth = 0
    for segment in path.replace("\\", "/").split("/"):
        if segment in ("", "."):
            continue
        depth += -1 if segment == ".." else 1
        if depth < 0:
            return True
    return False


def _uri_path(uri: str) -> str:
    """The path of an absolute URI as pywebdav3 builds them (decoded: ``?``/``#`` are names)."""
    rest = uri.split("://", 1)[1] if "://" in uri else uri
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _is_under(rel: str, ancestor: str) -> bool:
    """Root-relative paths: is ``rel`` ``ancestor`` itself or below it?"""
    return ancestor == "" or rel == ancestor or rel.startswith(ancestor + "/")


def _parent(rel: str) -> str:
    return posixpath.dirname(rel)


@dataclass
class _UserRoot:
    """One drop user's folder and the mapping of URL paths into it."""

    user: str
    root: str  # absolute, resolved
    real: str = ""  # where the root really is, should it be a symlink itself

    def __post_init__(self) -> None:
        self.real = os.path.realpath(self.root)

    def resolve(self, url_path: str) -> tuple[str, str]:
        """(root-relative path, local path) of a URL path that was percent-decoded once.

        Raises ``_Refused(403)`` for anything that leaves the root under any decoding
        (including through a symlink) and ``_Refused(404)`` for in-progress uploads.
        """
        if "\x00" in url_path:
            raise _Refused(403)
        full = _fully_decoded(url_path)
        # stock pywebdav3 joins before decoding: refuse every spelling of "..", whichever
        # decoder (ours, a proxy's, a later client's) would turn it into a real one
        if "\x00" in full or _climbs_out(url_path) or _climbs_out(full):
            raise _Refused(403)
        local = os.path.normpath(os.path.join(self.root, url_path.lstrip("/")))
        if not _inside(self.root, local) or not _inside(self.real, os.path.realpath(local)):
            raise _Refused(403)
        rel = os.path.relpath(local, self.root).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        if any(part.startswith(UPLOAD_PREFIX) for part in rel.split("/")):
            raise _Refused(404)
        return rel, local


# --- locks and dead properties (memory, per server and user) ------------------------------


@dataclass
class _Lock:
    token: str  # "opaquelocktoken:<uuid>"
    rel: str
    exclusive: bool
    infinite: bool
    owner: str  # XML fragment, namespaces declared inline
    seconds: int | None  # None: infinite
    expires: float | None = None

    def refresh(self) -> None:
        self.expires = None if self.seconds is None else time.monotonic() + self.seconds

    def covers(self, rel: str) -> bool:
        return rel == self.rel or (self.infinite and _is_under(rel, self.rel))


@dataclass
class _UserState:
    locks: dict[str, _Lock] = field(default_factory=dict)
    props: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)


class _DavState:
    """Locks and dead properties of one server, per user; every access under one lock."""

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self._users: dict[str, _UserState] = {}

    def of(self, user: str) -> _UserState:
        with self.mutex:
            state = self._users.setdefault(user, _UserState())
            now = time.monotonic()
            for token in [t for t, lk in state.locks.items() if lk.expires and lk.expires < now]:
                del state.locks[token]
            return state

    def forget(self, user: str, rel: str) -> None:
        """A resource and everything below it is gone: drop its locks and properties."""
        with self.mutex:
            state = self.of(user)
            for token in [t for t, lk in state.locks.items() if _is_under(lk.rel, rel)]:
                del state.locks[token]
            for key in [k for k in state.props if _is_under(k, rel)]:
                del state.props[key]

    def copy_props(self, user: str, src: str, dst: str, *, move: bool, deep: bool) -> None:
        with self.mutex:
            state = self.of(user)
            for key in [k for k in state.props if _is_under(k, src)]:
                if not deep and key != src:
                    continue
                new = dst + key[len(src) :]
                state.props[new] = dict(state.props[key])
                if move:
                    del state.props[key]


# --- XML ----------------------------------------------------------------------------------


def _xml_fragment(node: minidom.Node, default_ns: str = "") -> str:
    """Serialise a DOM node so it stands on its own: every namespace is declared inline."""
    if node.nodeType in (node.TEXT_NODE, node.CDATA_SECTION_NODE):
        return html.escape(node.data, quote=False)
    if node.nodeType != node.ELEMENT_NODE:
        return ""
    ns = node.namespaceURI or ""
    parts = [f"<{node.localName}"]
    if ns != default_ns:
        parts.append(f' xmlns="{html.escape(ns)}"')
    for index, attr in enumerate(node.attributes.values()):
        if attr.name == "xmlns" or attr.name.startswith("xmlns:"):
            continue
        value = html.escape(attr.value)
        if attr.namespaceURI:
            parts.append(f' xmlns:a{index}="{html.escape(attr.namespaceURI)}"')
            parts.append(f' a{index}:{attr.localName}="{value}"')
        else:
            parts.append(f' {attr.localName}="{value}"')
    inner = "".join(_xml_fragment(child, ns) for child in node.childNodes)
    parts.append(f">{inner}</{node.localName}>" if inner else "/>")
    return "".join(parts)


def _fragment_nodes(fragment: str) -> list[minidom.Node]:
    """DOM nodes of a fragment made by ``_xml_fragment`` (to hand to pywebdav3's PROPFIND)."""
    return list(minidom.parseString(f"<w>{fragment}</w>").documentElement.childNodes)


def _prop_element(ns: str, name: str, inner: str = "") -> str:
    if ns == DAV_NS:
        return f"<D:{name}>{inner}</D:{name}>" if inner else f"<D:{name}/>"
    decl = f'xmlns="{html.escape(ns)}"'
    return f"<{name} {decl}>{inner}</{name}>" if inner else f"<{name} {decl}/>"


def _status_line(code: int) -> str:
    phrase = BaseHTTPRequestHandler.responses.get(code, ("",))[0]
    return f"HTTP/1.1 {code} {phrase}".rstrip()


def _parse_xml(body: bytes) -> minidom.Document:
    try:
        return minidom.parseString(body)
    except (ExpatError, ValueError) as exc:
        raise _Refused(400) from exc


def _lock_xml(lock: _Lock, href: str) -> str:
    timeout = "Infinite" if lock.seconds is None else f"Second-{lock.seconds}"
    owner = f"<D:owner>{lock.owner}</D:owner>" if lock.owner else ""
    return (
        "<D:activelock>"
        "<D:locktype><D:write/></D:locktype>"
        f"<D:lockscope><D:{'exclusive' if lock.exclusive else 'shared'}/></D:lockscope>"
        f"<D:depth>{'infinity' if lock.infinite else '0'}</D:depth>"
        f"{owner}<D:timeout>{timeout}</D:timeout>"
        f"<D:locktoken><D:href>{lock.token}</D:href></D:locktoken>"
        f"<D:lockroot><D:href>{html.escape(href)}</D:href></D:lockroot>"
        "</D:activelock>"
    )


# --- the If header (RFC 4918, section 10.4) -----------------------------------------------

_IF_TOKEN = re.compile(r"\s*(<[^>]*>|\(|\)|\[[^\]]*\]|[Nn][Oo][Tt])")


def _parse_if(header: str) -> list[tuple[str | None, list[tuple[bool, str, str]]]]:
    """[(resource tag or None, [(negated, "token"|"etag", value), ...]), ...]; 400 if bad."""
    lists: list[tuple[str | None, list[tuple[bool, str, str]]]] = []
    tag: str | None = None
    pos, current, negate = 0, None, False
    while pos < len(header.rstrip()):
        match = _IF_TOKEN.match(header, pos)
        if not match:
            raise _Refused(400)
        pos, item = match.end(), match.group(1)
        if item == "(":
            if current is not None:
                raise _Refused(400)
            current = []
        elif item == ")":
            if not current:
                raise _Refused(400)
            lists.append((tag, current))
            current = None
        elif item.lower() == "not":
            if current is None:
                raise _Refused(400)
            negate = True
        elif current is None:
            if not item.startswith("<"):
                raise _Refused(400)
            tag = item[1:-1]
        else:
            kind = "token" if item.startswith("<") else "etag"
            current.append((negate, kind, item[1:-1]))
            negate = False
    if current is not None or not lists:
        raise _Refused(400)
    return lists


# --- pywebdav3's filesystem, confined --------------------------------------------------------


class _UserFilesystem(FilesystemHandler):
    """pywebdav3's filesystem model for one user; every URI goes through ``_UserRoot``."""

    def __init__(self, root: _UserRoot, baseuri: str, state: _DavState) -> None:
        # not super().__init__: it logs a line at INFO for every request
        self.directory, self.baseuri, self.verbose = root.root, baseuri, False
        self.user_root = root
        self.state = state
        self.mimecheck = True
        self.baseurl = ""

    def uri2local(self, uri: str) -> str:
        try:
            return self.user_root.resolve(_uri_path(uri))[1]
        except _Refused as refused:
            raise DAV_Forbidden if refused.code == 403 else DAV_NotFound from None

    def rel(self, uri: str) -> str:
        try:
            return self.user_root.resolve(_uri_path(uri))[0]
        except _Refused:
            raise DAV_NotFound from None

    def get_childs(self, uri: str, filter: Any = None) -> list[str]:
        return [
            child
            for child in super().get_childs(uri, filter)
            if not posixpath.basename(child).startswith(UPLOAD_PREFIX)
        ]

    def get_propnames(self, uri: str) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {DAV_NS: list(LIVE_PROPS)}
        with self.state.mutex:
            for ns, name in self.state.of(self.user_root.user).props.get(self.rel(uri), {}):
                names.setdefault(ns, []).append(name)
        return names

    def get_prop(self, uri: str, ns: str | None, propname: str) -> Any:
        ns = ns or ""
        with self.state.mutex:
            dead = self.state.of(self.user_root.user).props.get(self.rel(uri), {})
            value = dead.get((ns, propname))
        if value is not None:
            return _fragment_nodes(value) if "<" in value else html.unescape(value)
        if ns == DAV_NS and propname in LIVE_PROPS:
            return super().get_prop(uri, ns, propname)
        raise DAV_NotFound

    def _get_dav_getetag(self, uri: str) -> str:
        path = self.uri2local(uri)
        if not os.path.isfile(path):
            raise DAV_NotFound
        return _etag(os.stat(path))

    def _get_dav_getcontenttype(self, uri: str) -> str:
        path = self.uri2local(uri)
        if os.path.isdir(path):
            return "httpd/unix-directory"
        if not os.path.isfile(path):
            raise DAV_NotFound
        return _content_type(path)

    def _get_dav_getcontentlength(self, uri: str) -> str:
        path = self.uri2local(uri)
        if not os.path.isfile(path):
            raise DAV_NotFound
        return str(os.path.getsize(path))

    def _get_dav_supportedlock(self, uri: str) -> list[minidom.Node]:
        entries = "".join(
            f"<D:lockentry><D:lockscope><D:{scope}/></D:lockscope>"
            "<D:locktype><D:write/></D:locktype></D:lockentry>"
            for scope in ("exclusive", "shared")
        )
        return list(
            minidom.parseString(f'<D:w xmlns:D="DAV:">{entries}</D:w>').documentElement.childNodes
        )

    def _get_dav_lockdiscovery(self, uri: str) -> list[minidom.Node]:
        rel = self.rel(uri)
        with self.state.mutex:
            locks = [
                lk for lk in self.state.of(self.user_root.user).locks.values() if lk.covers(rel)
            ]
        xml = "".join(_lock_xml(lk, "/" + quote(lk.rel)) for lk in locks)
        return list(
            minidom.parseString(f'<D:w xmlns:D="DAV:">{xml}</D:w>').documentElement.childNodes
        )


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _content_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


class _PropFind(PROPFIND):
    """pywebdav3's PROPFIND, writing every property namespace so XML parsers accept it.

    Stock binds each namespace to a prefix (``xmlns:ns1=""`` for the empty namespace is
    not XML) and drops the trailing slash of collection hrefs.
    """

    def mk_prop_response(self, uri: str, good_props: dict, bad_props: dict, doc: Any) -> Any:
        response = doc.createElement("D:response")
        href = doc.createElement("D:href")
        href.appendChild(doc.createTextNode(self._href(uri)))
        response.appendChild(href)
        found = [
            (ns, name, value) for ns, props in good_props.items() for name, value in props.items()
        ]
        if found:
            response.appendChild(self._propstat(doc, 200, found))
        for code, by_ns in bad_props.items():
            missing = [(ns, name, None) for ns, names in by_ns.items() for name in names]
            response.appendChild(self._propstat(doc, code, missing))
        return response

    def mk_propname_response(self, uri: str, propnames: dict, doc: Any) -> Any:
        response = doc.createElement("D:response")
        href = doc.createElement("D:href")
        href.appendChild(doc.createTextNode(self._href(uri)))
        response.appendChild(href)
        names = [(ns, name, None) for ns, plist in propnames.items() for name in plist]
        response.appendChild(self._propstat(doc, 200, names))
        return response

    def _href(self, uri: str) -> str:
        path = _uri_path(uri)
        if self._dataclass.is_collection(uri) and not path.endswith("/"):
            path += "/"
        return quote(path)

    def _propstat(self, doc: Any, code: int, props: list[tuple[str, str, Any]]) -> Any:
        propstat = doc.createElement("D:propstat")
        prop = doc.createElement("D:prop")
        for ns, name, value in props:
            ns = ns or ""
            if ns == DAV_NS:
                element = doc.createElement(f"D:{name}")
            else:
                element = doc.createElement(name)
                element.setAttribute("xmlns", ns)
            if name == "resourcetype" and ns == DAV_NS:
                if value == 1:
                    element.appendChild(doc.createElement("D:collection"))
            elif isinstance(value, list):
                for node in value:
                    element.appendChild(node)
            elif isinstance(value, minidom.Element):
                element.appendChild(value)
            elif value:
                element.appendChild(doc.createTextNode(str(value)))
            prop.appendChild(element)
        propstat.appendChild(prop)
        status = doc.createElement("D:status")
        status.appendChild(doc.createTextNode(_status_line(code)))
        propstat.appendChild(status)
        return propstat


# --- the request handler -----------------------------------------------------------------


class _DavConfig:
    """The settings pywebdav3 reads from ``handler._config.DAV``."""

    class DAV:
        lockemulation = True  # we answer LOCK/UNLOCK ourselves; this makes DAV: 1,2
        verbose = False
        chunked_http_response = False
        http_response_use_iterator = True
        http_request_use_iterator = True
        mimecheck = True
        baseurl = ""

        @classmethod
        def getboolean(cls, name: str) -> bool:
            return bool(getattr(cls, name, False))


class _FlowmillDavHandler(DAVRequestHandler):
    """One request of one authenticated drop user; subclassed once per ``WebDavServer``."""

    # chunked PUT bodies are read by pywebdav3 (and by us) only when we speak HTTP/1.1
    protocol_version = "HTTP/1.1"
    server_version = "Flowmill-WebDAV"
    # gzip of PROPFIND answers breaks clients (requests) and buffers whole GET bodies
    encode_threshold = sys.maxsize
    timeout = SOCKET_TIMEOUT
    _config = _DavConfig
    flowmill: WebDavServer  # set on the per-server subclass

    # -- request set-up: authentication, the user's root, containment --------------------

    def handle_expect_100(self) -> bool:
        # answer "100 Continue" only once the request is authenticated and allowed
        self._expect_continue = True
        return True

    def parse_request(self) -> bool:
        self._responded = False
        self._body_read = False
        self._expect_continue = False
        self._continued = False
        if not BaseHTTPRequestHandler.parse_request(self):
            return False
        try:
            self._prepare()
        except _Refused as refused:
            self._refuse(refused.code, refused.headers)
            return False
        return True

    def _prepare(self) -> None:
        user = self._authenticated_user()
        if user is None:
            raise _Refused(401, {"WWW-Authenticate": REALM})
        self.user_root = _UserRoot(user, str(drop_home(self.flowmill.data_dir, user)))
        self.state = self.flowmill._state
        self.IFACE_CLASS = _UserFilesystem(self.user_root, self._base(), self.state)
        self.url_path = self._request_path(self.path)
        self.rel, self.local = self.user_root.resolve(self.url_path)
        self.dest: tuple[str, str] | None = None
        if self.command in ("COPY", "MOVE"):
            destination = self.headers.get("Destination")
            if not destination:
                raise _Refused(400)
            self.dest = self.user_root.resolve(self._request_path(destination))
        if self.command != "PUT" and self._content_length() > MAX_XML_BODY:
            raise _Refused(413)

    def _authenticated_user(self) -> str | None:
        scheme, _, encoded = self.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            raw = b64decode(encoded.strip(), validate=True)
        except (Base64Error, ValueError):
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        login, colon, password = text.partition(":")
        # the folder is the name as the user store spells it (as on FTPS): "Drop" is "drop";
        # and it must be one plain path segment ("..", "a/b" would leave DATA/drop)
        user = login.strip().lower()
        if not colon or not _USER_NAME.fullmatch(user) or user in (".", ".."):
            return None
        try:
            ok = self.flowmill.authenticate(login, password)
        except Exception:
            log.exception("webdav: authenticating %r failed; refusing the login", login)
            return None
        return user if ok is True else None

    @staticmethod
    def _request_path(target: str) -> str:
        """The path of a request target or Destination, percent-decoded once."""
        if target == "*":
            return "/"
        if not target.startswith("/"):
            target = urlsplit(target).path or "/"
        # "#" is part of the name here: a fragment never reaches a server
        return unquote(target.split("?", 1)[0])

    def _base(self) -> str:
        scheme = "https" if self.flowmill.tls else "http"
        host = self.headers.get("Host", "")
        if not _HOST_HEADER.match(host):
            addr_host, addr_port = self.flowmill.address
            host = f"{addr_host}:{addr_port}"
        return f"{scheme}://{host}"

    def get_baseuri(self, dc: Any) -> str:
        return self._base() + "/"

    # -- responses -------------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        if code >= 200:
            self._responded = True
        super().send_response(code, message)

    def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(code)
        self.send_header("Date", self.date_time_string())
        self.send_header("DAV", "1, 2")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body or code not in (204, 304):
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_xml(self, code: int, xml: str, headers: dict[str, str] | None = None) -> None:
        body = ('<?xml version="1.0" encoding="utf-8"?>\n' + xml).encode("utf-8")
        self._send(code, body, 'application/xml; charset="utf-8"', headers)

    def _refuse(self, code: int, headers: dict[str, str] | None = None) -> None:
        self._drain_body()
        message = f"{code} {self.responses.get(code, ('',))[0]}\n".encode()
        self._send(code, message, headers=headers)

    def _drain_body(self) -> None:
        """Read a small unread body, so the client sees our answer instead of a reset."""
        if self._body_read or (self._expect_continue and not self._continued):
            return  # read already, or the client waits for "100 Continue" and sent nothing
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return
        try:
            length = self._content_length()
        except _Refused:
            return
        if 0 < length <= DRAIN_LIMIT:
            with contextlib.suppress(OSError):
                self.rfile.read(length)

    def _content_length(self) -> int:
        value = self.headers.get("Content-Length")
        if value is None:
            return 0
        if not value.strip().isdigit():
            raise _Refused(400)
        return int(value)

    def _continue(self) -> None:
        if self._expect_continue and not self._continued:
            self.wfile.write(f"{self.protocol_version} 100 Continue\r\n\r\n".encode())
            self.wfile.flush()
            self._continued = True

    def _read_small_body(self) -> bytes:
        self._continue()
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            for piece in self._chunked_body():
                data += piece
                if len(data) > MAX_XML_BODY:
                    raise _Refused(413)
            return bytes(data)
        length = self._content_length()
        data = bytearray(length)
        if length and self._readinto(memoryview(data)) != length:
            raise _BodyAborted
        return bytes(data)

    def _readinto(self, view: memoryview) -> int:
        self._body_read = True
        try:
            return self.rfile.readinto(view) or 0
        except OSError as exc:  # reset, timeout, TLS error: the body will not arrive
            raise _BodyAborted from exc

    def _readline(self, limit: int) -> bytes:
        self._body_read = True
        try:
            line = self.rfile.readline(limit)
        except OSError as exc:
            raise _BodyAborted from exc
        if not line.endswith(b"\n"):
            raise _BodyAborted  # end of stream, or a line longer than any valid one
        return line

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webdav %s: " + format, self.address_string(), *args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        user = getattr(getattr(self, "user_root", None), "user", "-")
        log.debug(
            "webdav %s %s %s %s -> %s", self.address_string(), user, self.command, self.path, code
        )

    # -- every method runs through one guard -------------------------------------------------

    def _guarded(self, action: Callable[[], None]) -> None:
        headers: dict[str, str] = {}
        try:
            action()
            return
        except _Refused as refused:
            code, headers = refused.code, refused.headers
        except _BodyAborted as aborted:
            log.info("webdav: %s %s by %s: body incomplete or malformed; nothing stored",
                     self.command, self.path, self.user_root.user)  # fmt: skip
            self.close_connection = True
            if not isinstance(aborted, _BodyMalformed):
                return  # nobody is listening any more
            code = 400
        except DAV_Error as error:
            code = error.args[0] if error.args and isinstance(error.args[0], int) else 500
        except (ConnectionError, TimeoutError, ssl.SSLError):  # the client went away
            self.close_connection = True
            return
        except Exception:
            log.exception("webdav: %s %s failed", self.command, self.path)
            code = 500
        if self._responded:
            self.close_connection = True
            return
        try:
            self._refuse(code or 500, headers)
        except OSError:
            self.close_connection = True

    def do_OPTIONS(self) -> None:
        self._guarded(lambda: self._send(200, headers={"Allow": METHODS, "MS-Author-Via": "DAV"}))

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_HEAD(self) -> None:
        self._guarded(self._get)

    def do_PUT(self) -> None:
        self._guarded(self._put)

    def do_DELETE(self) -> None:
        self._guarded(self._delete)

    def do_MKCOL(self) -> None:
        self._guarded(self._mkcol)

    def do_COPY(self) -> None:
        self._guarded(lambda: self._copy_move(move=False))

    def do_MOVE(self) -> None:
        self._guarded(lambda: self._copy_move(move=True))

    def do_PROPFIND(self) -> None:
        self._guarded(self._propfind)

    def do_PROPPATCH(self) -> None:
        self._guarded(self._proppatch)

    def do_LOCK(self) -> None:
        self._guarded(self._lock)

    def do_UNLOCK(self) -> None:
        self._guarded(self._unlock)

    def do_POST(self) -> None:
        self._guarded(self._not_allowed)

    def do_TRACE(self) -> None:
        self._guarded(self._not_allowed)

    def do_REPORT(self) -> None:
        self._guarded(self._not_allowed)

    def _not_allowed(self) -> None:
        raise _Refused(405, {"Allow": METHODS})

    # -- GET / HEAD ----------------------------------------------------------------------------

    def _get(self) -> None:
        if os.path.isdir(self.local):
            self._send(200, self._listing(), "text/html; charset=utf-8")
            return
        if not os.path.isfile(self.local):
            raise _Refused(404)
        with open(self.local, "rb") as fh:
            st = os.fstat(fh.fileno())
            start, end, code = 0, st.st_size, 200
            headers = {
                "ETag": _etag(st),
                "Last-Modified": self.date_time_string(st.st_mtime),
                "Accept-Ranges": "bytes",
            }
            wanted = self._range(st.st_size)
            if wanted:
                start, end, code = wanted[0], wanted[1], 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{st.st_size}"
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", _content_type(self.local))
            self.send_header("Content-Length", str(end - start))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            fh.seek(start)
            remaining = end - start
            while remaining:
                data = fh.read(min(CHUNK, remaining))
                if not data:
                    break
                self.wfile.write(data)
                remaining -= len(data)

    def _range(self, size: int) -> tuple[int, int] | None:
        match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", self.headers.get("Range", ""))
        if not match or match.group(1) == match.group(2) == "":
            return None
        first, last = match.groups()
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), size if last == "" else min(size, int(last) + 1)
        if start >= size or start >= end:
            raise _Refused(416, {"Content-Range": f"bytes */{size}"})
        return start, end

    def _listing(self) -> bytes:
        names = sorted(n for n in os.listdir(self.local) if not n.startswith("."))
        base = self.url_path if self.url_path.endswith("/") else self.url_path + "/"
        items = []
        for name in names:
            slash = "/" if os.path.isdir(os.path.join(self.local, name)) else ""
            href = html.escape(quote(base + name) + slash)
            items.append(f'<li><a href="{href}">{html.escape(name)}{slash}</a></li>')
        title = html.escape(self.url_path)
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1><ul>{''.join(items)}</ul></body></html>"
        )
        return page.encode("utf-8")

    # -- PUT: stream to a temporary file, rename, then announce ------------------------------

    def _put(self) -> None:
        if self.rel == "" or os.path.isdir(self.local):
            raise _Refused(405, {"Allow": METHODS})
        folder = os.path.dirname(self.local)
        if not os.path.isdir(folder):
            raise _Refused(409)
        existed = os.path.exists(self.local)
        if existed and self.headers.get("If-None-Match", "").strip() == "*":
            raise _Refused(412)
        self._check_write(self.rel, membership=not existed)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = 0 if chunked else self._content_length()
        self._continue()
        fd, temp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = hashlib.sha256(), 0
                pieces = self._chunked_body() if chunked else self._sized_body(length)
                for piece in pieces:
                    out.write(piece)
                    digest.update(piece)
                    size += len(piece)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.local)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, OSError):  # reading errors arrive as _BodyAborted
                log.error(
                    "webdav: storing %s for %s failed: %s", self.rel, self.user_root.user, exc
                )
                raise _Refused(507 if exc.errno == errno.ENOSPC else 500) from exc
            raise
        _fsync_folder(folder)
        etag = _etag(os.stat(self.local))  # before the event: a consumer may move the file
        event = DropEvent(
            path=self.local,
            name=self.rel,
            size=size,
            user=self.user_root.user,
            source="webdav",
            sha256=digest.hexdigest(),
        )
        if not self.flowmill.drops.offer(event):
            # nothing is dropped silently: the file goes, the client hears "busy"
            with contextlib.suppress(OSError):
                os.unlink(self.local)
            self.flowmill._count("uploads_refused_busy")
            log.warning(
                "webdav: drop queue full; refused %s from %s", self.rel, self.user_root.user
            )
            self._send(503, b"busy: try again later\n", headers={"Retry-After": RETRY_AFTER})
            return
        self.flowmill._count("uploads_received")
        self._send(204 if existed else 201, headers={"ETag": etag})

    def _sized_body(self, length: int) -> Iterator[memoryview]:
        buffer = memoryview(bytearray(min(CHUNK, max(length, 1))))
        remaining = length
        while remaining:
            read = self._readinto(buffer[: min(len(buffer), remaining)])
            if not read:
                raise _BodyAborted
            yield buffer[:read]
            remaining -= read

    def _chunked_body(self) -> Iterator[memoryview]:
        buffer = memoryview(bytearray(CHUNK))
        while True:
            line = self._readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyMalformed from None
            if size < 0:
                raise _BodyMalformed
            if size == 0:
                while True:  # trailer fields, then the empty line
                    if self._readline(8192) in (b"\r\n", b"\n"):
                        return
            remaining = size
            while remaining:
                read = self._readinto(buffer[: min(len(buffer), remaining)])
                if not read:
                    raise _BodyAborted
                yield buffer[:read]
                remaining -= read
            if self._readline(3) not in (b"\r\n", b"\n"):
                raise _BodyMalformed

    # -- locks and conditions ---------------------------------------------------------------

    def _check_write(self, *rels: str, subtree: bool = False, membership: bool = False) -> None:
        """412 unless the If header holds; 423 unless every lock in the way was submitted.

        ``subtree``: everything below each path changes too (DELETE, MOVE source, overwrite).
        ``membership``: the parent collection gains or loses a member.
        """
        submitted = self._submitted_tokens()
        with self.state.mutex:
            locks = self.state.of(self.user_root.user).locks.values()
            for rel in rels:
                for lock in locks:
                    in_way = lock.covers(rel) or (subtree and _is_under(lock.rel, rel))
                    if membership and rel and lock.rel == _parent(rel):
                        in_way = True
                    if in_way and lock.token not in submitted:
                        raise _Refused(423)

    def _submitted_tokens(self) -> set[str]:
        header = self.headers.get("If")
        if not header:
            return set()
        lists = _parse_if(header)
        if not any(self._if_list_holds(tag, conditions) for tag, conditions in lists):
            raise _Refused(412)
        return {
            value
            for _, conditions in lists
            for negated, kind, value in conditions
            if kind == "token" and not negated
        }

    def _if_list_holds(self, tag: str | None, conditions: list[tuple[bool, str, str]]) -> bool:
        if tag is None:
            rel, local = self.rel, self.local
        else:
            try:
                rel, local = self.user_root.resolve(self._request_path(tag))
            except _Refused:
                return False
        with self.state.mutex:
            locks = self.state.of(self.user_root.user).locks
            for negated, kind, value in conditions:
                if kind == "token":
                    holds = value in locks and locks[value].covers(rel)
                else:
                    holds = os.path.isfile(local) and _etag(os.stat(local)) == value
                if holds == negated:
                    return False
        return True

    def _lock(self) -> None:
        body = self._read_small_body()
        if not body:
            self._refresh_lock()
            return
        if self.headers.get("If"):
            self._submitted_tokens()  # a failing condition is a 412 here too
        depth = self.headers.get("Depth", "infinity").lower()
        if depth not in ("0", "infinity"):
            raise _Refused(400)
        info = _parse_xml(body).documentElement
        if info.namespaceURI != DAV_NS or info.localName != "lockinfo":
            raise _Refused(400)
        scope = _dav_child(info, "lockscope")
        kind = _dav_child(info, "locktype")
        if scope is None or kind is None or _dav_child(kind, "write") is None:
            raise _Refused(422)
        exclusive = _dav_child(scope, "exclusive") is not None
        owner = _dav_child(info, "owner")
        owner_xml = "".join(_xml_fragment(c) for c in owner.childNodes) if owner is not None else ""
        lock = _Lock(
            token=f"opaquelocktoken:{uuid.uuid4()}",
            rel=self.rel,
            exclusive=exclusive,
            infinite=depth == "infinity",
            owner=owner_xml,
            seconds=self._timeout(),
        )
        created = False
        with self.state.mutex:
            locks = self.state.of(self.user_root.user).locks
            if len(locks) >= MAX_LOCKS:
                raise _Refused(503, {"Retry-After": RETRY_AFTER})
            for other in locks.values():
                overlaps = other.covers(self.rel) or (
                    lock.infinite and _is_under(other.rel, self.rel)
                )
                if overlaps and (other.exclusive or lock.exclusive):
                    raise _Refused(423)
            if not os.path.exists(self.local):
                if self.rel == "" or not os.path.isdir(os.path.dirname(self.local)):
                    raise _Refused(409)
                # a lock on an unmapped URL makes an empty resource (RFC 4918, 7.3); no event
                with open(self.local, "xb"):
                    pass
                created = True
            lock.refresh()
            locks[lock.token] = lock
        xml = self._discovery_xml(lock)
        self._send_xml(201 if created else 200, xml, {"Lock-Token": f"<{lock.token}>"})

    def _refresh_lock(self) -> None:
        header = self.headers.get("If")
        if not header:
            raise _Refused(400)
        lists = _parse_if(header)
        with self.state.mutex:
            locks = self.state.of(self.user_root.user).locks
            for _, conditions in lists:
                for negated, kind, value in conditions:
                    lock = locks.get(value)
                    if kind == "token" and not negated and lock and lock.covers(self.rel):
                        lock.seconds = self._timeout()
                        lock.refresh()
                        self._send_xml(200, self._discovery_xml(lock))
                        return
        raise _Refused(412)

    def _discovery_xml(self, lock: _Lock) -> str:
        active = _lock_xml(lock, "/" + quote(lock.rel))
        return f'<D:prop xmlns:D="DAV:"><D:lockdiscovery>{active}</D:lockdiscovery></D:prop>'

    def _timeout(self) -> int | None:
        for part in self.headers.get("Timeout", "").split(","):
            part = part.strip().lower()
            if part == "infinite":
                return None
            if part.startswith("second-") and part[7:].isdigit():
                return min(int(part[7:]), MAX_LOCK_SECONDS)
        return None

    def _unlock(self) -> None:
        token = self.headers.get("Lock-Token", "").strip()
        if not (token.startswith("<") and token.endswith(">")):
            raise _Refused(400)
        with self.state.mutex:
            locks = self.state.of(self.user_root.user).locks
            lock = locks.get(token[1:-1])
            if lock is None or not lock.covers(self.rel):
                raise _Refused(409)
            del locks[lock.token]
        self._send(204)

    # -- MKCOL / DELETE / COPY / MOVE ----------------------------------------------------------

    def _mkcol(self) -> None:
        if self._content_length() or "chunked" in self.headers.get("Transfer-Encoding", ""):
            raise _Refused(415)
        if os.path.lexists(self.local):
            raise _Refused(405, {"Allow": METHODS})
        if not os.path.isdir(os.path.dirname(self.local)):
            raise _Refused(409)
        self._check_write(self.rel, membership=True)
        os.mkdir(self.local)
        self._send(201)

    def _delete(self) -> None:
        if self.rel == "":
            raise _Refused(403)  # the user's root itself stays
        if not os.path.lexists(self.local):
            raise _Refused(404)
        self._check_write(self.rel, subtree=True, membership=True)
        _remove(self.local)
        self.state.forget(self.user_root.user, self.rel)
        self._send(204)

    def _copy_move(self, *, move: bool) -> None:
        assert self.dest is not None
        dst_rel, dst = self.dest
        if not os.path.lexists(self.local):
            raise _Refused(404)
        if (move and self.rel == "") or dst_rel == "" or _is_under(dst_rel, self.rel):
            raise _Refused(403)
        depth = self.headers.get("Depth", "infinity").lower()
        if depth not in ("0", "infinity") or (move and depth != "infinity"):
            raise _Refused(400)
        overwrite = self.headers.get("Overwrite", "T").strip().upper()
        if overwrite not in ("T", "F"):
            raise _Refused(400)
        if not os.path.isdir(os.path.dirname(dst)):
            raise _Refused(409)
        existed = os.path.lexists(dst)
        if existed and overwrite == "F":
            raise _Refused(412)
        self._check_write(dst_rel, subtree=True, membership=True)
        if move:
            self._check_write(self.rel, subtree=True, membership=True)
        user = self.user_root.user
        if existed:
            _remove(dst)
            self.state.forget(user, dst_rel)
        if move:
            os.rename(self.local, dst)
            with self.state.mutex:
                self.state.copy_props(user, self.rel, dst_rel, move=True, deep=True)
                self.state.forget(user, self.rel)
        else:
            deep = depth == "infinity"
            if os.path.isdir(self.local):
                if deep:
                    ignore = shutil.ignore_patterns(UPLOAD_PREFIX + "*")
                    shutil.copytree(self.local, dst, symlinks=True, ignore=ignore)
                else:
                    os.mkdir(dst)
            else:
                shutil.copy2(self.local, dst)
            self.state.copy_props(user, self.rel, dst_rel, move=False, deep=deep)
        self._send(204 if existed else 201)

    # -- PROPFIND / PROPPATCH ------------------------------------------------------------------

    def _propfind(self) -> None:
        body = self._read_small_body()
        depth = self.headers.get("Depth", "infinity").lower()
        if depth not in ("0", "1", "infinity"):
            raise _Refused(400)
        uri = self._base() + self.url_path
        try:
            data = _PropFind(uri, self.IFACE_CLASS, depth, body or None).createResponse()
        except ExpatError:
            raise _Refused(400) from None
        self._send(207, data, 'application/xml; charset="utf-8"')

    def _proppatch(self) -> None:
        body = self._read_small_body()
        if not os.path.lexists(self.local):
            raise _Refused(404)
        self._check_write(self.rel)
        update = _parse_xml(body).documentElement
        if update.namespaceURI != DAV_NS or update.localName != "propertyupdate":
            raise _Refused(400)
        changes: list[tuple[str, str, str | None]] = []  # (ns, name, new value or None)
        for action in update.childNodes:
            if action.nodeType != action.ELEMENT_NODE or action.namespaceURI != DAV_NS:
                continue
            if action.localName not in ("set", "remove"):
                raise _Refused(400)
            for prop in action.childNodes:
                if prop.nodeType != prop.ELEMENT_NODE:
                    continue
                if prop.namespaceURI != DAV_NS or prop.localName != "prop":
                    raise _Refused(400)
                for item in prop.childNodes:
                    if item.nodeType != item.ELEMENT_NODE:
                        continue
                    value = None
                    if action.localName == "set":
                        value = "".join(_xml_fragment(c) for c in item.childNodes)
                    changes.append((item.namespaceURI or "", item.localName, value))
        # live properties are the server's: refuse them, and everything else with them
        failed = any(ns == DAV_NS for ns, _, _ in changes)
        if not failed:
            with self.state.mutex:
                every = self.state.of(self.user_root.user).props
                updated = dict(every.get(self.rel, {}))
                for ns, name, value in changes:
                    if value is None:
                        updated.pop((ns, name), None)
                    else:
                        updated[(ns, name)] = value
                kept = sum(len(v) for r, p in every.items() if r != self.rel for v in p.values())
                if kept + sum(len(v) for v in updated.values()) > MAX_DEAD_PROPS:
                    raise _Refused(507)  # they live in memory: a bounded amount per user
                if updated:
                    every[self.rel] = updated
                else:
                    every.pop(self.rel, None)
        stats: dict[int, list[str]] = {}
        for ns, name, _ in changes:
            code = (403 if ns == DAV_NS else 424) if failed else 200
            stats.setdefault(code, []).append(_prop_element(ns, name))
        propstats = "".join(
            f"<D:propstat><D:prop>{''.join(elements)}</D:prop>"
            f"<D:status>{_status_line(code)}</D:status></D:propstat>"
            for code, elements in stats.items()
        )
        href = html.escape(quote(self.url_path))
        xml = (
            f'<D:multistatus xmlns:D="DAV:"><D:response><D:href>{href}</D:href>'
            f"{propstats}</D:response></D:multistatus>"
        )
        self._send_xml(207, xml)


def _dav_child(element: Any, name: str) -> Any:
    for child in element.childNodes:
        is_element = child.nodeType == child.ELEMENT_NODE
        if is_element and (child.namespaceURI, child.localName) == (DAV_NS, name):
            return child
    return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable before anyone is told about the file."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the server ----------------------------------------------------------------------------


_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + RETRY_AFTER.encode()
    + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)  # fmt: skip


class _HttpServer(ThreadingHTTPServer):
    """Thread per connection; TLS handshakes run in that thread, not in the accept loop."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, context: ssl.SSLContext | None):
        self.context = context
        self.active: set[socket.socket] = set()
        self.active_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.active_lock:
            busy = len(self.active) >= MAX_CONNECTIONS
            if not busy:
                self.active.add(request)
        if busy:
            log.warning("webdav: %d connections open; refusing %s", MAX_CONNECTIONS, client_address)
            if not isinstance(request, ssl.SSLSocket):
                with contextlib.suppress(OSError):
                    request.sendall(_BUSY_RESPONSE)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(SOCKET_TIMEOUT)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("webdav: TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.active_lock:
            self.active.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("webdav: connection from %s failed", client_address)

    def drop_connections(self) -> None:
        with self.active_lock:
            active = list(self.active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class WebDavServer:
    """The WebDAV file-drop server: one thread per connection, in the background.

    >>> server = WebDavServer(data_dir=Path("data"), authenticate=check, drops=DropQueue(),
    ...                       port=0)  # doctest: +SKIP
    >>> server.start(); server.address  # doctest: +SKIP
    ('127.0.0.1', 43117)

    Raises:
        FlowmillError: from ``start()`` when the address cannot be bound, and from the
            constructor when ``FLOWMILL_WEBDAV_PORT`` is not a port number.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        authenticate: Callable[[str, str], bool],
        drops: DropQueue,
        host: str | None = None,
        port: int | None = None,
        tls: bool | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.authenticate = authenticate
        self.drops = drops
        self.host = (
            host if host is not None else os.environ.get("FLOWMILL_WEBDAV_HOST", DEFAULT_HOST)
        )
        if port is None:
            raw = os.environ.get("FLOWMILL_WEBDAV_PORT", str(DEFAULT_PORT))
            if not raw.strip().isdigit() or int(raw) > 65535:
                raise FlowmillError(f"FLOWMILL_WEBDAV_PORT={raw!r} is not a port number (0-65535)")
            port = int(raw)
        self.port = port
        self.tls = bool(os.environ.get("FLOWMILL_TLS_CERT")) if tls is None else tls
        self._state = _DavState()
        self._counts = {"uploads_received": 0, "uploads_refused_busy": 0}
        self._counts_lock = threading.Lock()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        context = None
        if self.tls:
            cert, key = certificate(self.data_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert, key)
        # configuration lives on the handler class in pywebdav3: one subclass per server
        handler = type("FlowmillDavHandler", (_FlowmillDavHandler,), {"flowmill": self})
        try:
            self._server = _HttpServer((self.host, self.port), handler, context)
        except OSError as exc:
            raise FlowmillError(
                f"WebDAV server cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
                " (set FLOWMILL_WEBDAV_HOST / FLOWMILL_WEBDAV_PORT)"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="flowmill-webdav", daemon=True
        )
        self._thread.start()
        log.info("webdav: serving %s://%s:%s/", "https" if self.tls else "http", *self.address)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.drop_connections()  # an upload cut off here leaves nothing and fires nothing
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def describe(self) -> dict[str, Any]:
        """Address, TLS, whether it runs, open connections and upload counts."""
        host, port = self.address
        with self._counts_lock:
            counts = dict(self._counts)
        connections = 0
        if self._server is not None:
            with self._server.active_lock:
                connections = len(self._server.active)
        return {
            "host": host,
            "port": port,
            "tls": self.tls,
            "running": self._server is not None,
            "connections": connections,
            **counts,
        }

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1
