"""MQTT nodes: publish records to a broker, and start a flow per message received.

``mqtt.publish`` sends one message per record over ONE connection per node run. Its topic
is a template: ``${record.field}`` inserts a record field, the same rule as in
``nodes.http``. Record values are data: a value that would add topic levels or wildcards
(``/``, ``+``, ``#``) or is empty makes that record bad instead of publishing elsewhere.
With QoS 1 the node waits (bounded by ``ack_timeout``) for the broker's PUBACK of every
message of a batch before it passes the batch on, so a succeeded run means "the broker
has them".

``trigger.mqtt`` is an event trigger: its ``listen`` runs in the server process, keeps one
subscription and queues one job per message. Delivery semantics, decided here:

- QoS 0: a clean session, at-most-once. Messages sent while the listener is down are lost.
- QoS 1: a persistent session (clean_session off, a client id fixed per flow and node) and
  manual acknowledgement: the PUBACK goes out only after the job is stored. The broker
  keeps messages while the listener is down and sends unacknowledged ones again after a
  reconnect, so this is at-least-once: after a crash or a lost connection between storing
  the job and the PUBACK, the same message starts a second job. Flows fed at QoS 1 should
  be idempotent.

Connection settings (a stored connection, ``CONNECTION_TYPES`` kind ``mqtt``): ``host``,
``port`` (default 1883, 8883 with TLS), ``user``, ``password``, ``tls`` (true/false),
``ca_file`` (PEM certificates to trust besides the system ones), ``client_id`` (a prefix,
default ``flowmill-``), ``keepalive`` (s, default 60). Or ``url``: ``mqtt://host:port`` /
``mqtts://host:port`` (TLS), optionally with ``user:password@``; separate keys win.
The password never appears in a log line or an error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from engine.errors import FlowmillError, NodeError, PermanentError
from engine.spec import (
    Batch,
    ConfigProblem,
    ConnectionType,
    Inputs,
    NodeSpec,
    Outputs,
    RunContext,
    Stream,
)
from nodes.templates import MissingField, RecordTemplate
from nodes.triggers import event_records

__all__ = [
    "CONNECTION_TYPES",
    "MQTT_PUBLISH",
    "NODES",
    "PUBLISH_SCHEMA",
    "TRIGGER_MQTT",
    "TRIGGER_SCHEMA",
    "MqttError",
    "check_publish",
    "check_trigger",
    "detect_connection",
    "listen_mqtt",
    "publish",
    "test_connection",
]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
QUEUE_SIZE = 1000  # messages received but not yet turned into jobs (trigger.mqtt)
_NOT_IN_A_LEVEL = ("/", "+", "#", "\x00")
# CONNACK reasons that the same settings will meet again: never worth a retry
_REFUSED_LOGIN = {134: "bad user name or password", 135: "not authorized"}
_REFUSED_OTHER = {132: "unsupported protocol version", 133: "client id rejected"}

# -- schemas ------------------------------------------------------------------------------

_CONNECTION_PROP: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "format": "connection",
    "title": "Connection",
    "description": "Name of a stored MQTT connection: host, port (default 1883, 8883 with "
    "TLS), user, password, tls (true/false), ca_file (PEM file of certificates to trust), "
    "client_id (prefix of the client id, default 'flowmill-'); or a url "
    "mqtt://host:port / mqtts://host:port.",
}

_CONNECT_TIMEOUT_PROP: dict[str, Any] = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": 600,
    "default": 10,
    "title": "Connect timeout (s)",
    "description": "Seconds to wait for the broker to accept the connection and login.",
}

PUBLISH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MQTT publish",
    "additionalProperties": False,
    "required": ["connection", "topic"],
    "properties": {
        "connection": _CONNECTION_PROP,
        "topic": {
            "type": "string",
            "minLength": 1,
            "title": "Topic",
            "description": "Topic to publish to; ${record.field} inserts a record field, "
            "e.g. 'sales/${record.store}'. A field value may not contain '/', '+' or '#' "
            "and may not be empty: such a record is bad (see 'On error').",
        },
        "payload": {
            "type": "string",
            "enum": ["record", "field"],
            "default": "record",
            "title": "Payload",
            "description": "record: the whole record as a JSON object; field: the value of "
            "one field ('Payload field'): text as UTF-8, other values as JSON, null as an "
            "empty message (which, retained, clears the topic's retained message).",
        },
        "payload_field": {
            "type": "string",
            "minLength": 1,
            "title": "Payload field",
            "description": "With payload 'field': the record field to send.",
        },
        "qos": {
            "type": "integer",
            "enum": [0, 1],
            "default": 1,
            "title": "QoS",
            "description": "0: at most once, fire and forget; 1: at least once, the node "
            "waits for the broker to confirm (PUBACK) every message.",
        },
        "retain": {
            "type": "boolean",
            "default": False,
            "title": "Retain",
            "description": "Ask the broker to keep the last message of each topic and hand "
            "it to every new subscriber.",
        },
        "connect_timeout": _CONNECT_TIMEOUT_PROP,
        "ack_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "default": 30,
            "title": "Confirmation timeout (s)",
            "description": "Seconds to wait for a batch of messages to be sent (QoS 0) or "
            "confirmed (QoS 1); messages still open then make their records bad.",
        },
    },
}

TRIGGER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MQTT message",
    "additionalProperties": False,
    "required": ["connection", "topic"],
    "properties": {
        "connection": _CONNECTION_PROP,
        "topic": {
            "type": "string",
            "minLength": 1,
            "title": "Topic filter",
            "description": "Topics to subscribe to; '+' matches one level, '#' (last) any "
            "number of levels, e.g. 'sales/+/orders' or 'plant/#'.",
        },
        "qos": {
            "type": "integer",
            "enum": [0, 1],
            "default": 1,
            "title": "QoS",
            "description": "0: at most once (messages sent while the server is down are "
            "lost); 1: at least once: the broker keeps messages for Flowmill while it is "
            "down and a message is confirmed only when its job is queued. After a crash a "
            "message may start a second job, so make such flows idempotent.",
        },
        "payload_format": {
            "type": "string",
            "enum": ["json", "text"],
            "default": "json",
            "title": "Payload format",
            "description": "json: the payload is parsed (a payload that is not JSON arrives "
            "as text, with 'payload_error' saying why); text: the payload as UTF-8 text.",
        },
        "max_payload_bytes": {
            "type": "integer",
            "minimum": 1,
            "maximum": 16_000_000,
            "default": 1_000_000,
            "title": "Largest payload (bytes)",
            "description": "Bigger messages are logged and skipped: a message travels in "
            "the job's parameters, which are kept in the database.",
        },
        "connect_timeout": _CONNECT_TIMEOUT_PROP,
    },
}


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: p["default"] for k, p in schema["properties"].items() if "default" in p}


_PUBLISH_DEFAULTS = _defaults(PUBLISH_SCHEMA)
_TRIGGER_DEFAULTS = _defaults(TRIGGER_SCHEMA)


# -- topics -------------------------------------------------------------------------------


def filter_problem(text: str) -> str | None:
    """Why ``text`` is not a valid subscription filter, or None."""
    if not text:
        return "is empty"
    if "\x00" in text:
        return "may not contain a NUL character"
    if len(text.encode()) > 65535:
        return "is longer than 65535 bytes"
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one, e.g. 'plant/#'"
        if "+" in level and level != "+":
            return "'+' must be a whole level, e.g. 'sales/+/orders'"
    return None


def _topic_problem(text: str) -> str | None:
    """Why ``text`` cannot be published to, or None."""
    if not text:
        return "is empty"
    if "+" in text or "#" in text:
        return "may not contain the wildcards '+' or '#'"
    if "\x00" in text:
        return "may not contain a NUL character"
    if len(text.encode()) > 65535:
        return "is longer than 65535 bytes"
    return None


class _RecordProblem(Exception):
    """Something wrong with one record: it goes to 'error' (or fails the node)."""


def _topic_level(text: str) -> str:
    """A record value names one topic level, never a way into another part of the tree."""
    if not text or any(c in text for c in _NOT_IN_A_LEVEL):
        raise ValueError(f"{text!r} cannot be a topic level (empty, or contains '/', '+', '#')")
    return text


def _topic(template: RecordTemplate, record: Mapping[str, Any]) -> str:
    """The record's topic: fields inserted as single levels, the whole topic checked."""
    try:
        topic = template.render(record)
    except MissingField as exc:
        raise _RecordProblem(str(exc)) from None
    except ValueError as exc:  # a value that is no single level
        raise _RecordProblem(f"topic: {exc}") from None
    problem = _topic_problem(topic)
    if problem:
        raise _RecordProblem(f"topic {topic!r} {problem}")
    return topic


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


