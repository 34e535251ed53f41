"""Settings: ``flowmill.toml`` in the data directory, overridden by ``FLOWMILL_*`` variables.

The data directory is, in this order: the ``--data-dir`` option, ``FLOWMILL_DATA_DIR``,
``$XDG_DATA_HOME/flowmill`` (usually ``~/.local/share/flowmill``). Every setting is
declared once in ``SETTINGS`` (attribute, TOML section and key, environment variables,
type, default); docs/operations.md lists them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import FlowmillError

__all__ = ["Settings", "ConfigError", "default_data_dir", "SETTINGS"]


class ConfigError(FlowmillError):
    """A setting in flowmill.toml or the environment is wrong; names the key and file."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("FLOWMILL_DATA_DIR"):
        return Path(env["FLOWMILL_DATA_DIR"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "flowmill"


@dataclass(frozen=True)
class Setting:
    attr: str
    section: str
    key: str
    env: tuple[str, ...]
    kind: type
    choices: tuple[str, ...] = ()
    minimum: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("store_url", "store", "url", ("FLOWMILL_DATABASE_URL", "FLOWMILL_STORE_URL"), str),
    Setting("batch_size", "engine", "batch_size", ("FLOWMILL_BATCH_SIZE",), int, minimum=1),
    Setting("queue_depth", "engine", "queue_depth", ("FLOWMILL_QUEUE_DEPTH",), int, minimum=1),
    Setting("max_running", "scheduler", "max_running", ("FLOWMILL_MAX_RUNNING",), int, minimum=1),
    Setting("executor", "scheduler", "executor", ("FLOWMILL_EXECUTOR",), str, ("local", "celery")),
    Setting(
        "heartbeat_interval",
        "scheduler",
        "heartbeat_interval",
        ("FLOWMILL_HEARTBEAT_INTERVAL",),
        float,
        minimum=0.05,
    ),
    Setting(
        "heartbeat_timeout",
        "scheduler",
        "heartbeat_timeout",
        ("FLOWMILL_HEARTBEAT_TIMEOUT",),
        float,
        minimum=0.1,
    ),
    Setting(
        "lease_timeout",
        "scheduler",
        "lease_timeout",
        ("FLOWMILL_LEASE_TIMEOUT",),
        float,
        minimum=0.1,
    ),
    Setting(
        "poll_interval",
        "scheduler",
        "poll_interval",
        ("FLOWMILL_POLL_INTERVAL",),
        float,
        minimum=0.01,
    ),
    Setting("kill_grace", "scheduler", "kill_grace", ("FLOWMILL_KILL_GRACE",), float, minimum=0),
    Setting("stop_grace", "scheduler", "stop_grace", ("FLOWMILL_STOP_GRACE",), float, minimum=0),
    Setting("broker_url", "celery", "broker", ("FLOWMILL_BROKER_URL",), str),
    Setting("celery_queue", "celery", "queue", ("FLOWMILL_CELERY_QUEUE",), str),
    Setting(
        "celery_visibility_timeout",
        "celery",
        "visibility_timeout",
        ("FLOWMILL_CELERY_VISIBILITY_TIMEOUT",),
        float,
        minimum=1,
    ),
    Setting("flows_dir", "flows", "dir", ("FLOWMILL_FLOWS_DIR",), str),
)
# Issue 2 documented these at the top level; they keep working.
_LEGACY = {"store_url": "store_url", "batch_size": "batch_size", "queue_depth": "queue_depth"}


@dataclass
class Settings:
    """Everything a Flowmill process is configured with."""

    data_dir: Path
    store_url: str | None = None  # None: SQLite file DATA/flowmill.db
    batch_size: int = 1000
    queue_depth: int = 4
    max_running: int = 4
    executor: str = "local"
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 15.0
    lease_timeout: float = 10.0
    poll_interval: float = 0.2
    kill_grace: float = 5.0
    stop_grace: float = 60.0
    broker_url: str | None = None
    celery_queue: str = "flowmill"
    celery_visibility_timeout: float = 6 * 3600.0  # must exceed the longest job
    flows_dir: str | None = None  # None: DATA/flows
    pools: dict[str, int] = field(default_factory=dict)  # [pools] erp = 2
    flow_limits: dict[str, int] = field(default_factory=dict)  # [flow_limits] prices = 1

    @property
    def flows_path(self) -> Path:
        return Path(self.flows_dir).expanduser() if self.flows_dir else self.data_dir / "flows"

    @classmethod
    def load(
        cls, data_dir: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Read ``DATA/flowmill.toml`` (if any), then apply the environment variables.

        Raises:
            ConfigError: naming the file or variable and the key.
        """
        env = os.environ if env is None else env
        root = Path(data_dir).expanduser() if data_dir else default_data_dir(env)
        toml_path = root / "flowmill.toml"
        doc: dict[str, Any] = {}
        if toml_path.is_file():
            try:
                doc = tomllib.loads(toml_path.read_text("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{toml_path}: {exc}") from None
        settings = cls(data_dir=root)
        by_section: dict[str, dict[str, Setting]] = {}
        for s in SETTINGS:
            by_section.setdefault(s.section, {})[s.key] = s
        for name, value in doc.items():
            if name in ("pools", "flow_limits"):
                setattr(settings, name, _limits(toml_path, name, value))
            elif isinstance(value, dict) and name in by_section:
                for key, item in value.items():
                    setting = by_section[name].get(key)
                    if setting is None:
                        known = ", ".join(by_section[name])
                        raise ConfigError(
                            f"{toml_path}: unknown setting [{name}] {key} (known: {known})"
                        )
                    _apply(settings, setting, item, f"{toml_path}: [{name}] {key}")
            elif name in _LEGACY:
                setting = next(s for s in SETTINGS if s.attr == _LEGACY[name])
                _apply(settings, setting, value, f"{toml_path}: {name}")
            else:
                sections = ", ".join(sorted([*by_section, "pools", "flow_limits"]))
                raise ConfigError(f"{toml_path}: unknown setting {name!r} (sections: {sections})")
        for setting in SETTINGS:
            for var in setting.env:
                if env.get(var):
                    _apply(settings, setting, env[var], f"environment variable {var}")
                    break
        return settings


def _apply(settings: Settings, setting: Setting, value: Any, where: str) -> None:
    try:
        if setting.kind is int:
            if isinstance(value, bool):
                raise ValueError("not a number")
            value = int(value)
        elif setting.kind is float:
            if isinstance(value, bool):
                raise ValueError("not a number")
            value = float(value)
        else:
            value = str(value)
        if setting.minimum is not None and value < setting.minimum:
            raise ValueError(f"must be at least {setting.minimum}")
        if setting.choices and value not in setting.choices:
            raise ValueError(f"must be one of {', '.join(setting.choices)}")
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not valid ({exc})") from None
    setattr(settings, setting.attr, value)


def _limits(path: Path, name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value.values()
    ):
        raise ConfigError(f"{path}: [{name}] must map names to limits of at least 1")
    return {str(k): int(v) for k, v in value.items()}
