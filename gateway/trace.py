"""Tracing an F0: the visits of a phone's rolling IDs, and whose phones were there meanwhile.

One implementation for every database: SQLAlchemy Core over an ``events`` table with at least
the columns of `events_table` (the gateway's own SQLite file and the central database both
have them), so ``bluezone-gateway trace`` on one gateway and ``bluezone-central trace`` on the
whole province give the same answer for the same events.

A **visit** is built from events (docs/mqtt.md): an exit closes the entry named by its
``entry_id`` and lasts ``dwell_s``; an entry without an exit yet is an **open** visit, which is
taken to last until the newest event its gateway has reported (the phone was still inside
then, as far as anyone knows). A Bluezone iPhone's entry may lack the rolling ID its exit
carries: the visit takes the exit's.

Times are Unix seconds (the ``ts_unix`` column) so that the overlap arithmetic is the same
plain SQL and Python on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from gateway import rolling
from gateway.model import iso_utc
from gateway.store import EventStore, StoreError

MAX_VISIT_S: Final = 12 * 3600.0
"""Longest visit looked for around a time window: a receptionist's working day at the desk.
Events this far before and after a window are read so that visits crossing its edges pair up."""
MAX_DAYS: Final = 60
"""Most days one trace covers (96 IDs each); a Bluezone case history is 14-21 days."""
IN_CHUNK: Final = 500
"""Values per ``IN (...)`` list: far below SQLite's 32766 bound variables, one index probe each."""
BLUEZONE: Final = "bluezone"


@dataclass(frozen=True, slots=True)
class Visit:
    """One phone's stay in one gateway's zone."""

    rolling_id: str | None
    """The rolling ID (lower-case hex), None when the gateway never learned it."""
    app: str
    gateway: str
    site: str
    entry: float
    """Unix seconds: the entry event's ``ts`` (or the exit's ``ts`` minus ``dwell_s``)."""
    exit: float | None
    """Unix seconds of the exit (last seen inside); None while the visit is open."""
    end: float
    """``exit``, or for an open visit the newest event time of its gateway."""

    def overlap_s(self, other: Visit) -> tuple[float, float]:
        """Return (seconds both were inside, when that began); seconds <= 0: never together."""
        start = max(self.entry, other.entry)
        return min(self.end, other.end) - start, start


def events_table(metadata: sa.MetaData | None = None) -> sa.Table:
    """Describe the columns the trace reads, for an events table defined elsewhere.

    The gateway's store (`gateway.store`) created its table in raw SQL; this names the subset
    the queries here use. The central schema defines the same columns (and more).
    """
    return sa.Table(
        "events",
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("gateway", sa.String(64)),
        sa.Column("site", sa.String(64)),
        sa.Column("type", sa.String(5)),
        sa.Column("ts_unix", sa.Float(53)),
        sa.Column("app", sa.String(16)),
        sa.Column("rolling_id", sa.String(32)),
        sa.Column("entry_id", sa.String(36)),
        sa.Column("dwell_s", sa.Float(53)),
    )


def open_gateway_store(path: Path) -> sa.Engine:
    """Return a read-only engine on a gateway's own event store (``[store] path``).

    The file is first opened as `EventStore.open` with ``readonly=True`` does, so a file that is
    missing, not an event store or not migrated is refused with the store's own message; then
    every connection is a ``mode=ro`` URI, which can never write (the daemon may be running).

    Raises:
        StoreError: the file is not a usable, up-to-date event store.
    """
    if not path.is_file():
        msg = f"{path} does not exist (the gateway's [store] path, events.db by default)"
        raise StoreError(msg)
    EventStore.open(path, gateway="", site="", readonly=True).close()
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
        poolclass=NullPool,
    )


