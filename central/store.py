"""The central database: opening it, migrating it, and what the collector writes to it.

One code path for PostgreSQL (production, psycopg 3) and SQLite (one machine): SQLAlchemy Core
statements; only the ``INSERT … ON CONFLICT`` constructor is chosen by dialect, and both
dialects accept the same arguments. Every write a collector makes for a batch of messages is
one transaction, committed before the messages are acknowledged (docs/mqtt.md), so a crash
between the two means redelivery, which the idempotent insert absorbs.

Several collectors may share one database: everything they coordinate on lives here (the
dedup key, each gateway's seqs, the gaps and who asked for them), nothing in their memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite

from central import gaps as gapsmod
from central.schema import events, gaps, gateways, quarantine
from gateway.model import GatewayError, parse_iso_utc

_LOGGER = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S: Final = 30.0
"""How long a SQLite writer waits for another (a second collector, a migration)."""
MIGRATION_LOCK: Final = 0x426C7A43  # "BlzC": pg_advisory_xact_lock key for migrations
IN_CHUNK: Final = 500
_FIELDS: Final = (
    "gateway", "site", "seq", "type", "app", "rolling_id", "entry_id", "visit_id", "dwell_s",
)  # fmt: skip


class StoreError(GatewayError):
    """The central database cannot be opened, migrated or used as asked."""


def database_url(text: str) -> sa.URL:
    """Return the SQLAlchemy URL for ``--db``: a URL, or a plain path meaning a SQLite file.

    ``postgresql://`` (and ``postgres://``) use psycopg 3, not SQLAlchemy's default psycopg2.

    Raises:
        StoreError: not a URL SQLAlchemy understands.
    """
    if "://" not in text:
        return sa.URL.create("sqlite+pysqlite", database=str(Path(text).expanduser().resolve()))
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as e:
        msg = f"--db {text!r} is not a database URL: {e}"
        raise StoreError(msg) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+pysqlite")
    return url


def create_engine(text: str, *, readonly: bool = False) -> sa.Engine:
    """Return an engine for ``--db``; SQLite files get WAL and write transactions that queue.

    SQLite: a writer's transaction starts with ``BEGIN IMMEDIATE``, so that two collectors (or
    a collector's threads) wait for each other's lock (busy timeout) instead of failing with
    "database is locked" when a read turns into a write. ``readonly`` opens ``mode=ro``.

    Raises:
        StoreError: a bad URL, or a driver that is not installed.
    """
    url = database_url(text)
    try:
        if url.get_backend_name() != "sqlite":
            # psycopg's own executemany (pipeline mode, one parsed statement) rather than
            # SQLAlchemy's multi-VALUES rewrite: psycopg re-parses that huge statement on every
            # batch, which took two thirds of the time of an ingest here (bench/central.py).
            return sa.create_engine(
                url, pool_pre_ping=True, use_insertmanyvalues=False, json_serializer=_json
            )
        path = url.database or ""
        if readonly and path not in ("", ":memory:"):
            if not Path(path).is_file():
                msg = f"{path} does not exist"
                raise StoreError(msg)
            url = url.set(database=f"file:{path}?mode=ro", query={"uri": "true"})
        engine = sa.create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, json_serializer=_json
        )
    except (ImportError, sa.exc.NoSuchModuleError) as e:
        msg = f"no database driver for {url.drivername}: {e}"
        msg += " (pip install 'bluezone-gateway[central]')"
        raise StoreError(msg) from None
    _sqlite_setup(engine, readonly=readonly)
    return engine


def _json(value: Any) -> str:
    """Serialise ``body`` with orjson (the payload came in as JSON: it goes back out as JSON)."""
    return orjson.dumps(value).decode()


def _sqlite_setup(engine: sa.Engine, *, readonly: bool) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is off: _on_begin says what kind of transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not readonly:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL never corrupts
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", "central:migrations")
    return config


def migrate(engine: sa.Engine) -> str:
    """Bring the schema to the newest revision; return it. Safe with collectors starting at once.

    Raises:
        StoreError: the database cannot be reached or migrated.
    """
    config = _alembic_config()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two collectors starting together: the second waits here, then finds nothing
                # left to do. (SQLite's BEGIN IMMEDIATE already serialises them.)
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            config.attributes["connection"] = conn
            alembic_command.upgrade(config, "head")
            revision = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.SQLAlchemyError as e:
        msg = f"cannot migrate {engine.url.render_as_string(hide_password=True)}: {e}"
        raise StoreError(msg) from e
    return revision or ""


def check_schema(engine: sa.Engine) -> None:
    """Refuse a database that is not at the newest revision (``trace`` and ``report`` read only).

    Raises:
        StoreError: unreachable, never migrated, or migrated by an older release.
    """
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.SQLAlchemyError as e:
        msg = f"cannot read {where}: {e}"
        raise StoreError(msg) from e
    if current != head:
        state = "has no central schema" if current is None else f"is at revision {current}"
        msg = f"{where} {state}, not {head}: run 'bluezone-central migrate --db URL' first"
        raise StoreError(msg)


# --- what a collector writes ------------------------------------------------------------------


@dataclass(slots=True)
class Batch:
    """Validated messages of one transaction, sorted by kind."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(topic base ``{prefix}/{site}/{gateway}``, event)."""
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    healths: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    """cmd-result payloads."""
    rejected: list[tuple[str, bytes, str]] = field(default_factory=list)
    """(topic, payload, reason) for the quarantine."""

    def __len__(self) -> int:
        return (
            len(self.events)
            + len(self.statuses)
            + len(self.healths)
            + len(self.results)
            + len(self.rejected)
        )


