"""Daily reports per site: distinct Bluezone IDs, entries, and peak presence.

Days are UTC days, as Bluezone's own rolling IDs are (protocol.md §3; Vietnam is UTC+7, so a
working day 08:00-18:00 local falls inside one UTC day). The counts are SQL over the events
table; peak presence sweeps the day's visits, built by the same code as tracing
(`gateway.trace.load_visits`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from gateway.model import iso_utc
from gateway.trace import BLUEZONE, Visit, load_visits

COLUMNS: Final = (
    "site", "date", "gateways", "bluezone_visits", "bluezone_ids", "entries", "peak_presence",
    "peak_at",
)  # fmt: skip
"""The report's columns, in order."""
MIN_VISIT_S: Final = 0.001
"""A visit whose exit carries no dwell counts as present this long (it was there)."""


def daily(conn: sa.Connection, events: sa.Table, day: date) -> list[dict[str, Any]]:
    """Return one row per site with events on ``day`` (UTC), by site.

    ``bluezone_visits`` counts distinct Bluezone visits (``visit_id``: a phone's keys linked
    across its quarter-hour ID rotation, README "Visits"), the people; ``bluezone_ids``
    counts distinct rolling IDs beside it, an upper bound (a phone changes its ID every 15
    minutes). ``entries``
    counts entry events of every app. ``peak_presence`` is the most visits (any app, all of
    the site's gateways) open at one moment of the day, and ``peak_at`` its first moment.
    """
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    hi = (datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)).timestamp()
    c = events.c
    query = (
        sa.select(
            c.site,
            sa.func.count(sa.distinct(c.gateway)),
            sa.func.count(sa.distinct(sa.case((c.app == BLUEZONE, c.visit_id)))),
            sa.func.count(sa.distinct(sa.case((c.app == BLUEZONE, c.rolling_id)))),
            sa.func.sum(sa.case((c.type == "entry", 1), else_=0)),
        )
        .where(c.ts_unix >= lo, c.ts_unix < hi)
        .group_by(c.site)
    )
    rows: dict[str, dict[str, Any]] = {}
    for site, gateway_count, visits, ids, entries in conn.execute(query):
        rows[site] = {
            "site": site,
            "date": day.isoformat(),
            "gateways": gateway_count,
            "bluezone_visits": visits,
            "bluezone_ids": ids,
            "entries": int(entries or 0),
            "peak_presence": 0,
            "peak_at": None,
        }
    by_site: dict[str, list[Visit]] = defaultdict(list)
    for visit in load_visits(conn, events, lo, hi):
        by_site[visit.site].append(visit)
    for site, visits in by_site.items():
        row = rows.setdefault(
            site,
            {"site": site, "date": day.isoformat(), "gateways": 0, "bluezone_visits": 0,
             "bluezone_ids": 0, "entries": 0, "peak_presence": 0, "peak_at": None},
        )  # fmt: skip
        peak, at = peak_presence(visits, lo, hi)
        row.update(peak_presence=peak, peak_at=None if at is None else iso_utc(at))
    return [rows[site] for site in sorted(rows)]


def peak_presence(visits: list[Visit], lo: float, hi: float) -> tuple[int, float | None]:
    """Return the most visits open at once within [lo, hi), and when that first happened.

    A visit that ends when another begins does not overlap it.
    """
    changes: list[tuple[float, int]] = []
    for v in visits:
        start, end = max(v.entry, lo), min(max(v.end, v.entry + MIN_VISIT_S), hi)
        if start < end:
            changes += [(start, 1), (end, -1)]
    changes.sort()  # at equal times -1 sorts first: leaving before the next one enters
    present = peak = 0
    at: float | None = None
    for t, delta in changes:
        present += delta
        if present > peak:
            peak, at = present, t
    return peak, at
