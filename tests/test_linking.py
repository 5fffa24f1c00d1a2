"""Linking a phone's keys across ID rotation, on simulated days, through the pipeline and SQLite.

Issue 10's acceptance asks for link precision >= 0.99 and recall >= 0.95 on days with staff
present for hours and crowds passing at the quarter hours. These tests print what the linker
reaches there, per day and pooled over four days, and hold the pooled numbers to those two
targets (README, "Visits", gives the numbers on more days, and on days never tuned on). The
invariant that matters for tracing is asserted exactly: linking changes no per-ID event.

The gateway has been running for a while when the first quarter hour comes (the capture
starts 11 minutes before it), as it has on any day but the one it was installed: a burst that
was already on the air when the scan began is timed only by its end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gateway import scoring
from gateway.model import Advert, PresenceEvent, PresencePolicy
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.simulate import DEFAULT_START, Scenario, Simulation, TruthVisit
from gateway.store import EventStore

SEEDS = (1, 2, 3, 4)
PRECISION_FLOOR = 0.99
RECALL_FLOOR = 0.95
START = DEFAULT_START + 300.0
"""07:05Z: staff sit from 07:04, the first quarter hour is at 07:15."""


@dataclasses.dataclass(frozen=True)
class Day:
    seed: int
    adverts: list[Advert]
    truth: list[TruthVisit]


def simulate(seed: int) -> Day:
    scenario = Scenario(people=300, minutes=90, staff=10, boundary_crowd=8, seed=seed, start=START)
    sim = Simulation(scenario)
    adverts = list(sim.adverts())
    return Day(seed, adverts, sim.truth())


@pytest.fixture(scope="module")
def days() -> list[Day]:
    return [simulate(seed) for seed in SEEDS]


def replay(
    adverts: Iterable[Advert], db: Path, *, link: bool
) -> tuple[list[PresenceEvent], list[dict[str, Any]], list[tuple[float, int, int]]]:
    """Run the day through the pipeline into SQLite; sample the live counts every minute."""
    decided: list[PresenceEvent] = []
    counts: list[tuple[float, int, int]] = []
    with EventStore.open(db, gateway="gw", site="test") as store:
        tracker = PresenceTracker(PresencePolicy(link=link))
        pipeline = Pipeline(
            tracker, store, wall=float,
            clock_synced=lambda: True, on_events=lambda events, _: decided.extend(events),
        )  # fmt: skip
        next_tick = next_count = -math.inf
        for advert in adverts:
            if advert.t >= next_tick:
                pipeline.tick(advert.t)
                next_tick = advert.t + 1.0
            if advert.t >= next_count:
                counts.append((advert.t, tracker.people(), len(tracker.present())))
                next_count = advert.t + 60.0
            pipeline.feed(advert)
        pipeline.close()
        stored = list(store.events())
    return decided, stored, counts


def test_links_join_one_persons_keys_and_counts_follow(days, tmp_path, capsys):
    pooled = scoring.LinkScore(0, 0, 0, 0)
    for day in days:
        decided, stored, samples = replay(day.adverts, tmp_path / f"{day.seed}.db", link=True)
        links = scoring.score_links(decided, day.truth)
        counts = scoring.count_error(samples, day.truth)
        people = {v.person for v in day.truth if v.observable}
        with capsys.disabled():
            print(
                f"\nseed {day.seed}: {links.as_dict()}; inside-now error {counts}; over the"
                f" day {len({e['visit_id'] for e in stored})} visits and"
                f" {len({e['rolling_id'] or e['id'] for e in stored if e['type'] == 'entry'})}"
                f" keys for {len(people)} people"
            )
        pooled += links
        # In SQLite: a continuing entry shares the visit of the key it continues.
        by_rolling_id = {e["rolling_id"]: e for e in stored if e["type"] == "entry"}
        continuing = [e for e in stored if e["continues"]]
        assert continuing
        for entry in continuing:
            assert entry["visit_id"] == by_rolling_id[entry["continues"]]["visit_id"]
        assert len({e["visit_id"] for e in stored}) < len(
            {e["id"] for e in stored if e["type"] == "entry"}
        )
    with capsys.disabled():
        print(f"pooled over seeds {SEEDS}: {pooled.as_dict()}")
    assert pooled.expected >= 250  # staff rotations and crowds: enough to mean something
    assert pooled.precision >= PRECISION_FLOOR
    assert pooled.recall >= RECALL_FLOOR


@pytest.mark.parametrize("index", [0, 2])
def test_linking_changes_no_per_id_event(days, index, tmp_path):
    sim = days[index]
    linked, linked_rows, _ = replay(sim.adverts, tmp_path / "linked.db", link=True)
    plain, plain_rows, _ = replay(sim.adverts, tmp_path / "plain.db", link=False)
    assert any(e.continues for e in linked)
    # The engine's decisions: equal but for the visit fields (an entry may be decided a few
    # seconds later while its link waits, but it is stamped when it qualified).
    assert sorted(_per_id(linked)) == sorted(_per_id(plain))
    # And what tracing reads: per rolling ID, the same entries and exits at the same times.
    assert sorted(_rows(linked_rows)) == sorted(_rows(plain_rows))


def _per_id(events: list[PresenceEvent]) -> list[tuple[Any, ...]]:
    return [
        (e.type.value, e.key, e.at, e.first_seen, e.last_seen, e.sightings, e.rssi_max)
        for e in (dataclasses.replace(e, chain=0, continues=None) for e in events)
    ]


def _rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["type"], r["rolling_id"] or "", r["ts"], r["dwell_s"], r["sightings"]) for r in rows]
