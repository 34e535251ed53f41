"""Settings: ``flowmill.toml`` in the data directory, overridden by ``FLOWMILL_*`` variables.

The data directory is, in this order: the ``--data-dir`` option, ``FLOWMILL_DATA_DIR``,
``$XDG_DATA_HOME/flowmill`` (usually ``~/.local/share/flowmill``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.errors import FlowmillError

__all__ = ["Settings", "ConfigError", "default_data_dir"]


class ConfigError(FlowmillError):
    """A setting in flowmill.toml or the environment is wrong; names the key and file."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("FLOWMILL_DATA_DIR"):
        return Path(env["FLOWMILL_DATA_DIR"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "flowmill"


@dataclass
class Settings:
    """Everything a Flowmill process is configured with."""

    data_dir: Path
    store_url: str | None = None  # None: SQLite file DATA/flowmill.db
    batch_size: int = 1000
    queue_depth: int = 4

    @classmethod
    def load(
        cls, data_dir: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Read ``DATA/flowmill.toml`` (if any), then apply ``FLOWMILL_<KEY>`` variables.

        Raises:
            ConfigError: naming the file or variable and the key.
        """
        env = os.environ if env is None else env
        root = Path(data_dir).expanduser() if data_dir else default_data_dir(env)
        values: dict[str, Any] = {}
        toml_path = root / "flowmill.toml"
        if toml_path.is_file():
            try:
                values.update(tomllib.loads(toml_path.read_text("utf-8")))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{toml_path}: {exc}") from None
        known = {f.name: f for f in fields(cls) if f.name != "data_dir"}
        for key in list(values):
            if key not in known:
                raise ConfigError(
                    f"{toml_path}: unknown setting {key!r} (settings: {', '.join(known)})"
                )
        for key in known:
            var = f"FLOWMILL_{key.upper()}"
            if env.get(var):
                values[key] = env[var]
        settings = cls(data_dir=root)
        for key, value in values.items():
            kind = known[key].type
            try:
                if kind == "int" or kind is int:
                    value = int(value)
                    if value < 1:
                        raise ValueError("must be at least 1")
                elif value is not None:
                    value = str(value)
            except ValueError as exc:
                raise ConfigError(f"setting {key!r}: {value!r} is not valid ({exc})") from None
            setattr(settings, key, value)
        return settings
