"""Initial run store: flow versions, runs, node runs, run logs, connections, secrets.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Types are spelled out here rather than imported from engine.tables: a migration is a
snapshot and must not change when the current schema does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 200
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
UTCDateTime = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
MYSQL_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.create_table(
        "flow_versions",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("flow_id", sa.String(ID), nullable=False),
        sa.Column("text", LongText, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_flow_versions"),
        **MYSQL_OPTIONS,
    )
    op.create_index(
        "ix_flow_versions_flow_id_created_at", "flow_versions", ["flow_id", "created_at"]
    )

    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(ID), nullable=False),
        sa.Column("flow_id", sa.String(ID), nullable=False),
        sa.Column("flow_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("params", LongText, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("error", LongText, nullable=True),
        sa.Column("error_node", sa.String(ID), nullable=True),
        sa.Column("node_seq", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("log_seq", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("run_id", name="pk_runs"),
        **MYSQL_OPTIONS,
    )
    op.create_index("ix_runs_flow_id_started_at", "runs", ["flow_id", "started_at"])
    op.create_index("ix_runs_started_at", "runs", ["started_at"])

    op.create_table(
        "node_runs",
        sa.Column("run_id", sa.String(ID), nullable=False),
        sa.Column("node_id", sa.String(ID), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("node_type", sa.String(ID), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("records_in", LongText, nullable=False),
        sa.Column("records_out", LongText, nullable=False),
        sa.Column("sample", LongText, nullable=False),
        sa.Column("error", LongText, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("status", LongText, nullable=True),
        sa.PrimaryKeyConstraint("run_id", "node_id", name="pk_node_runs"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_node_runs_run_id_runs", ondelete="CASCADE"
        ),
        **MYSQL_OPTIONS,
    )

    op.create_table(
        "run_logs",
        sa.Column("run_id", sa.String(ID), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("node_id", sa.String(ID), nullable=True),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("level", sa.String(20), nullable=False),
        sa.Column("message", LongText, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_run_logs"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_run_logs_run_id_runs", ondelete="CASCADE"
        ),
        **MYSQL_OPTIONS,
    )
    op.create_index("ix_run_logs_run_id_node_id_seq", "run_logs", ["run_id", "node_id", "seq"])

    for name in ("connections", "secrets"):
        op.create_table(
            name,
            sa.Column("name", sa.String(ID), nullable=False),
            sa.Column("ciphertext", LongText, nullable=False),
            sa.Column("updated_at", UTCDateTime, nullable=False),
            sa.PrimaryKeyConstraint("name", name=f"pk_{name}"),
            **MYSQL_OPTIONS,
        )


def downgrade() -> None:
    # Indexes go with their tables; children before the runs they reference.
    for name in ("secrets", "connections", "run_logs", "node_runs", "runs", "flow_versions"):
        op.drop_table(name)
