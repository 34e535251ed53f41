"""MQTT nodes against real Mosquitto brokers, read back by a real paho subscriber.

The plain broker is the system's Mosquitto on 127.0.0.1:1883 (anonymous; see
scripts/services.sh). TLS with password login runs against a Mosquitto process each test
module starts itself, with a certificate made here.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import queue
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from engine.batch.listeners import ListenerHost
from engine.errors import NodeError, PermanentError, RecordError, is_permanent
from engine.flows.registry import Registry
from engine.service import Flowmill
from engine.testing import run_node
from nodes.mqtt import (
    MQTT_PUBLISH,
    MqttError,
    check_publish,
    check_trigger,
    detect_connection,
    filter_problem,
    test_connection,
)
from tests.conftest import DEADLINE, run_queued, service_missing, wait_until

PLAIN = {"host": "127.0.0.1", "port": 1883}
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
USER, PASSWORD = "plant", "pa55-Wörd!x"


def _answers(host: str, port: int) -> Exception | None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return exc


@pytest.fixture
def plain() -> dict[str, Any]:
    """Connection settings of the anonymous Mosquitto on 127.0.0.1:1883."""
    error = _answers("127.0.0.1", 1883)
    if error is not None:
        service_missing("Mosquitto on 127.0.0.1:1883 (scripts/services.sh mosquitto)", error)
    return {**PLAIN, "client_id": f"fm-test-{uuid.uuid4().hex[:6]}-"}


@pytest.fixture
def base() -> str:
    """A topic prefix no other test (or earlier run) uses."""
    return f"flowmill-test/{uuid.uuid4().hex[:10]}"


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscriber:
    """A paho client that collects what arrives on a topic filter."""

    def __init__(self, settings: dict[str, Any], topic: str) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
        if settings.get("user"):
            self.client.username_pw_set(settings["user"], settings["password"])
        if settings.get("tls"):
            self.client.tls_set(ca_certs=settings["ca_file"])
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put(
            Received(m.topic, m.payload, m.qos, bool(m.retain))
        )
        self.client.connect(settings["host"], settings["port"])
        self.client.loop_start()
        assert subscribed.wait(DEADLINE), "the test subscriber could not subscribe"

    def take(self, n: int, seconds: float = DEADLINE) -> list[Received]:
        return [self.messages.get(timeout=seconds) for _ in range(n)]

    def nothing_more(self, seconds: float = 0.3) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe() -> Iterator[Callable[[dict[str, Any], str], Subscriber]]:
    made: list[Subscriber] = []

    def make(settings: dict[str, Any], topic: str) -> Subscriber:
        made.append(Subscriber(settings, topic))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


def publish(records: list[dict[str, Any]], settings: dict[str, Any], **config: Any):
    return run_node(
        MQTT_PUBLISH,
        {"connection": "broker", **config},
        {"in": records},
        connections={"broker": settings},
    )


# -- publishing ---------------------------------------------------------------------------


def test_records_published_at_qos_1_arrive_on_the_topic_named_by_their_fields(
    plain: dict[str, Any], base: str, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(plain, f"{base}/#")
    sales = [
        {"store": "berlin", "sku": "A-1", "qty": 2, "at": dt.date(2026, 11, 21)},
        {"store": "münchen", "sku": "B-7", "qty": 1, "at": dt.date(2026, 11, 22)},
        {"store": "berlin", "sku": "C-3", "qty": 5, "at": dt.date(2026, 11, 23)},
    ]
    result = publish(sales, plain, topic=f"{base}/sales/${{record.store}}", qos=1)
    assert [r["_topic"] for r in result["out"]] == [
        f"{base}/sales/berlin",
        f"{base}/sales/münchen",
        f"{base}/sales/berlin",
    ]
    got = sub.take(3)
    assert [m.topic for m in got] == [r["_topic"] for r in result["out"]]
    assert [json.loads(m.payload) for m in got] == [{**s, "at": s["at"].isoformat()} for s in sales]
    assert {m.qos for m in got} == {1} and not any(m.retain for m in got)
    assert result["error"] == []


def test_qos_0_sends_one_field_as_the_payload(
    plain: dict[str, Any], base: str, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(plain, f"{base}/#")
    records = [
        {"id": 1, "body": "plain text ü"},
        {"id": 2, "body": {"nested": [1, 2]}},
        {"id": 3, "body": 17.5},
    ]
    result = publish(
        records, plain, topic=f"{base}/m/${{record.id}}", qos=0, payload="field",
        payload_field="body",
    )  # fmt: skip
    assert len(result["out"]) == 3
    got = sorted(sub.take(3), key=lambda m: m.topic)
    assert [m.payload for m in got] == [
        "plain text ü".encode(),
        b'{"nested": [1, 2]}',
        b"17.5",
    ]
    assert {m.qos for m in got} == {0}


def test_a_retained_message_reaches_a_later_subscriber_and_null_clears_it(
    plain: dict[str, Any], base: str, subscribe: Callable[..., Subscriber]
) -> None:
    topic = f"{base}/status/line-1"
    publish([{"state": "running"}], plain, topic=topic, retain=True)
    late = subscribe(plain, topic)
    (message,) = late.take(1)
    assert message.retain and json.loads(message.payload) == {"state": "running"}
    publish([{"state": None}], plain, topic=topic, retain=True, payload="field",
            payload_field="state")  # fmt: skip
    later = subscribe(plain, topic)
    assert later.nothing_more(0.5)  # the retained message is gone


def test_records_whose_fields_cannot_name_a_topic_go_to_error(
    plain: dict[str, Any], base: str, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(plain, f"{base}/#")
    records = [
        {"store": "ok"},
        {"store": "a/../admin"},  # would add topic levels
        {"store": "#"},  # a wildcard cannot be published to
        {"store": ""},
        {"shop": "no store field"},
    ]
    result = publish(records, plain, topic=f"{base}/${{record.store}}", on_error="route")
    assert [r["store"] for r in result["out"]] == ["ok"]
    errors = result["error"]
    assert len(errors) == 4
    assert "cannot be a topic level" in errors[0]["_error"]
    assert all(e["_node"] == "mqtt-publish-test" for e in errors)
    assert "no field 'store'" in errors[3]["_error"]
    assert [m.topic for m in sub.take(1)] == [f"{base}/ok"]
    assert sub.nothing_more()
    with pytest.raises(RecordError, match="cannot be a topic level"):
        publish([{"store": "x/y"}], plain, topic=f"{base}/${{record.store}}")


def test_configs_that_cannot_work_are_named_before_a_run() -> None:
    assert check_publish({"topic": "a/#", "connection": "c"})[0].field == "topic"
    assert check_publish({"topic": "a/${record.x}", "payload": "field"})[0].field == (
        "payload_field"
    )
    assert check_publish({"topic": "a/${record.x}/b", "connection": "c"}) == []
    assert check_trigger({"topic": "sales/+/orders"}) == []
    assert check_trigger({"topic": "plant/#"}) == []
    assert check_trigger({"topic": "plant/#/x"})[0].field == "topic"
    assert "whole level" in (filter_problem("sales/a+") or "")
    assert filter_problem("") == "is empty"


def test_connection_settings_are_recognised_by_url_or_port() -> None:
    assert detect_connection({"url": "mqtts://broker.example:8883"})
    assert detect_connection({"url": "mqtt://broker.example"})
    assert not detect_connection({"url": "https://broker.example"})
    assert detect_connection({"host": "broker", "port": 1883})
    assert detect_connection({"host": "broker", "port": "8883"})
    assert not detect_connection({"host": "db", "port": 5432})
    registry = Registry.from_modules(["nodes.mqtt"])
    kind = registry.connection_type_of({"url": "mqtt://127.0.0.1"})
    assert kind is not None and kind.kind == "mqtt"


def test_a_url_with_credentials_works_like_separate_keys(
    plain: dict[str, Any], base: str, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(plain, f"{base}/#")
    settings = {"url": "mqtt://127.0.0.1:1883", "client_id": plain["client_id"]}
    publish([{"n": 1}], settings, topic=f"{base}/url")
    assert json.loads(sub.take(1)[0].payload) == {"n": 1}
    assert "127.0.0.1:1883: anonymous access accepted" in test_connection(settings, 5)


# -- failures -----------------------------------------------------------------------------


def test_a_closed_port_fails_at_once_with_the_broker_named(base: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    started = time.monotonic()
    with pytest.raises(NodeError) as caught:
        publish(
            [{"a": 1}], {"host": "127.0.0.1", "port": port}, topic=f"{base}/x",
            connect_timeout=DEADLINE,
        )  # fmt: skip
    assert time.monotonic() - started < DEADLINE / 2  # refused at once, no waiting it out
    message = str(caught.value)
    assert f"cannot reach MQTT broker 127.0.0.1:{port} (connection 'broker')" in message
    assert not is_permanent(caught.value)  # the broker may come back: retries make sense


def test_a_broker_that_never_answers_fails_within_the_connect_timeout(base: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts TCP, never says a word of MQTT
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(NodeError, match=r"did not accept the connection within 1 s"):
            publish(
                [{"a": 1}], {"host": "127.0.0.1", "port": port}, topic=f"{base}/x",
                connect_timeout=1,
            )  # fmt: skip
        assert time.monotonic() - started < DEADLINE / 2  # its 1 s, not forever
    finally:
        silent.close()


# -- TLS and login against our own Mosquitto ----------------------------------------------


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowmill test broker")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto process of our own on a free loopback port, with extra config lines."""

    def __init__(self, folder: Path, lines: list[str]) -> None:
        if not Path(MOSQUITTO).exists():
            service_missing("the mosquitto binary", FileNotFoundError(MOSQUITTO))
        self.folder = folder
        self.port = _free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            "\n".join(
                [
                    # started as root it drops to user 'mosquitto', who cannot read tmp_path
                    f"user {getpass.getuser()}",
                    "per_listener_settings false",
                    "persistence false",
                    f"listener {self.port} 127.0.0.1",
                    *lines,
                ]
            )
            + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = self.folder / "mosquitto.log"
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while _answers("127.0.0.1", self.port) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                service_missing("our own mosquitto process", RuntimeError(log.read_text()[-2000:]))
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Our own Mosquitto: TLS only, no anonymous access, one user with a password."""
    if not shutil.which("mosquitto_passwd"):
        service_missing("mosquitto_passwd", FileNotFoundError("mosquitto_passwd"))
    folder = tmp_path_factory.mktemp("mosquitto")
    cert, key = _certificate(folder)
    passwords = folder / "passwords"
    passwords.touch(mode=0o600)
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), USER, PASSWORD], check=True, timeout=30
    )
    broker = Mosquitto(
        folder,
        ["allow_anonymous false", f"password_file {passwords}", f"certfile {cert}",
         f"keyfile {key}"],
    )  # fmt: skip
    try:
        yield {
            "host": "127.0.0.1",
            "port": broker.port,
            "tls": True,
            "ca_file": str(cert),
            "user": USER,
            "password": PASSWORD,
        }
    finally:
        broker.stop()


def test_publishing_over_tls_with_a_password(
    tls_broker: dict[str, Any], base: str, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(tls_broker, f"{base}/#")
    result = publish(
        [{"line": 1, "temp": 71.5}, {"line": 2, "temp": 69.0}],
        tls_broker,
        topic=f"{base}/line/${{record.line}}",
        qos=1,
    )
    assert len(result["out"]) == 2
    got = sorted(sub.take(2), key=lambda m: m.topic)
    assert [json.loads(m.payload)["temp"] for m in got] == [71.5, 69.0]
    report = test_connection(dict(tls_broker), 5)
    assert report.startswith(f"MQTT broker 127.0.0.1:{tls_broker['port']}, TLS: login as 'plant'")
    assert "mosquitto version" in report and PASSWORD not in report


def test_a_wrong_password_is_permanent_and_never_shown(
    tls_broker: dict[str, Any], base: str
) -> None:
    wrong = {**tls_broker, "password": "Geheim-Falsch-42"}
    with pytest.raises(PermanentError) as caught:
        publish([{"a": 1}], wrong, topic=f"{base}/x")
    message = str(caught.value)
    assert "connection 'broker'" in message and "refused the login of 'plant'" in message
    assert "check the connection's user and password" in message
    assert "Geheim-Falsch-42" not in message and PASSWORD not in message
    with pytest.raises(MqttError) as tested:
        test_connection(wrong, 5)
    assert tested.value.permanent and "Geheim-Falsch-42" not in str(tested.value)


def test_an_untrusted_certificate_or_plain_client_on_a_tls_port_is_explained(
    tls_broker: dict[str, Any], base: str
) -> None:
    untrusted = {k: v for k, v in tls_broker.items() if k != "ca_file"}
    with pytest.raises(PermanentError, match=r"TLS certificate not trusted.*ca_file"):
        publish([{"a": 1}], untrusted, topic=f"{base}/x")
    plain_on_tls = {**tls_broker, "tls": False}
    with pytest.raises(NodeError, match=r"closed the connection|did not accept"):
        publish([{"a": 1}], plain_on_tls, topic=f"{base}/x", connect_timeout=2)


# -- trigger.mqtt through the listener host -----------------------------------------------


def _trigger_flow(topic: str, out: Path, qos: int = 1) -> dict[str, Any]:
    """MQTT message → file.write (one JSON line per job)."""
    return {
        "format": "flowmill/1",
        "id": "plant-events",
        "nodes": [
            {
                "id": "heard",
                "type": "trigger.mqtt",
                "config": {"connection": "plant", "topic": topic, "qos": qos},
            },
            {
                "id": "write",
                "type": "file.write",
                "config": {"path": str(out), "format": "jsonl"},
            },
        ],
        "edges": [
            {"source": "heard", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flowmill]:
    service = Flowmill.open(data_dir)
    yield service
    service.close()


def _listening(host: ListenerHost) -> Any:
    host.refresh()
    ctx = host.context("plant-events", "heard")
    assert ctx is not None, "no listener started for the trigger"
    if not ctx.ready.wait(DEADLINE):
        pytest.fail(f"the listener did not subscribe: {ctx.last_error}")
    return ctx


def _send(settings: dict[str, Any], topic: str, payload: bytes, qos: int = 1) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4()}")
    client.connect(settings["host"], settings["port"])
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_each_message_starts_one_job_with_the_message_as_its_first_record(
    app: Flowmill, plain: dict[str, Any], base: str, tmp_path: Path
) -> None:
    app.set_connection("plant", plain)
    out = tmp_path / "events.jsonl"
    app.save_flow(_trigger_flow(f"{base}/+/temp", out))
    host = ListenerHost(app)
    try:
        ctx = _listening(host)
        _send(plain, f"{base}/line-1/temp", b'{"celsius": 71.5}')
        _send(plain, f"{base}/line-2/temp", b"not json")
        _send(plain, f"{base}/line-2/pressure", b"{}")  # outside the filter
        wait_until(lambda: ctx.fired >= 2)
        time.sleep(0.3)
        jobs = sorted(app.jobs.list(), key=lambda j: j.id)
        assert len(jobs) == 2 and ctx.fired == 2
        first, second = (j.params["_trigger"] for j in jobs)
        assert first["topic"] == f"{base}/line-1/temp"
        assert first["payload"] == {"celsius": 71.5}
        assert first["qos"] == 1 and first["retain"] is False
        assert dt.datetime.fromisoformat(first["received_at"]).tzinfo is not None
        assert second["payload"] == "not json" and "not JSON" in second["payload_error"]
        assert run_queued(app) == ["succeeded", "succeeded"]
    finally:
        host.stop()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[-1]["topic"] == f"{base}/line-2/temp" and lines[-1]["payload"] == "not json"


def test_qos_1_messages_sent_while_the_server_was_down_start_jobs_after_a_restart(
    app: Flowmill, plain: dict[str, Any], base: str, tmp_path: Path
) -> None:
    app.set_connection("plant", plain)
    app.save_flow(_trigger_flow(f"{base}/orders", tmp_path / "o.jsonl"))
    host = ListenerHost(app)
    try:
        _listening(host)  # the broker now holds a persistent session for this trigger
    finally:
        host.stop()
    _send(plain, f"{base}/orders", b'{"order": 4711}')  # nobody listens right now
    assert app.jobs.list() == []
    again = ListenerHost(app)
    try:
        ctx = _listening(again)
        wait_until(lambda: ctx.fired >= 1)
        time.sleep(0.3)
        (job,) = app.jobs.list()
        assert job.params["_trigger"]["payload"] == {"order": 4711}
    finally:
        again.stop()
    # acknowledged once queued: a third start gets nothing again
    third = ListenerHost(app)
    try:
        ctx = _listening(third)
        time.sleep(0.5)
        assert ctx.fired == 0 and len(app.jobs.list()) == 1
    finally:
        third.stop()


def test_a_refused_login_shows_as_the_listeners_error(
    app: Flowmill, tls_broker: dict[str, Any], base: str, tmp_path: Path
) -> None:
    app.set_connection("plant", {**tls_broker, "password": "Geheim-Falsch-42"})
    app.save_flow(_trigger_flow(f"{base}/#", tmp_path / "o.jsonl", qos=0))
    host = ListenerHost(app)
    try:
        host.refresh()
        ctx = host.context("plant-events", "heard")
        assert ctx is not None
        wait_until(lambda: ctx.last_error)
        assert "refused the login of 'plant'" in ctx.last_error
        assert "connection 'plant'" in ctx.last_error
        assert "Geheim-Falsch-42" not in ctx.last_error and not ctx.ready.is_set()
    finally:
        host.stop()


def test_the_listener_reconnects_after_the_broker_restarts(
    app: Flowmill, base: str, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path, ["allow_anonymous true"])
    settings = {"host": "127.0.0.1", "port": broker.port, "client_id": "fm-restart-"}
    try:
        app.set_connection("plant", settings)
        app.save_flow(_trigger_flow(f"{base}/orders", tmp_path / "o.jsonl"))
        host = ListenerHost(app)
        try:
            ctx = _listening(host)
            broker.stop()
            wait_until(lambda: not ctx.ready.is_set())
            broker.start()  # same port, no session kept: the listener must subscribe again
            assert ctx.ready.wait(DEADLINE), "the listener did not come back"
            _send(settings, f"{base}/orders", b'{"order": 1}')
            wait_until(lambda: ctx.fired >= 1)
            (job,) = app.jobs.list()
            assert job.params["_trigger"]["payload"] == {"order": 1}
        finally:
            host.stop()
    finally:
        broker.stop()
