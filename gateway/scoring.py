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

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

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


@dataclass(frozen=True, slots=True)
class LinkScore:
    """How the linker's decisions (one phone's keys joined into one visit) compare with the truth.

    - precision: links joining two keys of the same person / links made;
    - recall: true hand-overs bridged / true hand-overs the gateway could bridge: a person's
      consecutive keys with no gap between them (a rotation while inside), both detected.
    """

    links: int
    wrong: int
    expected: int
    bridged: int

    @property
    def precision(self) -> float:
        """Return correct links / links (1.0 when none were made)."""
        return (self.links - self.wrong) / self.links if self.links else 1.0

    def __add__(self, other: LinkScore) -> LinkScore:
        """Pool two scores (several simulated days)."""
        return LinkScore(
            self.links + other.links,
            self.wrong + other.wrong,
            self.expected + other.expected,
            self.bridged + other.bridged,
        )

    @property
    def recall(self) -> float:
        """Return bridged hand-overs / expected hand-overs (1.0 when none were expected)."""
        return self.bridged / self.expected if self.expected else 1.0

    def as_dict(self) -> dict[str, Any]:
        """Return the numbers as JSON-ready values."""
        return {
            "link_precision": round(self.precision, 4),
            "link_recall": round(self.recall, 4),
            "links": self.links,
            "wrong_links": self.wrong,
            "expected": self.expected,
            "bridged": self.bridged,
        }


class KeyVisit(Protocol):
    """A true visit of one device key, with the person carrying it (`simulate.TruthVisit`)."""

    person: str
    key: str
    start: float
    end: float

    @property
    def observable(self) -> bool:
        """Whether the visit was heard well enough to be detected at all."""
        ...


def score_links(
    events: Iterable[PresenceEvent],
    truth: Iterable[KeyVisit],
    *,
    handover_s: float = 1.0,
    slack_s: float = DEFAULT_SLACK_S,
) -> LinkScore:
    """Score the links in ``events`` (entries whose chain is an earlier visit's).

    A link is right when the key it continues, the chain's latest key, is the same person's.
    A true hand-over is two consecutive keys of one person less than ``handover_s`` apart;
    it is expected to be bridged when both keys have an entry within their true visits
    (widened by ``slack_s``), and bridged when those entries share a chain.
    """
    truth = list(truth)
    person = {v.key: v.person for v in truth}
    latest_key: dict[int, str] = {}
    entries: dict[str, list[tuple[float, int]]] = defaultdict(list)
    links = wrong = 0
    for event in events:
        if event.type is not EventType.ENTRY:
            continue
        chain = event.visit_chain
        if chain != event.visit:
            links += 1
            previous = latest_key.get(chain)
            if previous is None or person.get(previous) != person.get(event.key):
                wrong += 1
        latest_key[chain] = event.key
        entries[event.key].append((event.at, chain))
    by_person: dict[str, list[KeyVisit]] = defaultdict(list)
    for visit in truth:
        by_person[visit.person].append(visit)
    expected = bridged = 0
    for visits in by_person.values():
        visits.sort(key=lambda v: v.start)
        for a, b in itertools.pairwise(visits):
            if a.key == b.key or b.start - a.end > handover_s:
                continue
            before = [c for at, c in entries[a.key] if a.start - slack_s <= at <= a.end + slack_s]
            after = [c for at, c in entries[b.key] if b.start - slack_s <= at <= b.end + slack_s]
            if not before or not after:
                continue
            expected += 1
            bridged += before[-1] == after[0]
    return LinkScore(links, wrong, expected, bridged)


def count_error(
    samples: Iterable[tuple[float, int, int]], truth: Iterable[KeyVisit]
) -> dict[str, float]:
    """Compare what a live view showed as inside with the truth.

    ``samples``: (time, people, IDs) as the tracker reported them at that moment
    (`PresenceTracker.people` and the number of keys present): what the desk's "inside now"
    showed, an old key still counted until its visit times out. Truth: distinct people with
    an observable key visit at that time.
    """
    true_spans = [(v.start, v.end, v.person) for v in truth if v.observable]
    n = people_err = ids_err = true_sum = 0.0
    for t, people, ids in samples:
        true_n = len({p for a, b, p in true_spans if a <= t < b})
        people_err += abs(people - true_n)
        ids_err += abs(ids - true_n)
        true_sum += true_n
        n += 1
    if not n:
        return {"samples": 0, "mean_true": 0.0, "people_mae": 0.0, "ids_mae": 0.0}
    return {
        "samples": int(n),
        "mean_true": round(true_sum / n, 2),
        "people_mae": round(people_err / n, 3),
        "ids_mae": round(ids_err / n, 3),
    }
