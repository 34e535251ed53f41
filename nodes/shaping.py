"""Shaping nodes: aggregate groups, sort (spilling to disk), join two inputs, route by condition.

Each node says in its description what it holds in memory: aggregate one state per group,
sort at most ``memory_records`` records (the rest is in sorted runs on disk), join the
whole right input, switch a few batches per output port.
"""

from __future__ import annotations

import heapq
import pickle
import queue
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.errors import ExpressionError, NodeError
from engine.run.expressions import check_expression, compile_expression
from engine.spec import (
    Batch,
    ConfigProblem,
    Inputs,
    NodeSpec,
    Outputs,
    RunContext,
    batched,
)

__all__ = ["NODES", "AGGREGATE", "SORT", "JOIN", "SWITCH", "SWITCH_PORTS"]


def _fields_of(record: dict[str, Any]) -> str:
    return ", ".join(map(str, record)) or "none"


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


# =========================================================================== aggregate
AGG_OPS = ("count", "count_distinct", "sum", "avg", "min", "max", "first", "last")

AGGREGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Aggregate",
    "additionalProperties": False,
    "required": ["aggregations"],
    "properties": {
        "group_by": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "default": [],
            "title": "Group by",
            "description": "Fields whose values form a group; empty: all records are one "
            "group (one output record, even for no input).",
        },
        "aggregations": {
            "type": "array",
            "minItems": 1,
            "title": "Aggregations",
            "description": "What to compute per group, e.g. "
            '[{"op": "sum", "field": "amount", "as": "total"}, {"op": "count", "as": "n"}].',
            "items": {
                "type": "object",
                "title": "Aggregation",
                "additionalProperties": False,
                "required": ["op"],
                "properties": {
                    "op": {
                        "type": "string",
                        "enum": list(AGG_OPS),
                        "title": "Operation",
                        "description": "count: records (with a field: non-null values); "
                        "count_distinct: distinct non-null values; sum/avg/min/max skip "
                        "nulls (null when there are none); first/last: the value of the "
                        "group's first/last record.",
                    },
                    "field": {
                        "type": "string",
                        "minLength": 1,
                        "title": "Field",
                        "description": "Input field; required for every op except count.",
                    },
                    "as": {
                        "type": "string",
                        "minLength": 1,
                        "title": "Output name",
                        "description": "Output field; default '<op>_<field>' (or 'count').",
                    },
                },
            },
        },
        "missing": {
            "type": "string",
            "enum": ["error", "null"],
            "default": "error",
            "title": "Missing fields",
            "description": "error: a record without a group or aggregated field is "
            "rejected; null: the field counts as null.",
        },
    },
}


def _output_name(agg: dict[str, Any]) -> str:
    if agg.get("as"):
        return str(agg["as"])
    return f"{agg['op']}_{agg['field']}" if agg.get("field") else str(agg["op"])


def check_aggregate(config: dict[str, Any]) -> list[ConfigProblem]:
    problems = []
    seen: set[str] = set(config.get("group_by") or ())
    for i, agg in enumerate(config.get("aggregations") or ()):
        if agg.get("op") != "count" and not agg.get("field"):
            problems.append(
                ConfigProblem(f"aggregations.{i}.field", f"{agg.get('op')} needs a field")
            )
            continue
        name = _output_name(agg)
        if name in seen:
            problems.append(
                ConfigProblem(
                    f"aggregations.{i}.as",
                    f"output field {name!r} is produced twice (set a different 'as')",
                )
            )
        seen.add(name)
    return problems


def _add(total: Any, value: Any) -> Any:
    """``total + value`` where a Decimal and a float meet as Decimal (float taken as written)."""
    try:
        return total + value
    except TypeError:
        if isinstance(total, Decimal) and isinstance(value, float):
            return total + Decimal(repr(value))
        if isinstance(total, float) and isinstance(value, Decimal):
            return Decimal(repr(total)) + value
        raise


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


