"""Score detected visits against a simulation's ground truth; pure.

Visits are matched one to one per device key: a detected visit and a true one match when
they overlap once the true one is widened by ``slack_s`` on each side (the engine decides
entry and exit from smoothed RSSI, so its edges differ from the geometric ones by a few
seconds). Pairs are taken greedily, largest overlap first.

- precision: matched detected visits / detected visits;
- recall: matched observable true visits / observable true visits (a visit whose phone was
  heard fewer than 3 times inside the zone cannot be detected by anyone, see `simulate`);
- splits: true visits that two or more detected visits overlap (flapping);
- merges: detected visits that overlap two or more true visits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from gateway.model import EventType, PresenceEvent

DEFAULT_SLACK_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Visit:
    """An interval during which a device key was inside the zone."""

    key: str
    start: float
    end: float
    app: str | None = None
    observable: bool = True


@dataclass(frozen=True, slots=True)
class Score:
    """How detected visits compare with the truth."""

    detected: int
    true: int
    observable: int
    matched: int
    matched_observable: int
    splits: int
    merges: int
    false_visits: list[Visit]
    missed: list[Visit]

    @property
    def precision(self) -> float:
        """Return matched detected visits / detected visits (1.0 when none detected)."""
        return self.matched / self.detected if self.detected else 1.0

    @property
    def recall(self) -> float:
        """Return matched observable visits / observable visits (1.0 when none)."""
        return self.matched_observable / self.observable if self.observable else 1.0

    def as_dict(self) -> dict[str, Any]:
        """Return the numbers (without the visit lists) as JSON-ready values."""
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "detected": self.detected,
            "true": self.true,
            "observable": self.observable,
            "matched": self.matched,
            "splits": self.splits,
            "merges": self.merges,
            "false_visits": len(self.false_visits),
            "missed": len(self.missed),
        }


def visits_from_events(events: Iterable[PresenceEvent]) -> list[Visit]:
    """Pair entries with exits (by visit number) into visits; an unclosed entry is dropped."""
    entries: dict[int, PresenceEvent] = {}
    out = []
    for event in events:
        if event.type is EventType.ENTRY:
            entries[event.visit] = event
        else:
            entry = entries.pop(event.visit, None)
            if entry is not None:
                out.append(Visit(event.key, entry.at, event.at, event.app.value))
    return out


def visit_from_truth(record: dict[str, Any]) -> Visit:
    """Read one record of a simulation's truth file."""
    return Visit(
        record["key"],
        float(record["start"]),
        float(record["end"]),
        record.get("app"),
        bool(record.get("observable", True)),
    )


def score(
    detected: Iterable[Visit], truth: Iterable[Visit], slack_s: float = DEFAULT_SLACK_S
) -> Score:
    """Match detected visits to true ones and count the outcome."""
    by_key: dict[str, tuple[list[Visit], list[Visit]]] = defaultdict(lambda: ([], []))
    for v in detected:
        by_key[v.key][0].append(v)
    for v in truth:
        by_key[v.key][1].append(v)
    n_det = n_true = n_obs = matched = matched_obs = splits = merges = 0
    false_visits: list[Visit] = []
    missed: list[Visit] = []
    for det, tru in by_key.values():
        n_det += len(det)
        n_true += len(tru)
        n_obs += sum(v.observable for v in tru)
        overlaps = [
            (overlap, i, j)
            for i, d in enumerate(det)
            for j, t in enumerate(tru)
            if (overlap := min(d.end, t.end + slack_s) - max(d.start, t.start - slack_s)) >= 0
        ]
        splits += sum(sum(1 for _, _, j in overlaps if j == k) > 1 for k in range(len(tru)))
        merges += sum(sum(1 for _, i, _ in overlaps if i == k) > 1 for k in range(len(det)))
        used_d: set[int] = set()
        used_t: set[int] = set()
        for _, i, j in sorted(overlaps, reverse=True):
            if i not in used_d and j not in used_t:
                used_d.add(i)
                used_t.add(j)
        matched += len(used_d)
        matched_obs += sum(tru[j].observable for j in used_t)
        false_visits += [d for i, d in enumerate(det) if i not in used_d]
        missed += [t for j, t in enumerate(tru) if j not in used_t and t.observable]
    return Score(n_det, n_true, n_obs, matched, matched_obs, splits, merges, false_visits, missed)


def truth_visits(records: Iterable[Any]) -> list[Visit]:
    """Convert a simulation's `TruthVisit` objects to scoring visits."""
    return [Visit(v.key, v.start, v.end, v.app.value, v.observable) for v in records]
