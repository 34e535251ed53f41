"""Trigger listeners keep state (watermarks, resume tokens); node runs keep their last
record per port (a webhook in ``wait`` mode answers with it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 200
UTCDateTime = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
MYSQL_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.add_column("node_runs", sa.Column("last", LongText, nullable=True))
    op.create_table(
        "trigger_state",
        sa.Column("flow_id", sa.String(ID), nullable=False),
        sa.Column("node_id", sa.String(ID), nullable=False),
        sa.Column("state", LongText, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("flow_id", "node_id", name="pk_trigger_state"),
        **MYSQL_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("trigger_state")
    op.drop_column("node_runs", "last")
