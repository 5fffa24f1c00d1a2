"""Link a phone's new rolling ID (or address) to the one it had a moment ago; pure, clock-free.

A Bluezone phone changes its rolling ID at every quarter hour (UTC), GAEN phones rotate their
RPI and address together every 10-20 min, and address-keyed phones (Bluezone iPhones before
their ID is read, BlueTrace) get a new address now and then. Each key is its own visit in the
event log, as tracing needs; the linker says which of them are one phone, so that the desk and
the central count people, not IDs.

The rule (`find_predecessor`): a new key continues an older one of the same app and platform
when

- the old key fell silent at most ``overlap_s`` after the new one was first heard (one phone
  advertises one key at a time; the slack covers a second adapter's late reports), and has
  stayed silent since, for long enough to tell a stop from a gap between adverts
  (``silence_s``; ``gaen_silence_s`` for GAEN's 4 adverts a second). Until then the decision,
  and the new key's entry with it, waits (`undecided`): a few seconds, while the person is
  already counted under the old key,
- the old key was inside the zone when it went quiet (one that faded out had left),
- their RSSI levels agree within ``rssi_tolerance_db`` plus their measuring error and, with
  two adapters, some adapter heard both (the phone did not jump across the room), and
- the timing is that of a rotation:

  - **Bluezone Android** takes a new ID when advertising restarts, and restarts every cycle:
    15 s on, 15 s off in the background (30 s), 60 s on, 5 s off with the app open (65 s). So
    the new ID is first heard within ``rotation_window_s`` after a quarter-hour boundary, one
    cycle after the old ID's last burst began (within ``restart_tolerance_s``), and that burst
    began before the boundary. The burst start ties the two IDs to one phone's own rhythm,
    which differs from phone to phone: the cue that tells apart several phones rotating at
    the same boundary.
    The old ID's last advert came at least ``android_gap_s`` before the new one's first (the
    phone was between bursts, not advertising) and at most the pause plus
    ``android_late_s`` (it was heard to the end of its burst: still there).
  - **BlueTrace** takes a new address at every 180 s burst, after a 5 s pause: the new key is
    first heard one 185 s cycle after the old one was (within ``bluetrace_tolerance_s``).
  - **Others** (GAEN, a Bluezone iPhone keyed by its address) rotate without a pause in their
    advertising: the new key is first heard within ``handover_gap_s`` of the old key's last.

- One older key fits clearly best, and no other new key fits it about as well (`mismatch`
  scores timing and level; the best must beat the next by ``margin``). Two phones with the
  same rhythm at the same level are ambiguous: not linked (a missed link splits a visit in
  two; a wrong one would merge two people, which tracing must never see).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from gateway.model import App, Platform
from gateway.rolling import SLOT_S

BLUETRACE_CYCLE_S: Final = (180.0, 5.0)
"""BlueTrace/OpenTrace advertises 180 s, pauses 5 s, and comes back with a new address."""
BLUEZONE_CYCLES_S: Final = ((15.0, 15.0), (60.0, 5.0))
"""Bluezone Android's advertising (on, off) cycles: 15 s + 15 s in the background, 60 s + 5 s
with the app open: AppConstants DEFAULT_BROADCAST_BLE_INTERVAL and its foreground twin."""


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
    phone does not pause (GAEN at 250 ms, a Bluezone iPhone at 1 s in the background)."""
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
    android_late_s: float = 3.0
    """Most the silence may exceed that pause: a phone still present is heard to the end of
    its burst (one that walked off went quiet earlier)."""
    rssi_tolerance_db: float = 6.0
    """How far the two keys' RSSI levels may differ beyond their measuring error (2.5
    standard errors): a phone moves a little, not across the room."""
    motion_db: float = 3.0
    """How much a still-seated phone's level wanders from one key to the next (scoring)."""
    timing_sigma_s: float = 0.35
    """Spread of the burst timing: advertising jitter and the first adverts lost (scoring)."""
    settled_se_db: float = 2.0
    """With several candidates, wait until the new key's level is known this well."""
    margin: float = 4.0
    """How much better (in squared z-scores) the best candidate must match than the next."""

    def __post_init__(self) -> None:
        """Check that every duration is positive."""
        for name in (
            "rotation_window_s",
            "restart_tolerance_s",
            "handover_gap_s",
            "bluetrace_late_s",
            "bluetrace_tolerance_s",
            "overlap_s",
            "motion_db",
            "timing_sigma_s",
            "settled_se_db",
            "margin",
            "silence_s",
            "gaen_silence_s",
            "android_gap_s",
            "android_late_s",
            "rssi_tolerance_db",
        ):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0"
                raise ValueError(msg)

    @property
    def lookback_s(self) -> float:
        """Return how long a silent key stays a candidate predecessor."""
        longest = max(on + off for on, off in BLUEZONE_CYCLES_S)
        return longest + self.restart_tolerance_s + self.rotation_window_s

    @property
    def max_wait_s(self) -> float:
        """Return the longest a new key's entry waits for the link to be decided."""
        return max(self.silence_s, self.gaen_silence_s) + 0.5

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
    """Return how badly ``new`` matches ``old`` (a sum of squared z-scores), None if it cannot.

    The score adds the RSSI levels' difference, in standard deviations of a phone that moves
    a little (``motion_db``) measured with both levels' errors, and for a Bluezone Android
    phone the burst timing's error in ``timing_sigma_s``.
    """
    if old.key == new.key or old.app is not new.app or old.platform is not new.platform:
        return None
    if old.first_heard >= new.first_heard or old.last_heard > new.first_heard + policy.overlap_s:
        return None
    spread = math.hypot(old.rssi_se, new.rssi_se)
    level = abs(old.rssi - new.rssi)
    if level > policy.rssi_tolerance_db + 2.5 * spread:
        return None
    if old.roles and new.roles and not old.roles & new.roles:
        return None
    if not old.inside_at_end:
        return None  # it went quiet outside the zone: it left, it did not rotate
    score = (level / math.hypot(policy.motion_db, spread)) ** 2
    timing = _timing(new, old, policy, phase)
    return None if timing is None else score + timing


