"""MongoDB nodes: find and aggregate documents, write records, start flows on changes.

Configs name a stored connection (settings ``url`` = ``mongodb://…`` or
``mongodb+srv://…``, optionally ``database``); a node may override the database. Every node
run opens its own client inside its output generator and closes it in a ``finally``, so
nothing touches the server until the executor drains the output. Every client has
server-selection, connect and socket timeouts, and the URL's password never reaches a log
line or an error message. A refused login is a ``PermanentError``: no retry can fix it.

Documents leave as JSON-safe records (ObjectId and UUID as strings, datetimes as ISO 8601
text, Decimal128 as decimal text, binary as base64); filters and pipelines may use
MongoDB Extended JSON (``{"$oid": …}``, ``{"$date": …}``) for those types.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from bson import json_util
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.errors import InvalidBSON, InvalidDocument
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo import InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from engine.batch.listeners import ListenContext
from engine.errors import FlowmillError, NodeError, PermanentError
from engine.spec import (
    DEFAULT_BATCH_SIZE,
    Batch,
    ConfigProblem,
    ConnectionType,
    Inputs,
    NodeSpec,
    Outputs,
    RunContext,
    Stream,
)
from nodes.triggers import event_records

__all__ = [
    "CONNECTION_TYPES",
    "MONGO_AGGREGATE",
    "MONGO_CHANGE",
    "MONGO_FIND",
    "MONGO_WRITE",
    "NODES",
    "json_safe",
    "listen_changes",
    "mask_url",
    "ping_connection",
]

DEFAULT_SERVER_TIMEOUT = 30.0  # seconds
AWAIT_MS = 500  # a change stream's wait per round trip: how soon a stop is noticed
TOKEN_SAVE_EVERY = 30.0  # seconds between saves of an idle change stream's resume token
OPERATIONS = ("insert", "update", "replace", "delete")
# server error codes that no retry fixes: AuthenticationFailed, Unauthorized,
# UserNotFound, MechanismUnavailable / not authorized variants
_AUTH_CODES = {18, 13, 11, 334}

# -- schemas --------------------------------------------------------------------------

_CONNECTION_PROP: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "format": "connection",
    "title": "Connection",
    "description": "Name of a stored MongoDB connection with the settings url "
    "(mongodb://user:password@host:27017/db or mongodb+srv://…) and optionally database.",
}
_DATABASE_PROP: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "title": "Database",
    "description": "Database to use; empty: the connection's 'database', else the one "
    "named in its URL.",
}
_COLLECTION_PROP: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "title": "Collection",
    "description": "Name of the collection, e.g. orders.",
}
_BATCH_SIZE_PROP: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": 100_000,
    "default": DEFAULT_BATCH_SIZE,
    "title": "Batch size",
    "description": "Documents per batch (and per round trip to the server).",
}
_SERVER_TIMEOUT_PROP: dict[str, Any] = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": 3600,
    "default": DEFAULT_SERVER_TIMEOUT,
    "title": "Server timeout (s)",
    "description": "Seconds to wait for the server: to find it, to connect, and for each "
    "answer. A node 'timeout' below this lowers it too.",
}
_JSON_NOTE = (
    ' Give it as JSON or as JSON text; MongoDB Extended JSON such as {"$oid": "…"} '
    'or {"$date": "2026-01-31T00:00:00Z"} is understood, and ${param} placeholders '
    "are filled in."
)

FIND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MongoDB find",
    "additionalProperties": False,
    "required": ["connection", "collection"],
    "properties": {
        "connection": _CONNECTION_PROP,
        "database": _DATABASE_PROP,
        "collection": _COLLECTION_PROP,
        "filter": {
            "type": ["object", "string"],
            "default": {},
            "title": "Filter",
            "description": "Which documents, as a MongoDB query, e.g. "
            '{"status": "open", "total": {"$gte": 100}}; empty: all.' + _JSON_NOTE,
        },
        "projection": {
            "type": ["object", "string"],
            "title": "Projection",
            "description": 'Which fields, e.g. {"name": 1, "address.city": 1} or '
            '{"internal": 0}; empty: whole documents.' + _JSON_NOTE,
        },
        "sort": {
            "type": "array",
            "default": [],
            "title": "Sort",
            "description": "Sort keys in order of precedence (a list, because a flow file "
            "stores object keys sorted by name).",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["field"],
                "properties": {
                    "field": {"type": "string", "minLength": 1, "title": "Field"},
                    "direction": {
                        "type": "string",
                        "enum": ["asc", "desc"],
                        "default": "asc",
                        "title": "Direction",
                    },
                },
            },
        },
        "limit": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "title": "Limit",
            "description": "At most this many documents; 0: no limit.",
        },
        "batch_size": _BATCH_SIZE_PROP,
        "server_timeout": _SERVER_TIMEOUT_PROP,
    },
}

WRITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MongoDB write",
    "additionalProperties": False,
    "required": ["connection", "collection"],
    "if": {"properties": {"mode": {"enum": ["upsert", "replace"]}}, "required": ["mode"]},
    "then": {"required": ["key"]},
    "properties": {
        "connection": _CONNECTION_PROP,
        "database": _DATABASE_PROP,
        "collection": _COLLECTION_PROP,
        "mode": {
            "type": "string",
            "enum": ["insert", "upsert", "replace"],
            "default": "insert",
            "title": "Mode",
            "description": "insert: each record becomes a new document (a duplicate key "
            "under a unique index fails the record); upsert: find the document by the key "
            "fields and set the record's fields on it (other fields stay), or insert it; "
            "replace: find the document by the key fields and replace it whole with the "
            "record, or insert it.",
        },
        "key": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "uniqueItems": True,
            "title": "Key fields",
            "description": 'Fields that identify a document, e.g. ["sku"] or ["_id"]; '
            "required for upsert and replace. Give them a unique index.",
        },
        "object_ids": {
            "type": "boolean",
            "default": True,
            "title": "_id text as ObjectId",
            "description": "Store an _id of 24 hex digits (as mongo.find outputs it) as an "
            "ObjectId, so documents read, changed and written back keep their identity.",
        },
        "batch_size": _BATCH_SIZE_PROP,
        "server_timeout": _SERVER_TIMEOUT_PROP,
    },
}

AGGREGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MongoDB aggregate",
    "additionalProperties": False,
    "required": ["connection", "collection", "pipeline"],
    "properties": {
        "connection": _CONNECTION_PROP,
        "database": _DATABASE_PROP,
        "collection": _COLLECTION_PROP,
        "pipeline": {
            "type": ["array", "string"],
            "items": {"type": "object"},
            "title": "Pipeline",
            "description": 'Aggregation stages in order, e.g. [{"$match": {"status": '
            '"paid"}}, {"$group": {"_id": "$customer", "total": {"$sum": "$total"}}}]. '
            "Use the JSON text form when a stage needs its keys in a given order "
            "(a $sort on two fields): a flow file stores object keys sorted." + _JSON_NOTE,
        },
        "allow_disk_use": {
            "type": "boolean",
            "default": False,
            "title": "Allow disk use",
            "description": "Let big $group / $sort stages spill to temporary files on the "
            "server instead of failing at its memory limit.",
        },
        "batch_size": _BATCH_SIZE_PROP,
        "server_timeout": _SERVER_TIMEOUT_PROP,
    },
}

CHANGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MongoDB change",
    "additionalProperties": False,
    "required": ["connection", "collection"],
    "properties": {
        "connection": _CONNECTION_PROP,
        "database": _DATABASE_PROP,
        "collection": _COLLECTION_PROP,
        "operations": {
            "type": "array",
            "items": {"type": "string", "enum": list(OPERATIONS)},
            "minItems": 1,
            "uniqueItems": True,
            "default": ["insert", "update", "replace"],
            "title": "Operations",
            "description": "Which changes start the flow: insert, update, replace, delete.",
        },
        "server_timeout": _SERVER_TIMEOUT_PROP,
    },
}

# -- values -------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A document's value as plain JSON types: ObjectId/UUID as text, datetimes as ISO
    8601 (UTC), Decimal128 as decimal text, binary as base64; dicts and lists recursed."""
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return int(value) if isinstance(value, Int64) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    if isinstance(value, Binary):
        if value.subtype in (3, 4):
            with contextlib.suppress(ValueError):
                return str(value.as_uuid(value.subtype))
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Timestamp):
        return value.as_datetime().isoformat()
    if isinstance(value, Regex):
        return value.pattern
    return str(value)


