"""Which completed files start which flows: the rule of ``trigger.file_drop`` nodes.

A pure function of the node's config and the file's record, shared by the node (its
documentation and checks) and the file-drop dispatcher of ``flowmill serve``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["SOURCES", "matches"]

SOURCES = ("any", "ftps", "webdav", "local")


def matches(config: dict[str, Any], record: dict[str, Any]) -> bool:
    """Does a completed file (its trigger record) start a flow with this node config?"""
    source = config.get("source", "any")
    if source == "local":
        if record.get("source") != "local":
            return False
        folder = Path(str(config.get("folder", ""))).resolve()
        return Path(record["path"]).parent == folder and _name_matches(config, record)
    if record.get("source") not in (("ftps", "webdav") if source == "any" else (source,)):
        return False
    if config.get("user") and record.get("user") != config["user"]:
        return False
    wanted = str(config.get("folder", "")).strip("/")
    parent = str(PurePosixPath(record["name"]).parent).strip("/").removeprefix(".")
    return parent == wanted and _name_matches(config, record)


def _name_matches(config: dict[str, Any], record: dict[str, Any]) -> bool:
    return fnmatch.fnmatchcase(PurePosixPath(record["name"]).name, config.get("pattern", "*"))