def _timing(
    new: Trail, old: Trail, policy: LinkPolicy, phase: Callable[[float], float]
) -> float | None:
    """Return the squared z-score of the hand-over's timing, None if it is not a rotation."""
    gap = new.first_heard - old.last_heard
    if new.app is App.BLUEZONE and new.platform is Platform.ANDROID:
        since_boundary = phase(new.first_heard)
        since_burst = new.first_heard - old.burst_start
        if since_boundary > policy.rotation_window_s or since_burst <= since_boundary:
            return None  # not just after a quarter hour, or the old burst began after it
        if gap < policy.android_gap_s:
            return None  # the old ID was still on the air: another phone
        errors = [
            abs(since_burst - on - off)
            for on, off in BLUEZONE_CYCLES_S
            if gap <= off + policy.android_late_s  # heard to the end of its burst: still here
        ]
        if not errors or min(errors) > policy.restart_tolerance_s:
            return None
        return (min(errors) / policy.timing_sigma_s) ** 2
    if new.app is App.BLUETRACE:
        # A new address at every 180 s burst, after a 5 s pause, heard once a second.
        on, off = BLUETRACE_CYCLE_S
        error = abs(new.first_heard - old.burst_start - on - off)
        if gap > off + policy.bluetrace_late_s or error > policy.bluetrace_tolerance_s:
            return None
        return (error / policy.bluetrace_tolerance_s * 2) ** 2
    return 0.0 if gap <= policy.handover_gap_s else None


def _silent(old: Trail, policy: LinkPolicy, now: float) -> bool:
    return now - old.last_heard >= policy.silence_for(old.app, old.platform)


def undecided(
    new: Trail,
    candidates: Iterable[Trail],
    policy: LinkPolicy,
    phase: Callable[[float], float],
    now: float,
) -> bool:
    """Return whether to wait before deciding the link of ``new``.

    Either a candidate fits but has not been silent long enough yet, or several fit and the
    new key's level is still too rough to choose between them.
    """
    if not policy.enabled:
        return False
    possible = [old for old in candidates if could_fit(new, old, policy, phase)]
    if any(not _silent(old, policy, now) for old in possible):
        return True
    return len(possible) > 1 and new.rssi_se > policy.settled_se_db


def find_predecessor(
    new: Trail,
    candidates: Iterable[Trail],
    rivals: Iterable[Trail],
    policy: LinkPolicy,
    phase: Callable[[float], float],
    now: float,
) -> Trail | None:
    """Return the older key ``new`` continues, or None when none fits or it is ambiguous.

    Of the candidates that fit, the best match is taken when it is better than the next by
    ``margin`` (its score lower by that much: a likelihood ratio of e^(margin/2)); otherwise
    the link is ambiguous and not made.

    Args:
        new: the key to link, usually at the moment it enters the zone.
        candidates: keys that may have come before it: recently heard, with a visit, and not
            continued by another key yet.
        rivals: other new keys not linked yet; if one of them matches the chosen predecessor
            about as well, the link is ambiguous and not made.
        policy: the rule's parameters.
        phase: seconds since the last quarter hour at a source time (`quarter_hour_phase`).
        now: the source time of the decision (silence is measured up to it).
    """
    if not policy.enabled:
        return None
    scored = sorted(
        (score, i, old)
        for i, old in enumerate(candidates)
        if _silent(old, policy, now) and (score := mismatch(new, old, policy, phase)) is not None
    )
    if not scored:
        return None
    best, _, old = scored[0]
    if len(scored) > 1 and scored[1][0] - best < policy.margin:
        return None
    for rival in rivals:
        if rival.key == new.key:
            continue
        other = mismatch(rival, old, policy, phase)
        if other is not None and other - best < policy.margin:
            return None
    return old
