"""Record templates: config text with ``${record.field}`` (or ``${field}``) placeholders.

The one rule for values that address something (URLs, paths, headers, query values, MQTT
topics, shop item templates): the text is split once, when the node starts, and each
record's field values are inserted as data (an ``encode`` function may escape or refuse
them), never evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PLACEHOLDER", "MissingField", "RecordTemplate"]

PLACEHOLDER = re.compile(r"\$\{(?:record\.)?([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingField(Exception):
    """The record lacks a field the template names."""

    def __init__(self, where: str, name: str) -> None:
        super().__init__(f"{where}: the record has no field {name!r}")


@dataclass(frozen=True)
class RecordTemplate:
    """A config string split once into literal text and record field names.

    ``encode(text)`` turns each inserted value (``None`` as empty text) into what the
    template's target takes, or raises ``ValueError`` to refuse it.
    """

    where: str
    parts: tuple[str, ...]  # literal, field, literal, field, ..., literal
    encode: Callable[[str], str] | None = None

    @classmethod
    def parse(
        cls, where: str, text: str, encode: Callable[[str], str] | None = None
    ) -> RecordTemplate:
        return cls(where, tuple(PLACEHOLDER.split(text)), encode)

    @property
    def fields(self) -> tuple[str, ...]:
        return self.parts[1::2]

    @property
    def literal(self) -> str:
        """The text without its placeholders (for checks of what the user wrote)."""
        return "".join(self.parts[0::2])

    def render(self, record: Mapping[str, Any]) -> str:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            name = parts[i]
            if name not in record:
                raise MissingField(self.where, name)
            value = record[name]
            text = "" if value is None else str(value)
            out.append(self.encode(text) if self.encode else text)
            out.append(parts[i + 1])
        return "".join(out)
