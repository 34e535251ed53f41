"""Batch server: jobs, job log, leases, servers, schedules, calendars, time conditions, flows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Types are spelled out here (a migration is a snapshot of the schema at its time).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
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
        "jobs",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("flow_id", sa.String(ID), nullable=False),
        sa.Column("flow_hash", sa.String(64), nullable=False),
        sa.Column("params", LongText, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("submitted_at", UTCDateTime, nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("max_delay", sa.Double(), nullable=True),
        sa.Column("group_name", sa.String(ID), nullable=True),
        sa.Column("group_pos", sa.Integer, nullable=True),
        sa.Column("pool", sa.String(ID), nullable=True),
        sa.Column("time_condition", sa.String(ID), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(ID), nullable=True),
        sa.Column("worker", sa.String(ID), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("kill_requested", sa.Boolean(), nullable=False),
        sa.Column("error", LongText, nullable=True),
        sa.Column("error_node", sa.String(ID), nullable=True),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("schedule", sa.String(ID), nullable=True),
        sa.Column("flow_dir", LongText, nullable=True),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        **MYSQL_OPTIONS,
    )
    op.create_index(
        "ix_jobs_claim_order",
        "jobs",
        [sa.column("state"), sa.column("priority").desc(), sa.column("submitted_at"),
         sa.column("id")],
    )
    op.create_index("ix_jobs_group_name_group_pos", "jobs", ["group_name", "group_pos"])

    op.create_table(
        "job_log",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("message", LongText, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_log_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_job_log"),
        **MYSQL_OPTIONS,
    )
    op.create_index("ix_job_log_job_id_id", "job_log", ["job_id", "id"])

    op.create_table(
        "leases",
        sa.Column("name", sa.String(ID), nullable=False),
        sa.Column("holder", sa.String(ID), nullable=False),
        sa.Column("acquired_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "servers",
        sa.Column("id", sa.String(ID), nullable=False),
        sa.Column("host", sa.String(ID), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_servers"),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(ID), nullable=False),
        sa.Column("flow_id", sa.String(ID), nullable=False),
        sa.Column("spec", LongText, nullable=False),
        sa.Column("params", LongText, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("last_fire", UTCDateTime, nullable=True),
        sa.Column("next_fire", UTCDateTime, nullable=True),
        sa.Column("error", LongText, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_schedules"),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "calendars",
        sa.Column("name", sa.String(ID), nullable=False),
        sa.Column("holidays", sa.String(ID), nullable=True),
        sa.Column("exclusions", LongText, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_calendars"),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "time_conditions",
        sa.Column("name", sa.String(ID), nullable=False),
        sa.Column("windows", LongText, nullable=False),
        sa.Column("calendar", sa.String(ID), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_time_conditions"),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "flows",
        sa.Column("id", sa.String(ID), nullable=False),
        sa.Column("name", sa.String(ID), nullable=True),
        sa.Column("flow_hash", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("source", LongText, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flows"),
        **MYSQL_OPTIONS,
    )


def downgrade() -> None:
    for name in (
        "flows",
        "time_conditions",
        "calendars",
        "schedules",
        "servers",
        "leases",
        "job_log",
        "jobs",
    ):
        op.drop_table(name)
