"""Link a phone's new rolling ID (or address) to the one it had a moment ago; pure, clock-free.

A Bluezone phone changes its rolling ID at every quarter hour (UTC), GAEN phones rotate their
RPI and address together every 10-20 min, and address-keyed phones (Bluezone iPhones before
their ID is read, BlueTrace) get a new address now and then. Each key is its own visit in the
event log, as tracing needs; the linker says which of them are one phone, so that the desk and
the central count people, not IDs.

The rule (`find_predecessor`): a new key continues an older one of the same app and platform
when

- the old key fell silent at most ``overlap_s`` after the new one was first heard (one phone
  advertises one key at a time; the slack covers a second adapter's late reports),
- their smoothed RSSI levels are within ``rssi_tolerance_db`` and, with two adapters, some
  adapter heard both (the phone did not jump across the room), and
- the timing is that of a rotation:

  - **Bluezone Android** takes a new ID when advertising restarts, and restarts every cycle:
    15 s on, 15 s off in the background (30 s), 60 s on, 5 s off with the app open (65 s). So
    the new ID is first heard within ``rotation_window_s`` after a quarter-hour boundary, one
    cycle after the old ID's last burst began (within ``restart_tolerance_s``), and that burst
    began before the boundary. The burst start ties the two IDs to one phone's own rhythm,
    which differs from phone to phone: the cue that tells apart several phones rotating at
    the same boundary.
  - **Others** rotate without a pause in their advertising: the new key is first heard within
    ``handover_gap_s`` of the old key's last advert (``bluetrace_gap_s`` for BlueTrace, which
    pauses 5 s between its 3-minute bursts).

- Exactly one older key fits, and no other new key fits that older key too. Two candidates
  mean two phones with the same rhythm at the same level: not linked (a missed link splits a
  visit in two; a wrong one would merge two people, which tracing must never see).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from gateway.model import App, Platform
from gateway.rolling import SLOT_S

BLUEZONE_CYCLES_S: Final = (30.0, 65.0)
"""Bluezone Android's advertising cycles: 15 s on + 15 s off (background), 60 s + 5 s (app
open): AppConstants DEFAULT_BROADCAST_BLE_INTERVAL and its foreground counterpart."""


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """Parameters of the rule (module docstring); the defaults fit protocol.md's phones."""

    enabled: bool = True
    rotation_window_s: float = 70.0
    """A Bluezone Android phone's new ID is first heard this soon after the quarter hour: one
    65 s cycle at most, plus a lost first advert or two."""
    restart_tolerance_s: float = 2.0
    """How far the new ID's first sighting may sit from one cycle after the old ID's last
    burst began: advertising jitter plus the first few adverts lost."""
    handover_gap_s: float = 3.0
    """Silence allowed between the old key's last advert and the new key's first when the
    phone does not pause (GAEN at 250 ms, a Bluezone iPhone at 1 s in the background)."""
    bluetrace_gap_s: float = 8.0
    """The same for BlueTrace, which pauses 5 s between bursts."""
    overlap_s: float = 0.5
    """The new key may be first heard this long before the old key's last report."""
    rssi_tolerance_db: float = 12.0
    """Most the two keys' smoothed RSSI may differ: a phone moves, but not across the room."""

    def __post_init__(self) -> None:
        """Check that every duration is positive."""
        for name in (
            "rotation_window_s",
            "restart_tolerance_s",
            "handover_gap_s",
            "bluetrace_gap_s",
            "overlap_s",
            "rssi_tolerance_db",
        ):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0"
                raise ValueError(msg)

    @property
    def lookback_s(self) -> float:
        """Return how long a silent key stays a candidate predecessor."""
        return max(BLUEZONE_CYCLES_S) + self.restart_tolerance_s + self.rotation_window_s


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
    """Smoothed RSSI at the last sighting."""
    roles: frozenset[str] = frozenset()
    """Adapter roles (two-adapter set-ups) that heard the key recently; empty with one."""


def quarter_hour_phase(wall: Callable[[float], float]) -> Callable[[float], float]:
    """Return t → seconds since the last quarter hour (UTC) at source time ``t``.

    ``wall`` converts the source's clock to Unix time (the identity for a capture).
    """
    return lambda t: wall(t) % SLOT_S


def fits(new: Trail, old: Trail, policy: LinkPolicy, phase: Callable[[float], float]) -> bool:
    """Return whether ``new`` may continue ``old`` (the rule, without the ambiguity check)."""
    if old.key == new.key or old.app is not new.app or old.platform is not new.platform:
        return False
    if old.first_heard >= new.first_heard or old.last_heard > new.first_heard + policy.overlap_s:
        return False
    if abs(old.rssi - new.rssi) > policy.rssi_tolerance_db:
        return False
    if old.roles and new.roles and not old.roles & new.roles:
        return False
    if new.app is App.BLUEZONE and new.platform is Platform.ANDROID:
        since_boundary = phase(new.first_heard)
        since_burst = new.first_heard - old.burst_start
        if since_boundary > policy.rotation_window_s or since_burst <= since_boundary:
            return False  # not just after a quarter hour, or the old burst began after it
        return any(
            abs(since_burst - cycle) <= policy.restart_tolerance_s for cycle in BLUEZONE_CYCLES_S
        )
    gap = policy.bluetrace_gap_s if new.app is App.BLUETRACE else policy.handover_gap_s
    return new.first_heard - old.last_heard <= gap


def find_predecessor(
    new: Trail,
    candidates: Iterable[Trail],
    rivals: Iterable[Trail],
    policy: LinkPolicy,
    phase: Callable[[float], float],
) -> Trail | None:
    """Return the one older key ``new`` continues, or None when none or several fit.

    Args:
        new: the key to link, usually at the moment it enters the zone.
        candidates: keys that may have come before it: recently heard, with a visit, and not
            continued by another key yet.
        rivals: other new keys not linked yet; if one of them fits the chosen predecessor
            too, the link is ambiguous and not made.
        policy: the rule's parameters.
        phase: seconds since the last quarter hour at a source time (`quarter_hour_phase`).
    """
    if not policy.enabled:
        return None
    found = [old for old in candidates if fits(new, old, policy, phase)]
    if len(found) != 1:
        return None
    [old] = found
    if any(rival.key != new.key and fits(rival, old, policy, phase) for rival in rivals):
        return None
    return old
