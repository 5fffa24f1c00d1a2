"""The pipeline: learned iPhone IDs attached to adverts, the tap, counters, real SQLite."""

from __future__ import annotations

from gateway.decode import BLUEZONE_IOS_SERVICE, BLUEZONE_NAME
from gateway.model import Advert, PresencePolicy, Sighting
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.rolling import AddressIds
from gateway.store import EventStore
from tests.factories import ROLLING_ID, android_advert

IPHONE = "4A:11:22:33:44:55"
T0 = 1596864600.0  # 2020-08-08 05:30 UTC


def iphone_advert(t: float, rssi: int = -60) -> Advert:
    return Advert(t, IPHONE, rssi, name=BLUEZONE_NAME, service_uuids=(BLUEZONE_IOS_SERVICE,))


def test_a_learned_iphone_id_reaches_the_events_and_the_tap(tmp_path):
    ids = AddressIds()
    unresolved: list[Sighting] = []
    tapped: list[Advert] = []
    with EventStore.open(tmp_path / "e.db", gateway="gw", site="s") as store:
        pipeline = Pipeline(
            PresenceTracker(PresencePolicy()), store, wall=float, clock_synced=lambda: True,
            ids=ids, on_unresolved=unresolved.append, tap=tapped.append,
        )  # fmt: skip
        pipeline.feed(iphone_advert(T0))
        assert [s.address for s in unresolved] == [IPHONE]
        ids.learn(IPHONE, ROLLING_ID, T0 + 0.5)
        pipeline.feed(iphone_advert(T0 + 1))
        pipeline.close()
        events = list(store.events())
    assert len(unresolved) == 1  # once learned, no more asking
    assert [a.rolling_id for a in tapped] == [None, ROLLING_ID]
    assert [(e["type"], e["platform"], e["rolling_id"]) for e in events] == [
        ("entry", "ios", None),
        ("exit", "ios", ROLLING_ID),
    ]


def test_counters_count_what_went_through(tmp_path):
    with EventStore.open(tmp_path / "e.db", gateway="gw", site="s") as store:
        pipeline = Pipeline(
            PresenceTracker(PresencePolicy()), store, wall=float, clock_synced=lambda: True
        )
        pipeline.feed(android_advert(T0))
        pipeline.feed(Advert(T0, "AA:BB", -50))
        pipeline.feed(android_advert(T0, rolling_id="00" * 11))  # an 11-byte ID: malformed
        pipeline.close()
    c = pipeline.counters.as_dict()
    assert c["adverts"] == 3
    assert c["sightings"] == {"bluezone": 1}
    assert c["rejected"] == 2
    assert c["malformed"] == 1
    assert c["events"] == {"entry": 1, "exit": 1}
