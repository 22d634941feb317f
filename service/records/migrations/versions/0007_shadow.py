"""The shadow candidate's version, score, threshold and verdict on each record.

Revision ID: 0007_shadow
Revises: 0005_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_shadow"
down_revision = "0006_recipes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("shadow_version", sa.String(64), nullable=True))
        batch.add_column(sa.Column("shadow_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("shadow_threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("shadow_is_anomalous", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("shadow_is_anomalous")
        batch.drop_column("shadow_threshold")
        batch.drop_column("shadow_score")
        batch.drop_column("shadow_version")
