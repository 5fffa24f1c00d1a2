"""Alembic migrations of the central database (``bluezone-central migrate`` applies them).

Developers add one with ``alembic -c central/migrations/alembic.ini revision -m "what"`` and
write its ``upgrade`` by hand (portable operations: it must run on PostgreSQL and SQLite).
"""
