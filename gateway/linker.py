"""Link a phone's new rolling ID (or address) to the one it had a moment ago; pure, clock-free.

A Bluezone phone changes its rolling ID at every quarter hour (UTC), GAEN phones rotate their
RPI and address together every 10-20 min, and address-keyed phones (Bluezone iPhones before
their ID is read, BlueTrace) get a new address now and then. Each key is its own visit in the
event log, as tracing needs; the linker says which of them are one phone, so that the desk and
the central count people, not IDs.

The rule (`find_predecessor`): a new key may continue an older one of the same app and
platform (`mismatch` says whether, and how well) when

- the old key fell silent at most ``overlap_s`` after the new one was first heard (one phone
  advertises one key at a time; the slack covers a second adapter's late reports), and has
  stayed silent since, for long enough to tell a stop from a gap between adverts
  (``silence_s``; ``gaen_silence_s`` for GAEN's 4 adverts a second),
- the old key was inside the zone when it went quiet (one that faded out had left),
- their RSSI levels agree within ``rssi_tolerance_db`` plus their measuring error and, with
  two adapters, some adapter heard both (the phone did not jump across the room); a phone
  still moving when its old key fell quiet (someone walking in) is compared where it was
  last heard, not by the slow mean that lags behind it (a key heard only held to the
  gateway, a check-in, has no level yet: the timing decides), and
- the timing is that of a rotation:

  - **Bluezone Android** takes a new ID when advertising restarts, and restarts every cycle:
    15 s on, 15 s off in the background (30 s), 60 s on, 5 s off with the app open (65 s),
    each start and stop an alarm re-armed from the moment the last was handled, so each
    phone's cycle runs a little long by its own latency. The new ID is first heard within
    ``rotation_window_s`` after a quarter-hour boundary, one cycle after the old ID's last
    burst began (the phone's own period, learned from the gaps between the old key's bursts
    by `learn_cycle`; within ``restart_tolerance_s``), and that burst began before the
    boundary. The phone's own rhythm is the cue that tells apart phones rotating at the same
    boundary. The old ID's last advert came at least the pause before the new one's first
    (alarms fire late, never early; ``pause_slack_s`` for the scan's report timing) and at
    most the pause plus ``android_late_s`` (it was heard to the end of its burst: still
    there); how far the pause ran over is weighed too, against the phone's own alarm
    latency (half its cycle's overrun) plus the adverts lost at the pause's ends
    (``detect_s``). However badly the timing fits, it counts no more than
    ``timing_outlier_cost``: a few adverts lost in a row put any phone off now and then. A
    burst already on the air when the scan began is timed by its end; one whose start was
    missed (the person walked in during it) may have begun up to its unheard part earlier.
  - **BlueTrace** takes a new address at every 180 s burst, after a 5 s pause: the new key is
    first heard one 185 s cycle after the old one was (within ``bluetrace_tolerance_s``),
    and at least the pause after the old one's last advert (a timer, never early either).
  - **Others** (GAEN, a Bluezone iPhone keyed by its address) rotate without a pause in their
    advertising: the new key is first heard within ``handover_gap_s`` (``ios_gap_s``) of the
    old key's last advert, a long silence weighing more for a key heard often.

The decision is joint and waits (`undecided`) until the candidates are surely silent, no
other key could still turn up to continue them better (`deadline`) and the competing keys'
levels are known well enough: the new key and the other new keys of the moment are assigned
to the old keys so that the summed mismatch is least, with a price for a new key left
unlinked (a new arrival) and for an old key left unclaimed (its phone left in its pause:
cheap for a visitor, dear for the guard inside for an hour). The link is made only when the
best assignment beats every one without it by ``margin``: two phones that fit one old key
about as well are not linked (a missed link splits a visit in two; a wrong one would merge
two people, which tracing must never see). While it waits, the new key's entry waits too,
and the person is still counted under the old key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Final, NamedTuple

from gateway.model import App, Platform
from gateway.rolling import SLOT_S

BLUETRACE_CYCLE_S: Final = (180.0, 5.0)
"""BlueTrace/OpenTrace advertises 180 s, pauses 5 s, and comes back with a new address."""
BLUEZONE_CYCLES_S: Final = ((15.0, 15.0), (60.0, 5.0))
"""Bluezone Android's advertising (on, off) cycles: 15 s + 15 s in the background, 60 s + 5 s
with the app open: AppConstants DEFAULT_BROADCAST_BLE_INTERVAL and its foreground twin."""
CYCLE_MATCH_S: Final = 5.0
"""A learned period this close to a nominal cycle is that cycle, run a little long."""
MIN_RATE_HZ: Final = 0.5
MAX_RATE_HZ: Final = 10.0
"""Bounds of the advert rate a hand-over's silence is weighed at (`Trail.rate_hz`)."""
MIN_CYCLES: Final = 3
"""Gaps between burst starts needed before a phone's own period is trusted."""
MAX_JOINT: Final = 10
"""Most new keys weighed together in one joint assignment (`find_predecessor`)."""
ASSIGN_BUDGET: Final = 20_000
"""Most branches one joint assignment explores. A crowd of look-alike keys at one quarter hour
(dozens of passers-by just gone quiet, all at one level, with as many new keys) made a single
decision take seconds to minutes of CPU, the gateway frozen meanwhile; past the budget no link
is made (a missed link splits a visit, it never merges two people)."""


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """Parameters of the rule (module docstring); the defaults fit protocol.md's phones."""

    enabled: bool = True
    rotation_window_s: float = 70.0
    """A Bluezone Android phone's new ID is first heard this soon after the quarter hour: one
    65 s cycle at most, plus a lost first advert or two."""
    restart_tolerance_s: float = 1.0
    """How far the new ID's first sighting may sit from one cycle after the old ID's last
    burst began: advertising jitter plus the first few adverts lost."""
    handover_gap_s: float = 3.0
    """Silence allowed between the old key's last advert and the new key's first when the
    phone does not pause: GAEN, heard four times a second."""
    ios_gap_s: float = 5.0
    """The same for a Bluezone iPhone, heard about once a second in the background (and one
    advert in five lost): four adverts missed in a row."""
    bluetrace_late_s: float = 6.0
    """BlueTrace pauses 5 s between bursts: the silence may exceed that by this much (it is
    heard about once a second, and adverts are lost)."""
    bluetrace_tolerance_s: float = 3.0
    """How far a BlueTrace phone's new address may appear from one 185 s cycle after its last
    one began."""
    overlap_s: float = 0.5
    """The new key may be first heard this long before the old key's last report."""
    silence_s: float = 4.0
    """How long the old key must have been silent when the link is decided: a Bluezone iPhone
    in the background is heard about once a second, and one advert in five is lost."""
    gaen_silence_s: float = 1.5
    """The same for GAEN, heard four times a second."""
    android_gap_s: float = 3.0
    """Least silence between a Bluezone Android phone's old ID and its new one: its 5 s or
    15 s advertising pause, less lost adverts."""
    pause_slack_s: float = 0.1
    """How much shorter than its nominal pause the silence may seem: alarms never fire early,
    and a burst's last advert is heard before it stops and the next one's first after it
    starts, so only the scan's report timing."""
    alarm_latency_s: float = 0.1
    """An Android alarm's mean latency, until the phone's own is learned from its cycle."""
    detect_s: float = 0.1
    """How much longer the pause seems from adverts lost at its two ends, on average."""
    first_advert_s: float = 0.3
    """How long a burst may have been on the air before its first advert was heard: the
    first comes up to one 100 ms interval in, and one or two may be lost. A burst first
    heard just after a quarter hour may have begun just before it, with the old ID."""
    android_late_s: float = 3.0
    """Most the silence may exceed that pause: a phone still present is heard to the end of
    its burst (one that walked off went quiet earlier)."""
    rssi_tolerance_db: float = 6.0
    """How far the two keys' RSSI levels may differ beyond their measuring error (2.5
    standard errors): a phone moves a little, not across the room."""
    moving_db: float = 5.0
    """A key whose last second's level is this far off its slow mean was still moving (a
    person walking in or out): the next key is compared with its last level."""
    trend_share: float = 0.45
    """The part of that last move a moving phone may have gone on with during the pause."""
    motion_db: float = 2.0
    """How much a still-seated phone's level wanders from one key to the next (scoring): a
    10 s mean under slow fading (2 dB, over 3 s) moves by about 1.5 dB from one to the next."""
    timing_sigma_s: float = 0.35
    """Spread of the burst timing: advertising jitter and the first adverts lost (scoring)."""
    timing_outlier_cost: float = 12.0
    """Where a Bluezone Android hand-over's timing cost levels off: one that fits worse is
    taken for a phone whose adverts were lost at the wrong moment, not for another phone
    (the timing law is a normal one mixed with a flat one, e^-6 as likely at its peak)."""
    settled_se_db: float = 2.0
    """With several candidates, wait until the new key's level is known this well."""
    margin: float = 2.0
    """How much better (-2 ln likelihood) the best assignment must be than the best one
    without the link: odds of e, 2.7 to 1."""
    unlinked_cost: float = 12.0
    """What leaving a new key unlinked costs in the joint assignment (a new phone arrived):
    a link that matches worse than this is not made, whatever else fits."""
    min_stay_s: float = 30.0
    """However briefly a phone has been inside, it is taken to stay this long again (a
    visitor at the desk stays a while): the floor of its chance to stay (`_leave_cost`)."""
    timing_floor_s: float = 0.12
    """Least spread of a phone's learned cycle: the first advert of a burst is heard up to a
    lost advert or two late."""

    def __post_init__(self) -> None:
        """Check that every parameter (all but the switch) is positive."""
        for name in (f.name for f in fields(self) if f.name != "enabled"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0"
                raise ValueError(msg)

    @property
    def lookback_s(self) -> float:
        """Return how long a silent key stays a candidate predecessor."""
        longest = max(on + off for on, off in BLUEZONE_CYCLES_S)
        return longest + self.restart_tolerance_s + self.rotation_window_s

    @property
    def rival_window_s(self) -> float:
        """Return how close in time two new keys' first sightings must be to compete."""
        longest = max(self.handover_gap_s, self.ios_gap_s)
        return 2 * max(self.restart_tolerance_s, longest, self.bluetrace_tolerance_s)

    @property
    def max_wait_s(self) -> float:
        """Return the longest a new key's entry waits for the link to be decided."""
        return max(self.silence_s, self.gaen_silence_s, self.rival_window_s) + 0.5

    def silence_for(self, app: App, platform: Platform | None) -> float:
        """Return how long an old key of this kind must be silent before it is linked."""
        if app is App.GAEN:
            return self.gaen_silence_s
        if app is App.BLUEZONE and platform is Platform.ANDROID:
            return self.android_gap_s
        return self.silence_s


class Trail(NamedTuple):
    """What the linker knows of one device key, on the source's clock."""

    key: str
    app: App
    platform: Platform | None
    first_heard: float
    last_heard: float
    burst_start: float
    """When the current advertising burst began: the first sighting with the current address
    (Bluezone Android takes a new address, and maybe a new ID, at every burst)."""
    rssi: float
    """The key's RSSI level: a slow mean over its last ten seconds or so."""
    rssi_se: float = 0.0
    """Standard error of ``rssi`` (a key heard a few times has a rough level)."""
    roles: frozenset[str] = frozenset()
    """Adapter roles (two-adapter set-ups) that heard the key recently; empty with one."""
    inside_at_end: bool = True
    """Whether the key was inside the zone at its last sighting (a key that went quiet
    outside had left; only one that went quiet inside can have rotated)."""
    cycle_s: float | None = None
    """The phone's own advertising period (Bluezone Android), learned from the starts of the
    key's bursts: on + off, plus the latency of the alarms that start and stop advertising
    (`AppScheduler` re-arms each one from the moment the last was handled); None until a few
    bursts were seen."""
    cycle_sd_s: float = 0.0
    """How much that period varies from one burst to the next."""
    burst_seen: bool = True
    """Whether the current burst's start was heard (not one already on the air when the
    scan began: its true start is then up to a burst earlier)."""
    rate_hz: float = 0.0
    """Adverts of this key heard per second (0 when too few to tell)."""
    rssi_end: float | None = None
    """The key's level over its last second or so (None: as ``rssi``): where a phone that was
    still moving when the key fell quiet had got to."""
    dwell_s: float = 0.0
    """How long the phone had been inside, over the keys linked into its visit, when this
    key was last heard (0 for a key that never entered)."""
    held: bool = False
    """Every advert of the key so far came at check-in strength, the phone held to the
    gateway: its level says nothing yet of where its owner stands."""


def quarter_hour_phase(wall: Callable[[float], float]) -> Callable[[float], float]:
    """Return t → seconds since the last quarter hour (UTC) at source time ``t``.

    ``wall`` converts the source's clock to Unix time (the identity for a capture).
    """
    return lambda t: wall(t) % SLOT_S


def fits(
    new: Trail, old: Trail, policy: LinkPolicy, phase: Callable[[float], float], now: float
) -> bool:
    """Return whether ``new`` may continue ``old`` as of ``now`` (without the ambiguity check)."""
    return _silent(old, policy, now) and could_fit(new, old, policy, phase)


def could_fit(new: Trail, old: Trail, policy: LinkPolicy, phase: Callable[[float], float]) -> bool:
    """Return whether ``new`` may continue ``old`` if ``old`` stays silent from now on."""
    return mismatch(new, old, policy, phase) is not None


def mismatch(
    new: Trail, old: Trail, policy: LinkPolicy, phase: Callable[[float], float]
) -> float | None:
    """Return how badly ``new`` matches ``old``, None if it cannot continue it at all.

    The score is -2 ln of the match's likelihood, up to a constant: the RSSI levels'
    difference in standard deviations of a phone that moves a little (``motion_db``)
    measured with both levels' errors, and for a Bluezone Android phone the burst timing's
    error in the phone's own spread (``timing_sigma_s`` until it is learned), each squared,
    plus 2 ln of those spreads against the nominal ones: a sharp match to a phone whose
    rhythm is known beats an equally good one to a phone whose rhythm is a guess.
    """
    if old.key == new.key or old.app is not new.app or old.platform is not new.platform:
        return None
    if old.first_heard >= new.first_heard or old.last_heard > new.first_heard + policy.overlap_s:
        return None
    if old.roles and new.roles and not old.roles & new.roles:
        return None
    if not old.inside_at_end:
        return None  # it went quiet outside the zone: it left, it did not rotate
    score = _level_cost(new, old, policy)
    if score is None:
        return None
    timing = _timing(new, old, policy, phase)
    return None if timing is None else score + timing


def _level_cost(new: Trail, old: Trail, policy: LinkPolicy) -> float | None:
    """Return the level part of `mismatch`, None when the levels are too far apart.

    A key heard only held to the gateway has no level yet to compare: it counts as a level
    that fits as well as most (a squared z of 1), and the timing decides.
    """
    if new.held or old.held:
        return 1.0
    expected, moved = _expected_level(old, policy)
    # Measuring error, and how far a phone still moving may have gone on (0 for one at rest).
    spread = math.hypot(old.rssi_se, new.rssi_se, moved)
    level = abs(expected - new.rssi)
    if level > policy.rssi_tolerance_db + 2.5 * spread:
        return None
    return _normal(level, math.hypot(policy.motion_db, spread), policy.motion_db)


def _timing(
    new: Trail, old: Trail, policy: LinkPolicy, phase: Callable[[float], float]
) -> float | None:
    """Return the squared z-score of the hand-over's timing, None if it is not a rotation."""
    if new.app is App.BLUEZONE and new.platform is Platform.ANDROID:
        return _android_timing(new, old, policy, phase(new.first_heard))
    gap = new.first_heard - old.last_heard
    if new.app is App.BLUETRACE:
        # A new address at every 180 s burst, after a 5 s pause, heard once a second.
        on, off = BLUETRACE_CYCLE_S
        tolerance = policy.bluetrace_tolerance_s
        error = _restart_error(new.first_heard - old.burst_start, on + off, on, old, tolerance)
        if gap > off + policy.bluetrace_late_s or error > tolerance:
            return None
        if gap < off - policy.pause_slack_s:
            return None  # its pause is a timer too: never cut short
        return (error / tolerance * 2) ** 2
    if gap > _handover_gap(new, policy):
        return None
    # The silence is the old key's adverts lost in a row: the fewer the phone sends, the
    # likelier a long one (-2 ln of an exponential density at its rate, against 1 Hz).
    rate = min(max(old.rate_hz, MIN_RATE_HZ), MAX_RATE_HZ)
    return 2 * rate * max(gap, 0.0) - 2 * math.log(rate)


def _android_timing(
    new: Trail, old: Trail, policy: LinkPolicy, since_boundary: float
) -> float | None:
    """Return `_timing` for Bluezone Android: a restart one cycle on, after a full pause."""
    gap = new.first_heard - old.last_heard
    if since_boundary > policy.rotation_window_s or gap < policy.android_gap_s:
        return None  # not just after a quarter hour, or the old ID was still on the air
    since_burst = new.first_heard - old.burst_start
    tolerance = policy.restart_tolerance_s
    scores = []
    for on, off, period, sigma in _android_cycles(old, policy):
        # Its start unheard (the scan began during the burst): any start up to a burst
        # before it was first heard, and the restart one pause after the burst ended.
        earliest = old.burst_start - _unheard(old, on, tolerance) - policy.first_advert_s
        if gap > off + policy.android_late_s or new.first_heard - earliest <= since_boundary:
            continue  # not heard to the end of its burst, or it began after the boundary
        if gap < off - policy.pause_slack_s:
            continue  # the pause was cut short: alarms never fire early, so not this phone
        if old.burst_seen:
            error = _restart_error(since_burst, period, on, old, tolerance)
        else:
            error = abs(gap - off)
        if error <= tolerance:
            latency = (period - on - off) / 2 if old.cycle_s is not None else None
            overrun = _pause_cost(gap - off, latency, policy)
            scores.append(_normal(error, sigma, policy.timing_sigma_s) + overrun)
    if not scores:
        return None
    # A few adverts lost in a row at the burst's end or the next one's start put any phone's
    # timing off now and then: the normal law mixed with a flat one, the worst fit levels off.
    return -2 * math.log(math.exp(-min(scores) / 2) + math.exp(-policy.timing_outlier_cost / 2))


def _expected_level(old: Trail, policy: LinkPolicy) -> tuple[float, float]:
    """Return the level the key continuing ``old`` should show, and how far it may have moved.

    A phone sitting still keeps its slow mean, give or take ``motion_db`` (0 returned: no
    more than that). One still moving when its key fell quiet (its last second's level
    ``moving_db`` or more off the slow mean: someone walking in or out) is where it was last
    heard, give or take a part (``trend_share``) of how far it had just moved: in the gate
    as in the score, as the levels' measuring error is.
    """
    end = old.rssi if old.rssi_end is None else old.rssi_end
    trend = end - old.rssi
    if abs(trend) < policy.moving_db:
        return old.rssi, 0.0
    return end, policy.trend_share * abs(trend)


def _pause_cost(overrun: float, latency: float | None, policy: LinkPolicy) -> float:
    """Return -2 ln of a Bluezone Android pause running ``overrun`` seconds long.

    The restart alarm fires late by the phone's alarm latency (``latency``: half of how long
    its learned cycle runs over the nominal one; ``alarm_latency_s`` until learned), and the
    burst's last advert and the next one's first are heard a little early and late
    (``detect_s``): an exponential law of that mean, relative to the nominal one.
    """
    mean = max(policy.alarm_latency_s if latency is None else latency, 0.0) + policy.detect_s
    nominal = policy.alarm_latency_s + policy.detect_s
    return 2 * max(overrun, 0.0) / mean + 2 * math.log(mean / nominal)


def _handover_gap(trail: Trail, policy: LinkPolicy) -> float:
    """Return the silence allowed when a phone of this kind hands over without a pause."""
    return policy.ios_gap_s if trail.platform is Platform.IOS else policy.handover_gap_s


def _normal(error: float, sigma: float, nominal: float) -> float:
    """Return -2 ln of a normal density at ``error``, relative to one of spread ``nominal``."""
    return (error / sigma) ** 2 + 2 * math.log(sigma / nominal)


def _android_cycles(old: Trail, policy: LinkPolicy) -> Iterator[tuple[float, float, float, float]]:
    """Yield (on, off, period, sigma): the cycles the phone of ``old`` may be running.

    With a learned period, only the nominal cycle nearest to it, with the phone's own period
    and spread; otherwise both nominal cycles, with the policy's spread.
    """
    for on, off in BLUEZONE_CYCLES_S:
        if old.cycle_s is None:
            yield on, off, on + off, policy.timing_sigma_s
        elif abs(old.cycle_s - on - off) <= CYCLE_MATCH_S:
            yield on, off, old.cycle_s, max(old.cycle_sd_s, policy.timing_floor_s)


def _restart_error(
    since_burst: float, period: float, on: float, old: Trail, tolerance: float
) -> float:
    """Return how far the new key's first sighting lies from one ``period`` after the old burst.

    A burst heard for less than its length (the phone came into range while it was on the
    air, or the scan began) may have begun before it was first heard, by up to the part not
    heard: any start in that span is as good.
    """
    missed = _unheard(old, on, tolerance)
    late = since_burst - period  # > 0: the new key came after one period
    if late >= 0:
        return late
    return max(0.0, -late - missed)


def _unheard(old: Trail, on: float, tolerance: float) -> float:
    """Return how long the old key's burst (``on`` long) may have been on the air unheard."""
    if not old.burst_seen:
        return on
    return max(0.0, on - tolerance - (old.last_heard - old.burst_start))


def deadline(new: Trail, old: Trail, policy: LinkPolicy) -> float:
    """Return the latest time another key could continue ``old`` in the cycle ``new`` does.

    Until then a better fit may turn up, so the link waits.
    """
    if old.app is App.BLUEZONE and old.platform is Platform.ANDROID:
        since_burst = new.first_heard - old.burst_start
        period = min(
            (period for _, _, period, _ in _android_cycles(old, policy)),
            key=lambda period: abs(since_burst - period),
            default=since_burst,
        )
        return old.burst_start + period + policy.restart_tolerance_s
    if old.app is App.BLUETRACE:
        return old.burst_start + sum(BLUETRACE_CYCLE_S) + policy.bluetrace_tolerance_s
    return old.last_heard + _handover_gap(old, policy)


def _silent(old: Trail, policy: LinkPolicy, now: float) -> bool:
    return now - old.last_heard >= policy.silence_for(old.app, old.platform)


def undecided(
    new: Trail,
    candidates: Iterable[Trail],
    policy: LinkPolicy,
    phase: Callable[[float], float],
    now: float,
    rivals: Iterable[Trail] = (),
) -> bool:
    """Return whether to wait before deciding the link of ``new``.

    A candidate fits but has not been silent long enough yet, or another new key may still
    turn up that continues it better (its `deadline` has not passed), or several keys compete
    (``new`` for several old ones, or rivals for its old ones) and the level of one of them
    is still too rough to choose.
    """
    if not policy.enabled:
        return False
    possible = [old for old in candidates if could_fit(new, old, policy, phase)]
    if any(not _silent(old, policy, now) or now < deadline(new, old, policy) for old in possible):
        return True
    competing = [
        rival
        for rival in rivals
        if rival.key != new.key and any(could_fit(rival, old, policy, phase) for old in possible)
    ]
    if len(possible) + len(competing) < 2:
        return False
    return any(trail.rssi_se > policy.settled_se_db for trail in (new, *competing))


def find_predecessor(
    new: Trail,
    candidates: Iterable[Trail],
    rivals: Iterable[Trail],
    policy: LinkPolicy,
    phase: Callable[[float], float],
    now: float,
) -> Trail | None:
    """Return the older key ``new`` continues, or None when none fits or it is ambiguous.

    The decision is joint: ``new`` and the rivals are assigned to the old keys (each old key
    continued at most once, each new key leaving one or none, ``unlinked_cost`` for none) so
    that the summed mismatch is least. An old key nobody continues costs too: its phone left
    during its pause, unlikely for one that has been inside for long (`_leave_cost`).
    ``new`` is linked to its key in that assignment when every assignment without that link
    costs at least ``margin`` more (a likelihood ratio of e^(margin/2)): a rival that fits
    another old key better explains that one away, and two phones that fit one old key about
    as well leave it unlinked.

    Args:
        new: the key to link, usually at the moment it enters the zone.
        candidates: keys that may have come before it or before a rival: recently heard,
            with a visit, and not continued by another key yet.
        rivals: other new keys not linked yet, which may continue the same keys.
        policy: the rule's parameters.
        phase: seconds since the last quarter hour at a source time (`quarter_hour_phase`).
        now: the source time of the decision (silence is measured up to it).
    """
    if not policy.enabled:
        return None
    olds = list(candidates)
    local = _component(new, [r for r in rivals if r.key != new.key], olds, policy, phase, now)
    if not local[0]:
        return None
    best, assignment = _assign(local, policy.unlinked_cost)
    chosen = assignment[0] if assignment else None
    if chosen is None:
        return None
    without, rest = _assign(local, policy.unlinked_cost, forbid=chosen)
    if not rest:
        return None  # too many ways to tell: see ASSIGN_BUDGET
    return olds[chosen] if without - best >= policy.margin else None


def _component(
    new: Trail,
    rivals: Sequence[Trail],
    olds: Sequence[Trail],
    policy: LinkPolicy,
    phase: Callable[[float], float],
    now: float,
) -> list[dict[int, float]]:
    """Return the cost rows (old index → cost) of ``new`` and the rivals that compete with it.

    Breadth-first from ``new``: a rival competes when it fits an old key that a key already
    taken fits. At most `MAX_JOINT` keys, nearest first: in a crowd the farthest are left
    out, and the keys kept compete as if those had not taken their other old keys. A rival's
    whole row is weighed only once it competes, so a crowd of new keys costs a look at the
    few old keys in play each, not at every key that fell quiet.
    """
    news = [new, *rivals]
    stay: dict[int, float] = {}

    def row(i: int, among: Iterable[int]) -> dict[int, float]:
        fits = {}
        for j in among:
            old = olds[j]
            # A rival may yet continue a key still on the air; ``new`` only a silent one.
            if (i or _silent(old, policy, now)) and (
                score := mismatch(news[i], old, policy, phase)
            ) is not None:
                if j not in stay:
                    stay[j] = _stay_cost(old, policy) - _leave_cost(old, policy)
                fits[j] = score + stay[j]
        return fits

    every = range(len(olds))
    rows = [row(0, every)]
    taken, reached = {0}, set(rows[0])
    layer = [0] if rows[0] else []
    while layer and len(rows) < MAX_JOINT:
        layer = [i for i in range(1, len(news)) if i not in taken and row(i, reached)]
        for i in layer[: MAX_JOINT - len(rows)]:
            taken.add(i)
            rows.append(row(i, every))
            reached |= rows[-1].keys()
    return rows


def _assign(
    edges: Sequence[dict[int, float]], unlinked: float, forbid: int | None = None
) -> tuple[float, list[int | None]]:
    """Return the least-cost assignment of new keys (rows) to distinct old keys, and its cost.

    ``forbid``: an old key the first new key may not take. Branch and bound (each row costs
    at least its cheapest choice): the components are a few keys (`MAX_JOINT`). An empty
    assignment (and an infinite cost) when the search would take more than `ASSIGN_BUDGET`
    branches: no answer is then sure enough to link by.
    """
    floor = [min(unlinked, *row.values()) for row in edges]
    rest = [sum(floor[i:]) for i in range(len(edges) + 1)]
    best_cost = math.inf
    best_picks: list[int | None] = []
    budget = ASSIGN_BUDGET

    def walk(i: int, used: frozenset[int], cost: float, picks: list[int | None]) -> None:
        nonlocal best_cost, best_picks, budget
        budget -= 1
        if budget < 0 or cost + rest[i] >= best_cost:
            return
        if i == len(edges):
            best_cost, best_picks = cost, picks
            return
        for j, score in sorted(edges[i].items(), key=lambda item: item[1]):
            if j not in used and not (i == 0 and j == forbid):
                walk(i + 1, used | {j}, cost + score, [*picks, j])
        walk(i + 1, used, cost + unlinked, [*picks, None])

    walk(0, frozenset(), 0.0, [])
    if budget < 0:
        return math.inf, []
    return best_cost, best_picks


def _leave_cost(old: Trail, policy: LinkPolicy) -> float:
    """Return -2 ln of the chance that the phone of ``old`` left during its pause.

    A phone inside for ``dwell_s`` is taken to stay about as long again (at least
    ``min_stay_s``), so it leaves in a given pause with a chance of pause / (stay + pause):
    likely for a visitor who came a moment ago, unlikely for the guard who has sat there for
    an hour.
    """
    return -2 * math.log(_leave_chance(old, policy))


def _leave_chance(old: Trail, policy: LinkPolicy) -> float:
    if old.app is App.BLUEZONE and old.platform is Platform.ANDROID:
        pause = max(off for on, off, _, _ in _android_cycles(old, policy)) if old.cycle_s else 15.0
    elif old.app is App.BLUETRACE:
        pause = BLUETRACE_CYCLE_S[1] + policy.bluetrace_late_s
    else:
        pause = _handover_gap(old, policy)
    return pause / (max(old.dwell_s, policy.min_stay_s) + pause)


def _stay_cost(old: Trail, policy: LinkPolicy) -> float:
    """Return -2 ln of the chance that the phone of ``old`` stayed through its pause."""
    return -2 * math.log1p(-_leave_chance(old, policy))


def learn_cycle(intervals: Iterable[float]) -> tuple[float, float] | None:
    """Return a Bluezone Android phone's (period, spread) from the gaps between burst starts.

    Gaps that are no nominal cycle (a burst missed, the phone out of range) are left out, and
    so are those of another cycle than the latest gap's (the app was opened or closed). None
    until `MIN_CYCLES` gaps agree.
    """
    nominal = [on + off for on, off in BLUEZONE_CYCLES_S]
    tagged = [
        (cycle, gap) for gap in intervals for cycle in nominal if abs(gap - cycle) <= CYCLE_MATCH_S
    ]
    if not tagged:
        return None
    latest = tagged[-1][0]
    gaps = [gap for cycle, gap in tagged if cycle == latest]
    if len(gaps) < MIN_CYCLES:
        return None
    mean = sum(gaps) / len(gaps)
    spread = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    return mean, spread
