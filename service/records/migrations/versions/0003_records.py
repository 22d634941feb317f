"""Indexes on the evidence hashes of decisions: "does any record name this file?" is asked before every
evidence file is deleted (retention, a failed record, the orphan sweep), under the archive's lock.

Revision ID: 0003_records
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003_records"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = ("rgb_sha256", "xyz_sha256", "map_sha256")


def upgrade() -> None:
    for column in _COLUMNS:
        op.create_index(f"ix_decisions_{column}", "decisions", [column])


def downgrade() -> None:
    for column in _COLUMNS:
        op.drop_index(f"ix_decisions_{column}", table_name="decisions")