class _BadValue(Exception):
    """A record value that BSON cannot hold: the record is rejected, not the batch."""


_MAX_INT64 = 2**63 - 1


def _to_bson(value: Any, path: str) -> Any:
    """A record value ready for BSON: Decimal -> Decimal128, date -> datetime; raises
    ``_BadValue`` naming the field for anything BSON cannot store."""
    if value is None or isinstance(value, str | bool | float | datetime | ObjectId):
        return value
    if isinstance(value, int):
        if -_MAX_INT64 - 1 <= value <= _MAX_INT64:
            return value
        raise _BadValue(f"field {path}: {value} does not fit a 64-bit integer")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _BadValue(f"field {path}: key {k!r} is not text")
            out[k] = _to_bson(v, f"{path}.{k}" if path else k)
        return out
    if isinstance(value, list | tuple):
        return [_to_bson(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Decimal):
        try:
            return Decimal128(value)
        except Exception:
            raise _BadValue(f"field {path}: {value} does not fit a decimal128") from None
    if isinstance(value, date):
        return datetime.combine(value, dtime(), tzinfo=UTC)
    if isinstance(value, bytes | uuid.UUID | Decimal128 | Binary | Int64 | Timestamp | Regex):
        return value
    raise _BadValue(f"field {path}: a {type(value).__name__} cannot be stored in MongoDB")


def _parse_json(value: Any, field: str, kind: type) -> Any:
    """A filter/projection/pipeline from the config, Extended JSON turned into BSON types.

    Raises ``ValueError`` with a message for the user when it is not the expected shape.
    """
    if value is None or value == "":
        return kind()
    if isinstance(value, str):
        try:
            parsed = json_util.loads(value)
        except (ValueError, TypeError, InvalidBSON) as exc:
            raise ValueError(f"{field}: not valid JSON ({exc})") from None
    else:
        try:
            # one pass through Extended JSON turns {"$oid": …}/{"$date": …} into BSON types
            parsed = json_util.loads(json.dumps(value))
        except (ValueError, TypeError, InvalidBSON) as exc:
            raise ValueError(f"{field}: {exc}") from None
    if not isinstance(parsed, kind):
        shape = "a JSON object {…}" if kind is dict else "a JSON array […]"
        raise ValueError(f"{field}: must be {shape}, not {type(parsed).__name__}")
    return parsed


def _check_pipeline(pipeline: list[Any]) -> None:
    for i, stage in enumerate(pipeline, start=1):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ValueError(
                f'pipeline: stage {i} must be an object with one key, e.g. {{"$match": {{…}}}}'
            )
        (name,) = stage
        if not str(name).startswith("$"):
            raise ValueError(f"pipeline: stage {i} {name!r} is not a stage ($match, $group …)")


def _sort_spec(sort: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, int]]:
    return [(s["field"], -1 if s.get("direction") == "desc" else 1) for s in sort or ()]


