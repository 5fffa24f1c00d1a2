"""The central database's tables, in SQLAlchemy Core: one definition for PostgreSQL and SQLite.

Alembic migrations (``central/migrations``) create them; the collector, ``trace`` and
``report`` query them. Times are Unix seconds in double precision (``*_unix``/``*_at``), so
that interval arithmetic is the same SQL on both databases; ``body`` keeps each event's whole
payload (JSONB on PostgreSQL), because later contract versions add fields.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

NAMING: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names, so that migrations can name what they alter."""

metadata = sa.MetaData(naming_convention=NAMING)

JSON: Final = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UNIX: Final = sa.Float(precision=53)
"""Unix seconds as a double: millisecond resolution for the next 100,000 years."""
NAME: Final = sa.String(64)
"""A gateway or site id (``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``)."""

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True, comment="the event's UUIDv7: dedup key"),
    sa.Column("gateway", NAME, nullable=False),
    sa.Column("site", NAME, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(5), nullable=False),
    sa.Column("ts_unix", UNIX, nullable=False, comment="the event's ts"),
    sa.Column("app", sa.String(16), nullable=False),
    sa.Column("rolling_id", sa.String(32)),
    sa.Column("entry_id", sa.String(36)),
    sa.Column("visit_id", sa.String(36), comment="the phone's visit: its keys linked"),
    sa.Column("dwell_s", UNIX),
    sa.Column("clock_synced", sa.Boolean, nullable=False),
    sa.Column("received_at", UNIX, nullable=False, comment="when a collector stored this copy"),
    sa.Column("body", JSON, nullable=False, comment="the whole payload as received"),
    # Tracing looks IDs up (rolling_id) and then a gateway's neighbourhood in time; reports
    # and operators select by time; gap healing walks a gateway's seqs; visits pair on entry_id.
    sa.Index(None, "rolling_id"),
    sa.Index(None, "gateway", "ts_unix"),
    sa.Index(None, "ts_unix"),
    sa.Index(None, "gateway", "seq"),
    sa.Index(None, "entry_id"),
    sa.Index(None, "visit_id"),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("received_at", UNIX, nullable=False),
    sa.Column("topic", sa.String(1024), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, comment="what is wrong, naming the key"),
    sa.Index(None, "received_at"),
)

gateways = sa.Table(
    "gateways",
    metadata,
    sa.Column("gateway", NAME, primary_key=True),
    sa.Column("site", NAME, nullable=False),
    sa.Column("topic_base", sa.String(512), nullable=False, comment="{prefix}/{site}/{gateway}"),
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
)

gaps = sa.Table(
    "gaps",
    metadata,
    sa.Column("gateway", NAME, primary_key=True),
    sa.Column("from_seq", sa.BigInteger, primary_key=True),
    sa.Column("to_seq", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(8), nullable=False, comment="open or lost"),
    sa.Column("detected_at", UNIX, nullable=False),
    sa.Column("requested_at", UNIX),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("request_id", sa.String(128)),
    sa.Column("published", sa.BigInteger, comment="the last cmd-result's counts"),
    sa.Column("missing", sa.BigInteger),
    sa.Index(None, "request_id"),
)
