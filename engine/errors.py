"""One exception hierarchy for everything Flowmill reports to a user.

Every error names the thing it is about (flow, node, field, file) so the CLI, the API
and the editor can point at it without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "FlowmillError",
    "FlowFormatError",
    "FlowValidationError",
    "NodeTypeError",
    "DuplicateNodeType",
    "UnknownNodeType",
    "ExpressionError",
    "NodeError",
    "RecordError",
    "PermanentError",
    "is_permanent",
    "NodeTimeout",
    "RunCancelled",
    "UpstreamFailed",
    "ConnectionNotFound",
    "SecretNotFound",
]


class FlowmillError(Exception):
    """Base of every error Flowmill raises on purpose."""


class FlowFormatError(FlowmillError):
    """A flow document cannot be read at all (not JSON, too large, forbidden keys)."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class FlowValidationError(FlowmillError):
    """A flow is readable but not valid; carries every problem found, not just the first."""

    def __init__(self, flow_id: str | None, issues: list) -> None:
        lines = "; ".join(str(i) for i in issues[:5])
        more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
        super().__init__(f"flow {flow_id or '?'} is not valid: {lines}{more}")
        self.flow_id = flow_id
        self.issues = issues


class NodeTypeError(FlowmillError):
    """A problem with a node type declaration or its discovery."""


class DuplicateNodeType(NodeTypeError):
    def __init__(self, node_type: str, first_module: str, second_module: str) -> None:
        super().__init__(
            f"node type {node_type!r} is declared twice: in {first_module} and in {second_module}"
        )
        self.node_type = node_type
        self.modules = (first_module, second_module)


class UnknownNodeType(NodeTypeError):
    def __init__(self, node_type: str) -> None:
        super().__init__(f"unknown node type {node_type!r}")
        self.node_type = node_type


class ExpressionError(FlowmillError):
    """An expression is not allowed, does not parse, or failed on a record.

    ``position`` is the 1-based column in the expression text where the problem starts
    (None when the error happened while evaluating).
    """

    def __init__(self, message: str, expression: str = "", position: int | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{message}{where}" + (f" in {expression!r}" if expression else ""))
        self.message = message
        self.expression = expression
        self.position = position


class NodeError(FlowmillError):
    """A node failed while running; the executor attaches node id and type."""

    def __init__(self, node: str, message: str, node_type: str | None = None) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node
        self.node_type = node_type
        self.message = message


class PermanentError(NodeError):
    """A failure that trying again cannot fix: a refused login, an HTTP 4xx, a rejected
    payload. The executor does not retry it, whatever the node's ``retries``."""


def is_permanent(exc: BaseException) -> bool:
    """True if ``exc`` or an exception it was raised from is a ``PermanentError``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PermanentError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class RecordError(NodeError):
    """One record could not be processed and the node's on_error is ``fail``."""


class NodeTimeout(NodeError):
    """A node ran longer than its ``timeout``."""


class RunCancelled(FlowmillError):
    """The run was cancelled; nodes stop between batches."""


class UpstreamFailed(FlowmillError):
    """An input stream ended because the node feeding it failed or was stopped."""


class ConnectionNotFound(FlowmillError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"connection {name!r} is not defined (add it with `flowmill connection add {name} ...`)"
        )
        self.name = name


class SecretNotFound(FlowmillError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"secret {name!r} is not defined (add it with `flowmill secret set {name}`)"
        )
        self.name = name