# -- connection -----------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (user and hosts stay visible)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # hosts and database cannot hold '@', the options after '?' may: look before them
    head, q, tail = rest.partition("?")
    at = head.rfind("@")
    if at < 0:
        return url
    user, colon, _password = head[:at].partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}{head[at:]}{q}{tail}"


def _password(url: str) -> str | None:
    rest = url.partition("://")[2].partition("?")[0]
    at = rest.rfind("@")
    if at < 0 or ":" not in rest[:at]:
        return None
    return rest[:at].partition(":")[2] or None


def _scrub(text: str, password: str | None) -> str:
    """Remove the password from a message, raw and URL-decoded/encoded alike."""
    if not password:
        return text
    for form in {password, unquote_plus(password), quote_plus(password)}:
        if form:
            text = text.replace(form, "***")
    return text


class _Target:
    """Where a node works: the URL (secret), its masked form, the database, timeouts."""

    def __init__(self, url: str, database: str | None, timeout: float, source: str) -> None:
        self.url = url
        self.shown = mask_url(url)
        self.password = _password(url)
        self.database = database
        self.timeout = timeout
        self.source = source

    def client(self) -> MongoClient[dict[str, Any]]:
        ms = max(1, int(self.timeout * 1000))
        return MongoClient(
            self.url,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
            tz_aware=True,
            uuidRepresentation="standard",
            appname="flowmill",
            connect=False,
        )

    def db_name(self, client: MongoClient[dict[str, Any]]) -> str:
        if self.database:
            return self.database
        try:
            return client.get_default_database().name
        except ConfigurationError:
            raise FlowmillError(
                f"{self.source}: no database: set 'database' in the node or the connection, "
                "or name it in the URL (mongodb://host:27017/shop)"
            ) from None


