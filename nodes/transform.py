"""Transform nodes: map fields with expressions, filter records, select and rename fields.

Expressions are checked when the flow is validated (so the editor can mark the field) and
compiled once per node run; each record then costs one call per expression.
"""

from __future__ import annotations

from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from typing import Any, NamedTuple

from engine.errors import ExpressionError
from engine.run.expressions import check_expression, compile_expression, compile_map
from engine.spec import Batch, ConfigProblem, Inputs, NodeSpec, Outputs, RunContext

__all__ = ["NODES", "MAP", "FILTER", "SELECT"]


def _problem(field: str, exc: ExpressionError) -> ConfigProblem:
    return ConfigProblem(field=field, message=str(exc))


# --------------------------------------------------------------------------- map
MAP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["fields"],
    "properties": {
        "fields": {
            "type": "object",
            "title": "Fields",
            "description": "Field name → expression. An expression may use a field computed "
            "by another one here (it is evaluated after it); an expression that reads its own "
            "field name gets the incoming value. Example: "
            '{"gross": "round(price * markup, 2)", "name": "upper(trim(name))"}.',
            "minProperties": 1,
            "additionalProperties": {"type": "string", "format": "expression", "maxLength": 10000},
            "default": {},
        },
        "objects": {
            "type": "object",
            "title": "Nested fields",
            "description": "Field name → a JSON object or list whose text values are "
            "expressions (other values stay as written), for nested records such as MongoDB "
            'documents. Example: {"address": {"city": "city", "zip": "zip"}, "contacts": '
            '[{"kind": "\'email\'", "value": "email"}]}. Computed after \'fields\', '
            "so they may use fields computed there.",
            # no "type" on the values: the editor shows and parses them as JSON
            "additionalProperties": {"anyOf": [{"type": "object"}, {"type": "array"}]},
            "default": {},
        },
        "keep": {
            "type": "boolean",
            "default": True,
            "title": "Keep other fields",
            "description": "true: records keep all their fields plus the computed ones; "
            "false: records have only the computed fields.",
        },
    },
}


def evaluation_order(fields: dict[str, set[str]]) -> list[str]:
    """Computed fields ordered so each comes after the computed fields it reads.

    Flows are stored with sorted keys, so the order of ``fields`` in the file means
    nothing; dependencies decide. A field reading its own name reads the input value.

    Raises:
        graphlib.CycleError: two computed fields read each other.
    """
    graph = {
        name: {d for d in reads if d in fields and d != name} for name, reads in fields.items()
    }
    return list(TopologicalSorter(graph).static_order())


class _Leaf(NamedTuple):
    """Where a nested field's expression result goes: the temporary field ``name``."""

    name: str


