"""Which run store an installation gets: the one place that knows the implementations.

``engine.store.interface`` defines ``RunStore`` and never imports what implements it; the
callers that open a store come here.
"""

from __future__ import annotations

from pathlib import Path

from engine.store.interface import RunStore
from engine.store.memory import MemoryRunStore
from engine.store.secrets import SecretBox
from engine.store.sql import SqlRunStore

__all__ = ["open_store"]


def open_store(url: str | None, data_dir: Path) -> RunStore:
    """Open (and migrate) the store the server is configured with.

    ``url`` None is the default SQLite file ``data_dir/flowmill.db``; ``"memory"`` is a
    MemoryRunStore; anything else is a SQLAlchemy URL (``postgresql+psycopg://…``,
    ``mysql+pymysql://…``). SQL stores run Alembic ``upgrade head`` before returning and
    encrypt connections and secrets with the key from ``engine.store.secrets`` (env
    ``FLOWMILL_SECRET_KEY`` or ``data_dir/secret.key``).
    """
    data_dir = Path(data_dir)
    if url == "memory":
        return MemoryRunStore()
    if url is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{data_dir / 'flowmill.db'}"
    return SqlRunStore(url, SecretBox(data_dir))
