"""Dead letters of the push outbox.

Revision ID: 0004_push
Revises: 0003_records
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_push"
down_revision = "0003_records"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), sa.ForeignKey("decisions.request_id"), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_dead_letters_destination_id", "dead_letters", ["destination", "id"])


def downgrade() -> None:
    op.drop_table("dead_letters")
