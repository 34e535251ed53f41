"""Small argument helpers shared by the ``flowmill`` commands."""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import FlowmillError

__all__ = ["pairs"]


def pairs(items: Sequence[str], what: str) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; names the option when an item has no ``=``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlowmillError(f"{what}: {item!r} must look like NAME=VALUE")
        out[key.strip()] = value
    return out
