"""Tests of gateway.linker: the rule that links a rotated key to the phone's previous one."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.linker import (
    LinkPolicy,
    Trail,
    find_predecessor,
    fits,
    learn_cycle,
    quarter_hour_phase,
    undecided,
)
from gateway.model import App, Platform

BOUNDARY = 1_596_870_900.0  # 2020-08-08T07:15:00Z, a quarter hour
POLICY = LinkPolicy()
PHASE = quarter_hour_phase(float)


def trail(key: str, first: float, last: float, burst: float | None = None, **kw: Any) -> Trail:
    fields: dict[str, Any] = {
        "app": App.BLUEZONE,
        "platform": Platform.ANDROID,
        "rssi": -62.0,
        "roles": frozenset(),
    }
    fields.update(kw)
    return Trail(key, first_heard=first, last_heard=last, burst_start=burst or first, **fields)


def link(
    new: Trail, *candidates: Trail, rivals: tuple[Trail, ...] = (), wait_s: float = 5.0
) -> str | None:
    """Decide ``wait_s`` after the new key was first heard (the old ones stayed silent)."""
    now = new.first_heard + wait_s
    found = find_predecessor(new, candidates, rivals, POLICY, PHASE, now)
    return None if found is None else found.key


def background_rotation(
    offset_s: float, key: str, rssi: float = -62.0, stop_late_s: float = 0.0
) -> tuple[Trail, Trail]:
    """A phone whose 15 s burst starts ``offset_s`` before the boundary (0 < offset < 30).

    ``stop_late_s``: how late the alarm that ends the burst fired.
    """
    burst = BOUNDARY - offset_s
    last = burst + 15 + stop_late_s
    old = trail(f"old-{key}", BOUNDARY - 600, last, burst=burst, rssi=rssi, rssi_se=0.6)
    new = trail(f"new-{key}", burst + 30.2, burst + 30.2, rssi=rssi + 1, rssi_se=1.0)
    return old, new


def test_bluezone_android_in_the_background_is_linked_one_cycle_after_its_last_burst():
    old, new = background_rotation(10, "a")
    assert link(new, old) == "old-a"


def test_bluezone_android_with_the_app_open_is_linked_after_its_65_s_cycle():
    burst = BOUNDARY - 40
    old = trail("old", BOUNDARY - 900, burst + 60, burst=burst)
    new = trail("new", burst + 65.5, burst + 65.5)
    assert link(new, old) == "old"


def test_several_phones_rotating_at_one_boundary_each_find_their_own():
    pairs = [background_rotation(offset, str(offset)) for offset in (3, 9, 16, 24)]
    pairs += [background_rotation(9.2, "loud", rssi=-50.0)]  # in step with "9", louder
    olds = [old for old, _ in pairs]
    news = [new for _, new in pairs]
    for old, new in pairs:
        assert link(new, *olds, rivals=tuple(news)) == old.key


def test_two_phones_in_step_at_one_level_are_not_linked():
    (old_a, new_a), (old_b, _) = background_rotation(10, "a"), background_rotation(10.1, "b")
    assert link(new_a, old_a, old_b) is None


def test_the_link_waits_until_the_old_key_is_surely_silent_and_the_level_settled():
    t = BOUNDARY + 321
    old = trail("old", t - 600, t, app=App.GAEN, platform=None)
    new = trail("new", t + 0.3, t + 0.6, app=App.GAEN, platform=None)
    assert undecided(new, [old], POLICY, PHASE, now=t + 0.6)  # a gap between adverts, maybe
    # Silent, but another new key could still turn up and continue it better.
    assert undecided(new, [old], POLICY, PHASE, now=t + 2.0)
    assert not undecided(new, [old], POLICY, PHASE, now=t + POLICY.handover_gap_s + 0.1)
    assert link(new, old, wait_s=0.3) is None
    assert link(new, old, wait_s=2.0) == "old"
    (old_a, new_a), (old_b, _) = background_rotation(10, "a"), background_rotation(10.4, "b")
    rough = new_a._replace(rssi_se=5.0)  # heard once or twice: which of the two is it?
    assert undecided(rough, [old_a, old_b], POLICY, PHASE, now=rough.first_heard + 5)


def test_a_rival_that_fits_the_same_predecessor_blocks_the_link():
    old, new = background_rotation(10, "a")
    twin = new._replace(key="twin", first_heard=new.first_heard + 0.1)
    assert link(new, old) == "old-a"
    assert link(new, old, rivals=(twin,)) is None


@pytest.mark.parametrize(
    ("why", "change"),
    [
        ("not after a quarter hour", {"shift": 300.0}),
        ("heard together", {"old_heard_after_s": 2.0}),
        ("another app", {"app": App.GAEN}),
        ("another platform", {"platform": Platform.IOS}),
        ("far apart in RSSI", {"rssi": -80.0}),
        ("quiet since long before the boundary", {"old_quiet_s": 10.0}),
        ("went quiet outside the zone", {"outside": True}),
        ("not one cycle after the burst", {"new_first": 7.0}),
    ],
)
def test_bluezone_android_timing_and_level_must_fit(why, change):
    old, new = background_rotation(10, "a")
    shift = change.get("shift", 0.0)
    old = old._replace(
        first_heard=old.first_heard + shift,
        burst_start=old.burst_start + shift,
        last_heard=old.last_heard + shift,
    )
    if "old_heard_after_s" in change:  # still heard after the new key began: two phones
        old = old._replace(last_heard=new.first_heard + shift + change["old_heard_after_s"])
    if "old_quiet_s" in change:  # its burst ended early: it walked off
        old = old._replace(last_heard=old.last_heard - change["old_quiet_s"])
    old = old._replace(inside_at_end=not change.get("outside", False))
    new = new._replace(
        first_heard=new.first_heard + shift + change.get("new_first", 0.0),
        app=change.get("app", new.app),
        platform=change.get("platform", new.platform),
        rssi=change.get("rssi", new.rssi),
    )
    assert link(new, old) is None, why


def test_an_old_burst_that_began_after_the_boundary_is_not_a_rotation():
    # A phone whose burst began after the quarter hour already advertised its new ID in it.
    burst = BOUNDARY + 5
    old = trail("old", BOUNDARY - 300, burst + 15, burst=burst)
    new = trail("new", burst + 30, burst + 30)
    assert link(new, old) is None


def test_a_burst_first_heard_just_after_the_boundary_may_have_begun_before_it():
    # Its first advert came 0.2 s into the quarter hour: one or two adverts lost, so the
    # burst may well have begun before it, with the old ID, which the next burst replaced.
    burst = BOUNDARY + 0.2
    old = trail("old", BOUNDARY - 300, burst + 14.9, burst=burst, rssi_se=0.6)
    new = trail("new", burst + 30.1, burst + 30.1, rssi_se=1.0)
    assert link(new, old) == "old"
    strict = dataclasses.replace(POLICY, first_advert_s=0.01)
    assert find_predecessor(new, [old], [], strict, PHASE, new.first_heard + 5) is None


@pytest.mark.parametrize(
    ("app", "platform", "gap_s", "linked"),
    [
        (App.GAEN, None, 0.4, True),
        (App.GAEN, None, 5.0, False),
        (App.BLUEZONE, Platform.IOS, 4.0, True),  # once a second, a few adverts lost
        (App.BLUEZONE, Platform.IOS, 6.0, False),
    ],
)
def test_keys_that_rotate_without_a_pause_hand_over_within_a_gap(app, platform, gap_s, linked):
    t = BOUNDARY + 321  # any time: these rotate on their own schedule
    old = trail("old", t - 600, t, app=app, platform=platform)
    new = trail("new", t + gap_s, t + gap_s + 5, app=app, platform=platform)
    assert (link(new, old) == "old") is linked


@pytest.mark.parametrize(
    ("burst_s", "gap_s", "linked"),
    [(185.5, 6.0, True), (185.5, 12.0, False), (190.0, 6.0, False), (185.5, 4.5, False)],
)
def test_bluetrace_changes_address_one_185_s_cycle_after_its_last(burst_s, gap_s, linked):
    t = BOUNDARY + 321
    old = trail("old", t - burst_s, t - gap_s, app=App.BLUETRACE, platform=None)
    new = trail("new", t, t + 2, app=App.BLUETRACE, platform=None)
    assert (link(new, old) == "old") is linked


def test_two_adapters_must_have_heard_both_keys_on_one_side():
    t = BOUNDARY + 100
    old = trail("old", t - 60, t, app=App.GAEN, platform=None, roles=frozenset({"outside"}))
    new = trail("new", t + 0.3, t + 1, app=App.GAEN, platform=None, roles=frozenset({"inside"}))
    assert link(new, old) is None
    assert link(new._replace(roles=frozenset({"inside", "outside"})), old) == "old"


def test_a_disabled_policy_links_nothing():
    old, new = background_rotation(10, "a")
    now = new.first_heard + 5
    assert fits(new, old, POLICY, PHASE, now)
    assert find_predecessor(new, [old], [], LinkPolicy(enabled=False), PHASE, now) is None
    assert not undecided(new, [old], LinkPolicy(enabled=False), PHASE, new.first_heard)


def test_policy_rejects_non_positive_durations():
    with pytest.raises(ValueError, match="handover_gap_s"):
        LinkPolicy(handover_gap_s=0)
    assert LinkPolicy().lookback_s == pytest.approx(136.0)


def test_a_phone_s_own_cycle_is_learned_from_the_gaps_between_its_bursts():
    def period(gaps: list[float]) -> float | None:
        learned = learn_cycle(gaps)
        return None if learned is None else learned[0]

    assert learn_cycle([30.1, 30.2, 30.15, 30.12]) == pytest.approx((30.1425, 0.0435), abs=1e-4)
    assert learn_cycle([30.1, 30.2]) is None  # too few to trust
    # A missed burst (60 s) is no cycle; the app opened (65 s cycles) starts afresh.
    assert period([30.1, 60.2, 30.2, 30.1]) == pytest.approx(30.1333, abs=1e-4)
    assert period([30.1, 30.2, 30.1, 65.3, 65.2, 65.4]) == pytest.approx(65.3)


def test_a_learned_rhythm_tells_apart_two_phones_rotating_a_third_of_a_second_apart():
    # b's burst began 0.3 s before a's and ended with it: the pauses alone cannot tell.
    (old_a, new_a), (old_b, _) = (
        background_rotation(10, "a"),
        background_rotation(10.3, "b", stop_late_s=0.3),
    )
    # Unknown rhythms: 0.3 s is within a phone's guessed spread: ambiguous.
    assert link(new_a, old_a, old_b) is None
    # Phone a restarts every 30.2 s, give or take 50 ms: the new key is its, on the dot.
    assert link(new_a, old_a._replace(cycle_s=30.2, cycle_sd_s=0.05), old_b) == "old-a"
    # Had it been restarting every 30.0 s, the new key would be 0.2 s late, beyond its spread.
    assert link(new_a, old_a._replace(cycle_s=30.0, cycle_sd_s=0.05), old_b) != "old-a"


def test_a_rival_that_fits_another_old_key_better_explains_it_away():
    old_a, new_a = background_rotation(10, "a", rssi=-62.0)
    old_b, new_b = background_rotation(10.3, "b", rssi=-60.0, stop_late_s=0.3)
    assert link(new_a, old_a, old_b) is None  # alone, a could be either
    assert link(new_a, old_a, old_b, rivals=(new_b,)) == "old-a"  # b's new key is b's


def test_a_phone_inside_for_an_hour_rotated_rather_than_left():
    (old_a, new_a), (old_b, _) = (
        background_rotation(10, "a"),
        background_rotation(10.3, "b", stop_late_s=0.3),
    )
    assert link(new_a, old_a, old_b) is None
    # The guard who has sat there for an hour rotated; the visitor who came a moment ago left.
    assert link(new_a, old_a._replace(dwell_s=3600.0), old_b._replace(dwell_s=20.0)) == "old-a"
    assert link(new_a, old_a._replace(dwell_s=20.0), old_b._replace(dwell_s=3600.0)) == "old-b"


def test_a_burst_already_on_the_air_when_the_scan_began_is_timed_by_its_end():
    scan_start = BOUNDARY - 30
    # Heard from the scan's start to the end of its 60 s burst; when it began is unknown.
    old = trail("old", scan_start, BOUNDARY, burst=scan_start, burst_seen=False)
    assert link(trail("new", BOUNDARY + 5.2, BOUNDARY + 5.2), old) == "old"  # one pause later
    assert link(trail("new", BOUNDARY + 7.5, BOUNDARY + 7.5), old) is None


def test_a_long_silence_is_likelier_for_a_phone_heard_rarely():
    t = BOUNDARY + 321
    rare = trail("old-rare", t - 600, t, app=App.BLUEZONE, platform=Platform.IOS, rate_hz=0.8)
    busy = trail("old-busy", t - 600, t + 0.1, app=App.BLUEZONE, platform=Platform.IOS, rate_hz=4)
    new = trail("new", t + 2.5, t + 5, app=App.BLUEZONE, platform=Platform.IOS)
    # 2.5 s without an advert: ordinary once a second, odd at four a second.
    assert link(new, rare, busy) == "old-rare"


def test_a_pause_is_never_cut_short_and_its_overrun_is_weighed():
    old, new = background_rotation(10, "a")  # its last advert 15.2 s before the new key's
    assert link(new, old) == "old-a"
    # Its burst heard 0.4 s longer: the new key came 14.8 s after, sooner than the phone
    # can restart (alarms fire late, never early): another phone's.
    assert link(new, old._replace(last_heard=old.last_heard + 0.4)) is None
    # Two old keys whose bursts began together: the one that fell quiet a pause before the
    # new key's first advert fits; one quiet 1.2 s longer would have restarted sooner.
    early = old._replace(key="old-early", last_heard=old.last_heard - 1.0)
    assert link(new, old, early) == "old-a"


def test_a_phone_walking_in_is_compared_where_it_was_last_heard():
    burst = BOUNDARY - 10
    # Heard coming in from the door, its slow mean lags 12 dB behind its last second.
    old = trail("old", burst, burst + 15, burst=burst, rssi=-75.0, rssi_se=0.7, rssi_end=-63.0)
    new = trail("new", burst + 30.2, burst + 30.2, rssi=-61.0, rssi_se=1.5)
    assert link(new, old) == "old"
    assert link(new, old._replace(rssi_end=None)) is None  # a phone that sat still at -75
    # Still coming closer: 11 dB past where it was last heard is within reach of its walk.
    closer = new._replace(rssi=-52.0)
    assert link(closer, old) == "old"
    assert link(closer, old._replace(rssi=-64.0)) is None  # it had moved 1 dB, not 12


def test_a_badly_timed_rotation_counts_only_so_much():
    # A steady phone (30.0 s cycle, 40 ms spread) whose new key was first heard 0.6 s late:
    # its first adverts were lost. Five spreads off, but no other phone could have.
    old, new = background_rotation(10, "a")
    new = new._replace(first_heard=new.first_heard + 0.4, last_heard=new.last_heard + 0.4)
    steady = old._replace(cycle_s=30.0, cycle_sd_s=0.04)
    assert link(new, steady._replace(dwell_s=3600.0)) == "old-a"  # the guard rotated
    assert link(new, steady._replace(dwell_s=20.0)) is None  # a visitor may have left


def test_a_key_heard_only_held_to_the_gateway_is_linked_by_its_timing():
    old, new = background_rotation(10, "a", rssi=-72.0)
    held = new._replace(rssi=-38.0, rssi_se=6.0)
    assert link(held, old) is None  # as a level, 34 dB off
    assert link(held._replace(held=True), old) == "old-a"
    late = held._replace(
        held=True, first_heard=held.first_heard + 3, last_heard=held.last_heard + 3
    )
    assert link(late, old) is None  # the timing must still fit


def test_a_crowd_of_look_alike_keys_is_not_weighed_for_ever():
    # Forty passers-by gone quiet at one level just before the quarter hour, ten new keys
    # just after, every pairing as good as any other: the joint assignment's branches would
    # run into the billions. Past its budget the link is not made: no answer is sure enough.
    olds = []
    for n in range(40):
        old, _ = background_rotation(10 + n * 0.01, f"p{n}")
        olds.append(old)
    news = [background_rotation(10 + n * 0.01, f"q{n}")[1] for n in range(10)]
    found = find_predecessor(news[0], olds, news[1:], POLICY, PHASE, news[0].first_heard + 5)
    assert found is None
