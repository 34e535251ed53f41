"""Run parameters and ``${name}`` placeholders in node configs.

A config string may contain ``${name}`` where ``name`` is a flow param or one of the
built-ins (``data_dir``, ``flow_dir``, ``work_dir``, ``run_id``, ``today``). A string that
is exactly one placeholder takes the value with its type (``"${limit}"`` → 100). Values are
inserted as data and never expanded again. Fields whose schema ``format`` is ``sql`` or
``expression`` are left alone: SQL takes bound ``params`` and expressions read params by
name, so neither can be built by pasting text. ``{"$secret": "NAME"}`` is replaced by the
decrypted secret at run time only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from engine.errors import FlowmillError

__all__ = [
    "BUILTIN_PLACEHOLDERS",
    "ParamError",
    "resolve_params",
    "param_defaults",
    "substitute",
    "placeholders_in",
    "expand_builtins",
]

BUILTIN_PLACEHOLDERS = ("data_dir", "flow_dir", "work_dir", "run_id", "today")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_FORMATS = {"sql", "expression"}


class ParamError(FlowmillError):
    """A run parameter is missing, unknown or of the wrong type."""

    def __init__(self, flow_id: str, name: str, message: str) -> None:
        super().__init__(f"flow {flow_id}: param {name!r}: {message}")
        self.flow_id = flow_id
        self.name = name
        self.message = message


def param_defaults(flow: Mapping[str, Any]) -> dict[str, Any]:
    """Declared params with their defaults (None when a param has no default)."""
    return {name: decl.get("default") for name, decl in (flow.get("params") or {}).items()}


def _coerce(flow_id: str, name: str, kind: str, value: Any) -> Any:
    """Turn a CLI/API value (often a string) into the declared type."""
    try:
        if kind == "string":
            return value if isinstance(value, str) else str(value)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"true", "1", "yes", "ja", "on"}:
                return True
            if text in {"false", "0", "no", "nein", "off"}:
                return False
            raise ValueError("expected true or false")
        if kind == "integer":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, int):
                return value
            return int(str(value).strip())
        if kind == "number":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            if isinstance(value, int):
                return value
            if isinstance(value, float):
                number = value
            else:
                number = float(str(value).strip().replace(",", "."))
            # "1e400" reads as infinity, "nan" as NaN: neither compares or stores as a number
            if not math.isfinite(number):
                raise ParamError(flow_id, name, f"{_shown(value)} is not a finite number")
            return number
        if kind == "date":
            date.fromisoformat(str(value))
            return str(value)
    except ValueError as exc:
        raise ParamError(flow_id, name, f"{_shown(value)} is not a valid {kind} ({exc})") from None
    raise ParamError(flow_id, name, f"unknown param type {kind!r}")


def _shown(value: Any) -> str:
    """A given value for an error message, cut so a huge one is not echoed back."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 60 else text[:60] + "…"


TRIGGER_PARAM = "_trigger"  # the record of the event that started the job (a file drop)


def resolve_params(flow: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Declared params with defaults, overridden by ``given``, checked and typed.

    ``_trigger`` (a dict) passes through: it is set by the server for jobs a trigger
    started (e.g. the dropped file), never declared by a flow.

    Raises:
        ParamError: for an undeclared name, a value of the wrong type, a missing required
            param, or a value outside the declared ``enum``.
    """
    flow_id = str(flow.get("id", "?"))
    declared = flow.get("params") or {}
    given = dict(given or {})
    result: dict[str, Any] = {}
    trigger = given.pop(TRIGGER_PARAM, None)
    if trigger is not None:
        if not isinstance(trigger, dict):
            raise ParamError(flow_id, TRIGGER_PARAM, "must be an object (set by the server)")
        result[TRIGGER_PARAM] = trigger
    for name in given:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ParamError(flow_id, name, f"not declared by the flow (params: {known})")
    for name, decl in declared.items():
        if name in given:
            value = _coerce(flow_id, name, decl["type"], given[name])
        elif "default" in decl:
            value = decl["default"]
        elif decl.get("required"):
            raise ParamError(flow_id, name, "is required and has no default")
        else:
            value = None
        if "enum" in decl and value is not None and value not in decl["enum"]:
            raise ParamError(flow_id, name, f"{_shown(value)} is not one of {decl['enum']}")
        result[name] = value
    return result


def expand_builtins(values: Mapping[str, Any], builtins: Mapping[str, Any]) -> dict[str, Any]:
    """Param values with built-in placeholders (``${data_dir}``…) filled in.

    Only built-ins: a param never pulls in another param, so nothing expands twice.
    """
    return {
        name: _PLACEHOLDER.sub(
            lambda m: str(builtins[m.group(1)]) if m.group(1) in builtins else m.group(0), value
        )
        if isinstance(value, str)
        else value
        for name, value in values.items()
    }


def placeholders_in(value: Any) -> set[str]:
    """Every ``${name}`` used anywhere inside a config value."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(_PLACEHOLDER.findall(value))
    elif isinstance(value, dict):
        for item in value.values():
            found |= placeholders_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= placeholders_in(item)
    return found


def _sub_value(value: Any, values: Mapping[str, Any], secret: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in values:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(
            lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), value
        )
    if isinstance(value, dict):
        if set(value) == {"$secret"} and isinstance(value["$secret"], str):
            return secret(value["$secret"])
        return {k: _sub_value(v, values, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub_value(v, values, secret) for v in value]
    return value


def substitute(
    config: Mapping[str, Any],
    schema: Mapping[str, Any],
    values: Mapping[str, Any],
    secret: Callable[[str], str],
) -> dict[str, Any]:
    """The config with placeholders and ``$secret`` references replaced.

    Top-level fields whose schema format is ``sql`` or ``expression`` are kept verbatim.
    """
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    for key, value in config.items():
        fmt = props.get(key, {}).get("format") if isinstance(props.get(key), dict) else None
        out[key] = value if fmt in _LITERAL_FORMATS else _sub_value(value, values, secret)
    return out
