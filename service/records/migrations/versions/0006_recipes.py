"""The three-outcome verdict (ok / review / ng) and the recipe of each decision.

Existing records get the verdict their `is_anomalous` gave (no review band existed before) and no recipe.

Revision ID: 0006_recipes
Revises: 0005_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_recipes"
down_revision = "0005_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("verdict", sa.String(8), nullable=True))
        batch.add_column(sa.Column("recipe", sa.String(128), nullable=True))
        batch.add_column(sa.Column("recipe_version", sa.String(64), nullable=True))
    decisions = sa.table("decisions", sa.column("verdict", sa.String), sa.column("is_anomalous", sa.Boolean))
    op.execute(
        decisions.update().values(verdict=sa.case((decisions.c.is_anomalous, sa.literal("ng")), else_=sa.literal("ok")))
    )
    with op.batch_alter_table("decisions") as batch:
        batch.alter_column("verdict", existing_type=sa.String(8), nullable=False)
        batch.create_index("ix_decisions_verdict", ["verdict"])
        batch.create_index("ix_decisions_recipe", ["recipe"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_index("ix_decisions_recipe")
        batch.drop_index("ix_decisions_verdict")
        batch.drop_column("recipe_version")
        batch.drop_column("recipe")
        batch.drop_column("verdict")
