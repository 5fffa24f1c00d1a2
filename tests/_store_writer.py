"""Writer process for the kill -9 test in test_store.py: appends events until it is killed.

Usage: ``python tests/_store_writer.py DB_PATH``. After every flush it prints
``committed <last_seq>`` and flushes stdout, so the test knows what must survive a SIGKILL.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.model import App, EventType, Platform, PresenceEvent
from gateway.store import EventStore

VISITS_PER_APPEND = 2  # an entry and an exit each, so 4 events per append
APPENDS_PER_FLUSH = 3
EVENTS_PER_FLUSH = 2 * VISITS_PER_APPEND * APPENDS_PER_FLUSH
_EPOCH_2020_08_08_S = 1_596_844_800.0


def _visit(visit: int) -> list[PresenceEvent]:
    rolling_id = f"{visit:024x}"

    def event(type_: EventType, at: float, sightings: int) -> PresenceEvent:
        return PresenceEvent(
            type_, rolling_id, visit, at, App.BLUEZONE, Platform.ANDROID, rolling_id,
            rssi_max=-55, sightings=sightings, first_seen=float(visit), last_seen=at,
        )  # fmt: skip

    return [event(EventType.ENTRY, visit + 1.0, 4), event(EventType.EXIT, visit + 31.0, 90)]


def main() -> None:
    """Append forever; a huge commit interval leaves every commit to the explicit flush."""
    with EventStore.open(
        Path(sys.argv[1]), gateway="gw-test", site="lab", commit_interval_s=3600.0
    ) as store:
        visit = store.last_seq  # any unique number will do
        while True:
            for _ in range(APPENDS_PER_FLUSH):
                events = []
                for _ in range(VISITS_PER_APPEND):
                    visit += 1
                    events += _visit(visit)
                store.append(events, wall=lambda t: t + _EPOCH_2020_08_08_S, clock_synced=True)
            store.flush()
            sys.stdout.write(f"committed {store.last_seq}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