def f0_ids(key: bytes, day: date, days: int = 1, *, key_date: date | None = None) -> list[str]:
    """Return the rolling IDs (hex) a phone broadcast on ``day`` and the ``days - 1`` after it.

    Args:
        key: the phone's Bluezone daily key of ``key_date`` (32 bytes).
        day: the first day to trace (UTC).
        days: how many days, 1..`MAX_DAYS`.
        key_date: the day ``key`` belongs to; default ``day``. With the base ID this is the
            day it was created (protocol.md §3: the base ID is the first day's key).

    Raises:
        ValueError: a key that is not 32 bytes, ``day`` before ``key_date`` (the chain only goes
            forward), or ``days`` out of range.
    """
    if not 1 <= days <= MAX_DAYS:
        msg = f"days must be 1..{MAX_DAYS}, got {days}"
        raise ValueError(msg)
    daily = rolling.daily_key(key, key_date or day, day)
    ids: list[str] = []
    for n in range(days):
        if n:
            daily = rolling.daily_key(daily, day + timedelta(days=n - 1), day + timedelta(days=n))
        ids.extend(rid.hex() for rid in rolling.day_ids(daily))
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the F0 options of both ``trace`` commands (as ``bluezone-gateway ids`` has them)."""
    parser.add_argument(
        "--daily-key", required=True, metavar="HEX",
        help="the F0's 32-byte daily key of --date, hex (or its base ID, with --base-date)",
    )  # fmt: skip
    parser.add_argument(
        "--date", type=date.fromisoformat, required=True, metavar="YYYY-MM-DD",
        help="first UTC day to trace",
    )  # fmt: skip
    parser.add_argument(
        "--days", type=int, default=1, metavar="N", help=f"days from --date (1..{MAX_DAYS}; 1)"
    )
    parser.add_argument(
        "--base-date", type=date.fromisoformat, metavar="YYYY-MM-DD",
        help="the day the key belongs to, when it is not --date: with the base ID, the day the "
        "app created it (keys chain forward)",
    )  # fmt: skip


def ids_from_arguments(args: argparse.Namespace) -> list[str]:
    """Return the F0's rolling IDs for the options of `add_arguments`.

    Raises:
        ValueError: what is wrong, naming the option.
    """
    try:
        key = bytes.fromhex(args.daily_key)
    except ValueError:
        msg = f"--daily-key must be hex, got {args.daily_key!r}"
        raise ValueError(msg) from None
    if len(key) != rolling.KEY_LEN:
        msg = f"--daily-key must be {rolling.KEY_LEN} bytes ({2 * rolling.KEY_LEN} hex digits)"
        raise ValueError(msg)
    try:
        return f0_ids(key, args.date, args.days, key_date=args.base_date)
    except ValueError as e:
        msg = f"--date/--days/--base-date: {e}"
        raise ValueError(msg) from None


def trace(conn: sa.Connection, events: sa.Table, ids: Collection[str]) -> dict[str, Any]:
    """Return the visits of ``ids`` and the Bluezone IDs that were inside with them.

    The result is the JSON document of the ``trace`` commands: ``visits`` (every visit of the
    F0's IDs at every gateway, by entry time) and ``co_present`` (per other Bluezone rolling ID
    and gateway: the seconds it was inside together with the F0 and when that first began).
    Only visits at the same gateway count as co-present; an F0's own IDs are never listed.
    """
    wanted = {rid.lower() for rid in ids}
    f0 = [v for v in _f0_visits(conn, events, wanted) if v.rolling_id in wanted]
    f0.sort(key=lambda v: (v.entry, v.gateway, v.rolling_id or ""))
    together: dict[tuple[str, str], list[float]] = {}  # (id, gateway) -> [seconds, first]
    for gateway in sorted({v.gateway for v in f0}):
        mine = [v for v in f0 if v.gateway == gateway]
        lo, hi = min(v.entry for v in mine), max(v.end for v in mine)
        others = [
            w
            for w in load_visits(conn, events, lo, hi, gateway=gateway)
            if w.app == BLUEZONE and w.rolling_id is not None and w.rolling_id not in wanted
        ]
        for v in mine:
            for w in others:
                seconds, start = v.overlap_s(w)
                if seconds <= 0:
                    continue
                key = (str(w.rolling_id), gateway)
                seen = together.setdefault(key, [0.0, start])
                seen[0] += seconds
                seen[1] = min(seen[1], start)
    co_present = sorted(together.items(), key=lambda kv: (kv[1][1], kv[0][1], kv[0][0]))
    return {
        "visits": [
            {
                "rolling_id": v.rolling_id,
                "gateway": v.gateway,
                "site": v.site,
                "entry": iso_utc(v.entry),
                "exit": None if v.exit is None else iso_utc(v.exit),
            }
            for v in f0
        ],
        "co_present": [
            {
                "rolling_id": rid,
                "gateway": gateway,
                "overlap_s": round(seconds, 1),
                "first_overlap": iso_utc(first),
            }
            for (rid, gateway), (seconds, first) in co_present
        ],
    }


def load_visits(
    conn: sa.Connection,
    events: sa.Table,
    lo: float,
    hi: float,
    *,
    gateway: str | None = None,
) -> list[Visit]:
    """Return every visit (of one gateway, or all) that was inside at some time in [lo, hi]."""
    c = events.c
    where = sa.and_(c.ts_unix >= lo - MAX_VISIT_S, c.ts_unix <= hi + MAX_VISIT_S)
    if gateway is not None:
        where = sa.and_(c.gateway == gateway, where)
    rows = _rows(conn, sa.select(*_columns(events)).where(where))
    visits = _pair(conn, events, rows)
    return [v for v in visits if v.entry <= hi and v.end >= lo]


def _f0_visits(conn: sa.Connection, events: sa.Table, ids: set[str]) -> list[Visit]:
    c = events.c
    rows = _rows_in(conn, events, c.rolling_id, sorted(ids))
    have = {r["id"] for r in rows}
    # A Bluezone iPhone's entry may carry no ID: fetch the entries the F0's exits close.
    missing = sorted({r["entry_id"] for r in rows if r["entry_id"]} - have)
    rows += _rows_in(conn, events, c.id, missing)
    return _pair(conn, events, rows)


def _pair(conn: sa.Connection, events: sa.Table, rows: list[dict[str, Any]]) -> list[Visit]:
    """Build visits from event rows; look up the exits of entries that have none among them."""
    by_id = {r["id"]: r for r in rows}
    closed = {r["entry_id"] for r in rows if r["type"] == "exit" and r["entry_id"]}
    unpaired = sorted(i for i, r in by_id.items() if r["type"] == "entry" and i not in closed)
    for r in _rows_in(conn, events, events.c.entry_id, unpaired):
        if r["type"] == "exit":
            by_id.setdefault(r["id"], r)
    exits = [r for r in by_id.values() if r["type"] == "exit"]
    closed = {r["entry_id"] for r in exits if r["entry_id"]}
    visits = [_closed_visit(x, by_id.get(x["entry_id"] or "")) for x in exits]
    opened = [r for r in by_id.values() if r["type"] == "entry" and r["id"] not in closed]
    latest = _latest(conn, events, {r["gateway"] for r in opened})
    visits += [
        Visit(
            r["rolling_id"],
            r["app"],
            r["gateway"],
            r["site"],
            r["ts_unix"],
            None,
            max(r["ts_unix"], latest.get(r["gateway"], r["ts_unix"])),
        )
        for r in opened
    ]
    return visits


def _closed_visit(exit_row: dict[str, Any], entry_row: dict[str, Any] | None) -> Visit:
    ts = exit_row["ts_unix"]
    # Without the entry (outside this window, or never received), dwell_s dates it.
    entry = entry_row["ts_unix"] if entry_row is not None else ts - (exit_row["dwell_s"] or 0.0)
    rid = exit_row["rolling_id"] or (entry_row["rolling_id"] if entry_row else None)
    return Visit(rid, exit_row["app"], exit_row["gateway"], exit_row["site"], entry, ts, ts)


def _latest(conn: sa.Connection, events: sa.Table, gateways: Iterable[str]) -> dict[str, float]:
    """Return the newest event time of each gateway: how long an open visit is known to last."""
    names = sorted(gateways)
    if not names:
        return {}
    c = events.c
    out: dict[str, float] = {}
    for chunk in _chunks(names):
        query = sa.select(c.gateway, sa.func.max(c.ts_unix)).where(c.gateway.in_(chunk))
        for gateway, ts in conn.execute(query.group_by(c.gateway)):
            out[gateway] = float(ts)
    return out


def _columns(events: sa.Table) -> list[sa.Column[Any]]:
    c = events.c
    return [c.id, c.gateway, c.site, c.type, c.ts_unix, c.app, c.rolling_id, c.entry_id, c.dwell_s]


def _rows(conn: sa.Connection, query: sa.Select[Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(query)]


def _rows_in(
    conn: sa.Connection, events: sa.Table, column: sa.Column[Any], values: Sequence[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(values):
        rows += _rows(conn, sa.select(*_columns(events)).where(column.in_(chunk)))
    return rows


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(values), IN_CHUNK):
        yield values[i : i + IN_CHUNK]
