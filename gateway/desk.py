"""What the security desk sees: the check-in panel, the counts and the recent events; pure.

The web view (`gateway.web`) feeds a `Desk` the events the daemon stores and the check-ins
the presence engine signals, and sends its JSON-ready snapshots to the page. The desk never
reads a clock: every method takes the time, Unix seconds on the wall clock (the page shows
times of day, and "today" is the gateway's local calendar day), so a test is a timeline.

Nothing a `Desk` returns holds a full rolling ID: `short_id` keeps the first 6 hex digits,
enough for a guard to tell two phones apart on screen without displaying the ID itself.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Final

from gateway.model import App, CheckIn, Platform, iso_utc, parse_iso_utc

SHORT_ID_HEX: Final = 6
"""Hex digits of a rolling ID the page shows: 16.7 million values tell phones apart."""
RECENT_MAX: Final = 50
"""Events kept for the page's list (it shows as many as fit)."""
HOUR_S: Final = 3600.0
KINDS: Final = ("entry", "exit")


class Panel(StrEnum):
    """States of the check-in panel."""

    IDLE = "idle"
    """Nobody is checking in: the neutral panel."""
    READING = "reading"
    """A Bluezone iPhone is held close and its rolling ID is being read over GATT."""
    BLUEZONE = "bluezone"
    """A Bluezone phone was held close (and an iPhone's ID read): green, with a beep."""
    UNREAD = "unread"
    """A Bluezone iPhone was held close but its ID could not be read (the app may be closed)."""
    OTHER = "other"
    """Another tracing app (GAEN, BlueTrace) was held close: not Bluezone."""


def short_id(rolling_id: str | None) -> str | None:
    """Return the first hex digits of a rolling ID and an ellipsis (None stays None)."""
    if rolling_id is None:
        return None
    return rolling_id[:SHORT_ID_HEX] + "…"


def _count_key(event: Mapping[str, Any]) -> tuple[str, str]:
    return str(event["type"]), str(event["app"])


