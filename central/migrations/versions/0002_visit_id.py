"""Events gain visit_id: a phone's keys linked across its ID rotation (README, "Visits").

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the column and its index; events stored before are each their own visit."""
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("visit_id", sa.String(36), comment="the phone's visit: its keys linked")
        )
        batch.create_index("ix_events_visit_id", ["visit_id"])
    op.execute("UPDATE events SET visit_id = coalesce(entry_id, id) WHERE visit_id IS NULL")


def downgrade() -> None:
    """Drop the column and its index."""
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_visit_id")
        batch.drop_column("visit_id")
