"""The node reference (docs/nodes.md), generated from the node specs: never written twice."""

from __future__ import annotations

import json
from typing import Any

from engine.flows.registry import Registry

__all__ = ["render_markdown"]


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def _type_of(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if prop.get("format"):
        kind += f" ({prop['format']})"
    return kind


def render_markdown(registry: Registry) -> str:
    """Markdown for every node type: ports, then one table row per config key."""
    lines = [
        "# Node reference",
        "",
        "Generated from the node specs by `flowmill nodes --markdown > docs/nodes.md`; "
        "a test fails when this file is out of date.",
        "",
        "Every node also has an `error` output and the common config keys `on_error`, "
        "`retries`, `retry_delay` and `timeout` (see [flow-format.md](flow-format.md)).",
        "",
    ]
    for spec in registry:
        schema = spec.config_schema
        required = set(schema.get("required", []))
        lines += [
            f"## `{spec.type}` — {spec.title}",
            "",
            spec.description,
            "",
            f"- category: {spec.category}, version {spec.version}"
            + (", trigger" if spec.trigger else "")
            + (" (listened for by `flowmill serve`)" if spec.listen else ""),
            f"- inputs: {', '.join(f'`{p}`' for p in spec.inputs) or 'none'}"
            + (
                f" (optional: {', '.join(p for p in spec.inputs if p not in spec.required)})"
                if set(spec.inputs) - set(spec.required)
                else ""
            ),
            f"- outputs: {', '.join(f'`{p}`' for p in spec.all_outputs)}",
            "",
        ]
        props = schema.get("properties", {})
        if props:
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
            for key, prop in props.items():
                name = f"`{key}`" + (" (required)" if key in required else "")
                default = f"`{_cell(prop['default'])}`" if "default" in prop else ""
                about = " — ".join(x for x in (prop.get("title"), prop.get("description")) if x)
                lines.append(f"| {name} | {_type_of(prop)} | {default} | {_cell(about)} |")
            lines.append("")
    kinds = registry.connection_types()
    if kinds:
        lines += [
            "# Connection types",
            "",
            "Nodes name a stored connection (`flowmill connection add NAME …`); "
            "`flowmill connection test NAME` reaches the server and logs in. A connection's "
            "kind is its `type` setting, or recognised from its settings.",
            "",
            "| type | what | settings |",
            "|---|---|---|",
        ]
        for kind in kinds:
            lines.append(f"| `{kind.kind}` | {_cell(kind.title)} | {_cell(kind.description)} |")
    return "\n".join(lines).rstrip() + "\n"
