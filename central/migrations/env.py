"""Alembic's environment: run the migrations on the connection `central.store` hands over.

``bluezone-central`` never lets Alembic open a database itself: `central.store.migrate` puts
its open connection (inside a transaction, with PostgreSQL's advisory lock held) into
``config.attributes["connection"]``. The developers' ``alembic revision`` run gets one from
``sqlalchemy.url`` instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from central.schema import metadata

config = context.config
connection = config.attributes.get("connection")


def _run(conn: sa.Connection) -> None:
    # render_as_batch: SQLite alters tables by copying them; Alembic's batch mode does that.
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.begin() as conn:
        _run(conn)