class Desk:
    """The desk's state; feed it stored events and check-ins, read JSON-ready snapshots."""

    def __init__(
        self,
        *,
        hold_s: float,
        reading_timeout_s: float,
        reads_ids: bool,
        tz: tzinfo | None = None,
        recent_max: int = RECENT_MAX,
    ) -> None:
        """Set the panel's timing.

        Args:
            hold_s: How long a check-in stays on the panel.
            reading_timeout_s: How long to wait for an iPhone's ID before showing it unread.
            reads_ids: Whether iPhones' IDs are read over GATT at all (not in the simulator):
                without a reader a Bluezone iPhone is shown at once, without an ID.
            tz: The zone whose calendar day is "today"; None for the system's local zone.
            recent_max: Events kept for the list.
        """
        self._hold_s = hold_s
        self._reading_timeout_s = reading_timeout_s
        self._reads_ids = reads_ids
        self._tz = tz
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent_max)
        self._hour: list[tuple[float, str, str]] = []
        """Heap of (ts, type, app) of the events of the last hour: exits carry their
        last-seen time, so events do not arrive in ``ts`` order."""
        self._hour_counts: Counter[tuple[str, str]] = Counter()
        self._today_counts: Counter[tuple[str, str]] = Counter()
        self._day = (0.0, 0.0, "")
        """Start and end (Unix seconds) and ISO date of the local day being counted."""
        self._panel: dict[str, Any] = {"state": Panel.IDLE.value}
        self._panel_key: str | None = None
        self._panel_until = 0.0
        self._panel_n = 0
        """Check-ins shown so far: the page beeps for a new one, not for a reconnect."""

    # Events and counts

    def day_start(self, now: float) -> float:
        """Return when today began (local midnight), Unix seconds."""
        self._roll(now)
        return self._day[0]

    def window_start(self, now: float) -> float:
        """Return the earliest event time the counts need: today's start or an hour ago."""
        self._roll(now)
        return min(self._day[0], now - HOUR_S)

    def load(self, events: Iterable[Mapping[str, Any]], now: float) -> None:
        """Start from stored events (those since `window_start`), so a restart keeps counts."""
        self._recent.clear()
        self._hour.clear()
        self._hour_counts.clear()
        self._today_counts.clear()
        self.add_events(events, now)

    def add_events(self, events: Iterable[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
        """Count stored events (the contract's dicts); return their items for the page's list."""
        self._roll(now)
        self._prune(now)
        start, end, _ = self._day
        items = []
        for event in events:
            ts = parse_iso_utc(event["ts"])
            key = _count_key(event)
            if start <= ts < end:
                self._today_counts[key] += 1
            if ts >= now - HOUR_S:
                heapq.heappush(self._hour, (ts, *key))
                self._hour_counts[key] += 1
            item = {
                "seq": event["seq"],
                "ts": event["ts"],
                "type": event["type"],
                "app": event["app"],
                "platform": event["platform"],
                "id_short": short_id(event["rolling_id"]),
                "dwell_s": event["dwell_s"],
                "checked_in": event["checked_in"],
                "direction": event["direction"],
            }
            self._recent.append(item)
            items.append(item)
        return items

    def recent(self) -> list[dict[str, Any]]:
        """Return the recent events for the page, newest first."""
        return list(reversed(self._recent))

    def counts(
        self, now: float, present: Mapping[str, int], ids: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """Return per app: inside now, entries and exits in the last hour and today.

        ``present`` (app → phones inside: distinct visits, linked keys counted once) and
        ``ids`` (app → keys inside; default ``present``) come from the presence engine.
        """
        self._roll(now)
        self._prune(now)
        out: dict[str, Any] = {"day": self._day[2]}
        for app in App:
            out[app.value] = {
                "present": present.get(app.value, 0),
                "ids": (present if ids is None else ids).get(app.value, 0),
                "hour": {kind: self._hour_counts[kind, app.value] for kind in KINDS},
                "today": {kind: self._today_counts[kind, app.value] for kind in KINDS},
            }
        return out

    def _roll(self, now: float) -> None:
        """Begin a new day's counts when ``now`` left the day being counted."""
        start, end, _ = self._day
        if start <= now < end:
            return
        local = datetime.fromtimestamp(now, UTC).astimezone(self._tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # Arithmetic on an aware datetime keeps its offset: right for Vietnam (no DST); on a
        # DST change day elsewhere, "today" is an hour off until the next midnight.
        self._day = (
            midnight.timestamp(),
            (midnight + timedelta(days=1)).timestamp(),
            midnight.date().isoformat(),
        )
        self._today_counts.clear()

    def _prune(self, now: float) -> None:
        horizon = now - HOUR_S
        while self._hour and self._hour[0][0] < horizon:
            _, kind, app = heapq.heappop(self._hour)
            self._hour_counts[kind, app] -= 1

    # The check-in panel

    def checkin(self, checkin: CheckIn, at: float) -> dict[str, Any]:
        """Show a phone held close (``at``: the check-in's wall time); return the panel."""
        if checkin.app is not App.BLUEZONE:
            state = Panel.OTHER
        elif checkin.platform is Platform.IOS and checkin.rolling_id is None and self._reads_ids:
            state = Panel.READING
        else:
            state = Panel.BLUEZONE
        hold_s = self._reading_timeout_s if state is Panel.READING else self._hold_s
        self._panel_n += 1
        self._panel_key = checkin.key
        self._panel_until = at + hold_s
        self._panel = {
            "state": state.value,
            "app": checkin.app.value,
            "platform": None if checkin.platform is None else checkin.platform.value,
            "id_short": short_id(checkin.rolling_id),
            "ts": iso_utc(at),
        }
        return self.panel(at)

    def id_read(self, key: str, rolling_id: str | None, now: float) -> dict[str, Any] | None:
        """An iPhone's GATT read ended (``rolling_id`` None: it failed).

        Returns the panel when it was waiting for this phone, else None.
        """
        if self._panel["state"] != Panel.READING or key != self._panel_key:
            return None
        if now >= self._panel_until:
            return None  # it gave up waiting already (`expire`)
        return self._read_ended(rolling_id, now)

    def _read_ended(self, rolling_id: str | None, now: float) -> dict[str, Any]:
        state = Panel.BLUEZONE if rolling_id is not None else Panel.UNREAD
        self._panel = {**self._panel, "state": state.value, "id_short": short_id(rolling_id)}
        self._panel_n += 1
        self._panel_until = now + self._hold_s
        return self.panel(now)

    def expire(self, now: float) -> dict[str, Any] | None:
        """Give up waiting for an iPhone's ID after ``reading_timeout_s``.

        Returns the panel, now unread, when that happened (the shell pushes it), else None.
        The GATT reader may never answer: it skips an iPhone that failed lately.
        """
        if self._panel["state"] != Panel.READING or now < self._panel_until:
            return None
        return self._read_ended(None, now)

    def panel(self, now: float) -> dict[str, Any]:
        """Return the panel as of ``now``; ``remaining_s`` tells the page when to clear it."""
        remaining_s = self._panel_until - now
        if self._panel["state"] == Panel.IDLE or remaining_s <= 0:
            return {"state": Panel.IDLE.value, "n": self._panel_n}
        return {**self._panel, "n": self._panel_n, "remaining_s": round(remaining_s, 3)}

    def snapshot(
        self, now: float, present: Mapping[str, int], ids: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """Return everything the page shows, for a page that (re)connects."""
        return {
            "panel": self.panel(now),
            "counts": self.counts(now, present, ids),
            "recent": self.recent(),
        }
