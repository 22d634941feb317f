"""Decisions and outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("part_id", sa.String(256), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("threshold_source", sa.String(32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("is_anomalous", sa.Boolean(), nullable=False),
        sa.Column("defect_area_fraction", sa.Float(), nullable=False),
        sa.Column("decision_rule", sa.String(256), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("timings_ms", sa.JSON(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("evidence", sa.String(16), nullable=False),
        sa.Column("rgb_sha256", sa.String(64), nullable=True),
        sa.Column("xyz_sha256", sa.String(64), nullable=True),
        sa.Column("map_sha256", sa.String(64), nullable=True),
    )
    op.create_index("ix_decisions_part_id", "decisions", ["part_id"])
    op.create_index("ix_decisions_model", "decisions", ["model"])
    op.create_index("ix_decisions_is_anomalous", "decisions", ["is_anomalous"])
    op.create_index("ix_decisions_received", "decisions", ["received_at", "request_id"])
    op.create_table(
        "outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), sa.ForeignKey("decisions.request_id"), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_outbox_destination_id", "outbox", ["destination", "id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("decisions")
