"""Seq gaps: which of a gateway's events are missing, and when to ask it to replay them.

Pure functions over seqs and times (no database, no clock), after docs/mqtt.md "Detect lost
events with seq": every gateway numbers its events 1, 2, 3, …; a seq that central does not
hold is an event the gateway stored but central never received. Events arrive out of order
(redeliveries, several collectors, an outbox emptying after an outage), so a hole is only
worth a ``cmd/replay`` once it has stayed open for a grace period.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from gateway.schemas import MAX_REPLAY_RANGE

Range = tuple[int, int]
"""An inclusive range of seqs, (first, last)."""

OPEN: Final = "open"
LOST: Final = "lost"


@dataclass(frozen=True, slots=True)
class Gap:
    """A hole in one gateway's seqs and what was done about it."""

    from_seq: int
    to_seq: int
    state: str
    """`OPEN` (being healed) or `LOST` (given up: the gateway no longer has those events)."""
    detected_at: float
    """Unix seconds when the hole (or a larger one it is left of) was first seen."""
    requested_at: float | None = None
    """When the last ``cmd/replay`` for it was sent."""
    attempts: int = 0
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Holes:
    """What `find_holes` found above a watermark."""

    holes: list[Range]
    watermark: int
    """The highest seq up to which nothing is missing (held or given up as lost)."""
    top: int
    """The highest seq held (or the old watermark when nothing is held above it)."""


def find_holes(held: Iterable[int], after: int, lost: Iterable[Range] = ()) -> Holes:
    """Return the holes among the seqs above ``after`` (every seq up to ``after`` is accounted for).

    ``held`` are the seqs central has (any order, duplicates allowed); ``lost`` are ranges given
    up for good, which count as held. A hole reaches up to the next held seq; seqs above the
    highest one held are not holes (nothing says they exist yet: see `tail_hole`).
    """
    spans = sorted([(s, s) for s in held if s > after] + [(a, b) for a, b in lost if b > after])
    holes: list[Range] = []
    following = after + 1
    watermark: int | None = None
    for first, last in spans:
        if first > following:
            holes.append((following, first - 1))
            if watermark is None:
                watermark = following - 1
        following = max(following, last + 1)
    top = following - 1
    return Holes(holes, top if watermark is None else watermark, top)


def tail_hole(top: int, outbox_depth: int | None, outbox_last_seq: int | None) -> Range | None:
    """Return the newest events lost after the broker, seen from the gateway's health report.

    With an empty outbox every event up to ``outbox.last_seq`` reached the broker; any of
    them above the highest seq held was lost after it (docs/mqtt.md, "Holes at the end").
    """
    if outbox_depth == 0 and outbox_last_seq is not None and outbox_last_seq > top:
        return (top + 1, outbox_last_seq)
    return None


def split_replayable(hole: Range, first_stored: int | None) -> tuple[Range | None, Range | None]:
    """Split a hole into (what the gateway can no longer have, what it may still have).

    ``first_stored`` is the lowest seq the gateway still stores (``outbox.first_seq`` in its
    health); retention deleted everything below it. Unknown (None): all may still be there.
    """
    first, last = hole
    if first_stored is None or first >= first_stored:
        return None, hole
    if last < first_stored:
        return hole, None
    return (first, first_stored - 1), (first_stored, last)


def reconcile(old: Sequence[Gap], holes: Iterable[Range], now: float) -> list[Gap]:
    """Return the open gaps for this check's holes, keeping the history of the older ones.

    A hole that overlaps gaps already open (the same hole, or what is left of one that was
    partly filled) keeps the earliest detection time and the latest request, so a hole that
    shrinks does not wait out its grace period again nor get asked for twice as often.
    """
    gaps = []
    for first, last in holes:
        overlapping = [g for g in old if g.from_seq <= last and g.to_seq >= first]
        if not overlapping:
            gaps.append(Gap(first, last, OPEN, now))
            continue
        requested = [g.requested_at for g in overlapping if g.requested_at is not None]
        latest = max(overlapping, key=lambda g: (g.requested_at or 0.0, g.attempts))
        gaps.append(
            Gap(
                first,
                last,
                OPEN,
                min(g.detected_at for g in overlapping),
                max(requested) if requested else None,
                max(g.attempts for g in overlapping),
                latest.request_id,
            )
        )
    return gaps


def closed(old: Sequence[Gap], gaps: Sequence[Gap]) -> list[Gap]:
    """Return the old open gaps that no current gap overlaps: filled completely."""
    return [
        g for g in old if not any(n.from_seq <= g.to_seq and n.to_seq >= g.from_seq for n in gaps)
    ]


def due(gap: Gap, now: float, *, grace_s: float, retry_s: float) -> bool:
    """Whether to send ``cmd/replay`` for ``gap`` now: open past the grace, not asked lately."""
    if gap.state != OPEN or now - gap.detected_at < grace_s:
        return False
    return gap.requested_at is None or now - gap.requested_at >= retry_s


def requested(gap: Gap, gateway: str, now: float) -> Gap:
    """Return ``gap`` as after one more ``cmd/replay``, with the request_id to send."""
    attempt = gap.attempts + 1
    request_id = f"gap-{gateway}-{gap.from_seq}-{gap.to_seq}-{attempt}"
    return replace(gap, requested_at=now, attempts=attempt, request_id=request_id)


def replay_commands(gap: Gap) -> list[dict[str, int | str]]:
    """Return the ``cmd/replay`` payloads for ``gap`` (split at the contract's 100,000 seqs)."""
    commands: list[dict[str, int | str]] = []
    first = gap.from_seq
    while first <= gap.to_seq:
        last = min(gap.to_seq, first + MAX_REPLAY_RANGE - 1)
        command: dict[str, int | str] = {"from_seq": first, "to_seq": last}
        if gap.request_id is not None:
            command["request_id"] = gap.request_id
        commands.append(command)
        first = last + 1
    return commands
