"""Alembic environment of the run store.

Flowmill runs migrations itself (``engine.store.sql.upgrade``) and hands the open
connection over in ``config.attributes["connection"]``; no alembic.ini is needed. The
``sqlalchemy.url`` fallback and offline mode are for operators who want to run or review
the SQL by hand.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from engine.store.tables import VERSION_TABLE, metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        **kwargs,
    )


def run_migrations() -> None:
    config = context.config
    if context.is_offline_mode():
        _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database: call engine.store.sql.upgrade(engine) or set sqlalchemy.url"
        )
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


def _migrate(connection: sa.Connection) -> None:
    # SQLite cannot ALTER most things: later migrations go through batch mode there.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