class _Agg:
    """One aggregation: ``update(state, value) -> state`` per record, ``result(state)``."""

    __slots__ = ("counts_records", "field", "name", "op")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.op: str = spec["op"]
        self.field: str | None = spec.get("field")
        self.name = _output_name(spec)
        self.counts_records = self.op == "count" and not self.field

    def initial(self) -> Any:
        if self.op in ("count",):
            return 0
        if self.op == "count_distinct":
            return set()
        if self.op == "avg":
            return (None, 0)
        return _UNSET

    def update(self, state: Any, value: Any) -> Any:
        op = self.op
        if op == "first":
            return value if state is _UNSET else state
        if op == "last":
            return value
        if op == "count":
            return state + 1 if self.counts_records or value is not None else state
        if value is None:
            return state
        if op == "count_distinct":
            # only checked here; the value is added once every aggregation accepted the record
            try:
                hash(value)
            except TypeError:
                raise TypeError(f"cannot count distinct {_type_name(value)} values") from None
            return state
        if op in ("sum", "avg"):
            if not _is_number(value):
                raise TypeError(f"cannot {op} {_type_name(value)} value {str(value)[:40]!r}")
            if op == "sum":
                return value if state is _UNSET else _add(state, value)
            total, n = state
            return (value if total is None else _add(total, value), n + 1)
        if state is _UNSET:
            return value
        try:
            better = value < state if op == "min" else value > state
        except TypeError:
            raise TypeError(
                f"cannot compare {_type_name(value)} with {_type_name(state)} for {op}"
            ) from None
        return value if better else state

    def result(self, state: Any) -> Any:
        if self.op == "count_distinct":
            return len(state)
        if self.op == "avg":
            total, n = state
            return None if not n else total / n
        return None if state is _UNSET else state


_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


