"""Reading and writing flow documents (format ``flowmill/1``).

``dump_flow`` is the one function that writes a flow: UTF-8, ``indent=2``, sorted keys,
nodes sorted by id, edges by (source, source_port, target, target_port), trailing newline.
Loading and dumping a valid flow gives the same bytes, so flows diff cleanly in git and a
run can be pinned to the sha256 of exactly what it ran.

>>> text = dump_flow({"format": "flowmill/1", "id": "x", "nodes": [], "edges": []})
>>> dump_flow(parse_flow_text(text)) == text
True
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from pathlib import Path
from typing import Any

from engine.errors import FlowFormatError

__all__ = [
    "FORMAT",
    "MAX_FLOW_BYTES",
    "parse_flow_text",
    "find_unstorable_text",
    "load_flow",
    "dump_flow",
    "write_flow",
    "flow_hash",
    "new_node_id",
]

FORMAT = "flowmill/1"
MAX_FLOW_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64
# Keys that mean something to JavaScript object prototypes or Python internals: a flow
# that carries them is an attack on the editor or the engine, never a real flow.
_FORBIDDEN_KEY = re.compile(r"^(__.*|constructor|prototype)$")


def parse_flow_text(text: str | bytes, source: str = "<flow>") -> dict[str, Any]:
    """Parse a flow document, rejecting oversized input, bad JSON, forbidden keys, numbers
    too large for a float and text no database can store (NUL, unpaired surrogates).

    Raises:
        FlowFormatError: naming ``source`` and, for JSON errors, the line and column; for
            unstorable text, the path of the key or value (``nodes[0].id``).
    """
    # surrogatepass: a str may carry a lone surrogate, refused below naming where it is
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_FLOW_BYTES:
        raise FlowFormatError(source, f"flow is {size} bytes; the limit is {MAX_FLOW_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FlowFormatError(source, f"not UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_checked_object,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except _ForbiddenKey as exc:
        raise FlowFormatError(source, f"forbidden key {exc.key!r}") from None
    except json.JSONDecodeError as exc:
        raise FlowFormatError(
            source, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise FlowFormatError(source, str(exc)) from None
    except RecursionError:
        raise FlowFormatError(source, "nested too deeply") from None
    if _depth(doc) > MAX_DEPTH:
        raise FlowFormatError(source, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(doc, dict):
        raise FlowFormatError(source, "a flow must be a JSON object")
    problem = find_unstorable_text(doc)
    if problem:
        raise FlowFormatError(source, problem)
    return doc


def find_unstorable_text(data: Any) -> str | None:
    """Where and why a string in ``data`` (dict keys included) cannot be stored; None if
    every one can.

    "\\u0000" and a lone "\\ud800" are valid JSON, but PostgreSQL refuses NUL in text and
    no UTF-8 database can hold an unpaired surrogate. Flow files, the API and the CLI's
    arguments all ask this one function and raise their own error with the answer.

    >>> print(find_unstorable_text({"nodes": [{"id": "a\\x00"}]}))
    nodes[0].id: NUL characters (\\u0000) are not allowed
    """
    # (value, key or index, parent entry): the path is spelled out only for a bad string
    stack: list[tuple[Any, Any, Any]] = [(data, None, None)]
    while stack:
        entry = stack.pop()
        value = entry[0]
        if isinstance(value, str):
            bad = _unstorable(value)
            if bad:
                return _at(entry, f"{bad} are not allowed")
        elif isinstance(value, dict):
            for key in value:
                bad = _unstorable(key) if isinstance(key, str) else None
                if bad:
                    return _at((None, key, entry), f"{bad} are not allowed in keys")
            stack.extend(reversed([(v, k, entry) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([(v, i, entry) for i, v in enumerate(value)]))
    return None


def _unstorable(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "unpaired surrogates (\\ud800-\\udfff)"
    return None


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]{1,40}")


def _at(entry: tuple[Any, Any, Any], message: str) -> str:
    """``message`` behind the path of a stack entry (``nodes[0].config.mapping: …``);
    odd keys are quoted, long ones and long paths cut, so nothing big is echoed."""
    parts: list[str] = []
    while entry[2] is not None:
        key = entry[1]
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
            parts.append(f".{key}")
        else:
            text = str(key)
            parts.append(f".{text[:40]!r}" + ("…" if len(text) > 40 else ""))
        entry = entry[2]
    path = "".join(reversed(parts)).removeprefix(".")
    if len(path) > 200:
        path = "…" + path[-200:]
    return f"{path}: {message}" if path else message


class _ForbiddenKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _checked_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if _FORBIDDEN_KEY.match(key):
            raise _ForbiddenKey(key)
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a flow")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but reads as infinity, which dump_flow could not write back
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 30 else text[:30] + "…"
        raise ValueError(f"number {shown} is too large")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def load_flow(path: str | Path) -> dict[str, Any]:
    """Read and parse a ``*.flow.json`` file (not yet validated against node types)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FLOW_BYTES:
            raise FlowFormatError(str(p), f"flow is {size} bytes; the limit is {MAX_FLOW_BYTES}")
        data = p.read_bytes()
    except OSError as exc:
        raise FlowFormatError(str(p), exc.strerror or str(exc)) from None
    return parse_flow_text(data, str(p))


def _edge_key(edge: Any) -> tuple[str, str, str, str]:
    if not isinstance(edge, dict):
        return ("", "", "", "")
    return tuple(str(edge.get(k, "")) for k in ("source", "source_port", "target", "target_port"))  # type: ignore[return-value]


def canonical(flow: dict[str, Any]) -> dict[str, Any]:
    """A copy with nodes and edges in canonical order (keys are sorted when dumped)."""
    out = dict(flow)
    if isinstance(out.get("nodes"), list):
        out["nodes"] = sorted(
            out["nodes"], key=lambda n: str(n.get("id", "")) if isinstance(n, dict) else ""
        )
    if isinstance(out.get("edges"), list):
        out["edges"] = sorted(out["edges"], key=_edge_key)
    return out


def dump_flow(flow: dict[str, Any]) -> str:
    """The canonical text of a flow; the only way Flowmill writes one."""
    return json.dumps(canonical(flow), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_flow(path: str | Path, flow: dict[str, Any]) -> None:
    """Write the canonical text atomically (temp file + rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(dump_flow(flow), encoding="utf-8")
    tmp.replace(p)


def flow_hash(flow: dict[str, Any]) -> str:
    """sha256 of the canonical text: the version a run is pinned to."""
    return hashlib.sha256(dump_flow(flow).encode("utf-8")).hexdigest()


def new_node_id(node_type: str) -> str:
    """A fresh id from the type's last part plus a short random suffix (``read-1a2b``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", node_type.rsplit(".", 1)[-1].lower()).strip("-") or "node"
    return f"{slug}-{secrets.token_hex(2)}"
