"""The central store on SQLite and PostgreSQL (the same code), and the gap rules.

Events come from a real gateway store (`EventStore.append`), so they are the contract's
events, ids and seqs included.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from central import gaps as g
from central import report, schema
from central.store import Batch, CentralStore, StoreError, check_schema, create_engine, migrate
from gateway.model import iso_utc
from gateway.store import EventStore
from tests.postgres import PostgresCluster
from tests.test_sync import fill

pytest_plugins = ("tests.postgres",)

BASE = "bluezone/v1/hq/gw-001"


@pytest.fixture(params=["sqlite", "postgresql"])
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralStore]:
    if request.param == "sqlite":
        url = str(tmp_path / "central.db")
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.create_database()
    engine = create_engine(url)
    migrate(engine)
    yield CentralStore(engine)
    engine.dispose()


@pytest.fixture
def gateway_events(tmp_path: Path) -> list[dict[str, Any]]:
    """20 events (10 visits) of gw-001 at site hq, seqs 1-20."""
    with EventStore.open(tmp_path / "gw.db", gateway="gw-001", site="hq") as store:
        fill(store, 10)
        return list(store.events())


def ingest(central: CentralStore, events: list[dict[str, Any]], now: float = 100.0) -> Any:
    return central.ingest(Batch(events=[(BASE, e) for e in events]), now)


def rows(central: CentralStore, query: str) -> list[tuple[Any, ...]]:
    with central.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query))]


def test_events_are_stored_once(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    first = ingest(central, gateway_events[:12] + gateway_events[:2])  # two redelivered at once
    assert (first.stored, first.duplicates) == (12, 2)
    second = ingest(central, gateway_events)
    assert (second.stored, second.duplicates, second.replaced) == (8, 12, 0)
    assert rows(central, "SELECT count(*), count(DISTINCT id), min(seq), max(seq) FROM events") == [
        (20, 20, 1, 20)
    ]
    assert rows(central, "SELECT gateway, site, topic_base, max_seq FROM gateways") == [
        ("gw-001", "hq", BASE, 20)
    ]


def test_a_clock_synced_copy_replaces_the_unsynced_one(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    """docs/mqtt.md "Corrected copies": same id and seq, corrected ts, clock_synced true."""
    event = gateway_events[0]
    unsynced = {**event, "clock_synced": False, "ts": "2000-01-01T00:00:00.000Z"}
    assert ingest(central, [unsynced]).stored == 1
    assert ingest(central, [unsynced]).duplicates == 1
    assert ingest(central, [event]).replaced == 1
    # An old unsynced redelivery never undoes the correction; nor does a synced duplicate.
    assert ingest(central, [unsynced]).duplicates == 1
    assert ingest(central, [event]).duplicates == 1
    ((ts, synced),) = rows(central, "SELECT ts_unix, clock_synced FROM events")
    assert (iso_utc(ts), bool(synced)) == (event["ts"], True)


def test_both_copies_in_one_batch_keep_the_synced_one(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    event = gateway_events[0]
    unsynced = {**event, "clock_synced": False, "ts": "2000-01-01T00:00:00.000Z"}
    counts = ingest(central, [event, unsynced])
    assert (counts.stored, counts.duplicates) == (1, 1)
    assert rows(central, "SELECT clock_synced FROM events") in ([(True,)], [(1,)])


def status(state: str, ts: str, reason: str | None = None) -> dict[str, Any]:
    return {"state": state, "gateway": "gw-001", "site": "hq", "version": "0.2.0",
            "boot_time": "2020-08-08T06:58:02.114Z", "ts": ts, "reason": reason}  # fmt: skip


def test_an_older_status_never_overrides_a_newer_one(central: CentralStore) -> None:
    central.ingest(
        Batch(statuses=[(BASE, status("offline", "2020-08-08T08:00:00.000Z", "shutdown"))]), 1.0
    )
    central.ingest(Batch(statuses=[(BASE, status("online", "2020-08-08T07:00:00.000Z"))]), 2.0)
    assert rows(central, "SELECT state, state_reason FROM gateways") == [("offline", "shutdown")]
    central.ingest(Batch(statuses=[(BASE, status("online", "2020-08-08T09:00:00.000Z"))]), 3.0)
    assert rows(central, "SELECT state, state_reason FROM gateways") == [("online", None)]


def test_quarantine_keeps_topic_payload_and_reason(central: CentralStore) -> None:
    counts = central.ingest(Batch(rejected=[(f"{BASE}/events", b"\xff\x00", "not JSON: …")]), 5.0)
    assert counts.quarantined == 1
    assert rows(central, "SELECT topic, payload, reason FROM quarantine") == [
        (f"{BASE}/events", b"\xff\x00", "not JSON: …")
    ]


def check(central: CentralStore, now: float) -> list[Any]:
    return central.check_gaps(now, grace_s=60.0, retry_s=300.0, max_attempts=2)


def test_a_hole_waits_out_the_grace_then_is_asked_for_then_closes(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    ingest(central, [e for e in gateway_events if not 8 <= e["seq"] <= 11])
    assert check(central, 1000.0) == []  # seen, not yet due
    assert rows(central, "SELECT from_seq, to_seq, state FROM gaps") == [(8, 11, "open")]
    assert rows(central, "SELECT contiguous_seq FROM gateways") == [(7,)]
    (request,) = check(central, 1061.0)
    assert request.topic == f"{BASE}/cmd/replay"
    assert request.payload == {"from_seq": 8, "to_seq": 11, "request_id": "gap-gw-001-8-11-1"}
    assert check(central, 1100.0) == []  # asked for lately
    # Part of it arrives: what is left keeps its history (no new grace, no early retry).
    ingest(central, [e for e in gateway_events if e["seq"] == 8])
    assert check(central, 1200.0) == []
    assert rows(central, "SELECT from_seq, to_seq, attempts FROM gaps") == [(9, 11, 1)]
    (again,) = check(central, 1362.0)
    assert again.payload == {"from_seq": 9, "to_seq": 11, "request_id": "gap-gw-001-9-11-2"}
    ingest(central, [e for e in gateway_events if 9 <= e["seq"] <= 11])
    assert check(central, 1400.0) == []
    assert rows(central, "SELECT * FROM gaps") == []
    assert rows(central, "SELECT contiguous_seq FROM gateways") == [(20,)]


def test_a_hole_asked_for_too_often_is_given_up(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    ingest(central, [e for e in gateway_events if e["seq"] != 5])
    check(central, 0.0)
    assert len(check(central, 100.0)) == 1
    assert len(check(central, 500.0)) == 1
    assert check(central, 900.0) == []  # max_attempts = 2
    assert rows(central, "SELECT from_seq, to_seq, state FROM gaps") == [(5, 5, "lost")]
    check(central, 901.0)
    assert rows(central, "SELECT contiguous_seq FROM gateways") == [(20,)]


def health(depth: int, first: int, last: int) -> dict[str, Any]:
    return {"gateway": "gw-001", "site": "hq", "outbox": {"depth": depth, "first_seq": first,
                                                          "last_seq": last}}  # fmt: skip


def test_health_reveals_lost_newest_events_and_what_retention_deleted(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    """The gateway still stores 4-25, its outbox is empty: 21-25 are a tail hole; 1-3 (never
    received here) are gone for good, 4-5 can be replayed."""
    ingest(central, [e for e in gateway_events if e["seq"] >= 6])
    central.ingest(Batch(healths=[(BASE, health(0, 4, 25))]), 0.0)
    check(central, 0.0)
    assert rows(central, "SELECT from_seq, to_seq, state FROM gaps ORDER BY from_seq") == [
        (1, 3, "lost"), (4, 5, "open"), (21, 25, "open"),
    ]  # fmt: skip
    requests = check(central, 61.0)
    assert [(r.payload["from_seq"], r.payload["to_seq"]) for r in requests] == [(4, 5), (21, 25)]


def test_a_replay_result_with_everything_missing_marks_the_gap_lost(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    ingest(central, [e for e in gateway_events if e["seq"] != 3])
    check(central, 0.0)
    (request,) = check(central, 61.0)
    result = {
        "command": "replay", "request_id": request.payload["request_id"], "ok": True,
        "error": None, "published": 0, "missing": 1, "ts": "2020-08-08T07:15:00.412Z",
    }  # fmt: skip
    central.ingest(Batch(results=[result]), 62.0)
    assert rows(central, "SELECT state, published, missing FROM gaps") == [("lost", 0, 1)]


def test_check_schema_refuses_an_empty_database(tmp_path: Path) -> None:
    engine = create_engine(str(tmp_path / "new.db"))
    with pytest.raises(StoreError, match="has no central schema"):
        check_schema(engine)
    migrate(engine)
    check_schema(engine)
    engine.dispose()


def test_migrate_twice_is_harmless(central: CentralStore) -> None:
    assert migrate(central.engine) == "0002"


def test_read_only_sqlite_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    writer = create_engine(str(path))
    migrate(writer)
    writer.dispose()
    reader = create_engine(str(path), readonly=True)
    with pytest.raises(sa.exc.OperationalError, match="readonly"), reader.begin() as conn:
        conn.execute(sa.text("DELETE FROM events"))
    reader.dispose()


@pytest.mark.parametrize(
    ("text", "driver"),
    [
        ("postgresql://bz@db/bluezone", "postgresql+psycopg"),
        ("postgres://bz@db/bluezone", "postgresql+psycopg"),
        ("sqlite:////var/lib/c.db", "sqlite+pysqlite"),
        ("central.db", "sqlite+pysqlite"),
    ],
)
def test_database_urls(text: str, driver: str) -> None:
    from central.store import database_url

    assert database_url(text).drivername == driver


# --- the gap rules, without a database -----------------------------------------------------------


def test_find_holes() -> None:
    assert g.find_holes([3, 1, 2, 2, 7, 8, 10], 0) == g.Holes([(4, 6), (9, 9)], 3, 10)
    assert g.find_holes([5, 6], 0) == g.Holes([(1, 4)], 0, 6)
    assert g.find_holes([], 7) == g.Holes([], 7, 7)
    assert g.find_holes([9, 12], 7, lost=[(8, 8), (10, 11)]) == g.Holes([], 12, 12)


def test_tail_hole_needs_an_empty_outbox() -> None:
    assert g.tail_hole(20, 0, 25) == (21, 25)
    assert g.tail_hole(20, 3, 25) is None
    assert g.tail_hole(25, 0, 25) is None
    assert g.tail_hole(20, None, None) is None


def test_split_replayable() -> None:
    assert g.split_replayable((1, 10), None) == (None, (1, 10))
    assert g.split_replayable((1, 10), 5) == ((1, 4), (5, 10))
    assert g.split_replayable((1, 4), 5) == ((1, 4), None)
    assert g.split_replayable((6, 9), 5) == (None, (6, 9))


def test_replay_commands_split_at_the_contracts_limit() -> None:
    gap = g.Gap(1, 250_000, g.OPEN, 0.0, request_id="r")
    assert g.replay_commands(gap) == [
        {"from_seq": 1, "to_seq": 100_000, "request_id": "r"},
        {"from_seq": 100_001, "to_seq": 200_000, "request_id": "r"},
        {"from_seq": 200_001, "to_seq": 250_000, "request_id": "r"},
    ]


def test_due() -> None:
    fresh = g.Gap(1, 2, g.OPEN, detected_at=100.0)
    assert not g.due(fresh, 159.0, grace_s=60, retry_s=300)
    assert g.due(fresh, 160.0, grace_s=60, retry_s=300)
    asked = g.requested(fresh, "gw", 160.0)
    assert (asked.attempts, asked.request_id) == (1, "gap-gw-1-2-1")
    assert not g.due(asked, 459.0, grace_s=60, retry_s=300)
    assert g.due(asked, 460.0, grace_s=60, retry_s=300)
    assert not g.due(g.Gap(1, 2, g.LOST, 0.0), 1e9, grace_s=60, retry_s=300)


def test_the_daily_report_counts_people_by_visit_and_ids_beside(
    central: CentralStore, gateway_events: list[dict[str, Any]]
) -> None:
    # As if the gateway had linked the keys of visits 1-4 to visit 0's phone (README, Visits).
    first_visit = gateway_events[0]["visit_id"]
    linked = [
        {**e, "visit_id": first_visit} if 2 <= i < 10 else e for i, e in enumerate(gateway_events)
    ]
    ingest(central, linked)
    with central.engine.connect() as conn:
        [row] = report.daily(conn, schema.events, date(2020, 8, 8))
    assert (row["bluezone_visits"], row["bluezone_ids"], row["entries"]) == (6, 10, 10)