def _to_json(value: Any) -> bytes:
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise _RecordProblem(f"payload: {exc}") from exc


# -- broker settings and connecting -------------------------------------------------------


class MqttError(FlowmillError):
    """The broker could not be reached or refused us. ``permanent``: trying again with the
    same settings cannot help (refused login, untrusted certificate)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True)
class _Broker:
    label: str  # "connection 'plant'" or "" (connection test)
    host: str
    port: int
    tls: bool
    ca_file: str | None
    user: str | None
    password: str | None
    client_id: str
    keepalive: int

    @property
    def where(self) -> str:
        text = f"MQTT broker {self.host}:{self.port}"
        return f"{text} ({self.label})" if self.label else text

    def mask(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _broker(settings: Mapping[str, Any], name: str = "") -> _Broker:
    """Read connection settings; raises MqttError (permanent: settings are wrong)."""
    label = f"connection {name!r}" if name else ""

    def bad(message: str) -> MqttError:
        return MqttError(f"{label or 'MQTT connection'}: {message}", permanent=True)

    values = dict(settings)
    url = values.get("url")
    if url:
        parts = urlsplit(str(url))
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise bad("url must start with mqtt:// or mqtts://")
        try:
            port = parts.port
        except ValueError:
            raise bad("the port in url is not a number") from None
        from_url = {
            "host": parts.hostname,
            "port": port,
            "tls": parts.scheme in ("mqtts", "ssl"),
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
        }
        values = {**{k: v for k, v in from_url.items() if v is not None}, **values}
    host = values.get("host")
    if not host:
        raise bad("no 'host' (or 'url')")
    tls = _flag(values.get("tls", False))
    try:
        port = int(values.get("port") or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT))
        keepalive = int(values.get("keepalive") or 60)
    except (TypeError, ValueError):
        raise bad("port and keepalive must be numbers") from None
    if not 0 < port < 65536:
        raise bad(f"port {port} is out of range")
    return _Broker(
        label=label,
        host=str(host),
        port=port,
        tls=tls,
        ca_file=str(values["ca_file"]) if values.get("ca_file") else None,
        user=str(values["user"]) if values.get("user") else None,
        password=str(values["password"]) if values.get("password") else None,
        client_id=str(values.get("client_id") or "flowmill-"),
        keepalive=max(5, keepalive),
    )


def detect_connection(settings: Mapping[str, Any]) -> bool:
    """Settings without a 'type' are MQTT when their url is mqtt:// or mqtts://, or when
    they have a host and the port 1883 or 8883."""
    url = settings.get("url")
    if isinstance(url, str):
        return url.lower().startswith(("mqtt://", "mqtts://"))
    try:
        port = int(settings.get("port") or 0)
    except (TypeError, ValueError):
        return False
    return bool(settings.get("host")) and port in (DEFAULT_PORT, DEFAULT_TLS_PORT)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Link:
    """One paho client with its network thread; ``open`` returns once the broker accepted
    the login, or raises MqttError."""

    def __init__(
        self,
        broker: _Broker,
        *,
        timeout: float,
        client_id: str | None = None,
        clean_session: bool = True,
        manual_ack: bool = False,
    ) -> None:
        self.broker = broker
        self.timeout = timeout
        self.client_id = client_id or f"{broker.client_id}{secrets.token_hex(6)}"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            manual_ack=manual_ack,
        )
        self.client.connect_timeout = timeout
        self.client.reconnect_delay_set(1, 30)
        if broker.user:
            self.client.username_pw_set(broker.user, broker.password)
        if broker.tls:
            context = ssl.create_default_context()
            if broker.ca_file:
                try:
                    context.load_verify_locations(cafile=broker.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise MqttError(
                        f"{broker.where}: cannot read ca_file {broker.ca_file}: {_reason(exc)}",
                        permanent=True,
                    ) from None
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._answered = threading.Event()
        self.connected = threading.Event()
        self.session_present = False
        self.failure: MqttError | None = None  # a refusal seen on (re)connecting
        self.on_connected: Callable[[bool], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self._closing = False

    # paho calls these from its network thread
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.failure = self._refusal(int(rc.value), str(rc))
            self._answered.set()
            return
        self.session_present = bool(flags.session_present)
        self.connected.set()
        self._answered.set()
        if self.on_connected is not None:
            self.on_connected(self.session_present)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        self._answered.set()
        if not self._closing and self.on_lost is not None:
            self.on_lost(str(rc))

    def _refusal(self, code: int, text: str) -> MqttError:
        b = self.broker
        if code in _REFUSED_LOGIN:
            who = f"the login of {b.user!r}" if b.user else "an anonymous login"
            return MqttError(
                f"{b.where} refused {who} ({_REFUSED_LOGIN[code]}); check the connection's "
                "user and password",
                permanent=True,
            )
        if code in _REFUSED_OTHER:
            return MqttError(f"{b.where} refused the connection ({text})", permanent=True)
        return MqttError(f"{b.where} refused the connection ({text})")

    def open(self) -> _Link:
        b, timeout = self.broker, self.timeout
        deadline = time.monotonic() + timeout
        try:
            self.client.connect(b.host, b.port, keepalive=b.keepalive)
        except ssl.SSLCertVerificationError as exc:
            raise MqttError(
                f"{b.where}: TLS certificate not trusted ({exc.verify_message}); set the "
                "connection's ca_file to the broker's CA certificate",
                permanent=True,
            ) from None
        except ssl.SSLError as exc:
            raise MqttError(f"{b.where}: TLS handshake failed ({exc.reason or exc})") from None
        except TimeoutError:
            raise MqttError(f"{b.where} did not answer within {timeout:g} s") from None
        except socket.gaierror as exc:
            raise MqttError(f"{b.where}: unknown host ({_reason(exc)})") from None
        except OSError as exc:
            raise MqttError(f"cannot reach {b.where}: {_reason(exc)}") from None
        self.client.loop_start()
        answered = self._answered.wait(max(0.0, deadline - time.monotonic()))
        if self.failure is not None or not self.connected.is_set():
            self.close()
            if self.failure is not None:
                raise self.failure
            if not answered:
                raise MqttError(f"{b.where} did not accept the connection within {timeout:g} s")
            raise MqttError(
                f"{b.where} closed the connection before accepting it (is it a TLS port? "
                "check the connection's tls setting)"
            )
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


# -- mqtt.publish -------------------------------------------------------------------------


def check_publish(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of an mqtt.publish config (what the JSON Schema cannot express)."""
    cfg = {**_PUBLISH_DEFAULTS, **config}
    problems: list[ConfigProblem] = []
    topic = cfg.get("topic")
    if isinstance(topic, str) and topic:
        literal = RecordTemplate.parse("topic", topic).literal
        if "+" in literal or "#" in literal:
            problems.append(
                ConfigProblem("topic", "wildcards '+' and '#' are for subscribing only")
            )
    if cfg.get("payload") == "field" and not cfg.get("payload_field"):
        problems.append(ConfigProblem("payload_field", "name the field to send as payload"))
    return problems