def aggregate(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Fold records into one state per group; emit the groups in order of first appearance."""
    group_by: list[str] = list(config.get("group_by") or [])
    aggs = [_Agg(a) for a in config["aggregations"]]
    strict = config.get("missing", "error") == "error"
    needed = [*group_by, *(a.field for a in aggs if a.field)]
    no_group = not group_by
    distinct = [(a, i) for i, a in enumerate(aggs) if a.op == "count_distinct"]

    def stream() -> Iterator[Batch]:
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for batch in inputs["in"]:
            ctx.check_cancelled()
            for record in batch:
                if strict:
                    missing = [f for f in needed if f not in record]
                    if missing:
                        ctx.reject(
                            record,
                            f"missing field {missing[0]!r} (fields: {_fields_of(record)})",
                        )
                        continue
                key = tuple([record.get(f) for f in group_by])
                try:
                    states = groups.get(key)
                except TypeError:
                    ctx.reject(
                        record, f"group_by {group_by}: a value cannot be grouped (lists, objects)"
                    )
                    continue
                if states is None:
                    states = [a.initial() for a in aggs]
                    new = True
                else:
                    new = False
                try:
                    # compute all new states first: a rejected record changes no aggregate
                    updated = [
                        a.update(s, record.get(a.field) if a.field else None)
                        for a, s in zip(aggs, states, strict=True)
                    ]
                except (TypeError, ArithmeticError) as exc:
                    bad = next(
                        (a for a, s in zip(aggs, states, strict=True) if _fails(a, s, record)),
                        None,
                    )
                    where = f"{bad.op} of {bad.field!r}: " if bad is not None else ""
                    ctx.reject(record, f"{where}{exc}")
                    continue
                for a, s in distinct:
                    value = record.get(a.field)  # type: ignore[arg-type]
                    if value is not None:
                        updated[s].add(value)
                if new:
                    groups[key] = updated
                else:
                    states[:] = updated
            ctx.progress(len(batch))
        if no_group and not groups:
            groups[()] = [a.initial() for a in aggs]
        ctx.status(f"{len(groups)} groups")

        def rows() -> Iterator[dict[str, Any]]:
            for key, states in groups.items():
                row = dict(zip(group_by, key, strict=True))
                for a, s in zip(aggs, states, strict=True):
                    row[a.name] = a.result(s)
                yield row

        yield from batched(rows(), ctx.batch_size)

    return {"out": stream()}


def _fails(agg: _Agg, state: Any, record: dict[str, Any]) -> bool:
    try:
        agg.update(state, record.get(agg.field) if agg.field else None)
    except (TypeError, ArithmeticError):
        return True
    return False


AGGREGATE = NodeSpec(
    type="transform.aggregate",
    title="Aggregate",
    category="transform",
    description="Groups records by fields and computes count, sum, avg, min, max, first, "
    "last or count_distinct per group; one output record per group, in order of first "
    "appearance. Streams its input; memory grows with the number of groups (and, for "
    "count_distinct, the distinct values). Sums of Decimal values stay exact.",
    inputs=("in",),
    outputs=("out",),
    config_schema=AGGREGATE_SCHEMA,
    check=check_aggregate,
    run=aggregate,
)

# =========================================================================== sort
SORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Sort",
    "additionalProperties": False,
    "required": ["keys"],
    "properties": {
        "keys": {
            "type": "array",
            "minItems": 1,
            "title": "Sort keys",
            "description": "Fields to sort by, most significant first, e.g. "
            '[{"field": "customer"}, {"field": "amount", "descending": true}].',
            "items": {
                "type": "object",
                "title": "Sort key",
                "additionalProperties": False,
                "required": ["field"],
                "properties": {
                    "field": {
                        "type": "string",
                        "minLength": 1,
                        "title": "Field",
                        "description": "Field to sort by; a missing field counts as null.",
                    },
                    "descending": {
                        "type": "boolean",
                        "default": False,
                        "title": "Descending",
                        "description": "Largest first.",
                    },
                },
            },
        },
        "nulls": {
            "type": "string",
            "enum": ["first", "last"],
            "default": "last",
            "title": "Nulls",
            "description": "Where records with a null (or missing) key go, whatever the direction.",
        },
        "memory_records": {
            "type": "integer",
            "minimum": 10,
            "maximum": 10_000_000,
            "default": 100_000,
            "title": "Records in memory",
            "description": "At most this many records are held in memory; above that, "
            "sorted runs are written to temporary files in the run's work directory and "
            "merged (the files are removed afterwards).",
        },
    },
}

# comparing datetime with date, or text with numbers, raises: name the field instead
_CATEGORY = {int: "number", float: "number", Decimal: "number", bool: "number", str: "text"}
_MAX_FAN_IN = 128  # open run files merged at once
_SPILL_CHUNK = 1000


class _Desc:
    """Reverses the order of the value it wraps, so one key mixes directions."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return other.v < self.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.v == other.v

    __hash__ = None  # type: ignore[assignment]


def _category(value: Any) -> str:
    kind = _CATEGORY.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    return type(value).__name__


def _sort_key(keys: list[dict[str, Any]], nulls_first: bool) -> Callable[[dict[str, Any]], tuple]:
    fields = [(k["field"], bool(k.get("descending"))) for k in keys]
    null_part = (0,) if nulls_first else (2,)

    def key(record: dict[str, Any]) -> tuple:
        parts = []
        for name, desc in fields:
            value = record.get(name)
            if value is None:
                parts.append(null_part)
            else:
                parts.append((1, _Desc(value) if desc else value))
        return tuple(parts)

    return key


def _write_run(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("wb") as fh:
        for chunk in batched(records, _SPILL_CHUNK):
            pickle.dump(chunk, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _read_run(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        while True:
            try:
                chunk = pickle.load(fh)
            except EOFError:
                return
            yield from chunk


def sort_records(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """External merge sort: sorted runs of ``memory_records`` spill to disk, heapq merges."""
    key = _sort_key(config["keys"], config.get("nulls", "last") == "first")
    fields = [k["field"] for k in config["keys"]]
    limit = int(config.get("memory_records", 100_000))

    def sort_run(buffer: list[dict[str, Any]]) -> None:
        try:
            buffer.sort(key=key)
        except TypeError as exc:
            raise NodeError(
                ctx.node_id, f"cannot sort by {', '.join(fields)}: {exc}", ctx.node_type
            ) from exc

    def stream() -> Iterator[Batch]:
        seen: dict[str, tuple[str, Any]] = {}
        buffer: list[dict[str, Any]] = []
        spill_dir: Path | None = None
        runs: list[Path] = []
        try:
            for batch in inputs["in"]:
                ctx.check_cancelled()
                for record in batch:
                    bad = None
                    for name in fields:
                        value = record.get(name)
                        if value is None:
                            continue
                        kind = _category(value)
                        first = seen.setdefault(name, (kind, value))
                        if first[0] != kind:
                            bad = (
                                f"cannot sort field {name!r}: {kind} value "
                                f"{str(value)[:40]!r} among {first[0]} values "
                                f"(first: {str(first[1])[:40]!r})"
                            )
                            break
                    if bad:
                        ctx.reject(record, bad)
                        continue
                    buffer.append(record)
                    if len(buffer) >= limit:
                        sort_run(buffer)
                        if spill_dir is None:
                            ctx.work_dir.mkdir(parents=True, exist_ok=True)
                            spill_dir = Path(tempfile.mkdtemp(prefix="sort-", dir=ctx.work_dir))
                        run = spill_dir / f"run-{len(runs):06d}.pickle"
                        _write_run(run, buffer)
                        runs.append(run)
                        buffer = []
                        ctx.status(f"{len(runs)} sorted runs on disk")
                ctx.progress(len(batch))
            sort_run(buffer)
            if not runs:
                for start in range(0, len(buffer), ctx.batch_size):
                    yield buffer[start : start + ctx.batch_size]
                return
            assert spill_dir is not None
            merges = 0
            # too many open files otherwise: merge groups of runs into longer runs first
            while len(runs) + 1 > _MAX_FAN_IN:
                group, runs = runs[:_MAX_FAN_IN], runs[_MAX_FAN_IN:]
                merges += 1
                merged = spill_dir / f"merged-{merges:06d}.pickle"
                _write_run(merged, heapq.merge(*map(_read_run, group), key=key))
                for path in group:
                    path.unlink()
                runs.append(merged)
            ctx.status(f"merging {len(runs)} sorted runs")
            sources = [_read_run(path) for path in runs]
            sources.append(iter(buffer))
            merged_stream = heapq.merge(*sources, key=key)
            try:
                yield from batched(merged_stream, ctx.batch_size)
            except TypeError as exc:
                raise NodeError(
                    ctx.node_id, f"cannot sort by {', '.join(fields)}: {exc}", ctx.node_type
                ) from exc
            finally:
                for source in sources:
                    close = getattr(source, "close", None)
                    if close is not None:
                        close()
        finally:
            if spill_dir is not None:
                shutil.rmtree(spill_dir, ignore_errors=True)

    return {"out": stream()}


SORT = NodeSpec(
    type="transform.sort",
    title="Sort",
    category="transform",
    description="Sorts records by one or more fields (each ascending or descending; nulls "
    "first or last). Holds at most 'memory_records' records in memory and spills sorted "
    "runs to temporary files beyond that, so any input size works. The sort is stable. "
    "A key field whose values mix kinds (text and numbers, dates and datetimes) rejects "
    "the record naming the field.",
    inputs=("in",),
    outputs=("out",),
    config_schema=SORT_SCHEMA,
    run=sort_records,
)

# =========================================================================== join
_KEY_LIST: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
}

JOIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Join",
    "additionalProperties": False,
    "oneOf": [{"required": ["on"]}, {"required": ["left_on", "right_on"]}],
    "properties": {
        "on": {
            **_KEY_LIST,
            "title": "Key fields",
            "description": "Fields with the same name on both sides that must be equal; "
            "the right side's copies are left out of the output.",
        },
        "left_on": {
            **_KEY_LIST,
            "title": "Left key fields",
            "description": "Key fields of the left input (instead of 'on').",
        },
        "right_on": {
            **_KEY_LIST,
            "title": "Right key fields",
            "description": "Key fields of the right input, in the same order as 'left_on'.",
        },
        "type": {
            "type": "string",
            "enum": ["inner", "left"],
            "default": "inner",
            "title": "Join type",
            "description": "inner: only left records with a match; left: every left "
            "record, with null right fields when there is no match.",
        },
        "right_fields": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "default": [],
            "title": "Right fields (left join)",
            "description": "Fields a left record without a match gets as null even when the "
            "right input was empty (the node only knows the fields of right records it saw), "
            "so later expressions can read them.",
        },
        "prefix": {
            "type": "string",
            "default": "right_",
            "title": "Prefix for clashing fields",
            "description": "A right field whose name the left record already has is "
            "output as prefix + name.",
        },
    },
}


def _join_keys(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    if config.get("on"):
        return list(config["on"]), list(config["on"])
    return list(config.get("left_on") or []), list(config.get("right_on") or [])


def check_join(config: dict[str, Any]) -> list[ConfigProblem]:
    left, right = _join_keys(config)
    if len(left) != len(right):
        return [
            ConfigProblem(
                "right_on",
                f"left_on has {len(left)} fields but right_on has {len(right)}; "
                "they are matched in order",
            )
        ]
    return []


_END = object()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _ParkedInput:
    """Reads an input on a thread from the start, parking batches in a temporary file.

    The join reads its right input completely before the left one; when both come from
    the same upstream port (a self-join) the producer would wait for room in the unread
    left inbox forever. Parking keeps the left side moving at the cost of a disk copy of
    what arrives while the right side loads; afterwards batches pass through a small queue.
    """

    def __init__(self, source: Iterable[Batch], work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self._source = source
        self._lock = threading.Lock()
        self._parking = True
        self._parked = 0
        # closed by close(), which the join calls however it ends
        self._file = tempfile.TemporaryFile(dir=work_dir, prefix="join-left-")  # noqa: SIM115
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True, name="join-left").start()

    def _read(self) -> None:
        try:
            for batch in self._source:
                with self._lock:
                    if self._parking:
                        pickle.dump(batch, self._file, protocol=pickle.HIGHEST_PROTOCOL)
                        self._parked += 1
                        continue
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as exc:
            self._put(_Failure(exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Batch]:
        try:
            with self._lock:
                self._parking = False
            self._file.seek(0)
            for _ in range(self._parked):
                yield pickle.load(self._file)
            self._file.close()
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading and remove the parked batches."""
        self._stop.set()
        with self._lock:
            self._parking = False
            self._file.close()


def join(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Hash join: the right input becomes a dict of key → records, the left streams by."""
    left_on, right_on = _join_keys(config)
    keep_unmatched = config.get("type", "inner") == "left"
    prefix = config.get("prefix", "right_")
    drop = set(right_on) if config.get("on") else set()

    def key_of(record: dict[str, Any], names: list[str], side: str) -> tuple | None:
        try:
            key = tuple([record[n] for n in names])
        except KeyError:
            missing = next(n for n in names if n not in record)
            ctx.reject(
                record, f"{side} record has no key field {missing!r} (fields: {_fields_of(record)})"
            )
            return None
        try:
            hash(key)
        except TypeError:
            ctx.reject(record, f"{side} key {names} holds a value that cannot be matched")
            return None
        return key

    def stream() -> Iterator[Batch]:
        left = _ParkedInput(inputs["left"], ctx.work_dir)
        try:
            yield from joined(left)
        finally:
            left.close()

    def joined(left: _ParkedInput) -> Iterator[Batch]:
        table: dict[tuple, list[dict[str, Any]]] = {}
        right_fields: dict[str, None] = {}
        right_count = 0
        for batch in inputs["right"]:
            ctx.check_cancelled()
            for record in batch:
                key = key_of(record, right_on, "right")
                if key is None or None in key:  # null never matches, as in SQL
                    continue
                part = {k: v for k, v in record.items() if k not in drop} if drop else record
                right_fields.update(dict.fromkeys(part))
                table.setdefault(key, []).append(part)
                right_count += 1
        ctx.status(f"{right_count} right records in {len(table)} keys")
        declared = [f for f in config.get("right_fields") or [] if f not in drop]
        empty = dict.fromkeys([*right_fields, *declared])
        for batch in left:
            ctx.check_cancelled()
            out: Batch = []
            for record in batch:
                key = key_of(record, left_on, "left")
                if key is None:
                    continue
                matches = table.get(key)
                if matches is None:
                    if keep_unmatched:
                        out.append(_merge(record, empty, prefix))
                    continue
                for match in matches:
                    out.append(_merge(record, match, prefix))
            ctx.progress(len(batch))
            if out:
                yield out

    return {"out": stream()}


def _merge(left: dict[str, Any], right: dict[str, Any], prefix: str) -> dict[str, Any]:
    merged = dict(left)
    for name, value in right.items():
        merged[prefix + name if name in left else name] = value
    return merged


JOIN = NodeSpec(
    type="transform.join",
    title="Join",
    category="transform",
    description="Joins each record of the 'left' input with the records of the 'right' "
    "input whose key fields are equal (inner or left join). The whole right input is held "
    "in memory as a lookup table, so connect the smaller input to 'right'; the left input "
    "streams. Keys match by value: 1, 1.0 and Decimal('1') match each other, the text '1' "
    "does not (convert with transform.map); null keys never match. A right field whose "
    "name the left record has is renamed with the prefix. The right input is read "
    "completely before the left one; left records that arrive meanwhile wait in a "
    "temporary file, so both inputs may come from the same node (a self-join).",
    inputs=("left", "right"),
    outputs=("out",),
    config_schema=JOIN_SCHEMA,
    check=check_join,
    run=join,
)

# =========================================================================== switch
# Ports are declared statically (the validator, the editor palette and the executor read
# them from the spec), so a switch has four numbered ports; routes carry the user's labels.
SWITCH_PORTS = ("out1", "out2", "out3", "out4")
OTHER_PORT = "other"
_MAX_BUFFERED = 8  # batches waiting for one port before reading input pauses

SWITCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Switch",
    "additionalProperties": False,
    "required": ["routes"],
    "properties": {
        "routes": {
            "type": "array",
            "minItems": 1,
            "maxItems": 16,
            "title": "Routes",
            "description": "Checked in order; a record goes to the port of the first route "
            "whose condition is true (or of every such route with 'all matches'). Records "
            "no route takes go to 'other'.",
            "items": {
                "type": "object",
                "title": "Route",
                "additionalProperties": False,
                "required": ["port", "condition"],
                "properties": {
                    "port": {
                        "type": "string",
                        "enum": list(SWITCH_PORTS),
                        "title": "Port",
                        "description": "Output port for the matching records.",
                    },
                    "label": {
                        "type": "string",
                        "maxLength": 100,
                        "title": "Label",
                        "description": "Name of the route shown to users, e.g. 'large orders'.",
                    },
                    "condition": {
                        "type": "string",
                        "format": "expression",
                        "maxLength": 10000,
                        "title": "Condition",
                        "description": "Expression, e.g. amount >= 1000 and country == 'DE'.",
                    },
                },
            },
        },
        "all_matches": {
            "type": "boolean",
            "default": False,
            "title": "All matches",
            "description": "Send a record to every port whose route matches (once per "
            "port), not only the first.",
        },
    },
}


def check_switch(config: dict[str, Any]) -> list[ConfigProblem]:
    problems = []
    for i, route in enumerate(config.get("routes") or ()):
        try:
            check_expression(route.get("condition", ""))
        except ExpressionError as exc:
            problems.append(ConfigProblem(f"routes.{i}.condition", str(exc)))
    return problems


class _Demux:
    """Splits one input stream over several output ports pumped by different threads.

    Whichever port runs dry reads the next input batch and routes it. Reading pauses while
    a port that is being read has ``_MAX_BUFFERED`` batches waiting, so a slow consumer
    slows the input instead of filling memory; a port nobody reads yet (``run_node``
    drains ports one after the other) buffers.
    """

    def __init__(
        self,
        source: Iterator[Batch],
        ports: Iterable[str],
        route: Callable[[Batch], dict],
        check_cancelled: Callable[[], None],
    ) -> None:
        self._source = source
        # a port whose pump died (timeout, run stopped) is never read again: waiting for
        # it must end when the run does
        self._check_cancelled = check_cancelled
        self._route = route
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Batch]] = {p: deque() for p in ports}
        self._reading: set[str] = set()
        self._closed: set[str] = set()
        self._pulling = False
        self._done = False
        self._error: BaseException | None = None

    def _blocked(self, port: str) -> bool:
        return any(len(self._queues[p]) >= _MAX_BUFFERED for p in self._reading if p != port)

    def stream(self, port: str) -> Iterator[Batch]:
        queue = self._queues[port]
        cond = self._cond
        with cond:
            self._reading.add(port)
        try:
            while True:
                batch: Batch | None = None
                with cond:
                    while True:
                        if queue:
                            batch = queue.popleft()
                            cond.notify_all()
                            break
                        if self._error is not None:
                            raise self._error
                        if self._done:
                            return
                        if not self._pulling and not self._blocked(port):
                            self._pulling = True
                            break
                        cond.wait(0.05)
                        self._check_cancelled()
                if batch is None:
                    self._pull()
                else:
                    yield batch
        finally:
            with cond:
                self._reading.discard(port)
                self._closed.add(port)
                queue.clear()
                cond.notify_all()

    def _pull(self) -> None:
        try:
            batch = next(self._source, None)
            parts = None if batch is None else self._route(batch)
        except BaseException as exc:
            with self._cond:
                self._pulling = False
                self._error = exc
                self._cond.notify_all()
            raise
        with self._cond:
            self._pulling = False
            if parts is None:
                self._done = True
            else:
                for port, records in parts.items():
                    if records and port not in self._closed:
                        self._queues[port].append(records)
            self._cond.notify_all()


def switch(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Route each record by the first (or every) matching condition."""
    routes = [
        (
            r["port"],
            r.get("label") or r["port"],
            compile_expression(r["condition"], params=ctx.params),
        )
        for r in config["routes"]
    ]
    all_matches = bool(config.get("all_matches"))
    ports = (*SWITCH_PORTS, OTHER_PORT)

    def route(batch: Batch) -> dict[str, Batch]:
        parts: dict[str, Batch] = {p: [] for p in ports}
        for record in batch:
            hit: list[str] = []
            current = ""
            try:
                for port, label, condition in routes:
                    current = label
                    if port not in hit and condition(record):
                        hit.append(port)
                        if not all_matches:
                            break
            except ExpressionError as exc:
                ctx.reject(record, f"route {current!r}: {exc}")
                continue
            for port in hit or (OTHER_PORT,):
                parts[port].append(record)
        ctx.progress(len(batch))
        return parts

    demux = _Demux(iter(inputs["in"]), ports, route, ctx.check_cancelled)
    return {port: demux.stream(port) for port in ports}


SWITCH = NodeSpec(
    type="route.switch",
    title="Switch",
    category="route",
    description="Sends each record to an output port chosen by conditions: the first route "
    "whose condition is true wins (or every matching route with 'all matches'); records "
    "no route takes go to 'other'. Ports are fixed (out1 to out4 and other) because ports "
    "are part of the node type; several routes may share a port, and each route has a "
    "label for its meaning.",
    inputs=("in",),
    outputs=(*SWITCH_PORTS, OTHER_PORT),
    config_schema=SWITCH_SCHEMA,
    check=check_switch,
    run=switch,
)

NODES = (AGGREGATE, SORT, JOIN, SWITCH)
