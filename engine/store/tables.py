"""SQLAlchemy Core tables of the run store: the schema the migrations must produce.

``tests/engine/test_store.py`` compares this metadata with the migrated database on every
backend (Alembic autogenerate), so a table changed here without a migration fails a test.
To change the schema: edit this file, then add ``engine/store/migrations/versions/000N_*.py``
(``engine.store.sql.alembic_config()`` works with ``alembic.command.revision``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

from engine.store.interface import as_utc

__all__ = [
    "VERSION_TABLE",
    "metadata",
    "flow_versions",
    "runs",
    "node_runs",
    "run_logs",
    "connections",
    "secrets",
    "jobs",
    "job_log",
    "leases",
    "servers",
    "schedules",
    "calendars",
    "time_conditions",
    "flows",
    "users",
    "api_tokens",
    "trigger_state",
    "UTCDateTime",
]

# Not "alembic_version": the database may be shared with another Alembic-managed app.
VERSION_TABLE = "flowmill_alembic_version"

ID = 200  # ids and names: VARCHAR(200) (MariaDB needs lengths; fits a composite key)

# MariaDB TEXT stops at 64 KB; flow texts, samples and tracebacks can be larger.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

# Case-sensitive, 4-byte UTF-8 on MariaDB, so names compare as on SQLite and PostgreSQL.
MYSQL_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite and MariaDB have no zone, so UTC is stored
    naive and the zone put back on reading. MariaDB gets DATETIME(6): plain DATETIME drops
    the microseconds.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


flow_versions = sa.Table(
    "flow_versions",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("flow_id", sa.String(ID), nullable=False),
    sa.Column("text", LongText, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_flow_versions_flow_id_created_at", "flow_id", "created_at"),
    **MYSQL_OPTIONS,
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(ID), primary_key=True),
    sa.Column("flow_id", sa.String(ID), nullable=False),
    sa.Column("flow_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("params", LongText, nullable=False),  # JSON
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("error", LongText, nullable=True),
    sa.Column("error_node", sa.String(ID), nullable=True),
    # Counters on the run row: bumping them locks the row, which serialises writers of one
    # run and hands out gap-free log seqs and node positions on every backend.
    sa.Column("node_seq", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("log_seq", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Index("ix_runs_flow_id_started_at", "flow_id", "started_at"),
    sa.Index("ix_runs_started_at", "started_at"),
    **MYSQL_OPTIONS,
)

node_runs = sa.Table(
    "node_runs",
    metadata,
    sa.Column(
        "run_id",
        sa.String(ID),
        sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("node_id", sa.String(ID), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # order of first save
    sa.Column("node_type", sa.String(ID), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("seconds", sa.Double(), nullable=True),
    sa.Column("records_in", LongText, nullable=False),  # JSON {port: count}
    sa.Column("records_out", LongText, nullable=False),  # JSON {port: count}
    sa.Column("sample", LongText, nullable=False),  # JSON {port: [record, …]}
    sa.Column("last", LongText, nullable=True),  # JSON {port: last record}
    sa.Column("error", LongText, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("status", LongText, nullable=True),
    **MYSQL_OPTIONS,
)

run_logs = sa.Table(
    "run_logs",
    metadata,
    sa.Column(
        "run_id",
        sa.String(ID),
        sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("node_id", sa.String(ID), nullable=True),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("level", sa.String(20), nullable=False),
    sa.Column("message", LongText, nullable=False),
    sa.Index("ix_run_logs_run_id_node_id_seq", "run_id", "node_id", "seq"),
    **MYSQL_OPTIONS,
)

connections = sa.Table(
    "connections",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),
    sa.Column("ciphertext", LongText, nullable=False),  # Fernet token of the settings JSON
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),
    sa.Column("ciphertext", LongText, nullable=False),  # Fernet token of the value
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)


# -- batch server (migration 0002) ----------------------------------------------------------

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_id", sa.String(ID), nullable=False),
    sa.Column("flow_hash", sa.String(64), nullable=False),
    sa.Column("params", LongText, nullable=False),  # JSON
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("submitted_at", UTCDateTime(), nullable=False),
    sa.Column("not_before", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),  # not_before + max_delay
    sa.Column("max_delay", sa.Double(), nullable=True),  # seconds
    sa.Column("group_name", sa.String(ID), nullable=True),
    sa.Column("group_pos", sa.Integer, nullable=True),
    sa.Column("pool", sa.String(ID), nullable=True),
    sa.Column("time_condition", sa.String(ID), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(ID), nullable=True),
    sa.Column("worker", sa.String(ID), nullable=True),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("kill_requested", sa.Boolean(), nullable=False),
    sa.Column("error", LongText, nullable=True),
    sa.Column("error_node", sa.String(ID), nullable=True),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Column("schedule", sa.String(ID), nullable=True),
    sa.Column("flow_dir", LongText, nullable=True),  # ${flow_dir}: folder of the flow file
    sa.Column("deliveries", sa.Integer, nullable=False, default=0),  # Celery message deliveries
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index("ix_jobs_group_name_group_pos", "group_name", "group_pos"),
    **MYSQL_OPTIONS,
)

# the claim order (priority DESC, submitted_at, id) straight from the index, no sort
sa.Index(
    "ix_jobs_claim_order", jobs.c.state, jobs.c.priority.desc(), jobs.c.submitted_at, jobs.c.id
)

job_log = sa.Table(
    "job_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("message", LongText, nullable=False),
    sa.Index("ix_job_log_job_id_id", "job_id", "id"),
    **MYSQL_OPTIONS,
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),
    sa.Column("holder", sa.String(ID), nullable=False),
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)

servers = sa.Table(
    "servers",
    metadata,
    sa.Column("id", sa.String(ID), primary_key=True),
    sa.Column("host", sa.String(ID), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.String(20), nullable=False),  # active | standby | stopped
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),
    sa.Column("flow_id", sa.String(ID), nullable=False),
    sa.Column("spec", LongText, nullable=False),  # JSON: cron/every, tz, calendar, condition…
    sa.Column("params", LongText, nullable=False),  # JSON
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("last_fire", UTCDateTime(), nullable=True),
    sa.Column("next_fire", UTCDateTime(), nullable=True),
    sa.Column("error", LongText, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)

calendars = sa.Table(
    "calendars",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),
    sa.Column("holidays", sa.String(ID), nullable=True),  # "DE-BY"
    sa.Column("exclusions", LongText, nullable=False),  # JSON list of ISO dates
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)

time_conditions = sa.Table(
    "time_conditions",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),
    sa.Column("windows", LongText, nullable=False),  # JSON {"workday": "06:00-20:00", …}
    sa.Column("calendar", sa.String(ID), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)

flows = sa.Table(
    "flows",
    metadata,
    sa.Column("id", sa.String(ID), primary_key=True),
    sa.Column("name", sa.String(ID), nullable=True),
    sa.Column("flow_hash", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("source", LongText, nullable=True),  # file it was imported from
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)


# -- users and API tokens (migration 0003) --------------------------------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(ID), primary_key=True),  # ^[a-z0-9_.-]{1,64}$
    sa.Column("password_hash", sa.String(ID), nullable=False),  # scrypt$n$r$p$salt$hash
    sa.Column("role", sa.String(20), nullable=False),  # admin | editor | operator | viewer
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    # may log in to the FTPS and WebDAV file-drop servers (home DATA/drop/<name>)
    sa.Column("file_drop", sa.Boolean(), nullable=False, server_default=sa.false()),
    **MYSQL_OPTIONS,
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(ID), primary_key=True),  # short random, shown and revoked by
    sa.Column(
        "user", sa.String(ID), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("token_hash", sa.String(64), nullable=False),  # sha256 hex; never the token
    sa.Column("label", sa.String(ID), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.Column("revoked", sa.Boolean(), nullable=False),
    sa.UniqueConstraint("token_hash"),
    sa.Index("ix_api_tokens_user", "user"),
    **MYSQL_OPTIONS,
)

# What a trigger's listener must remember between server starts: a SQL change trigger's
# watermark, a mail trigger's last seen UID, a change stream's resume token.
trigger_state = sa.Table(
    "trigger_state",
    metadata,
    sa.Column("flow_id", sa.String(ID), primary_key=True),
    sa.Column("node_id", sa.String(ID), primary_key=True),
    sa.Column("state", LongText, nullable=False),  # JSON object, the listener's own
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **MYSQL_OPTIONS,
)
