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
import re
import secrets
from pathlib import Path
from typing import Any

from engine.errors import FlowFormatError

__all__ = [
    "FORMAT",
    "MAX_FLOW_BYTES",
    "parse_flow_text",
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
    """Parse a flow document, rejecting oversized input, bad JSON and forbidden keys.

    Raises:
        FlowFormatError: naming ``source`` and, for JSON errors, the line and column.
    """
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_FLOW_BYTES:
        raise FlowFormatError(source, f"flow is {size} bytes; the limit is {MAX_FLOW_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FlowFormatError(source, f"not UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(text, object_pairs_hook=_checked_object, parse_constant=_no_constant)
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
    return doc


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
