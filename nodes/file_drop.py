"""``trigger.file_drop``: a flow that starts when a file arrives.

The node only declares *which* files; the file-drop dispatcher of ``flowmill serve``
(servers/dispatch.py) matches each completed upload (FTPS, WebDAV) or closed file in a
watched local folder against the enabled flows' nodes and queues one job per match. In
the run, the node outputs one record: ``{path, name, size, user, source, received_at,
sha256}``. Run by hand, give the param ``path`` (a file on the server, or a glob pattern
that matches exactly one file) instead.
"""

from __future__ import annotations

import glob
import hashlib
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from engine.batch.filedrops import SOURCES
from engine.errors import NodeError
from engine.flows.params import TRIGGER_PARAM
from engine.spec import ConfigProblem, Inputs, NodeSpec, Outputs, RunContext

__all__ = ["FILE_DROP", "NODES"]

FILE_DROP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["folder"],
    "properties": {
        "source": {
            "type": "string",
            "enum": list(SOURCES),
            "default": "any",
            "title": "Source",
            "description": "ftps or webdav: uploads to the bundled servers; local: a folder "
            "on the server; any: ftps and webdav.",
        },
        "folder": {
            "type": "string",
            "title": "Folder",
            "description": "ftps/webdav/any: a folder inside each drop user's home, e.g. 'in' "
            "(uploads to /in/); local: an absolute folder on the server.",
        },
        "pattern": {
            "type": "string",
            "default": "*",
            "title": "File name pattern",
            "description": "Glob on the file name, e.g. '*.csv' (case-sensitive).",
        },
        "user": {
            "type": "string",
            "title": "Only from user",
            "description": "Only uploads of this drop user (default: every drop user).",
        },
        "after": {
            "type": "string",
            "enum": ["keep", "move", "delete"],
            "default": "keep",
            "title": "Afterwards",
            "description": "keep the file; move it to processed/ or failed/ (by the job's "
            "outcome) beside it; or delete it once the job succeeded.",
        },
        "duplicates": {
            "type": "string",
            "enum": ["run", "skip"],
            "default": "run",
            "title": "Same content again",
            "description": "run: every upload starts a job; skip: a file whose sha256 already "
            "started a job of this flow starts none.",
        },
    },
}


def check_file_drop(config: dict[str, Any]) -> list[ConfigProblem]:
    problems = []
    folder = str(config.get("folder", ""))
    source = config.get("source", "any")
    if source == "local":
        if not Path(folder).is_absolute():
            problems.append(ConfigProblem("folder", "a local folder must be an absolute path"))
    elif folder.startswith("/") and folder.strip("/") == "":
        pass  # the home itself
    elif ".." in PurePosixPath(folder).parts:
        problems.append(ConfigProblem("folder", "must stay inside the user's home (no '..')"))
    if "/" in str(config.get("pattern", "*")):
        problems.append(ConfigProblem("pattern", "matches file names only: no '/'"))
    return problems


def file_drop(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """The dropped file's record (or, run by hand, one for the file named by ``path``)."""
    record = ctx.params.get(TRIGGER_PARAM)
    if record is None:
        given = ctx.params.get("path")
        if not given:
            raise NodeError(
                ctx.node_id,
                "no dropped file: this flow starts when a file arrives; to run it by hand, "
                "declare a param 'path' and give the file",
                ctx.node_type,
            )
        path = _one_file(ctx, Path(str(given)))
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        record = {
            "path": str(path.resolve()),
            "name": path.name,
            "size": path.stat().st_size,
            "user": None,
            "source": "manual",
            "received_at": datetime.now(UTC).isoformat(),
            "sha256": digest.hexdigest(),
        }
    return {"out": iter([[dict(record)]])}


def _one_file(ctx: RunContext, path: Path) -> Path:
    """The file named by the param ``path``; a glob pattern must match exactly one file
    (so a default such as ``invoices/rechnung-*.csv`` needs no date in it)."""
    if path.is_file() or not glob.has_magic(str(path)):
        if not path.is_file():
            raise NodeError(ctx.node_id, f"param path: {path} is not a file", ctx.node_type)
        return path
    found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if len(found) != 1:
        listed = ", ".join(p.name for p in found[:5]) or "none"
        raise NodeError(
            ctx.node_id,
            f"param path: {path} must match exactly one file, matches {len(found)} "
            f"({listed}): give the file itself",
            ctx.node_type,
        )
    return found[0]


FILE_DROP = NodeSpec(
    type="trigger.file_drop",
    title="File drop",
    category="trigger",
    description="Starts a run for each file uploaded by FTPS or WebDAV (or closed in a "
    "local folder) that matches folder and pattern. Outputs one record: path, name, size, "
    "user, source, received_at, sha256.",
    outputs=("out",),
    config_schema=FILE_DROP_SCHEMA,
    trigger=True,
    check=check_file_drop,
    run=file_drop,
)

NODES = (FILE_DROP,)