def _object_leaves(name: str, template: Any) -> list[tuple[str, str]]:
    """``(temporary field, expression)`` for every text value inside a nested field;
    the temporary field is the value's path, e.g. ``contacts/0/value``."""
    out: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            out.append((path, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}/{i}")

    walk(template, name)
    return out


def _object_shape(name: str, template: Any) -> Any:
    """The template with each text value replaced by the ``_Leaf`` that fills it."""

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            return _Leaf(path)
        if isinstance(value, dict):
            return {key: walk(item, f"{path}/{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, f"{path}/{i}") for i, item in enumerate(value)]
        return value

    return walk(template, name)


def _fill(shape: Any, record: dict[str, Any]) -> Any:
    if isinstance(shape, _Leaf):
        return record.pop(shape.name)
    if isinstance(shape, dict):
        return {key: _fill(item, record) for key, item in shape.items()}
    if isinstance(shape, list):
        return [_fill(item, record) for item in shape]
    return shape


def check_map(config: dict[str, Any]) -> list[ConfigProblem]:
    problems = []
    reads: dict[str, set[str]] = {}
    for name, text in config.get("fields", {}).items():
        try:
            check_expression(text)
            reads[name] = set(compile_expression(text).fields)
        except ExpressionError as exc:
            problems.append(_problem(f"fields.{name}", exc))
    for name, template in (config.get("objects") or {}).items():
        if name in config.get("fields", {}):
            problems.append(ConfigProblem(f"objects.{name}", f"{name!r} is in 'fields' too"))
        for path, text in _object_leaves(name, template):
            try:
                check_expression(text)
            except ExpressionError as exc:
                problems.append(_problem(f"objects.{path.replace('/', '.')}", exc))
    if not problems:
        try:
            evaluation_order(reads)
        except CycleError as exc:
            names = " → ".join(exc.args[1])
            problems.append(ConfigProblem("fields", f"computed fields read each other: {names}"))
    return problems


def map_fields(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Compute fields per record; a record whose expression fails is rejected, not lost."""
    fields: dict[str, str] = config["fields"]
    reads = {
        name: set(compile_expression(text, params=ctx.params).fields)
        for name, text in fields.items()
    }
    order = evaluation_order(reads)
    assignments = [(name, fields[name]) for name in order]
    # nested fields: each text value is computed into a temporary field (named by its
    # path, so an error names it), then the temporaries are folded into the object
    objects = config.get("objects") or {}
    shapes = [(name, _object_shape(name, template)) for name, template in objects.items()]
    for name, template in objects.items():
        assignments.extend(_object_leaves(name, template))
    mapper = compile_map(assignments, params=ctx.params, keep=config["keep"])

    def stream() -> Iterator[Batch]:
        for batch in inputs["in"]:
            out = mapper.map_batch(batch, ctx.reject)
            for record in out if shapes else ():
                for name, shape in shapes:
                    record[name] = _fill(shape, record)
            ctx.progress(len(batch))
            yield out

    return {"out": stream()}


MAP = NodeSpec(
    type="transform.map",
    title="Map fields",
    category="transform",
    description="Computes fields from expressions (e.g. price * markup, upper(name)), "
    "and nested objects and lists whose values are expressions. Run params can be used by "
    "name.",
    inputs=("in",),
    outputs=("out",),
    config_schema=MAP_SCHEMA,
    check=check_map,
    run=map_fields,
)

# --------------------------------------------------------------------------- filter
FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["condition"],
    "properties": {
        "condition": {
            "type": "string",
            "format": "expression",
            "maxLength": 10000,
            "title": "Condition",
            "description": "Records for which this expression is true pass; "
            "e.g. qty > 0 and status != 'storniert'.",
        },
    },
}


def check_filter(config: dict[str, Any]) -> list[ConfigProblem]:
    try:
        check_expression(config.get("condition", ""))
    except ExpressionError as exc:
        return [_problem("condition", exc)]
    return []


def filter_records(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Keep the records whose condition is true."""
    condition = compile_expression(config["condition"], params=ctx.params)

    def stream() -> Iterator[Batch]:
        for batch in inputs["in"]:
            out = []
            append = out.append
            for record in batch:
                try:
                    if condition(record):
                        append(record)
                except ExpressionError as exc:
                    ctx.reject(record, f"condition: {exc}")
            ctx.progress(len(batch))
            yield out

    return {"out": stream()}


FILTER = NodeSpec(
    type="transform.filter",
    title="Filter",
    category="transform",
    description="Passes the records for which the condition is true.",
    inputs=("in",),
    outputs=("out",),
    config_schema=FILTER_SCHEMA,
    check=check_filter,
    run=filter_records,
)

# --------------------------------------------------------------------------- select
SELECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["fields"]}, {"required": ["rename"]}],
    "properties": {
        "fields": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "title": "Fields",
            "description": "Keep only these fields, in this order (before renaming).",
        },
        "rename": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1},
            "title": "Rename",
            "description": 'Old name → new name, e.g. {"Artikelnummer": "sku"}.',
        },
        "missing": {
            "type": "string",
            "enum": ["error", "null"],
            "default": "error",
            "title": "Missing fields",
            "description": "error: a record without a selected field is rejected; "
            "null: the field is set to null.",
        },
    },
}


def select_fields(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Project and rename fields, keeping their order."""
    fields: list[str] | None = config.get("fields")
    rename: dict[str, str] = config.get("rename") or {}
    strict = config["missing"] == "error"

    def reshape(record: dict[str, Any]) -> dict[str, Any]:
        if fields is not None:
            if strict:
                missing = [f for f in fields if f not in record]
                if missing:
                    raise KeyError(
                        f"missing field {missing[0]!r} (fields: {', '.join(map(str, record))})"
                    )
            record = {f: record.get(f) for f in fields}
        if rename:
            record = {rename.get(k, k): v for k, v in record.items()}
        return record

    def stream() -> Iterator[Batch]:
        for batch in inputs["in"]:
            out = []
            for record in batch:
                try:
                    out.append(reshape(record))
                except KeyError as exc:
                    ctx.reject(record, exc.args[0])
            ctx.progress(len(batch))
            yield out

    return {"out": stream()}


SELECT = NodeSpec(
    type="transform.select",
    title="Select / rename fields",
    category="transform",
    description="Keeps the listed fields (in order) and/or renames fields.",
    inputs=("in",),
    outputs=("out",),
    config_schema=SELECT_SCHEMA,
    run=select_fields,
)

NODES = (MAP, FILTER, SELECT)
