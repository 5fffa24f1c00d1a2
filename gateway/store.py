"""Event log and MQTT outbox in SQLite; the only module that touches the database."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from sqlite_utils import Database, Migrations

from gateway.model import EventType, GatewayError, PresenceEvent, iso_utc, parse_iso_utc

_LOGGER = logging.getLogger(__name__)

EVENT_FIELDS: Final = (
    "id", "seq", "gateway", "site", "type", "ts", "app", "platform", "rolling_id", "rssi_max",
    "sightings", "first_seen", "last_seen", "dwell_s", "entry_id", "checked_in", "clock_synced",
    "direction", "visit_id", "continues",
)  # fmt: skip
"""Keys of an event dict, in the order of the JSON contract."""

MAX_BUFFERED_ROWS: Final = 500
"""Rows that force a commit before ``commit_interval_s`` is up: one outbox batch of `sync`."""

# Raw SQL because sqlite-utils' create() cannot say AUTOINCREMENT: with it SQLite keeps the
# highest seq ever used in sqlite_sequence, so pruning the newest rows never lets a seq recur.
# STRICT (SQLite >= 3.37; Bookworm has 3.40) rejects a wrongly typed value instead of storing it.
_SCHEMA_V1: Final = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    gateway TEXT NOT NULL,
    site TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('entry', 'exit')),
    ts TEXT NOT NULL,
    app TEXT NOT NULL,
    platform TEXT,
    rolling_id TEXT,
    rssi_max INTEGER NOT NULL,
    sightings INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    dwell_s REAL,
    entry_id TEXT,
    checked_in INTEGER CHECK (checked_in IN (0, 1)),
    clock_synced INTEGER NOT NULL CHECK (clock_synced IN (0, 1)),
    ts_unix REAL NOT NULL
) STRICT;
CREATE INDEX events_ts_unix ON events (ts_unix);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY REFERENCES events (seq) ON DELETE CASCADE
) STRICT;
"""
_STORED_ONLY: Final = ("ts_unix", "boot_id", "clock_offset")
"""Columns kept beside the contract's fields: a sortable time, and what a clock correction needs."""
_INSERT_SQL: Final = "INSERT INTO events ({}) VALUES ({})".format(  # noqa: S608 - constants only
    ", ".join((*EVENT_FIELDS, *_STORED_ONLY)), ", ".join("?" * (len(EVENT_FIELDS) + 3))
)
_BUSY_TIMEOUT_MS: Final = 5000  # wait out another connection's brief lock (recovery, checkpoint)
_JOURNAL_SIZE_LIMIT_BYTES: Final = 16 * 1024 * 1024  # caps the -wal file left after a checkpoint
_PRUNE_BATCH_ROWS: Final = 5000  # one short transaction each, so the WAL stays small on an SD card
_SECONDS_PER_DAY: Final = 86_400
_PRUNE_SYNCED_SQL: Final = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts_unix < ?"
    " AND seq NOT IN (SELECT seq FROM outbox) LIMIT ?)"
)
_PRUNE_ALL_SQL: Final = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts_unix < ? LIMIT ?)"
)

_MIGRATIONS: Final = Migrations("bluezone-gateway")


@_MIGRATIONS()
def m001_events(db: Database) -> None:
    """Create the event log and the outbox of events not yet acknowledged by the broker."""
    db.executescript(_SCHEMA_V1)


@_MIGRATIONS()
def m002_direction(db: Database) -> None:
    """Add ``direction`` (``in``/``out`` with two adapters, else null)."""
    db.execute("ALTER TABLE events ADD COLUMN direction TEXT CHECK (direction IN ('in', 'out'))")


@_MIGRATIONS()
def m003_state(db: Database) -> None:
    """Add a small key/value table: what the publisher knows, for ``status`` and health."""
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT")


@_MIGRATIONS()
def m004_clock_offset(db: Database) -> None:
    """Keep the boot and clock offset of events stamped before the clock was synchronised.

    The offset is the wall clock minus the monotonic clock when they were stamped: with it,
    `EventStore.correct_clock` can restamp them once the right time is known.
    """
    db.execute("ALTER TABLE events ADD COLUMN boot_id TEXT")
    db.execute("ALTER TABLE events ADD COLUMN clock_offset REAL")
    db.execute("CREATE INDEX events_unsynced_clock ON events (boot_id) WHERE clock_synced = 0")


