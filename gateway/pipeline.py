"""decode → presence → store, one advert at a time: the path shared by replay and the daemon.

Running the very same object in both is what makes a live run and a replay of its capture
produce the same events.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.decode import decode_advert
from gateway.model import Advert, CheckIn, Platform, PresenceEvent, Sighting
from gateway.presence import PresenceTracker
from gateway.rolling import AddressIds
from gateway.store import EventStore

TICK_S: Final = 1.0
"""How often, in the adverts' own time, a replay ends silent visits: the daemon's tick."""

EventsHook = Callable[[list[PresenceEvent], list[dict[str, Any]]], None]
"""Called with the engine's decisions and the stored events they became."""
CheckInHook = Callable[[CheckIn], None]


@dataclass(slots=True)
class Counters:
    """What went through the pipeline."""

    adverts: int = 0
    sightings: Counter[str] = field(default_factory=Counter)
    """Sightings per app."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Adverts that are no tracing phone, per reason."""
    malformed: int = 0
    """Adverts that claim a tracing app but whose payload is wrong (also in ``rejected``)."""
    events: Counter[str] = field(default_factory=Counter)
    checkins: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as JSON-ready values."""
        return {
            "adverts": self.adverts,
            "sightings": dict(self.sightings),
            "rejected": sum(self.rejected.values()),
            "malformed": self.malformed,
            "reasons": dict(self.rejected.most_common()),
            "events": dict(self.events),
            "checkins": self.checkins,
        }


class Pipeline:
    """Feed adverts through the decoder and the tracker into the store."""

    def __init__(
        self,
        tracker: PresenceTracker,
        store: EventStore,
        *,
        wall: Callable[[float], float],
        clock_synced: Callable[[], bool],
        on_events: EventsHook | None = None,
        on_checkin: CheckInHook | None = None,
        ids: AddressIds | None = None,
        on_unresolved: Callable[[Sighting], None] | None = None,
        tap: Callable[[Advert], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.store = store
        self.counters = Counters()
        self._wall = wall
        self._clock_synced = clock_synced
        self._on_events = on_events
        self._on_checkin = on_checkin
        self._ids = ids
        """iPhone address → rolling ID read over GATT, attached to its adverts."""
        self._on_unresolved = on_unresolved
        """Called for a Bluezone iPhone sighting without an ID: ask for a GATT read."""
        self._tap = tap
        """Sees every advert (its learned ID attached) before decoding: ``run --capture``."""

    def feed(self, advert: Advert) -> None:
        """Take one advert."""
        counters = self.counters
        counters.adverts += 1
        ids = self._ids
        if ids is not None and advert.address in ids:
            rolling_id = ids.get(advert.address, self._wall(advert.t))
            if rolling_id is not None:
                advert = advert._replace(rolling_id=rolling_id)
        if self._tap is not None:
            self._tap(advert)
        result = decode_advert(advert)
        if isinstance(result, Sighting):
            counters.sightings[result.app] += 1
            if (
                result.platform is Platform.IOS
                and result.rolling_id is None
                and self._on_unresolved is not None
            ):
                self._on_unresolved(result)
            out = self.tracker.observe(result)
            if out:
                self._handle(out)
        else:
            counters.rejected[result.reason] += 1
            if result.malformed:
                counters.malformed += 1

    def replay(self, adverts: Iterable[Advert], tick_s: float = TICK_S) -> None:
        """Feed ``adverts`` (in time order), ticking every ``tick_s`` of their own clock."""
        next_tick = -math.inf
        feed, tick = self.feed, self.tick
        for advert in adverts:
            if advert.t >= next_tick:
                tick(advert.t)
                next_tick = advert.t + tick_s
            feed(advert)

    def tick(self, now: float) -> None:
        """End silent visits as of ``now`` (the source's clock) and commit when due."""
        expired = self.tracker.expire(now)
        if expired:
            self._handle(expired)
        self.store.maybe_flush()

    def close(self) -> None:
        """End every open visit and commit everything."""
        self._handle(self.tracker.close())
        self.store.flush()

    def _handle(self, out: Any) -> None:
        events: list[PresenceEvent] = []
        for item in out:
            if type(item) is CheckIn:
                self.counters.checkins += 1
                if self._on_checkin is not None:
                    self._on_checkin(item)
            else:
                events.append(item)
                self.counters.events[item.type] += 1
        if events:
            stored = self.store.append(events, wall=self._wall, clock_synced=self._clock_synced())
            if self._on_events is not None:
                self._on_events(events, stored)