@dataclass(slots=True)
class Counts:
    """What one batch (or a collector's life) did to the database."""

    stored: int = 0
    """Events new to the database."""
    replaced: int = 0
    """Stored events replaced by their ``clock_synced: true`` copy."""
    duplicates: int = 0
    """Events already held (redeliveries, replays, a second collector's copy)."""
    quarantined: int = 0
    statuses: int = 0
    healths: int = 0
    results: int = 0

    def add(self, other: Counts) -> None:
        """Add ``other``'s counts to these."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        """Return the counts by name."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A ``cmd/replay`` to publish: the gap's rows are already updated (committed)."""

    topic: str
    payload: dict[str, int | str]


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` for this connection's dialect (same API on both)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _event_row(event: dict[str, Any], now: float) -> dict[str, Any]:
    row = {name: event[name] for name in _FIELDS}
    row.update(
        id=event["id"],
        ts_unix=_unix(event["ts"]),
        clock_synced=bool(event["clock_synced"]),
        received_at=now,
        body=event,
    )
    return row


def _unix(iso: str) -> float:
    return round(parse_iso_utc(iso), 3)


class CentralStore:
    """The collector's writes; thread-safe (each call takes its own pooled connection)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # --- ingest -------------------------------------------------------------------------------

    def ingest(self, batch: Batch, now: float) -> Counts:
        """Write one batch in one transaction; return what it did.

        Events are deduplicated on ``id``; a ``clock_synced: true`` copy replaces a stored
        ``false`` one (docs/mqtt.md "Corrected copies"); every other copy is a duplicate.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was written.
        """
        counts = Counts()
        with self.engine.begin() as conn:
            if batch.rejected:
                conn.execute(
                    quarantine.insert(),
                    [
                        {"received_at": now, "topic": t, "payload": p, "reason": r}
                        for t, p, r in batch.rejected
                    ],
                )
                counts.quarantined = len(batch.rejected)
            if batch.events:
                self._events(conn, batch.events, now, counts)
            for base, status in batch.statuses:
                self._status(conn, base, status)
            counts.statuses = len(batch.statuses)
            for base, health in batch.healths:
                self._health(conn, base, health, now)
            counts.healths = len(batch.healths)
            for result in batch.results:
                self._result(conn, result)
            counts.results = len(batch.results)
        return counts

    def _events(
        self,
        conn: sa.Connection,
        received: list[tuple[str, dict[str, Any]]],
        now: float,
        counts: Counts,
    ) -> None:
        best: dict[str, tuple[str, dict[str, Any]]] = {}
        for base, event in received:
            held = best.get(event["id"])
            if held is None or (event["clock_synced"] and not held[1]["clock_synced"]):
                best[event["id"]] = (base, event)
        counts.duplicates += len(received) - len(best)
        synced: dict[str, bool] = {}
        ids = sorted(best)
        for i in range(0, len(ids), IN_CHUNK):
            query = sa.select(events.c.id, events.c.clock_synced).where(
                events.c.id.in_(ids[i : i + IN_CHUNK])
            )
            synced.update((row.id, bool(row.clock_synced)) for row in conn.execute(query))
        new = [_event_row(e, now) for i, (_, e) in best.items() if i not in synced]
        better = [
            _event_row(e, now)
            for i, (_, e) in best.items()
            if i in synced and e["clock_synced"] and not synced[i]
        ]
        counts.duplicates += len(best) - len(new) - len(better)
        if new:
            # DO NOTHING: another collector may insert the same id between our SELECT and here.
            insert = _insert(conn, events).on_conflict_do_nothing(index_elements=["id"])
            result = conn.execute(insert, new)
            # rowcount sums the rows of an executemany (what a concurrent collector inserted
            # first is not counted); -1 where a driver cannot say: then trust the SELECT.
            inserted = result.rowcount if result.rowcount >= 0 else len(new)
            counts.stored += inserted
            counts.duplicates += len(new) - inserted
        for row in better:
            update = (
                events.update()
                .where(events.c.id == row["id"], events.c.clock_synced.is_(False))
                .values({k: v for k, v in row.items() if k != "id"})
            )
            counts.replaced += conn.execute(update).rowcount
        self._gateways_seen(conn, best.values(), now)

    def _gateways_seen(
        self, conn: sa.Connection, received: Iterable[tuple[str, dict[str, Any]]], now: float
    ) -> None:
        latest: dict[str, dict[str, Any]] = {}
        for base, event in received:
            row = latest.setdefault(
                event["gateway"],
                {"gateway": event["gateway"], "site": event["site"], "topic_base": base,
                 "max_seq": 0, "last_event_at": now},
            )  # fmt: skip
            if event["seq"] >= row["max_seq"]:
                row.update(max_seq=event["seq"], site=event["site"], topic_base=base)
        # One statement for the batch's gateways, sorted: every collector locks gateway rows in
        # the same order, so none deadlocks another.
        insert = _insert(conn, gateways).values([latest[g] for g in sorted(latest)])
        new_max = sa.case(
            (insert.excluded.max_seq > gateways.c.max_seq, insert.excluded.max_seq),
            else_=gateways.c.max_seq,
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["gateway"],
                set_={
                    "site": insert.excluded.site,
                    "topic_base": insert.excluded.topic_base,
                    "max_seq": new_max,
                    "last_event_at": insert.excluded.last_event_at,
                },
            )
        )

    def _status(self, conn: sa.Connection, base: str, status: dict[str, Any]) -> None:
        values = {
            "gateway": status["gateway"],
            "site": status["site"],
            "topic_base": base,
            "state": status["state"],
            "state_reason": status["reason"],
            "state_at": _unix(status["ts"]),
            "version": status["version"],
        }
        insert = _insert(conn, gateways).values(values)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["gateway"],
                set_={k: insert.excluded[k] for k in values if k != "gateway"},
                # A retained status can be older than one already processed (a second
                # collector, a reconnect): only a newer one changes the state.
                where=sa.or_(
                    gateways.c.state_at.is_(None), gateways.c.state_at <= insert.excluded.state_at
                ),
            )
        )

    def _health(self, conn: sa.Connection, base: str, health: dict[str, Any], now: float) -> None:
        outbox = health.get("outbox") or {}
        values = {
            "gateway": health["gateway"],
            "site": health["site"],
            "topic_base": base,
            "last_health_at": now,
            "health": health,
            "outbox_depth": outbox.get("depth"),
            "outbox_first_seq": outbox.get("first_seq"),
            "outbox_last_seq": outbox.get("last_seq"),
        }
        insert = _insert(conn, gateways).values(values)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["gateway"],
                set_={k: insert.excluded[k] for k in values if k != "gateway"},
            )
        )

    def _result(self, conn: sa.Connection, result: dict[str, Any]) -> None:
        request_id = result.get("request_id")
        if result.get("command") != "replay" or not request_id:
            return
        gap = conn.execute(sa.select(gaps).where(gaps.c.request_id == request_id)).first()
        if gap is None:
            return  # someone else's command, or a gap closed meanwhile
        if not result["ok"]:
            _LOGGER.error(
                "Gateway %s refused replay %s: %s", gap.gateway, request_id, result["error"]
            )
            return
        values: dict[str, Any] = {"published": result["published"], "missing": result["missing"]}
        if result["published"] == 0 and result["missing"] == gap.to_seq - gap.from_seq + 1:
            values["state"] = gapsmod.LOST
            _LOGGER.error(
                "Gateway %s no longer has seqs %d-%d (retention deleted them): lost for good",
                gap.gateway,
                gap.from_seq,
                gap.to_seq,
            )
        conn.execute(
            gaps.update()
            .where(gaps.c.gateway == gap.gateway, gaps.c.from_seq == gap.from_seq)
            .values(values)
        )

    # --- gaps ---------------------------------------------------------------------------------

    def check_gaps(
        self,
        now: float,
        *,
        grace_s: float,
        retry_s: float,
        max_attempts: int,
        on_closed: Callable[[str, gapsmod.Gap], None] | None = None,
    ) -> list[ReplayRequest]:
        """Update every gateway's gaps; return the replays that fell due (already recorded).

        Each gateway is checked in its own transaction with its row locked (PostgreSQL: ``FOR
        UPDATE SKIP LOCKED``), so collectors sharing the database split the work and never ask
        for the same gap twice.
        """
        with self.engine.connect() as conn:
            candidates = list(
                conn.execute(
                    sa.select(gateways.c.gateway).where(
                        sa.or_(
                            gateways.c.contiguous_seq < gateways.c.max_seq,
                            sa.and_(
                                gateways.c.outbox_depth == 0,
                                gateways.c.outbox_last_seq > gateways.c.max_seq,
                            ),
                            gateways.c.gateway.in_(
                                sa.select(gaps.c.gateway).where(gaps.c.state == gapsmod.OPEN)
                            ),
                        )
                    )
                ).scalars()
            )
        requests: list[ReplayRequest] = []
        for gateway in candidates:
            requests += self._check_gateway(
                gateway,
                now,
                grace_s=grace_s,
                retry_s=retry_s,
                max_attempts=max_attempts,
                on_closed=on_closed,
            )
        return requests

    def _check_gateway(
        self,
        gateway: str,
        now: float,
        *,
        grace_s: float,
        retry_s: float,
        max_attempts: int,
        on_closed: Callable[[str, gapsmod.Gap], None] | None,
    ) -> list[ReplayRequest]:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(gateways)
                .where(gateways.c.gateway == gateway)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return []  # another collector is on it
            stored = [
                _gap(r) for r in conn.execute(sa.select(gaps).where(gaps.c.gateway == gateway))
            ]
            old = [g for g in stored if g.state == gapsmod.OPEN]
            watermark, holes, lost = _holes(conn, row, stored, now)
            current = gapsmod.reconcile(old, holes, now)
            for gap in gapsmod.closed(old, current):
                _LOGGER.info("Gap closed: %s seqs %d-%d", gateway, gap.from_seq, gap.to_seq)
                if on_closed is not None:
                    on_closed(gateway, gap)
            final: list[gapsmod.Gap] = []
            requests: list[ReplayRequest] = []
            for gap in current:
                if not gapsmod.due(gap, now, grace_s=grace_s, retry_s=retry_s):
                    final.append(gap)
                elif gap.attempts >= max_attempts:
                    _LOGGER.error(
                        "Gap %s seqs %d-%d still open after %d replays: given up as lost",
                        gateway,
                        gap.from_seq,
                        gap.to_seq,
                        gap.attempts,
                    )
                    lost.append(gapsmod.Gap(gap.from_seq, gap.to_seq, gapsmod.LOST, now))
                else:
                    asked = gapsmod.requested(gap, gateway, now)
                    final.append(asked)
                    requests += [
                        ReplayRequest(f"{row.topic_base}/cmd/replay", payload)
                        for payload in gapsmod.replay_commands(asked)
                    ]
            _save_gaps(conn, gateway, final + lost)
            if watermark != row.contiguous_seq:
                conn.execute(
                    gateways.update()
                    .where(gateways.c.gateway == gateway)
                    .values(contiguous_seq=watermark)
                )
        for request in requests:
            _LOGGER.warning(
                "Gap in %s: asking for seqs %s-%s again (%s)",
                gateway,
                request.payload["from_seq"],
                request.payload["to_seq"],
                request.payload.get("request_id"),
            )
        return requests

    # --- reading --------------------------------------------------------------------------------

    def gateway_rows(self) -> list[dict[str, Any]]:
        """Return every gateway's row with its count of open gaps, by gateway id."""
        open_gaps = (
            sa.select(sa.func.count())
            .where(gaps.c.gateway == gateways.c.gateway, gaps.c.state == gapsmod.OPEN)
            .scalar_subquery()
        )
        query = sa.select(gateways, open_gaps.label("open_gaps")).order_by(gateways.c.gateway)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def gap_rows(self, gateway: str | None = None) -> list[dict[str, Any]]:
        """Return the gaps (open and lost), optionally of one gateway."""
        query = sa.select(gaps).order_by(gaps.c.gateway, gaps.c.from_seq)
        if gateway is not None:
            query = query.where(gaps.c.gateway == gateway)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _holes(
    conn: sa.Connection, row: sa.Row[Any], stored: list[gapsmod.Gap], now: float
) -> tuple[int, list[gapsmod.Range], list[gapsmod.Gap]]:
    """Return a gateway's new watermark, the holes it may still replay, and newly lost ones."""
    lost = [(g.from_seq, g.to_seq) for g in stored if g.state == gapsmod.LOST]
    seqs = conn.execute(
        sa.select(events.c.seq)
        .distinct()
        .where(events.c.gateway == row.gateway, events.c.seq > row.contiguous_seq)
    ).scalars()
    found = gapsmod.find_holes(seqs, row.contiguous_seq, lost)
    holes = list(found.holes)
    tail = gapsmod.tail_hole(found.top, row.outbox_depth, row.outbox_last_seq)
    if tail is not None:
        holes.append(tail)
    replayable: list[gapsmod.Range] = []
    gone: list[gapsmod.Gap] = []
    for hole in holes:
        deleted, remaining = gapsmod.split_replayable(hole, row.outbox_first_seq)
        if deleted is not None:
            gone.append(gapsmod.Gap(deleted[0], deleted[1], gapsmod.LOST, now))
        if remaining is not None:
            replayable.append(remaining)
    return found.watermark, replayable, gone


def _save_gaps(conn: sa.Connection, gateway: str, current: list[gapsmod.Gap]) -> None:
    """Replace a gateway's open gaps with ``current`` (lost ones are kept as history)."""
    conn.execute(gaps.delete().where(gaps.c.gateway == gateway, gaps.c.state == gapsmod.OPEN))
    fresh = [_gap_row(gateway, g) for g in current]
    if fresh:
        conn.execute(_insert(conn, gaps).on_conflict_do_nothing(), fresh)


def _gap(row: sa.Row[Any]) -> gapsmod.Gap:
    return gapsmod.Gap(
        row.from_seq,
        row.to_seq,
        row.state,
        row.detected_at,
        row.requested_at,
        row.attempts,
        row.request_id,
    )


def _gap_row(gateway: str, gap: gapsmod.Gap) -> dict[str, Any]:
    return {
        "gateway": gateway,
        "from_seq": gap.from_seq,
        "to_seq": gap.to_seq,
        "state": gap.state,
        "detected_at": gap.detected_at,
        "requested_at": gap.requested_at,
        "attempts": gap.attempts,
        "request_id": gap.request_id,
    }
