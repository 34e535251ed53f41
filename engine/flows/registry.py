"""The node registry: which node types exist, found through the ``flowmill.nodes`` entry points.

Each entry point names a module that defines ``NODES`` (a sequence of ``NodeSpec``) and,
optionally, ``CONNECTION_TYPES`` (a sequence of ``ConnectionType``). The
built-in nodes are found the same way as third-party plugins, so a plugin needs no change
to Flowmill. Two modules declaring the same type is an error naming both.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from engine.errors import DuplicateNodeType, NodeTypeError, UnknownNodeType
from engine.spec import ConnectionType, NodeSpec

__all__ = ["ENTRY_POINT_GROUP", "Registry"]

ENTRY_POINT_GROUP = "flowmill.nodes"


class Registry:
    """Node types by type id, with the module each came from."""

    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._modules: dict[str, str] = {}
        self._connection_types: dict[str, ConnectionType] = {}

    def add(self, spec: NodeSpec, module: str = "<code>") -> None:
        """Register one node type.

        Raises:
            DuplicateNodeType: when ``spec.type`` is already registered (names both modules).
        """
        if not isinstance(spec, NodeSpec):
            raise NodeTypeError(f"{module}: NODES holds {spec!r}, which is not a NodeSpec")
        if spec.type in self._specs:
            raise DuplicateNodeType(spec.type, self._modules[spec.type], module)
        self._specs[spec.type] = spec
        self._modules[spec.type] = module

    def add_module(self, module_name: str) -> None:
        """Import a module and register every NodeSpec in its ``NODES``."""
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise NodeTypeError(f"cannot import node module {module_name}: {exc}") from exc
        specs = getattr(module, "NODES", None)
        if specs is None:
            raise NodeTypeError(f"node module {module_name} defines no NODES")
        for spec in specs:
            self.add(spec, module_name)
        for kind in getattr(module, "CONNECTION_TYPES", ()):
            self.add_connection_type(kind, module_name)

    def add_connection_type(self, kind: ConnectionType, module: str = "<code>") -> None:
        if not isinstance(kind, ConnectionType):
            raise NodeTypeError(f"{module}: CONNECTION_TYPES holds {kind!r}, not a ConnectionType")
        if kind.kind in self._connection_types:
            raise NodeTypeError(
                f"connection type {kind.kind!r} is declared twice (again in {module})"
            )
        self._connection_types[kind.kind] = kind

    def connection_types(self) -> list[ConnectionType]:
        return sorted(self._connection_types.values(), key=lambda k: k.kind)

    def connection_type_of(self, settings: dict[str, Any]) -> ConnectionType | None:
        """The declared ``type`` of a connection's settings, else the one that recognises them."""
        declared = settings.get("type")
        if isinstance(declared, str):
            return self._connection_types.get(declared)
        for kind in self.connection_types():
            if kind.detect is not None and kind.detect(settings):
                return kind
        return None

    @classmethod
    def from_modules(cls, module_names: Iterable[str]) -> Registry:
        registry = cls()
        for name in module_names:
            registry.add_module(name)
        return registry

    @classmethod
    def discover(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        """Every node module announced by installed distributions under ``group``."""
        names = sorted({ep.value for ep in entry_points(group=group)})
        return cls.from_modules(names)

    def get(self, node_type: str) -> NodeSpec:
        try:
            return self._specs[node_type]
        except KeyError:
            raise UnknownNodeType(node_type) from None

    def module_of(self, node_type: str) -> str:
        return self._modules[node_type]

    def __contains__(self, node_type: object) -> bool:
        return node_type in self._specs

    def __iter__(self) -> Iterator[NodeSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.type))

    def __len__(self) -> int:
        return len(self._specs)

    def catalog(self) -> list[dict[str, Any]]:
        """JSON-able list of node types, sorted by type; the editor renders forms from it."""
        return [{**spec.to_catalog(), "module": self._modules[spec.type]} for spec in self]