def _node_error(ctx: RunContext, exc: MqttError) -> NodeError:
    kind = PermanentError if exc.permanent else NodeError
    return kind(ctx.node_id, exc.message, ctx.node_type)


def publish(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Publish one message per record; 'out' gets each published record with '_topic'."""
    problems = check_publish(config)
    if problems:
        message = "; ".join(f"{p.field}: {p.message}" for p in problems)
        raise PermanentError(ctx.node_id, message, ctx.node_type)
    cfg = {**_PUBLISH_DEFAULTS, **config}
    return {"out": _publish_stream(ctx, cfg, inputs["in"])}


def _payload_of(cfg: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bytes]:
    if cfg["payload"] != "field":
        return _to_json
    name = cfg["payload_field"]

    def field(record: Mapping[str, Any]) -> bytes:
        if name not in record:
            raise _RecordProblem(f"payload: the record has no field {name!r}")
        value = record[name]
        if value is None:
            return b""
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        return _to_json(value)

    return field


def _publish_stream(ctx: RunContext, cfg: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    template = RecordTemplate.parse("topic", str(cfg["topic"]), _topic_level)
    payload_of = _payload_of(cfg)
    qos = int(cfg["qos"])
    retain = bool(cfg["retain"])
    ack_timeout = float(cfg["ack_timeout"])
    link: _Link | None = None
    sent = 0
    try:
        for batch in stream:
            ctx.check_cancelled()
            if link is None:
                try:
                    broker = _broker(ctx.connection(cfg["connection"]), cfg["connection"])
                    link = _Link(broker, timeout=float(cfg["connect_timeout"])).open()
                except MqttError as exc:
                    raise _node_error(ctx, exc) from None
                ctx.logger.info("connected to %s as %s", broker.where, link.client_id)
            pending: list[tuple[dict[str, Any], str, paho.MQTTMessageInfo]] = []
            for record in batch:
                try:
                    topic = _topic(template, record)
                    payload = payload_of(record)
                except _RecordProblem as exc:
                    ctx.reject(record, exc)
                    continue
                info = link.client.publish(topic, payload, qos=qos, retain=retain)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    ctx.reject(record, f"cannot publish to {topic!r}: {paho.error_string(info.rc)}")
                    continue
                pending.append((record, topic, info))
            out = _confirmed(ctx, link, pending, qos, ack_timeout)
            sent += len(out)
            ctx.progress(len(batch))
            ctx.status(f"{sent} published")
            if out:
                yield out
        ctx.logger.info(
            "%d messages published (QoS %d%s)", sent, qos, ", retained" if retain else ""
        )
    finally:
        if link is not None:
            link.close()


def _done(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (ValueError, RuntimeError):  # never queued, or failed for good
        return False


def _confirmed(
    ctx: RunContext,
    link: _Link,
    pending: list[tuple[dict[str, Any], str, paho.MQTTMessageInfo]],
    qos: int,
    ack_timeout: float,
) -> Batch:
    """Wait (bounded) until every message is sent (QoS 0) or acknowledged (QoS 1)."""
    deadline = time.monotonic() + ack_timeout
    for _, _, info in pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with contextlib.suppress(ValueError, RuntimeError):
            info.wait_for_publish(left)
        ctx.check_cancelled()
    open_ = [item for item in pending if not _done(item[2])]
    if open_ and not link.connected.is_set():
        raise NodeError(
            ctx.node_id,
            f"lost the connection to {link.broker.where}; {len(open_)} of {len(pending)} "
            "messages of this batch were not confirmed",
            ctx.node_type,
        )
    out: Batch = []
    what = "confirmed (PUBACK)" if qos else "sent"
    unconfirmed = {id(item[2]) for item in open_}
    for record, topic, info in pending:
        if id(info) in unconfirmed:
            ctx.reject(record, f"message to {topic!r} not {what} within {ack_timeout:g} s")
        else:
            out.append({**record, "_topic": topic})
    return out


# -- trigger.mqtt -------------------------------------------------------------------------


def check_trigger(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of a trigger.mqtt config: a malformed topic filter."""
    topic = config.get("topic")
    problem = filter_problem(topic) if isinstance(topic, str) else None
    return [ConfigProblem("topic", f"topic filter {problem}")] if problem else []


def _listener_client_id(broker: _Broker, flow_id: str, node_id: str) -> str:
    # fixed per trigger so the broker finds the persistent session again after a restart
    digest = hashlib.sha256(f"{flow_id}\x00{node_id}".encode()).hexdigest()[:12]
    return f"{broker.client_id}{digest}"


def _decode(payload: bytes, fmt: str) -> dict[str, Any]:
    text = payload.decode("utf-8", "replace")
    if fmt != "json":
        return {"payload": text}
    try:
        return {"payload": json.loads(text)}
    except ValueError as exc:
        return {"payload": text, "payload_error": f"not JSON: {exc}"}


def listen_mqtt(ctx: Any) -> None:
    """Subscribe and queue one job per message until ``ctx.stopping`` is set.

    The first connection failing raises (the listener host tries again with back-off);
    later connection losses are healed by paho's reconnect (1 s … 30 s), resubscribing
    when the broker has no session for us. A refused login raises at once.
    """
    cfg = {**_TRIGGER_DEFAULTS, **ctx.config}
    problems = check_trigger(cfg)
    if problems:
        raise MqttError(problems[0].message, permanent=True)
    name = cfg["connection"]
    broker = _broker(ctx.connection(name), name)
    topic_filter = str(cfg["topic"])
    qos = int(cfg["qos"])
    fmt = str(cfg["payload_format"])
    limit = int(cfg["max_payload_bytes"])
    persistent = qos >= 1
    link = _Link(
        broker,
        timeout=float(cfg["connect_timeout"]),
        client_id=_listener_client_id(broker, ctx.flow_id, ctx.node_id),
        clean_session=not persistent,
        manual_ack=True,
    )
    inbox: queue.Queue[paho.MQTTMessage] = queue.Queue(QUEUE_SIZE)
    dropped = 0
    failure: list[MqttError] = []
    client = link.client

    def subscribe(session_present: bool) -> None:
        ctx.log.info(
            "connected to %s as %s%s",
            broker.where,
            link.client_id,
            " (session kept by the broker)" if session_present else "",
        )
        client.subscribe(topic_filter, qos=qos)

    def on_subscribe(client: Any, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
        if any(code.is_failure for code in codes):
            failure.append(
                MqttError(f"{broker.where} refused the subscription to {topic_filter!r}")
            )
            return
        ctx.ready.set()

    def on_lost(reason: str) -> None:
        ctx.ready.clear()
        ctx.log.warning("lost the connection to %s (%s); reconnecting", broker.where, reason)

    def on_message(client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        nonlocal dropped
        if not paho.topic_matches_sub(topic_filter, msg.topic):
            # left over in a persistent session from an earlier topic filter
            client.ack(msg.mid, msg.qos)
            return
        if len(msg.payload) > limit:
            ctx.log.warning(
                "skipped a message of %d bytes on %r (max_payload_bytes %d)",
                len(msg.payload),
                msg.topic,
                limit,
            )
            client.ack(msg.mid, msg.qos)
            return
        if msg.qos == 0:
            try:
                inbox.put_nowait(msg)
            except queue.Full:
                dropped += 1
                if dropped == 1 or dropped % 1000 == 0:
                    ctx.log.warning("queue full: %d QoS 0 messages dropped so far", dropped)
            return
        # QoS 1: hold the network thread instead of dropping; the broker keeps the rest
        while not ctx.stopping.is_set():
            try:
                inbox.put(msg, timeout=0.2)
                return
            except queue.Full:
                continue

    link.on_connected = subscribe
    link.on_lost = on_lost
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    previous = ctx.load_state() if persistent else {}
    try:
        link.open()
    except MqttError:
        link.close()
        raise
    try:
        old = previous.get("topic")
        if old and old != topic_filter and previous.get("client_id") == link.client_id:
            client.unsubscribe(old)  # the persistent session still holds the old filter
        if persistent and previous != {"topic": topic_filter, "client_id": link.client_id}:
            ctx.save_state({"topic": topic_filter, "client_id": link.client_id})
        while not ctx.stopping.is_set():
            if failure:
                raise failure[0]
            if link.failure is not None:
                raise link.failure
            try:
                msg = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            record = {
                "topic": msg.topic,
                **_decode(msg.payload, fmt),
                "qos": msg.qos,
                "retain": bool(msg.retain),
                "received_at": datetime.fromtimestamp(time.time(), UTC).isoformat(),
            }
            ctx.fire(record, source=f"trigger.mqtt ({ctx.node_id}): {msg.topic}")
            # the job is stored: only now may the broker forget the message
            client.ack(msg.mid, msg.qos)
    finally:
        link.close()
        left = inbox.qsize()
        if left:
            ctx.log.info(
                "stopped with %d messages not yet queued as jobs%s",
                left,
                " (the broker sends them again)" if persistent else "",
            )


# -- connection test ----------------------------------------------------------------------


def test_connection(settings: dict[str, Any], timeout: float) -> str:
    """Connect and log in; 'MQTT broker host:port: login … accepted (mosquitto …)'."""
    broker = _broker(settings)
    link = _Link(broker, timeout=timeout).open()
    try:
        version: list[str] = []
        got = threading.Event()

        def on_message(client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
            version.append(msg.payload.decode("utf-8", "replace"))
            got.set()

        # mosquitto and others publish their version retained under $SYS; optional
        link.client.on_message = on_message
        link.client.subscribe("$SYS/broker/version", qos=0)
        got.wait(min(1.0, timeout))
    finally:
        link.close()
    who = f"login as {broker.user!r} accepted" if broker.user else "anonymous access accepted"
    tls = ", TLS" if broker.tls else ""
    found = f" ({version[0]})" if version else ""
    return f"{broker.where}{tls}: {who}{found}"


test_connection.__test__ = False  # type: ignore[attr-defined]  # not a pytest test

# -- declarations -------------------------------------------------------------------------

MQTT_PUBLISH = NodeSpec(
    type="mqtt.publish",
    title="MQTT publish",
    category="mqtt",
    description="Publishes one MQTT message per record over one connection per run: the "
    "whole record as JSON or one field, to a topic that may contain record fields "
    "('sales/${record.store}'), QoS 0 or 1, optionally retained. With QoS 1 the node waits "
    "until the broker confirmed every message. 'out' gets the published records with "
    "'_topic'; records that could not be published go to 'error' (on_error: route). A "
    "refused login fails the node at once, without retries.",
    inputs=("in",),
    outputs=("out",),
    config_schema=PUBLISH_SCHEMA,
    run=publish,
    check=check_publish,
)

TRIGGER_MQTT = NodeSpec(
    type="trigger.mqtt",
    title="MQTT message",
    category="trigger",
    description="Starts the flow once per MQTT message on a topic filter ('+' and '#' "
    "wildcards). The first record is {topic, payload, qos, retain, received_at}; payload is "
    "parsed JSON or text. QoS 1 is at-least-once (persistent session; a message is "
    "confirmed once its job is queued), QoS 0 at-most-once. The server listens; run by "
    "hand, the node outputs the run's params instead.",
    outputs=("out",),
    config_schema=TRIGGER_SCHEMA,
    trigger=True,
    run=event_records,
    check=check_trigger,
    listen=listen_mqtt,
)

NODES = (MQTT_PUBLISH, TRIGGER_MQTT)

CONNECTION_TYPES = (
    ConnectionType(
        kind="mqtt",
        title="MQTT broker",
        description="host, port (1883; 8883 with tls), user, password, tls, ca_file, "
        "client_id (prefix); or url mqtt://host:port / mqtts://host:port.",
        test=test_connection,
        detect=detect_connection,
    ),
)
