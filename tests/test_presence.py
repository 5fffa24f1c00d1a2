"""The presence engine as timelines: sightings in, events out, no clock anywhere."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.linker import LinkPolicy
from gateway.model import App, CheckIn, EventType, Platform, PresenceEvent, Sighting
from gateway.presence import PresenceTracker
from tests.factories import kinds, policy, sighting

A = "aaaaaaaaaaaaaaaaaaaaaaaa"
B = "bbbbbbbbbbbbbbbbbbbbbbbb"


def feed(tracker, samples):
    out = []
    for key, rssi, at in samples:
        out += tracker.observe(sighting(key, rssi=rssi, at=at))
    return out


def steady(key, rssi, start, stop, every=0.125):
    n = round((stop - start) / every)
    return [(key, rssi, start + i * every) for i in range(n)]


def test_strong_phone_enters_at_once_and_exit_carries_last_seen():
    t = PresenceTracker(policy(exit_timeout_s=30))
    assert kinds(t.observe(sighting(A, rssi=-60, at=0))) == [("entry", A, 0.0)]
    assert t.expire(now=29.9) == []
    assert kinds(t.expire(now=30.1)) == [("exit", A, 0.0)]  # EXIT carries the last-seen time
    assert len(t) == 0


def test_weak_phone_never_enters():
    t = PresenceTracker(policy())
    assert feed(t, steady(A, -90, 0, 60)) == []


def test_entry_needs_evidence_near_the_threshold():
    # One sample just above enter_rssi is not enough; a steady stream of them is.
    p = policy()
    t = PresenceTracker(p)
    assert t.observe(sighting(A, rssi=round(p.enter_rssi) + 4, at=0)) == []
    out = feed(t, steady(A, round(p.enter_rssi) + 4, 0.125, 5))
    assert [k for k, _, _ in kinds(out)] == ["entry"]


def test_bluezone_duty_cycle_does_not_split_a_visit():
    # 15 s on / 15 s off (AppConstants) for five minutes at the desk: one visit.
    t = PresenceTracker(policy())
    samples = []
    for cycle in range(10):
        samples += steady(A, -64, cycle * 30.0, cycle * 30.0 + 15)
    out = feed(t, samples)
    for now in range(1, 300):
        out += t.expire(now)
    out += t.close()
    assert kinds(out) == [("entry", A, 0.0), ("exit", A, samples[-1][2])]


def test_walking_away_while_heard_exits_at_last_inside():
    p = policy(exit_weak_s=3.0, smoothing_s=1.0)
    t = PresenceTracker(p)
    out = feed(t, steady(A, -60, 0, 10))
    away = steady(A, -95, 10, 20)
    decided_at = []
    for key, rssi, at in away:
        step = t.observe(sighting(key, rssi=rssi, at=at))
        if step:
            decided_at.append(at)
        out += step
    assert [k for k, _, _ in kinds(out)] == ["entry", "exit"]
    exit_event = out[-1]
    assert isinstance(exit_event, PresenceEvent)
    # The smoothed RSSI takes a fraction of a second to fall through exit_rssi: the exit is
    # stamped then, not when exit_weak_s later confirmed it.
    assert 10 <= exit_event.at <= 10 + p.smoothing_s
    assert exit_event.last_seen == exit_event.at
    assert len(decided_at) == 1
    assert 0 <= decided_at[0] - (exit_event.at + p.exit_weak_s) <= p.smoothing_s
    assert exit_event.sightings == 80 + round((decided_at[0] - 10) / 0.125) + 1


def test_noise_around_the_edge_does_not_flap():
    # A phone standing 1 dB inside the enter threshold with 6 dB jitter: at most one visit.
    p = policy()
    rng = random.Random(1)
    t = PresenceTracker(p)
    samples = [(A, round(p.enter_rssi + 1 + rng.gauss(0, 6)), i * 0.125) for i in range(4800)]
    out = feed(t, samples) + t.close()
    assert len([e for e in out if e.type is EventType.ENTRY]) <= 1


def test_checkin_fires_once_when_held_close_and_rearms_after():
    p = policy(checkin_rssi=-50, checkin_samples=3)
    t = PresenceTracker(p)
    out = feed(t, steady(A, -45, 0, 2))
    assert [k for k, _, _ in kinds(out)] == ["entry", "checkin"]
    assert isinstance(out[-1], CheckIn)
    assert out[-1].at == 0.25  # the third close sample
    assert feed(t, steady(A, -45, 2, 4)) == []  # still held: no second check-in
    feed(t, steady(A, -70, 4, 8))  # pocketed again
    again = feed(t, steady(A, -45, 8, 9))
    assert [k for k, _, _ in kinds(again)] == ["checkin"]
    out = t.close()
    assert isinstance(out[0], PresenceEvent)
    assert out[0].checked_in


def test_memory_is_bounded_and_evicted_visits_are_closed():
    t = PresenceTracker(policy(max_devices=100))
    out = feed(t, [(f"{i:024x}", -60, i * 0.01) for i in range(1000)])
    assert len(t) == 100
    entries = [e for e in out if e.type is EventType.ENTRY]
    exits = [e for e in out if e.type is EventType.EXIT]
    assert len(entries) == 1000
    assert len(exits) == 900
    assert {e.key for e in exits} == {f"{i:024x}" for i in range(900)}


def test_expire_forgets_silent_devices_only():
    t = PresenceTracker(policy(exit_timeout_s=30))
    feed(t, [(A, -90, 0.0), (B, -90, 20.0)])
    assert t.expire(now=31) == []
    assert len(t) == 1
    assert t.present() == []


def test_two_devices_are_independent():
    t = PresenceTracker(policy())
    out = feed(t, [(A, -60, 0.0), (B, -62, 0.5)])
    assert kinds(out) == [("entry", A, 0.0), ("entry", B, 0.5)]
    assert sorted(t.present()) == [A, B]


samples_strategy = st.lists(
    st.tuples(st.sampled_from([A, B]), st.integers(-100, -30), st.floats(0, 2)),
    max_size=300,
)


def timeline(raw):
    at = 0.0
    out = []
    for key, rssi, gap in raw:
        at += gap
        out.append((key, rssi, at))
    return out


@settings(max_examples=300, deadline=None)
@given(samples_strategy, st.floats(0.2, 3))
def test_entries_and_exits_alternate_and_exits_follow_their_entries(raw, tick):
    p = policy(exit_timeout_s=5)
    t = PresenceTracker(p)
    out: list[PresenceEvent | CheckIn] = []
    next_tick = 0.0
    for key, rssi, at in timeline(raw):
        while next_tick <= at:
            out += t.expire(next_tick)
            next_tick += tick
        out += t.observe(sighting(key, rssi=rssi, at=at))
    out += t.close()
    inside: dict[str, PresenceEvent] = {}
    for event in out:
        if isinstance(event, CheckIn):
            assert event.key in inside
            continue
        if event.type is EventType.ENTRY:
            assert event.key not in inside
            inside[event.key] = event
        else:
            entry = inside.pop(event.key)
            assert entry.visit == event.visit
            assert entry.at <= event.at
    assert inside == {}


@settings(max_examples=200, deadline=None)
@given(samples_strategy, st.floats(0.2, 3), st.floats(0.2, 3))
def test_when_expire_runs_does_not_change_the_events(raw, tick_a, tick_b):
    # The daemon's ticker and replay's per-second ticks fire at different moments; the events
    # (and their times and counts) must not depend on it.
    def run(tick):
        t = PresenceTracker(policy(exit_timeout_s=5))
        out: list[PresenceEvent | CheckIn] = []
        next_tick = 0.0
        for key, rssi, at in timeline(raw):
            while next_tick < at:
                out += t.expire(next_tick)
                next_tick += tick
            out += t.observe(sighting(key, rssi=rssi, at=at))
        out += t.close()
        return sorted(
            (e.key, e.type.value, e.at, e.sightings, e.rssi_max)
            for e in out
            if isinstance(e, PresenceEvent)
        )

    assert run(tick_a) == run(tick_b)


def test_two_adapters_give_direction():
    t = PresenceTracker(policy(), roles={"hci0": "outside", "hci1": "inside"})

    def seen(adapter, rssi, at):
        return t.observe(sighting(A, rssi=rssi, at=at)._replace(adapter=adapter))

    out = list(seen("hci0", -60, 0.0))
    out += seen("hci1", -62, 0.1)
    out += seen("hci1", -60, 5.0)
    out += t.close()
    entry, exit_ = [e for e in out if isinstance(e, PresenceEvent)]
    assert (entry.direction, exit_.direction) == ("in", "in")


def test_direction_out_and_none():
    roles = {"hci0": "outside", "hci1": "inside"}
    t = PresenceTracker(policy(), roles=roles)
    out = list(t.observe(sighting(A, at=0.0)._replace(adapter="hci1")))
    out += t.observe(sighting(A, at=1.0)._replace(adapter="hci0"))
    out += t.observe(sighting(B, at=0.0)._replace(adapter="hci0"))
    out += t.observe(sighting(B, at=1.0)._replace(adapter="hci0"))
    out += t.close()
    got = {(e.key, e.type.value): e.direction for e in out if isinstance(e, PresenceEvent)}
    assert got == {(A, "entry"): "out", (A, "exit"): "out", (B, "entry"): "in", (B, "exit"): None}


def test_one_adapter_has_no_direction():
    t = PresenceTracker(policy())
    out = list(t.observe(sighting(A, at=0.0)._replace(adapter="hci0"))) + t.close()
    assert [e.direction for e in out if isinstance(e, PresenceEvent)] == [None, None]


def iphone(address, rssi=-60, at=0.0, rolling_id=None):
    return sighting(address, rssi=rssi, at=at, platform=Platform.IOS)._replace(
        address=address, rolling_id=rolling_id
    )


def test_an_iphone_id_learned_later_keeps_the_visit_and_rides_along():
    t = PresenceTracker(policy())
    address = "4A:00:00:00:00:01"
    out = list(t.observe(iphone(address, at=0.0)))
    out += t.observe(iphone(address, at=1.0, rolling_id=A))
    out += t.observe(iphone(address, at=2.0, rolling_id=A))
    out += t.close()
    events = [e for e in out if isinstance(e, PresenceEvent)]
    assert [(e.type.value, e.key, e.rolling_id) for e in events] == [
        ("entry", address, None),
        ("exit", address, A),
    ]


def test_an_iphone_new_quarter_hour_id_splits_the_visit():
    t = PresenceTracker(policy())
    address = "4A:00:00:00:00:01"
    out = list(t.observe(iphone(address, at=0.0, rolling_id=A)))
    out += t.observe(iphone(address, at=1.0, rolling_id=B))
    out += t.close()
    events = [e for e in out if isinstance(e, PresenceEvent)]
    assert [(e.type.value, e.rolling_id) for e in events] == [
        ("entry", A),
        ("exit", A),
        ("entry", B),
        ("exit", B),
    ]


BOUNDARY = 1_596_870_900.0  # a quarter hour (UTC): Bluezone phones take new IDs after it


def android_bursts(
    rid_before: str, rid_after: str, phase: float, until: float, rssi: int = -62
) -> list[Sighting]:
    """A seated Bluezone Android phone: 15 s bursts every 30 s, ``phase`` s before the boundary.

    Every burst has a new address; the first burst that starts after the boundary carries the
    new rolling ID.
    """
    out = []
    start, n = BOUNDARY - phase - 90, 0
    while start < until:
        rid = rid_before if start < BOUNDARY else rid_after
        address = f"5A:1F:33:0C:{n // 256:02X}:{n % 256:02X}"
        t = start
        while t < start + 15:
            out.append(sighting(rid, rssi, t)._replace(address=address))
            t += 0.1
        start, n = start + 30, n + 1
    return out


def run(tracker, samples, until):
    events = []
    for s in sorted(samples, key=lambda s: s.t):
        events += [e for e in tracker.observe(s) if isinstance(e, PresenceEvent)]
        events += tracker.expire(s.t)
    events += tracker.expire(until)
    return events


def test_a_rotated_rolling_id_continues_the_phones_visit():
    old, new, other_old, other_new = "0a" * 12, "0b" * 12, "0c" * 12, "0d" * 12
    samples = android_bursts(old, new, phase=10, until=BOUNDARY + 120)
    # Another phone, seated further away, rotating 6 s later in its own rhythm.
    samples += android_bursts(other_old, other_new, phase=4, until=BOUNDARY + 120, rssi=-70)
    events = run(PresenceTracker(policy()), samples, BOUNDARY + 200)
    entries = {e.key: e for e in events if e.type is EventType.ENTRY}
    exits = {e.key: e for e in events if e.type is EventType.EXIT}
    # Per ID the events are as before: the old ID's visit ends, the new one's begins ...
    assert set(entries) == set(exits) == {old, new, other_old, other_new}
    # ... and the new ID says which it continues, sharing the visit.
    assert entries[new].continues == old
    assert entries[new].visit_chain == entries[old].visit == exits[old].visit_chain
    assert exits[new].visit_chain == entries[old].visit
    assert entries[other_new].continues == other_old
    assert entries[other_new].visit_chain == entries[other_old].visit != entries[old].visit
    assert entries[old].continues is None


def test_linking_off_changes_nothing_but_the_visit_fields():
    old, new = "0a" * 12, "0b" * 12
    samples = android_bursts(old, new, phase=10, until=BOUNDARY + 120)
    linked = run(PresenceTracker(policy()), samples, BOUNDARY + 200)
    plain = run(PresenceTracker(policy(link=False)), samples, BOUNDARY + 200)
    assert [e.continues for e in plain] == [None] * 4
    assert [e.chain for e in plain] == [0] * 4
    unlinked = [dataclasses.replace(e, chain=0, continues=None) for e in linked]
    assert unlinked == plain
    assert [e.continues for e in linked] != [None] * 4


def gaen(rpi: str, rssi: int, at: float):
    return sighting(rpi, rssi, at, App.GAEN, None)._replace(rolling_id=rpi)


def test_a_gaen_phone_that_rotates_waits_a_moment_then_continues():
    old, new = "1a" * 16, "1b" * 16
    t0 = BOUNDARY + 300
    samples = [gaen(old, -60, t0 + i * 0.25) for i in range(400)]
    old_last = samples[-1].t
    handover = t0 + 100
    samples += [gaen(new, -61, handover + 0.3 + i * 0.25) for i in range(200)]
    tracker = PresenceTracker(policy())
    events = []
    for s in samples:
        out = [e for e in tracker.observe(s) if isinstance(e, PresenceEvent)]
        events += out
        if s.key == new and s.t - old_last < LinkPolicy().gaen_silence_s:
            # Maybe just a gap between the old key's adverts: the entry waits.
            assert not [e for e in out if e.key == new]
        events += tracker.expire(s.t)
    [entry] = [e for e in events if e.key == new and e.type is EventType.ENTRY]
    assert entry.continues == old
    assert entry.at == pytest.approx(handover + 0.3, abs=0.3)  # stamped when it qualified


def test_close_enters_the_keys_whose_link_still_waits():
    old, new, other_old, other_new = "0a" * 12, "0b" * 12, "0c" * 12, "0d" * 12
    # Both phones' new IDs have been on the air for 0.8 s when the gateway shuts down: their
    # links wait, and their entries with them, in case another key continues the old ones.
    until = BOUNDARY + 20.8
    samples = android_bursts(old, new, phase=10, until=until)
    samples += android_bursts(other_old, other_new, phase=9.8, until=until, rssi=-64)
    tracker = PresenceTracker(policy())
    events = run(tracker, [s for s in samples if s.t < until], until)
    assert new not in {e.key for e in events}
    events += tracker.close()
    entries = {e.key: e for e in events if e.type is EventType.ENTRY}
    exits = {e.key: e for e in events if e.type is EventType.EXIT}
    assert set(entries) == set(exits) == {old, new, other_old, other_new}
    assert entries[new].at < until


def test_a_new_key_is_weighed_with_the_rhythm_its_phone_showed_under_the_old_one():
    staff_old, staff_new, visitor = "0a" * 12, "0b" * 12, "0e" * 12
    # The guard's phone (15 s on, 15 s off) took its new ID in a burst from 9.8 s past the
    # quarter hour. A visitor's phone is first heard 5.1 s after that burst ended, and held
    # to the gateway 4 s later (a check-in: its entry is decided then). Were the guard's new
    # key taken for a phone of unknown rhythm, the visitor's could be its next burst after
    # the app was opened (60 s on, 5 s off, its start unheard); the phone showed 30 s.
    samples = android_bursts(staff_old, staff_new, phase=20.2, until=BOUNDARY + 120, rssi=-66)
    arrival = BOUNDARY + 29.9
    samples += [
        sighting(visitor, -40 if 4 <= i * 0.1 < 5 else -62, arrival + i * 0.1)._replace(
            address="6B:00:00:00:00:01"
        )
        for i in range(150)
    ]
    events = run(PresenceTracker(policy()), samples, BOUNDARY + 200)
    entries = {e.key: e for e in events if e.type is EventType.ENTRY}
    assert entries[staff_new].continues == staff_old
    assert entries[visitor].continues is None


@pytest.mark.parametrize(
    "held_from",
    [
        pytest.param(2.0, id="the old ID's last seconds"),
        pytest.param(20.0, id="the new ID's first seconds: the check-in enters it at once"),
    ],
)
def test_a_phone_held_to_the_gateway_is_linked_where_its_owner_stands(held_from):
    old, new = "0a" * 12, "0b" * 12
    # Seated at -72, the visitor holds the phone to the gateway (a check-in) for 3 s, then
    # puts it back. The held adverts say where the phone was for a moment, not where its
    # owner stands; a new ID heard only held so far has no level yet, and its timing decides.
    held = (BOUNDARY + held_from, BOUNDARY + held_from + 3)
    samples = [
        s._replace(rssi=-40) if held[0] <= s.t < held[1] else s
        for s in android_bursts(old, new, phase=10, until=BOUNDARY + 120, rssi=-72)
    ]
    events = run(PresenceTracker(policy()), samples, BOUNDARY + 200)
    entries = {e.key: e for e in events if e.type is EventType.ENTRY}
    assert entries[new].continues == old
    assert entries[new].at < BOUNDARY + 21  # stamped within its first second


def test_a_phone_lying_by_the_gateway_is_linked_at_the_level_it_lies_at():
    # Heard at check-in strength and nothing else for over two hours: it lies there, and
    # that is its level (not a level left over from before, ever less sure).
    old, new = "0a" * 12, "0b" * 12
    samples = [
        sighting(old if start < BOUNDARY else new, -40, start + i * 0.5)._replace(
            address=f"5A:1F:33:0C:{n // 256:02X}:{n % 256:02X}"
        )
        for n, start in enumerate(BOUNDARY - 7610.0 + 30.0 * k for k in range(258))
        for i in range(30)
    ]
    tracker = PresenceTracker(policy())
    events = run(tracker, samples, BOUNDARY + 200)
    entries = {e.key: e for e in events if e.type is EventType.ENTRY}
    assert entries[new].continues == old
