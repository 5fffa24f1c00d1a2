"""Events, quarantine, gateways and gaps.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the types in central.schema as of this revision: a migration must keep
# meaning what it meant when it was written, whatever the schema module says later.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UNIX = sa.Float(precision=53)
NAME = sa.String(64)


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "events",
        sa.Column("id", sa.String(36), nullable=False, comment="the event's UUIDv7: dedup key"),
        sa.Column("gateway", NAME, nullable=False),
        sa.Column("site", NAME, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(5), nullable=False),
        sa.Column("ts_unix", UNIX, nullable=False, comment="the event's ts"),
        sa.Column("app", sa.String(16), nullable=False),
        sa.Column("rolling_id", sa.String(32)),
        sa.Column("entry_id", sa.String(36)),
        sa.Column("dwell_s", UNIX),
        sa.Column("clock_synced", sa.Boolean, nullable=False),
        sa.Column("received_at", UNIX, nullable=False, comment="when a collector stored this copy"),
        sa.Column("body", JSON, nullable=False, comment="the whole payload as received"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_rolling_id", "events", ["rolling_id"])
    op.create_index("ix_events_gateway_ts_unix", "events", ["gateway", "ts_unix"])
    op.create_index("ix_events_ts_unix", "events", ["ts_unix"])
    op.create_index("ix_events_gateway_seq", "events", ["gateway", "seq"])
    op.create_index("ix_events_entry_id", "events", ["entry_id"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, sa.Identity(), nullable=False),
        sa.Column("received_at", UNIX, nullable=False),
        sa.Column("topic", sa.String(1024), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, comment="what is wrong, naming the key"),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index("ix_quarantine_received_at", "quarantine", ["received_at"])
    op.create_table(
        "gateways",
        sa.Column("gateway", NAME, nullable=False),
        sa.Column("site", NAME, nullable=False),
        sa.Column(
            "topic_base", sa.String(512), nullable=False, comment="{prefix}/{site}/{gateway}"
        ),
        sa.Column("state", sa.String(16), nullable=False, server_default="unknown"),
        sa.Column("state_reason", sa.String(256)),
        sa.Column("state_at", UNIX, comment="ts of the status message"),
        sa.Column("version", sa.String(64)),
        sa.Column("last_event_at", UNIX),
        sa.Column("last_health_at", UNIX),
        sa.Column("health", JSON),
        sa.Column("outbox_depth", sa.BigInteger),
        sa.Column("outbox_first_seq", sa.BigInteger),
        sa.Column("outbox_last_seq", sa.BigInteger),
        sa.Column("max_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "contiguous_seq",
            sa.BigInteger,
            nullable=False,
            server_default="0",
            comment="every seq up to this one is held (or given up as lost)",
        ),
        sa.PrimaryKeyConstraint("gateway", name="pk_gateways"),
    )
    op.create_table(
        "gaps",
        sa.Column("gateway", NAME, nullable=False),
        sa.Column("from_seq", sa.BigInteger, nullable=False),
        sa.Column("to_seq", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(8), nullable=False, comment="open or lost"),
        sa.Column("detected_at", UNIX, nullable=False),
        sa.Column("requested_at", UNIX),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("request_id", sa.String(128)),
        sa.Column("published", sa.BigInteger, comment="the last cmd-result's counts"),
        sa.Column("missing", sa.BigInteger),
        sa.PrimaryKeyConstraint("gateway", "from_seq", name="pk_gaps"),
    )
    op.create_index("ix_gaps_request_id", "gaps", ["request_id"])


def downgrade() -> None:
    """Drop everything (the data goes with it)."""
    for table in ("gaps", "gateways", "quarantine", "events"):
        op.drop_table(table)