@_MIGRATIONS()
def m005_visits(db: Database) -> None:
    """Add ``visit_id`` (one per phone visit, across its linked keys) and ``continues``.

    Events stored before linking existed are each their own visit: an entry's visit is its own
    id, an exit's its entry's.
    """
    db.execute("ALTER TABLE events ADD COLUMN visit_id TEXT")
    db.execute("ALTER TABLE events ADD COLUMN continues TEXT")
    db.execute("UPDATE events SET visit_id = coalesce(entry_id, id)")
    db.execute("CREATE INDEX events_visit_id ON events (visit_id)")


MAX_VISIT_IDS: Final = 50_000
"""Visits whose id the store remembers for keys that may still continue them (LRU)."""


class StoreError(GatewayError):
    """The event store cannot be opened or written."""


class EventStore:
    """Append-only event log with an outbox; commits are grouped to spare the SD card.

    Queries see committed events only; appended events become visible at the next flush.
    Not thread-safe: use it from one thread at a time (an executor is fine when calls are
    awaited one after another).
    """

    def __init__(
        self,
        db: Database,
        path: Path,
        *,
        gateway: str,
        site: str,
        commit_interval_s: float,
        retention_days: float,
        lock_fd: int | None,
        boot_id: str | None = None,
    ) -> None:
        self._db = db
        self._boot_id = boot_id
        self.on_commit: Callable[[float, int], None] | None = None
        """Called after each commit with its duration (s) and row count (store latency)."""
        self._path = path
        self._gateway = gateway
        self._site = site
        self._commit_interval_s = commit_interval_s
        self._retention_days = retention_days
        self._lock_fd = lock_fd
        self._last_seq = _read_last_seq(db)
        self._buffer: list[tuple[Any, ...]] = []
        self._last_commit = time.monotonic()
        """When the last commit (or the opening) was: commits are at least
        ``commit_interval_s`` apart, so an event that finds the last one that long ago is
        committed at once (at a quiet entrance, most are), and one that comes sooner waits
        for the rest of the interval with whatever else comes (a crowd: one fsync a second)."""
        self._open_visits: dict[int, tuple[str, float]] = {}  # visit -> (entry id, entry at)
        self._visit_ids: OrderedDict[int, str] = OrderedDict()
        """Chain (the engine's first visit number of a phone's visit) -> its ``visit_id``."""
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        gateway: str,
        site: str,
        synchronous: Literal["full", "normal"] = "full",
        commit_interval_s: float = 1.0,
        retention_days: float = 21.0,
        readonly: bool = False,
        boot_id: str | None = None,
    ) -> EventStore:
        """Open (and on a writable open create or migrate) the store at ``path``.

        ``boot_id`` names this boot of the machine (``/proc/sys/kernel/random/boot_id``): it is
        kept with events stamped before the clock was synchronised, because their monotonic
        times can be restamped (`correct_clock`) only within the boot that measured them.

        Raises:
            StoreError: another process holds the store, or the file is not a usable store.
        """
        if synchronous not in ("full", "normal"):
            msg = f"synchronous must be 'full' or 'normal', not {synchronous!r}"
            raise ValueError(msg)
        if commit_interval_s < 0 or retention_days <= 0:
            msg = "commit_interval_s must be >= 0 and retention_days > 0"
            raise ValueError(msg)
        with contextlib.ExitStack() as undo:
            lock_fd = None if readonly else _take_lock(path)
            undo.callback(_release_lock, lock_fd)
            try:
                conn = _connect(path, readonly=readonly)
                undo.callback(conn.close)
                # No plugins: no installed sqlite-utils plugin gets to run in our connection.
                db = _configure(Database(conn, execute_plugins=False), path, synchronous, readonly)
                _migrate(db, path, readonly=readonly)
                store = cls(
                    db,
                    path,
                    gateway=gateway,
                    site=site,
                    commit_interval_s=commit_interval_s,
                    retention_days=retention_days,
                    lock_fd=lock_fd,
                    boot_id=boot_id,
                )
            except sqlite3.Error as e:
                msg = f"{path} is not a usable event store: {e}"
                raise StoreError(msg) from e
            undo.pop_all()  # success: the store owns the lock and the connection now
        _LOGGER.debug("Opened %s (readonly=%s, last seq %d)", path, readonly, store.last_seq)
        return store

    @property
    def last_seq(self) -> int:
        """Seq of the newest appended event, committed or buffered (0 for an empty store)."""
        return self._last_seq

    def append(
        self, events: Iterable[PresenceEvent], *, wall: Callable[[float], float], clock_synced: bool
    ) -> list[dict[str, Any]]:
        """Stamp events, buffer them for the next grouped commit and return their dicts.

        Args:
            events: Decisions of the presence engine, in order.
            wall: Converts a `PresenceEvent` time to Unix seconds.
            clock_synced: Whether the wall clock was NTP-synchronised when converting.

        Raises:
            StoreError: a commit that fell due failed; the events stay buffered for a retry.
        """
        self._require_writable()
        stamped = []
        for ev in events:
            at_unix = wall(ev.at)
            entry_id: str | None = None
            dwell_s: float | None = None
            checked_in: bool | None = None
            if ev.type is EventType.EXIT:
                checked_in = ev.checked_in
                entry = self._open_visits.pop(ev.visit, None)
                if entry is not None:
                    # Measured on the source clock, so an NTP step during the visit (a Pi has
                    # no RTC) cannot distort it; equal to exit ts - entry ts while it does not.
                    entry_id, dwell_s = entry[0], round(ev.at - entry[1], 1)
            self._last_seq += 1
            event_id = _uuid7()
            event: dict[str, Any] = {
                "id": event_id,
                "seq": self._last_seq,
                "gateway": self._gateway,
                "site": self._site,
                "type": ev.type.value,
                "ts": iso_utc(at_unix),
                "app": ev.app.value,
                "platform": None if ev.platform is None else ev.platform.value,
                "rolling_id": ev.rolling_id,
                "rssi_max": ev.rssi_max,
                "sightings": ev.sightings,
                "first_seen": iso_utc(wall(ev.first_seen)),
                "last_seen": iso_utc(wall(ev.last_seen)),
                "dwell_s": dwell_s,
                "entry_id": entry_id,
                "checked_in": checked_in,
                "clock_synced": clock_synced,
                "direction": ev.direction,
                "visit_id": self._visit_id(ev, event_id, entry_id),
                "continues": ev.continues,
            }
            if ev.type is EventType.ENTRY:
                self._open_visits[ev.visit] = (event["id"], ev.at)
            unsynced = None if clock_synced else (self._boot_id, at_unix - ev.at)
            self._buffer.append((*event.values(), round(at_unix, 3), *(unsynced or (None, None))))
            stamped.append(event)
        self.maybe_flush()
        return stamped

    def _visit_id(self, ev: PresenceEvent, event_id: str, entry_id: str | None) -> str:
        """Return the ``visit_id`` of an event: the id of its phone visit's first entry."""
        chain = ev.visit_chain
        known = self._visit_ids.get(chain)
        if known is not None:
            self._visit_ids.move_to_end(chain)
            return known
        # A new visit; or one whose first entry was before a restart (or long forgotten).
        visit_id = entry_id or event_id
        self._visit_ids[chain] = visit_id
        if len(self._visit_ids) > MAX_VISIT_IDS:
            self._visit_ids.popitem(last=False)
        return visit_id

    def maybe_flush(self) -> int:
        """Flush if the buffer is full or the last commit is ``commit_interval_s`` old; return rows.

        An event therefore waits ``commit_interval_s`` at most, plus the time until the next
        call (the next event's `append`, or `Pipeline.tick` once a second).
        """
        if not self._buffer:
            return 0
        if (
            len(self._buffer) >= MAX_BUFFERED_ROWS
            or time.monotonic() - self._last_commit >= self._commit_interval_s
        ):
            return self.flush()
        return 0

    def flush(self) -> int:
        """Commit every buffered event and its outbox row in one transaction; return rows written.

        Raises:
            StoreError: the transaction failed and was rolled back; the rows stay buffered.
        """
        rows = self._buffer
        if not rows:
            return 0
        self._require_writable()
        started = time.perf_counter()
        try:
            with self._db.atomic():
                # executemany, not insert_all(): its per-value JSON check doubled the cost.
                self._db.conn.executemany(_INSERT_SQL, rows)
                self._db.conn.executemany(
                    "INSERT INTO outbox (seq) VALUES (?)", [(row[1],) for row in rows]
                )
        except sqlite3.Error as e:
            msg = f"could not commit {len(rows)} events to {self._path}: {e}"
            raise StoreError(msg) from e
        self._buffer = []
        self._last_commit = time.monotonic()
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started, len(rows))
        return len(rows)

    def correct_clock(self, offset: float) -> list[int]:
        """Restamp this boot's events stamped before the clock was synchronised; return seqs.

        ``offset`` is the synchronised wall clock minus the monotonic clock. An event stamped
        unsynchronised kept the offset it used; its ``ts``, ``first_seen`` and ``last_seen``
        move by the difference, it becomes ``clock_synced`` and goes back into the outbox, so
        the broker gets the corrected copy under the same id and seq. ``dwell_s`` was measured
        on the monotonic clock and stays. Events of earlier boots cannot be corrected: their
        monotonic clock is gone; they stay ``clock_synced`` false.
        """
        self._require_writable()
        if self._boot_id is None:
            return []
        self.flush()
        rows = self._db.execute(
            "SELECT seq, ts, first_seen, last_seen, ts_unix, clock_offset FROM events"
            " WHERE clock_synced = 0 AND boot_id = ? AND clock_offset IS NOT NULL ORDER BY seq",
            [self._boot_id],
        ).fetchall()
        if not rows:
            return []
        updates = []
        for seq, ts, first_seen, last_seen, ts_unix, stamped_offset in rows:
            delta = offset - stamped_offset
            updates.append(
                (
                    _shifted(ts, delta),
                    _shifted(first_seen, delta),
                    _shifted(last_seen, delta),
                    round(ts_unix + delta, 3),
                    seq,
                )
            )
        try:
            with self._db.atomic():
                self._db.conn.executemany(
                    "UPDATE events SET ts = ?, first_seen = ?, last_seen = ?, ts_unix = ?,"
                    " clock_synced = 1, clock_offset = NULL WHERE seq = ?",
                    updates,
                )
                self._db.conn.executemany(
                    "INSERT OR IGNORE INTO outbox (seq) VALUES (?)", [(u[-1],) for u in updates]
                )
        except sqlite3.Error as e:
            msg = f"could not correct the clock of {len(updates)} events in {self._path}: {e}"
            raise StoreError(msg) from e
        deltas = [offset - row[5] for row in rows]
        _LOGGER.warning(
            "Clock synchronised: restamped %d events stamped before (moved by %+.1f to %+.1f s)",
            len(updates),
            min(deltas),
            max(deltas),
        )
        return [u[-1] for u in updates]

    def close(self) -> None:
        """Flush, then close the database and release the writer lock (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._db.close()
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def events(
        self,
        *,
        since: float | None = None,
        type: EventType | None = None,  # noqa: A002 - the contract's key, shadowed only here
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield committed events in seq order, optionally from Unix time ``since`` (on ``ts``)."""
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("ts_unix >= ?")
            params.append(since)
        if type is not None:
            clauses.append("type = ?")
            params.append(EventType(type).value)
        where = " AND ".join(clauses) or None
        return self._rows(where, params, limit=limit)

    def pending(self, limit: int = MAX_BUFFERED_ROWS, after_seq: int = 0) -> list[dict[str, Any]]:
        """Return up to ``limit`` committed events still in the outbox, in seq order.

        ``after_seq`` skips what a publisher already has in flight.
        """
        return list(
            self._rows("seq IN (SELECT seq FROM outbox WHERE seq > ?)", [after_seq], limit=limit)
        )

    def drop_oldest_unsynced(self, count: int) -> int:
        """Delete the ``count`` oldest unsynced events (the disk is nearly full); return how many.

        The last resort of disk pressure: synced events go first, by retention; this only runs
        when that was not enough. Every drop is counted in the ``dropped_unsynced`` state.
        """
        self._require_writable()
        with self._db.atomic():
            dropped = self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                [count],
            ).rowcount
            total = int(self.state("dropped_unsynced") or 0) + dropped
            self._set_state("dropped_unsynced", str(total))
        if dropped:
            _LOGGER.error(
                "Disk nearly full: dropped the %d oldest unsynced events (%d in all)",
                dropped,
                total,
            )
        return dropped

    def state(self, key: str) -> str | None:
        """Return a value of the gateway's small key/value state (None when unset)."""
        row = self._db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, **values: str) -> None:
        """Record key/value state (last PUBACK time, broker state) in one transaction."""
        self._require_writable()
        with self._db.atomic():
            for key, value in values.items():
                self._set_state(key, value)

    def _set_state(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    def mark_synced(self, seqs: Iterable[int]) -> int:
        """Remove events from the outbox in one transaction; return how many were there."""
        self._require_writable()
        with self._db.atomic():
            cursor = self._db.conn.executemany(
                "DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs]
            )
        return cursor.rowcount

    def events_between(self, from_seq: int, to_seq: int) -> list[dict[str, Any]]:
        """Return committed events with ``from_seq <= seq <= to_seq`` (a replay for the server)."""
        return list(self._rows("seq BETWEEN ? AND ?", [from_seq, to_seq]))

    def prune(self, now_unix: float, *, include_unsynced: bool) -> int:
        """Delete events older than the retention period; return how many were deleted.

        Call it only with a synchronised wall clock: a clock that jumped ahead would delete
        recent events. Unsynced events are kept unless ``include_unsynced``.
        """
        self._require_writable()
        cutoff_unix = now_unix - self._retention_days * _SECONDS_PER_DAY
        sql = _PRUNE_ALL_SQL if include_unsynced else _PRUNE_SYNCED_SQL
        deleted = 0
        while True:
            with self._db.atomic():
                batch = self._db.execute(sql, [cutoff_unix, _PRUNE_BATCH_ROWS]).rowcount
            deleted += batch
            if batch < _PRUNE_BATCH_ROWS:
                break
        if deleted:
            _LOGGER.info("Pruned %d events older than %s", deleted, iso_utc(cutoff_unix))
        return deleted

    def stats(self) -> dict[str, Any]:
        """Return counts, the committed seq range and the ``ts`` of the oldest unsynced event."""
        events, first_seq, last_seq = self._db.execute(
            "SELECT count(*), min(seq), max(seq) FROM events"
        ).fetchone()
        oldest = self._db.execute(
            "SELECT ts FROM events WHERE seq IN (SELECT seq FROM outbox) ORDER BY ts_unix LIMIT 1"
        ).fetchone()
        return {
            "events": events,
            "outbox": self._db.table("outbox").count,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "oldest_unsynced_ts": None if oldest is None else oldest[0],
            "path": str(self._path),
        }

    def _rows(
        self, where: str | None, params: list[Any], *, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        rows = self._db.table("events").rows_where(where, params, order_by="seq", limit=limit)
        return (_event_from_row(row) for row in rows)

    def _require_writable(self) -> None:
        if self._lock_fd is None:
            state = "closed" if self._closed else "opened read-only"
            msg = f"{self._path} is {state}"
            raise StoreError(msg)


def _event_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a database row into the contract's dict; SQLite has no booleans, so restore them."""
    event = {key: row[key] for key in EVENT_FIELDS}
    event["clock_synced"] = bool(event["clock_synced"])
    if event["checked_in"] is not None:
        event["checked_in"] = bool(event["checked_in"])
    return event


def _shifted(iso: str, delta: float) -> str:
    return iso_utc(parse_iso_utc(iso) + delta)


def _uuid7() -> str:
    """Return a new UUIDv7 (RFC 9562 §5.7): 48-bit Unix ms, version, variant, 74 random bits."""
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: rand_a takes 12, rand_b 62
    value = (
        (unix_ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


def _take_lock(path: Path) -> int:
    """Lock ``<path>.lock`` for the one writer and record our pid in it; return its descriptor."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        msg = f"cannot create the lock file {lock_path}: {e}"
        raise StoreError(msg) from e
    try:
        # flock, not fcntl/lockf: POSIX record locks belong to the process, so a second open in
        # the same process would get the lock too, and closing any descriptor of the file drops
        # it; a flock belongs to this open file and the kernel releases it when we die.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        msg = f"{path} is in use by another process (pid {holder})"
        raise StoreError(msg) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    # The lock file is never deleted: unlinking it would let a second writer lock a new file.
    return fd


def _release_lock(fd: int | None) -> None:
    """Close the lock descriptor, which releases the flock."""
    if fd is not None:
        os.close(fd)


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Connect, read-only through a ``mode=ro`` URI so that a reader can never write."""
    # check_same_thread=False: the daemon may call us from executor threads; sqlite3 is safe
    # with that as long as calls do not overlap, which the EventStore docstring requires.
    if readonly:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    return sqlite3.connect(path, check_same_thread=False)


def _configure(db: Database, path: Path, synchronous: str, readonly: bool) -> Database:
    """Set the PRAGMAs of deploy-notes §7; all but journal_mode are per connection."""
    db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA temp_store = MEMORY")
    if not readonly:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            _LOGGER.warning("%s: journal_mode is %s, not wal (filesystem?)", path, mode)
        db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT_BYTES}")
    return db


def _migrate(db: Database, path: Path, *, readonly: bool) -> None:
    """Apply pending migrations, or for a read-only open refuse a store that needs them."""
    if not readonly:
        _MIGRATIONS.apply(db)
        return
    pending = [migration.name for migration in _MIGRATIONS.pending(db)]
    if pending:
        msg = f"{path} is not an up-to-date event store (pending: {', '.join(pending)})"
        raise StoreError(msg)


def _read_last_seq(db: Database) -> int:
    """Return the highest seq ever issued, committed rows only (0 for a new store)."""
    row = db.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
        " coalesce((SELECT max(seq) FROM events), 0))"
    ).fetchone()
    return int(row[0])
