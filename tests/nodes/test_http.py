"""http.request and http.download against a real HTTP server running in the test."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from engine.errors import RecordError
from engine.testing import NodeResult, run_node
from nodes.http import HTTP_DOWNLOAD, HTTP_REQUEST, check_download, check_request

PASSWORD = "s3cr3t-Pässwort"
TOKEN = "tok-9f3c1b2a7e"
API_KEY = "key-77aa11bb"
BASIC = base64.b64encode(f"anna:{PASSWORD}".encode()).decode()
BIG = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MB
FAST = {"backoff": 0.01, "max_retry_delay": 0.2, "request_timeout": 5}


class Handler(BaseHTTPRequestHandler):
    hits: Counter[str]
    lock: threading.Lock

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, **headers: str) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", **headers)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        with self.lock:
            self.hits[path] += 1
            hits = self.hits[path]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        auth = self.headers.get("Authorization", "")
        if path.startswith("/echo"):
            self._json(
                200,
                {
                    "method": self.command,
                    "path": path,
                    "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                    "headers": dict(self.headers.items()),
                    "content_type": self.headers.get("Content-Type"),
                    "body": body,
                },
            )
        elif path == "/basic":
            ok = auth == f"Basic {BASIC}"
            self._json(200 if ok else 401, {"user": "anna"} if ok else {"error": "who?"})
        elif path == "/bearer":
            ok = auth == f"Bearer {TOKEN}"
            self._json(200 if ok else 401, {"ok": ok})
        elif path == "/apikey":
            ok = self.headers.get("X-Shop-Key") == API_KEY
            self._json(200 if ok else 403, {"ok": ok})
        elif path.startswith("/busy"):
            if hits == 1:
                self._json(429, {"error": "slow down"}, Retry_After="1")
            else:
                self._json(200, {"attempt": hits})
        elif path.startswith("/flaky"):
            if hits <= 2:
                self._send(500, b"oops", "text/plain")
            else:
                self._json(200, {"attempt": hits})
        elif path == "/down":
            self._send(503, b"maintenance", "text/plain")
        elif path == "/big.bin":
            self._send(200, BIG, "application/octet-stream")
        elif path == "/page.html":
            self._send(200, b"<html>login</html>", "text/html; charset=utf-8")
        elif path == "/text":
            self._send(200, "Grüße".encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b'{"error": "no such order"}', "application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


@pytest.fixture
def server() -> Iterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()
    handler = type("H", (Handler,), {"hits": hits, "lock": threading.Lock()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # a client that stops reading (max_bytes) breaks the pipe: expected, not worth a trace
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def connections(base: str) -> dict[str, dict[str, Any]]:
    return {
        "basic": {"base_url": base, "auth": "basic", "user": "anna", "password": PASSWORD},
        "bearer": {"base_url": base, "auth": "bearer", "token": TOKEN},
        "apikey": {
            "base_url": base,
            "auth": "api_key",
            "api_key": API_KEY,
            "api_key_header": "X-Shop-Key",
        },
        "wrong": {"base_url": base, "auth": "basic", "user": "anna", "password": "nope-" + TOKEN},
    }


def assert_no_secrets(*things: Any) -> None:
    text = " ".join(map(str, things))
    for secret in (PASSWORD, TOKEN, API_KEY, BASIC, "nope-" + TOKEN):
        assert secret not in text


def request(server_url: str, config: dict[str, Any], records=None, **kw: Any) -> NodeResult:
    inputs = {"in": records} if records is not None else None
    return run_node(
        HTTP_REQUEST, {**FAST, **config}, inputs, connections=connections(server_url), **kw
    )


# -- http.request -------------------------------------------------------------------------


def test_record_fields_fill_the_url_encoded_and_the_response_is_added(server):
    base, _ = server
    records = [{"id": "a/b c", "q": "x&y=1", "n": 1}]
    result = request(
        base,
        {
            "url": base + "/echo/orders/${record.id}?n=${n}",
            "query": {"search": "${record.q}"},
            "headers": {"X-Order": "${record.id}"},
        },
        records,
    )
    (out,) = result["out"]
    assert out["id"] == "a/b c" and out["response"]["status"] == 200
    echo = out["response"]["body"]
    # the slash in the field did not become a path segment; & did not add a parameter
    assert echo["path"] == "/echo/orders/a%2Fb%20c"
    assert echo["query"] == {"n": "1", "search": "x&y=1"}
    assert echo["headers"]["X-Order"] == "a/b c"
    assert out["response"]["headers"]["Content-Type"] == "application/json"


def test_post_json_and_form_bodies_from_the_record(server):
    base, _ = server
    rec = {"sku": "a-1", "qty": 3, "secret_note": "x"}
    out = request(
        base,
        {"url": base + "/echo", "method": "POST", "body": "json", "body_fields": ["sku", "qty"]},
        [rec],
    )["out"]
    body = out[0]["response"]["body"]
    assert json.loads(body["body"]) == {"sku": "a-1", "qty": 3}
    assert body["content_type"] == "application/json"
    out = request(base, {"url": base + "/echo", "method": "PUT", "body": "form"}, [rec])["out"]
    body = out[0]["response"]["body"]
    assert parse_qs(body["body"]) == {"sku": ["a-1"], "qty": ["3"], "secret_note": ["x"]}


def test_batched_mode_sends_one_json_array_per_group(server):
    base, hits = server
    records = [{"i": i} for i in range(5)]
    result = request(
        base,
        {
            "url": "/echo/bulk",
            "connection": "bearer",
            "method": "POST",
            "body": "json",
            "batch_size": 2,
            "into": "answer",
        },
        records,
    )
    out = result["out"]
    assert [r["records"] for r in out] == [2, 2, 1]
    assert [json.loads(r["answer"]["body"]["body"]) for r in out] == [
        [{"i": 0}, {"i": 1}],
        [{"i": 2}, {"i": 3}],
        [{"i": 4}],
    ]
    assert hits["/echo/bulk"] == 3


@pytest.mark.parametrize(
    "name, path", [("basic", "/basic"), ("bearer", "/bearer"), ("apikey", "/apikey")]
)
def test_auth_from_a_connection_never_shows_the_secret(server, name, path):
    base, _ = server
    result = request(base, {"url": path, "connection": name}, [{"id": 1}])
    assert result["out"][0]["response"]["status"] == 200
    assert_no_secrets(result.outputs, result.log)


def test_echoed_credentials_are_masked_in_the_output(server):
    base, _ = server
    for name in ("basic", "bearer", "apikey"):
        result = request(base, {"url": "/echo", "connection": name, "query": {"k": "v"}})
        headers = result["out"][0]["response"]["body"]["headers"]
        assert "***" in (headers.get("Authorization", "") + headers.get("X-Shop-Key", ""))
        assert_no_secrets(result.outputs, result.log)


def test_failed_authentication_is_not_retried_and_names_url_and_status(server):
    base, hits = server
    with pytest.raises(RecordError) as info:
        request(base, {"url": "/basic?api_key=" + TOKEN, "connection": "wrong"}, [{"id": 1}])
    message = str(info.value)
    assert f"GET {base}/basic?…: HTTP 401" in message and "who?" in message
    assert hits["/basic"] == 1
    assert_no_secrets(message)


def test_429_waits_for_retry_after_capped_then_succeeds(server):
    base, hits = server
    result = request(base, {"url": "/busy", "connection": "bearer"}, [{"id": 1}])
    assert result["out"][0]["response"]["body"] == {"attempt": 2}
    assert hits["/busy"] == 2
    assert any("answered 429; repeat 1 of 3 in 0.2 s" in line for line in result.log)
    assert_no_secrets(result.log)


def test_500_is_retried_with_backoff_until_it_works(server):
    base, hits = server
    out = request(base, {"url": base + "/flaky"}, [{"id": 1}])["out"]
    assert out[0]["response"]["body"] == {"attempt": 3}
    assert hits["/flaky"] == 3


def test_5xx_gives_up_after_the_configured_retries(server):
    base, hits = server
    result = request(
        base, {"url": base + "/down", "request_retries": 2, "on_error": "route"}, [{"id": 7}]
    )
    assert result["out"] == [] and hits["/down"] == 3
    (bad,) = result["error"]
    assert bad["id"] == 7 and bad["_status"] == 503 and "maintenance" in bad["_error"]


def test_404_is_not_retried_and_the_record_goes_to_the_error_port(server):
    base, hits = server
    records = [{"id": "x"}, {"id": "y"}]
    result = request(
        base, {"url": "/orders/${record.id}", "connection": "basic", "on_error": "route"}, records
    )
    assert hits["/orders/x"] == 1 and hits["/orders/y"] == 1
    assert [r["_status"] for r in result["error"]] == [404, 404]
    assert 'HTTP 404 Not Found: {"error": "no such order"}' in result["error"][0]["_error"]
    assert_no_secrets(result.outputs, result.log)


def test_a_missing_field_names_the_template(server):
    base, _ = server
    result = request(base, {"url": base + "/echo/${record.nope}", "on_error": "route"}, [{}])
    assert "url: the record has no field 'nope'" in result["error"][0]["_error"]


def test_fail_on_status_off_passes_the_error_response_on(server):
    base, _ = server
    out = request(base, {"url": base + "/missing", "fail_on_status": False}, [{"id": 1}])["out"]
    assert out[0]["response"]["status"] == 404
    assert out[0]["response"]["body"] == {"error": "no such order"}


def test_without_input_the_node_calls_once_and_text_bodies_stay_text(server):
    base, _ = server
    out = request(base, {"url": base + "/text"})["out"]
    assert out == [
        {"response": {"status": 200, "headers": out[0]["response"]["headers"], "body": "Grüße"}}
    ]


def test_an_unreachable_server_fails_without_leaking_the_query(server):
    with pytest.raises(RecordError, match=r"GET http://127.0.0.1:9/x\?…: ConnectionError"):
        request("http://127.0.0.1:9", {"url": "http://127.0.0.1:9/x", "query": {"k": TOKEN}})


def test_config_checks_name_the_field():
    assert [p.field for p in check_request({"url": "ftp://x/y"})] == ["url"]
    assert [p.field for p in check_request({"url": "/x", "body": "json"})] == ["body"]
    assert [
        p.field
        for p in check_request({"url": "/x", "method": "POST", "body": "form", "batch_size": 5})
    ] == ["body"]
    assert [
        p.field for p in check_download({"url": "/x", "path": "f", "content_types": ["pdf"]})
    ] == ["content_types.0"]
    assert check_request({"url": "/orders/${record.id}", "method": "POST", "body": "json"}) == []


# -- http.download ------------------------------------------------------------------------


def download(server_url: str, config: dict[str, Any], records=None, **kw: Any) -> NodeResult:
    inputs = {"in": records} if records is not None else None
    return run_node(
        HTTP_DOWNLOAD, {**FAST, **config}, inputs, connections=connections(server_url), **kw
    )


def test_download_streams_a_5_mb_file_and_reports_its_checksum(server, tmp_path: Path):
    base, _ = server
    result = download(
        base,
        {
            "url": "/big.bin",
            "connection": "basic",
            "path": str(tmp_path / "in" / "${record.name}"),
            "content_types": ["application/*"],
        },
        [{"name": "big.bin"}],
    )
    (file,) = result["out"]
    assert file == {
        "path": str(tmp_path / "in" / "big.bin"),
        "name": "big.bin",
        "size": len(BIG),
        "content_type": "application/octet-stream",
        "sha256": hashlib.sha256(BIG).hexdigest(),
    }
    assert (tmp_path / "in" / "big.bin").read_bytes() == BIG
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["big.bin"]
    assert_no_secrets(result.outputs, result.log)


def test_download_over_max_bytes_leaves_no_partial_file(server, tmp_path: Path):
    base, _ = server
    with pytest.raises(RecordError, match=r"more than max_bytes \(1000000\)"):
        download(
            base,
            {"url": base + "/big.bin", "path": str(tmp_path / "big.bin"), "max_bytes": 1_000_000},
        )
    assert list(tmp_path.iterdir()) == []


def test_download_rejects_a_wrong_content_type(server, tmp_path: Path):
    base, _ = server
    result = download(
        base,
        {
            "url": base + "/page.html",
            "path": str(tmp_path / "x.pdf"),
            "content_types": ["application/pdf"],
            "on_error": "route",
        },
        [{"id": 1}],
    )
    assert result["out"] == [] and list(tmp_path.iterdir()) == []
    assert "content type 'text/html; charset=utf-8' is not allowed" in result["error"][0]["_error"]


def test_download_path_fields_cannot_leave_the_folder(server, tmp_path: Path):
    base, hits = server
    result = download(
        base,
        {"url": base + "/big.bin", "path": str(tmp_path / "${record.name}"), "on_error": "route"},
        [{"name": "../escape"}],
    )
    assert "cannot be part of a file name" in result["error"][0]["_error"]
    assert hits["/big.bin"] == 0


def test_download_404_is_not_retried(server, tmp_path: Path):
    base, hits = server
    with pytest.raises(RecordError, match="HTTP 404"):
        download(base, {"url": base + "/nothing", "path": str(tmp_path / "f")})
    assert hits["/nothing"] == 1 and list(tmp_path.iterdir()) == []


def test_a_refused_request_is_not_retried_by_the_node_but_a_5xx_is(
    server: tuple[str, Counter[str]], data_dir: Any
) -> None:
    from engine.service import Flowmill

    base, hits = server

    def flow(path: str, connection: str) -> dict[str, Any]:
        return {
            "format": "flowmill/1",
            "id": "call",
            "nodes": [
                {"id": "start", "type": "trigger.manual", "config": {}},
                {
                    "id": "call",
                    "type": "http.request",
                    "config": {
                        "url": path,
                        "connection": connection,
                        "retries": 2,
                        "retry_delay": 0.01,
                        "request_retries": 0,
                    },
                },
            ],
            "edges": [
                {"source": "start", "source_port": "out", "target": "call", "target_port": "in"}
            ],
        }

    with Flowmill.open(data_dir) as app:
        for name, settings in connections(base).items():
            app.set_connection(name, settings)
        refused = app.run_flow(flow("/basic", "wrong"))
        assert refused.state == "failed"
        node = refused.nodes["call"]
        assert node.attempts == 1 and hits["/basic"] == 1
        assert "401" in (node.error or "") and "not retried: a permanent error" in node.error
        assert_no_secrets(node.error)
        down = app.run_flow(flow("/down", "bearer"))
        node = down.nodes["call"]
        assert down.state == "failed" and node.attempts == 3 and hits["/down"] == 3


def test_the_http_connection_type_checks_credentials(server: tuple[str, Counter[str]]) -> None:
    from engine.errors import FlowmillError
    from nodes.http import try_http_connection

    base, _ = server
    good = connections(base)["basic"] | {"test_path": "/basic"}
    assert try_http_connection(good, 5) == (f"GET {base}/basic: HTTP 200, credentials accepted")
    with pytest.raises(FlowmillError, match="HTTP 401: the credentials were refused") as refused:
        try_http_connection(connections(base)["wrong"] | {"test_path": "/basic"}, 5)
    assert_no_secrets(refused.value)
    reachable = try_http_connection({"base_url": base + "/nothing"}, 5)
    assert reachable.endswith("HTTP 404, reachable (credentials not checked)")
    with pytest.raises(FlowmillError, match="ConnectionError"):
        try_http_connection({"base_url": "http://127.0.0.1:9"}, 2)
