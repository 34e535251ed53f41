"""The one flow validation used by the CLI, the API and the editor.

``validate_flow`` never stops at the first problem: it returns every issue as
``{node, field, message}`` so the editor can mark each node. Checks, in order: the
``flowmill/1`` JSON schema, duplicate node ids, unknown node types, each node's config
against its JSON Schema, the node's own static checks (e.g. expressions), placeholders,
edges (dangling ends, unknown ports), required inputs connected, and cycles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import networkx as nx

from engine.flows.params import BUILTIN_PLACEHOLDERS, param_defaults, placeholders_in, substitute
from engine.flows.registry import Registry
from engine.spec import ERROR_PORT

__all__ = ["ValidationIssue", "validate_flow", "flow_schema", "config_issues"]


@dataclass(frozen=True)
class ValidationIssue:
    """One problem: the node it is on (None for the flow), the config field, the message."""

    node: str | None
    field: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"node {self.node}: " if self.node else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


@cache
def flow_schema() -> dict[str, Any]:
    """The JSON schema of the ``flowmill/1`` format (shipped with the package)."""
    text = resources.files("engine.flows").joinpath("schemas/flow.schema.json").read_text("utf-8")
    return json.loads(text)


@cache
def _flow_validator() -> jsonschema.protocols.Validator:
    schema = flow_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _path_text(path: Any) -> str:
    return ".".join(str(p) for p in path)


def _schema_issues(flow: dict[str, Any]) -> list[ValidationIssue]:
    issues = []
    nodes = flow.get("nodes") if isinstance(flow.get("nodes"), list) else []
    for err in sorted(_flow_validator().iter_errors(flow), key=lambda e: list(e.path)):
        path = list(err.absolute_path)
        node = None
        if len(path) >= 2 and path[0] == "nodes" and isinstance(path[1], int):
            raw = nodes[path[1]] if path[1] < len(nodes) else None
            node = str(raw.get("id")) if isinstance(raw, dict) and raw.get("id") else None
            node = node or f"nodes[{path[1]}]"
            path = path[2:]
        issues.append(ValidationIssue(node, _path_text(path) or None, err.message))
    return issues


def config_issues(
    node_id: str, config: dict[str, Any], schema: dict[str, Any]
) -> list[ValidationIssue]:
    """Problems of one node's config against its (full) JSON Schema."""
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=None)
    issues = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.path)):
        field = _path_text(err.absolute_path)
        if not field and err.validator == "required":
            # name the missing key as the field so the editor marks the right input
            missing = err.message.split("'")[1] if "'" in err.message else None
            field = missing or ""
        if not field and err.validator == "additionalProperties":
            field = ""
        issues.append(ValidationIssue(node_id, field or None, err.message))
    return issues


def validate_flow(flow: Any, registry: Registry) -> list[ValidationIssue]:
    """Every problem in ``flow``; an empty list means the flow can run.

    >>> validate_flow({"format": "flowmill/1", "id": "empty", "nodes": [], "edges": []},
    ...               Registry())
    []
    """
    if not isinstance(flow, dict):
        return [ValidationIssue(None, None, "a flow must be a JSON object")]
    issues = _schema_issues(flow)
    if issues:
        # the document's shape is wrong: deeper checks would only repeat the same problem
        return issues

    params = param_defaults(flow)
    known_placeholders = set(params) | set(BUILTIN_PLACEHOLDERS)
    for name, default in params.items():
        for unknown in sorted(placeholders_in(default) - set(BUILTIN_PLACEHOLDERS)):
            issues.append(
                ValidationIssue(
                    None,
                    f"params.{name}.default",
                    f"unknown placeholder ${{{unknown}}} (a param default may use only "
                    f"the built-ins: {', '.join(BUILTIN_PLACEHOLDERS)})",
                )
            )
    specs = {}
    seen: set[str] = set()
    for node in flow["nodes"]:
        node_id = node["id"]
        if node_id in seen:
            issues.append(ValidationIssue(node_id, "id", f"duplicate node id {node_id!r}"))
            continue
        seen.add(node_id)
        if node["type"] not in registry:
            known = ", ".join(s.type for s in registry)
            issues.append(
                ValidationIssue(
                    node_id, "type", f"unknown node type {node['type']!r} (known: {known})"
                )
            )
            continue
        spec = registry.get(node["type"])
        specs[node_id] = spec
        config = node.get("config", {})
        for name in sorted(placeholders_in(config) - known_placeholders):
            issues.append(
                ValidationIssue(
                    node_id,
                    None,
                    f"unknown placeholder ${{{name}}} (params: "
                    f"{', '.join(sorted(params)) or 'none'}; built-ins: "
                    f"{', '.join(BUILTIN_PLACEHOLDERS)})",
                )
            )
        schema = spec.full_schema()
        # check the config as it will look at run time: param defaults in, secrets masked
        probe = substitute(
            config, schema, {**{k: v for k, v in params.items() if v is not None}}, lambda _: "***"
        )
        found = config_issues(node_id, probe, schema)
        issues.extend(found)
        if spec.check is not None and not found:
            for problem in spec.check(spec.with_defaults(config)):
                issues.append(ValidationIssue(node_id, problem.field, problem.message))

    graph = nx.MultiDiGraph()
    graph.add_nodes_from(specs)
    connected: set[tuple[str, str]] = set()
    for index, edge in enumerate(flow["edges"]):
        src, dst = edge["source"], edge["target"]
        where = f"edges[{index}]"
        ok = True
        for end, port_key, role in ((src, "source_port", "source"), (dst, "target_port", "target")):
            if end not in seen:
                issues.append(
                    ValidationIssue(None, f"{where}.{role}", f"edge {role} {end!r} is not a node")
                )
                ok = False
                continue
            spec = specs.get(end)
            if spec is None:
                ok = False  # unknown type already reported
                continue
            port = edge[port_key]
            ports = spec.all_outputs if role == "source" else spec.inputs
            if port not in ports:
                kind = "output" if role == "source" else "input"
                listed = ", ".join(ports) or "none"
                issues.append(
                    ValidationIssue(
                        end, port_key, f"unknown {kind} port {port!r} ({kind}s: {listed})"
                    )
                )
                ok = False
        if ok:
            graph.add_edge(src, dst)
            connected.add((dst, edge["target_port"]))
            if edge["source_port"] == ERROR_PORT:
                src_config = next(n for n in flow["nodes"] if n["id"] == src).get("config", {})
                if src_config.get("on_error", "fail") != "route":
                    issues.append(
                        ValidationIssue(
                            src,
                            "on_error",
                            "the 'error' port is wired but on_error is not 'route', "
                            "so no record would ever go there",
                        )
                    )

    for node_id, spec in specs.items():
        for port in spec.required:
            if (node_id, port) not in connected:
                issues.append(
                    ValidationIssue(node_id, f"inputs.{port}", f"input {port!r} is not connected")
                )

    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = []
    if cycle:
        ids = [edge[0] for edge in cycle]
        path = " → ".join([*ids, ids[0]])
        for node_id in ids:
            issues.append(ValidationIssue(node_id, None, f"cycle: {path}"))
    return issues