def _server_timeout(config: Mapping[str, Any]) -> float:
    timeout = float(config.get("server_timeout") or DEFAULT_SERVER_TIMEOUT)
    node_timeout = config.get("timeout")
    if isinstance(node_timeout, int | float) and 0 < node_timeout < timeout:
        timeout = float(node_timeout)
    return timeout


def _target(ctx: RunContext | ListenContext, config: Mapping[str, Any]) -> _Target:
    name = config["connection"]
    settings = ctx.connection(name)
    url = settings.get("url")
    source = f"connection {name!r}"
    if not isinstance(url, str) or not url:
        raise _permanent(ctx, f"{source} has no 'url' (mongodb://host:27017/db)")
    if not url.startswith(("mongodb://", "mongodb+srv://")):
        raise _permanent(ctx, f"{source}: 'url' must start with mongodb:// or mongodb+srv://")
    database = config.get("database") or settings.get("database") or None
    return _Target(url, database, _server_timeout(config), source)


def _fail(ctx: RunContext | ListenContext, message: str) -> NodeError:
    return NodeError(ctx.node_id, message, ctx.node_type)


def _permanent(ctx: RunContext | ListenContext, message: str) -> PermanentError:
    return PermanentError(ctx.node_id, message, ctx.node_type)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OperationFailure):
        details = exc.details or {}
        text = details.get("errmsg") or str(exc).split(", full error:")[0]
        return f"{text} (code {exc.code})" if exc.code is not None else text
    text = str(exc).split(", Timeout:")[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _explain(target: _Target, exc: BaseException) -> tuple[str, bool]:
    """(message without the password, permanent?) for a pymongo error."""
    reason = _scrub(_reason(exc), target.password)
    where = target.shown
    if isinstance(exc, OperationFailure) and exc.code in _AUTH_CODES:
        return (
            f"MongoDB at {where} refused the login or the operation: {reason}; check the "
            f"user, password and roles of {target.source}",
            True,
        )
    if isinstance(exc, ServerSelectionTimeoutError):
        return f"cannot reach MongoDB at {where} within {target.timeout:g} s: {reason}", False
    if isinstance(exc, ConfigurationError | ValueError | TypeError):
        return f"{target.source}: {reason}", True
    return f"MongoDB at {where}: {reason}", False


def _error(ctx: RunContext | ListenContext, target: _Target, exc: BaseException) -> NodeError:
    """A pymongo error as a NodeError; refused logins and bad settings are permanent."""
    message, permanent = _explain(target, exc)
    return _permanent(ctx, message) if permanent else _fail(ctx, message)


@contextlib.contextmanager
def _session(
    ctx: RunContext | ListenContext, target: _Target
) -> Iterator[tuple[MongoClient[dict[str, Any]], str]]:
    """A client and the database name; pymongo errors become NodeErrors; always closed."""
    client: MongoClient[dict[str, Any]] | None = None
    try:
        try:
            client = target.client()
            name = target.db_name(client)
        except FlowmillError as exc:
            raise _permanent(ctx, str(exc)) from None
        except (PyMongoError, ValueError, TypeError) as exc:
            raise _error(ctx, target, exc) from None
        try:
            yield client, name
        except (PyMongoError, InvalidDocument) as exc:
            # from None: pymongo's own text may quote the URL with its password
            raise _error(ctx, target, exc) from None
    finally:
        if client is not None:
            client.close()


# -- mongo.find ---------------------------------------------------------------------


def check_find(config: Mapping[str, Any]) -> list[ConfigProblem]:
    return _check_json(config, (("filter", dict), ("projection", dict)))


def _check_json(
    config: Mapping[str, Any], fields: Iterable[tuple[str, type]]
) -> list[ConfigProblem]:
    """JSON shape problems by field; text with ${placeholders} is checked at run time."""
    problems = []
    for name, kind in fields:
        value = config.get(name)
        if isinstance(value, str) and "${" in value:
            continue
        try:
            parsed = _parse_json(value, name, kind)
            if name == "pipeline":
                _check_pipeline(parsed)
        except ValueError as exc:
            problems.append(ConfigProblem(name, str(exc)))
    return problems


def _config_json(ctx: RunContext, config: Mapping[str, Any], name: str, kind: type) -> Any:
    try:
        parsed = _parse_json(config.get(name), name, kind)
        if name == "pipeline":
            _check_pipeline(parsed)
        return parsed
    except ValueError as exc:
        raise _permanent(ctx, str(exc)) from None


def mongo_find(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Stream the matching documents as JSON-safe records, one cursor batch at a time:
    once, or with 'in' connected once per incoming record, after it arrived."""
    stream = inputs.get("in")
    if stream is None:
        return {"out": _find_stream(ctx, config)}

    def after_each() -> Iterator[Batch]:
        # e.g. after mongo.write's summary record: the find sees what was written
        for batch in stream:
            for _ in batch:
                yield from _find_stream(ctx, config)

    return {"out": after_each()}


def _find_stream(ctx: RunContext, config: Mapping[str, Any]) -> Iterator[Batch]:
    size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
    query = _config_json(ctx, config, "filter", dict)
    projection = _config_json(ctx, config, "projection", dict) or None
    sort = _sort_spec(config.get("sort"))
    target = _target(ctx, config)
    coll_name = config["collection"]
    with _session(ctx, target) as (client, db_name):
        ctx.logger.info("finding in %s.%s at %s", db_name, coll_name, target.shown)
        cursor = client[db_name][coll_name].find(
            query, projection, limit=int(config.get("limit") or 0), batch_size=size
        )
        if sort:
            cursor = cursor.sort(sort)
        with cursor:
            yield from _drain(ctx, cursor, size, "found")


def _drain(
    ctx: RunContext, cursor: Iterable[dict[str, Any]], size: int, verb: str
) -> Iterator[Batch]:
    """A cursor as batches of JSON-safe records; the cursor fetches ``size`` per round trip."""
    total = 0
    batch: Batch = []
    for doc in cursor:
        batch.append(json_safe(doc))
        if len(batch) >= size:
            ctx.check_cancelled()
            total += len(batch)
            ctx.progress(len(batch))
            yield batch
            batch = []
    if batch:
        ctx.check_cancelled()
        total += len(batch)
        ctx.progress(len(batch))
        yield batch
    ctx.logger.info("%s %d documents", verb, total)


# -- mongo.aggregate ----------------------------------------------------------------


def check_aggregate(config: Mapping[str, Any]) -> list[ConfigProblem]:
    return _check_json(config, (("pipeline", list),))


def mongo_aggregate(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Run the pipeline and stream its result documents as records."""
    return {"out": _aggregate_stream(ctx, config)}


def _aggregate_stream(ctx: RunContext, config: Mapping[str, Any]) -> Iterator[Batch]:
    size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
    pipeline = _config_json(ctx, config, "pipeline", list)
    target = _target(ctx, config)
    coll_name = config["collection"]
    with _session(ctx, target) as (client, db_name):
        ctx.logger.info(
            "aggregating %s.%s at %s (%d stages)", db_name, coll_name, target.shown, len(pipeline)
        )
        cursor = client[db_name][coll_name].aggregate(
            pipeline, allowDiskUse=bool(config.get("allow_disk_use")), batchSize=size
        )
        with cursor:
            yield from _drain(ctx, cursor, size, "aggregated")


# -- mongo.write --------------------------------------------------------------------


class _Writer:
    """Ordered bulk writes of one node run, with exact counts and per-record failures."""

    def __init__(self, ctx: RunContext, collection: Any, config: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.collection = collection
        self.mode = config.get("mode") or "insert"
        self.key: tuple[str, ...] = tuple(config.get("key") or ())
        self.object_ids = bool(config.get("object_ids", True))
        self.seen = 0  # records taken in so far (1-based index of the last one)
        self.counts = {"inserted": 0, "upserted": 0, "matched": 0, "modified": 0}
        self.failed = 0

    @property
    def written(self) -> int:
        c = self.counts
        return c["inserted"] + c["upserted"] + c["matched"]

    def _key_text(self, record: Mapping[str, Any]) -> str:
        if not self.key:
            return ""
        return ", ".join(f"{k}={record.get(k)!r}" for k in self.key)

    def _op(self, record: Mapping[str, Any]) -> Any:
        doc = _to_bson(dict(record), "")
        if self.object_ids and isinstance(doc.get("_id"), str) and ObjectId.is_valid(doc["_id"]):
            doc["_id"] = ObjectId(doc["_id"])
        if self.mode == "insert":
            return InsertOne(doc)  # pymongo adds _id to ``doc``: a copy, not the record
        missing = [k for k in self.key if k not in doc]
        if missing:
            raise _BadValue(f"key field {missing[0]!r} is missing")
        where = {k: doc[k] for k in self.key}
        if self.mode == "replace":
            return ReplaceOne(where, doc, upsert=True)
        update: dict[str, Any] = {"$set": {k: v for k, v in doc.items() if k != "_id"}}
        if "_id" in doc and "_id" not in self.key:
            update["$setOnInsert"] = {"_id": doc["_id"]}  # _id cannot be $set
        return UpdateOne(where, update, upsert=True)

    def write(self, batch: Batch) -> None:
        ops: list[Any] = []
        records: list[tuple[int, Mapping[str, Any]]] = []
        for record in batch:
            self.seen += 1
            try:
                ops.append(self._op(record))
            except _BadValue as exc:
                self._reject(record, f"record {self.seen}: {exc}")
                continue
            records.append((self.seen, record))
        start = 0
        while start < len(ops):
            try:
                result = self.collection.bulk_write(ops[start:], ordered=True)
            except BulkWriteError as exc:
                details = exc.details
                self._count(details)
                if details.get("writeConcernErrors"):
                    raise _fail(
                        self.ctx,
                        f"write concern failed after {self.written} documents written: "
                        f"{details['writeConcernErrors'][0].get('errmsg')}",
                    ) from None
                error = details["writeErrors"][0]
                failed = start + int(error["index"])
                index, record = records[failed]
                self._reject(record, self._describe(index, record, error))
                start = failed + 1
                continue
            self._count(result.bulk_api_result)
            return

    def _describe(self, index: int, record: Mapping[str, Any], error: Mapping[str, Any]) -> str:
        key = self._key_text(record)
        if error.get("keyValue"):
            key = ", ".join(f"{k}={json_safe(v)!r}" for k, v in error["keyValue"].items())
        what = "duplicate key" if error.get("code") == 11000 else "write error"
        message = str(error.get("errmsg") or "").split(":: caused by ::")[-1].strip()
        return (
            f"record {index}{f' ({key})' if key else ''}: {what} in collection "
            f"{self.collection.name}: {message} (code {error.get('code')}); "
            f"{self.written} documents were written before it"
        )

    def _count(self, details: Mapping[str, Any]) -> None:
        for name, field in (
            ("inserted", "nInserted"),
            ("upserted", "nUpserted"),
            ("matched", "nMatched"),
            ("modified", "nModified"),
        ):
            self.counts[name] += int(details.get(field) or 0)

    def _reject(self, record: Mapping[str, Any], message: str) -> None:
        self.failed += 1
        self.ctx.reject(record, message)  # with on_error 'fail' this raises RecordError


def _rebatch(stream: Iterable[Batch], size: int) -> Iterator[Batch]:
    pending: Batch = []
    for batch in stream:
        if not pending and len(batch) == size:
            yield batch
            continue
        pending.extend(batch)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def mongo_write(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Write every incoming record; one summary record when all are written."""
    return {"out": _write_stream(ctx, config, inputs["in"])}


def _write_stream(ctx: RunContext, config: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
    target = _target(ctx, config)
    coll_name = config["collection"]
    with _session(ctx, target) as (client, db_name):
        collection = client[db_name][coll_name]
        ctx.logger.info(
            "writing to %s.%s at %s (%s)", db_name, coll_name, target.shown, config.get("mode")
        )
        writer = _Writer(ctx, collection, config)
        try:
            for batch in _rebatch(stream, size):
                ctx.check_cancelled()
                if batch:
                    writer.write(batch)
                    ctx.progress(len(batch))
        except NodeError as exc:
            if writer.written and "written before" not in exc.message:
                ctx.logger.error("%d documents were written before the failure", writer.written)
            raise
        c = writer.counts
        ctx.logger.info(
            "%s.%s: %d inserted, %d upserted, %d matched, %d modified, %d failed",
            db_name,
            coll_name,
            c["inserted"],
            c["upserted"],
            c["matched"],
            c["modified"],
            writer.failed,
        )
        summary = {"database": db_name, "collection": coll_name, **c, "failed": writer.failed}
    yield [summary]


# -- trigger.mongo_change -----------------------------------------------------------


def _change_record(change: Mapping[str, Any], collection: str) -> dict[str, Any]:
    at = change.get("wallTime")
    if at is None and isinstance(change.get("clusterTime"), Timestamp):
        at = change["clusterTime"].as_datetime()
    key = change.get("documentKey") or {}
    return {
        "operation": change.get("operationType"),
        "id": json_safe(key.get("_id")),
        "document": json_safe(change.get("fullDocument")),
        "collection": (change.get("ns") or {}).get("coll", collection),
        "at": json_safe(at) if at is not None else None,
    }


def listen_changes(ctx: ListenContext) -> None:
    """Watch the collection's change stream and fire one job per matching change.

    The resume token is saved after each fired change (and every ``TOKEN_SAVE_EVERY``
    seconds while idle), so a restarted server picks up where it stopped: at least once,
    a change fired just before a crash may fire again.
    """
    config = ctx.config
    operations = list(config.get("operations") or ("insert", "update", "replace"))
    target = _target(ctx, config)
    coll_name = config["collection"]
    state = ctx.load_state()
    token = state.get("resume_token")
    pipeline = [{"$match": {"operationType": {"$in": operations}}}]
    with _session(ctx, target) as (client, db_name):
        collection = client[db_name][coll_name]
        try:
            stream = collection.watch(
                pipeline,
                full_document="updateLookup",
                resume_after=token,
                max_await_time_ms=AWAIT_MS,
            )
        except OperationFailure as exc:
            if token is None or exc.code in _AUTH_CODES:
                raise
            # the saved position fell out of the server's history: say so, go on from now
            ctx.log.warning(
                "cannot resume the change stream (%s); changes made while this trigger was "
                "stopped are missed, listening from now",
                _scrub(_reason(exc), target.password),
            )
            stream = collection.watch(
                pipeline, full_document="updateLookup", max_await_time_ms=AWAIT_MS
            )
        with stream:
            saved = stream.resume_token
            if token is None and saved is not None:
                ctx.save_state({"resume_token": saved})
            last_save = time.monotonic()
            ctx.log.info(
                "watching %s.%s at %s for %s",
                db_name,
                coll_name,
                target.shown,
                ", ".join(operations),
            )
            ctx.ready.set()
            while not ctx.stopping.is_set() and stream.alive:
                change = stream.try_next()
                if change is not None:
                    ctx.fire(_change_record(change, coll_name))
                    saved = stream.resume_token
                    ctx.save_state({"resume_token": saved})
                    last_save = time.monotonic()
                elif (
                    stream.resume_token != saved
                    and time.monotonic() - last_save >= TOKEN_SAVE_EVERY
                ):
                    saved = stream.resume_token
                    ctx.save_state({"resume_token": saved})
                    last_save = time.monotonic()
            if not ctx.stopping.is_set():
                raise _fail(ctx, f"the change stream on {db_name}.{coll_name} was closed")


def check_change(config: Mapping[str, Any]) -> list[ConfigProblem]:
    ops = config.get("operations")
    if isinstance(ops, list) and not ops:
        return [ConfigProblem("operations", "choose at least one operation")]
    return []


# -- connection type ----------------------------------------------------------------


def ping_connection(settings: dict[str, Any], timeout: float) -> str:
    """Ping the server and list the database; what was reached, or a clear error."""
    url = settings.get("url")
    if not isinstance(url, str) or not url.startswith(("mongodb://", "mongodb+srv://")):
        raise FlowmillError("a MongoDB connection needs a 'url' starting with mongodb://")
    target = _Target(url, settings.get("database") or None, timeout, "the connection")
    client = None
    try:
        client = target.client()
        client.admin.command("ping")
        name = target.db_name(client)
        collections = client[name].list_collection_names()
    except (PyMongoError, ValueError, TypeError) as exc:
        raise FlowmillError(_explain(target, exc)[0]) from None
    finally:
        if client is not None:
            client.close()
    return f"MongoDB at {target.shown}: database {name}, {len(collections)} collections"


def _detect(settings: dict[str, Any]) -> bool:
    url = settings.get("url")
    return isinstance(url, str) and url.startswith(("mongodb://", "mongodb+srv://"))


# -- declarations ---------------------------------------------------------------------

MONGO_FIND = NodeSpec(
    type="mongo.find",
    title="MongoDB find",
    category="mongo",
    description="Finds documents in a collection (filter, projection, sort, limit) and "
    "streams them as records, batch by batch through a server cursor. _id and other "
    "ObjectIds become text, dates ISO 8601 text (UTC). With 'in' connected the find runs "
    "once per incoming record, after it arrived (e.g. after mongo.write's summary).",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=FIND_SCHEMA,
    check=check_find,
    run=mongo_find,
)

MONGO_WRITE = NodeSpec(
    type="mongo.write",
    title="MongoDB write",
    category="mongo",
    description="Writes records as documents (insert, upsert or replace by key fields) in "
    "ordered bulk batches and outputs one record {database, collection, inserted, "
    "upserted, matched, modified, failed}. A record the server refuses (e.g. a duplicate "
    "key) fails the node naming the record and its key and how many documents were "
    "written before it; with on_error 'route' it goes to 'error' and the rest are "
    "written. Nothing is rolled back: documents written stay written.",
    inputs=("in",),
    outputs=("out",),
    config_schema=WRITE_SCHEMA,
    run=mongo_write,
)

MONGO_AGGREGATE = NodeSpec(
    type="mongo.aggregate",
    title="MongoDB aggregate",
    category="mongo",
    description="Runs an aggregation pipeline on a collection and streams the result "
    "documents as records.",
    outputs=("out",),
    config_schema=AGGREGATE_SCHEMA,
    check=check_aggregate,
    run=mongo_aggregate,
)

MONGO_CHANGE = NodeSpec(
    type="trigger.mongo_change",
    title="MongoDB change",
    category="trigger",
    description="Starts the flow for each change (insert, update, replace, delete) in a "
    "collection, through a change stream; the first record is {operation, id, document, "
    "collection, at} (document: the whole document after the change, null for a delete). "
    "After a restart it resumes where it stopped. Needs a replica set or a server with "
    "change streams.",
    outputs=("out",),
    config_schema=CHANGE_SCHEMA,
    trigger=True,
    check=check_change,
    listen=listen_changes,
    run=event_records,
)

NODES = (MONGO_FIND, MONGO_WRITE, MONGO_AGGREGATE, MONGO_CHANGE)

CONNECTION_TYPES = (
    ConnectionType(
        kind="mongo",
        title="MongoDB",
        description="Settings: url (mongodb://user:password@host:27017/db or "
        "mongodb+srv://…), optionally database.",
        test=ping_connection,
        detect=_detect,
    ),
)
