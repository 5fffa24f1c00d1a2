"""Tests of gateway.store on real SQLite files."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import store as store_module
from gateway.model import App, EventType, Platform, PresenceEvent, iso_utc, parse_iso_utc
from gateway.store import EventStore, StoreError, _uuid7
from tests._store_writer import EVENTS_PER_FLUSH

CONTRACT_KEYS = [
    "id", "seq", "gateway", "site", "type", "ts", "app", "platform", "rolling_id", "rssi_max",
    "sightings", "first_seen", "last_seen", "dwell_s", "entry_id", "checked_in", "clock_synced",
    "direction", "visit_id", "continues",
]  # fmt: skip
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
T0_UNIX = 1_596_870_000.0  # 2020-08-08T07:00:00Z
DAY_S = 86_400.0
REPO = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("_store_writer.py")


def wall(t: float) -> float:
    """Source clock -> Unix seconds, as the daemon's monotonic offset would do."""
    return t + T0_UNIX


def presence(
    type_: EventType = EventType.ENTRY,
    *,
    visit: int = 1,
    at: float = 1.123,
    checked_in: bool = False,
    **kw: Any,
) -> PresenceEvent:
    fields: dict[str, Any] = {
        "key": "0a1b2c3d4e5f60718293a4b5",
        "app": App.BLUEZONE,
        "platform": Platform.ANDROID,
        "rolling_id": "0a1b2c3d4e5f60718293a4b5",
        "rssi_max": -58,
        "sightings": 12,
        "first_seen": at - 0.5,
        "last_seen": at,
    }
    fields.update(kw)
    return PresenceEvent(type=type_, visit=visit, at=at, checked_in=checked_in, **fields)


def visit_events(visit: int, entry_at: float, exit_at: float) -> list[PresenceEvent]:
    return [
        presence(EventType.ENTRY, visit=visit, at=entry_at),
        presence(EventType.EXIT, visit=visit, at=exit_at, checked_in=True),
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "events.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[EventStore]:
    with EventStore.open(db_path, gateway="gw-01", site="hq", commit_interval_s=3600) as s:
        yield s


def raw_seqs(path: Path) -> list[int]:
    """Committed seqs as a second, plain read-only connection sees them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()


def test_contract(store: EventStore) -> None:
    appended = store.append(
        [
            presence(EventType.ENTRY, at=1.123, first_seen=0.5, last_seen=1.123),
            presence(EventType.EXIT, at=95.0, first_seen=0.5, last_seen=95.0, checked_in=True),
        ],
        wall=wall,
        clock_synced=True,
    )
    assert store.flush() == 2
    entry, exit_ = events = list(store.events())
    assert events == appended
    for event in events:
        assert list(event) == CONTRACT_KEYS
        assert uuid.UUID(event["id"]).version == 7
        for key in ("ts", "first_seen", "last_seen"):
            assert ISO_RE.match(event[key]), event[key]
        assert isinstance(event["rssi_max"], int)
        assert isinstance(event["sightings"], int)
        assert event["clock_synced"] is True
    assert [entry["seq"], exit_["seq"]] == [1, 2]
    # One key, not linked: the visit is the entry's.
    assert entry["visit_id"] == exit_["visit_id"] == entry["id"]
    assert entry["continues"] is exit_["continues"] is None
    assert entry["ts"] == "2020-08-08T07:00:01.123Z"
    assert entry["first_seen"] == "2020-08-08T07:00:00.500Z"
    assert exit_["last_seen"] == iso_utc(wall(95.0))
    assert (entry["gateway"], entry["site"], entry["type"], exit_["type"]) == (
        "gw-01",
        "hq",
        "entry",
        "exit",
    )
    assert (entry["app"], entry["platform"], entry["rolling_id"]) == (
        "bluezone",
        "android",
        "0a1b2c3d4e5f60718293a4b5",
    )
    assert (entry["dwell_s"], entry["entry_id"], entry["checked_in"]) == (None, None, None)
    assert exit_["entry_id"] == entry["id"]
    assert exit_["checked_in"] is True
    assert isinstance(exit_["dwell_s"], float)
    assert exit_["dwell_s"] == 93.9
    assert exit_["dwell_s"] == round(parse_iso_utc(exit_["ts"]) - parse_iso_utc(entry["ts"]), 1)


def test_booleans_and_nulls_round_trip(store: EventStore) -> None:
    store.append(
        [
            presence(EventType.ENTRY, visit=7, platform=None, rolling_id=None),
            presence(EventType.EXIT, visit=7, at=40.0, checked_in=False),
        ],
        wall=wall,
        clock_synced=False,
    )
    store.flush()
    entry, exit_ = store.events()
    assert entry["platform"] is None
    assert entry["rolling_id"] is None
    assert entry["clock_synced"] is False
    assert exit_["checked_in"] is False


def test_exit_of_unknown_entry_has_no_link(store: EventStore) -> None:
    store.append([presence(EventType.ENTRY, visit=1)], wall=wall, clock_synced=True)
    (exit_,) = store.append(
        [presence(EventType.EXIT, visit=2, at=50.0)], wall=wall, clock_synced=True
    )
    assert (exit_["entry_id"], exit_["dwell_s"]) == (None, None)
    # The visit is forgotten once exited: a second exit of it is unlinked too.
    store.append([presence(EventType.EXIT, visit=1, at=50.0)], wall=wall, clock_synced=True)
    (again,) = store.append(
        [presence(EventType.EXIT, visit=1, at=60.0)], wall=wall, clock_synced=True
    )
    assert again["entry_id"] is None


def test_uuid7_layout_and_uniqueness() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [_uuid7() for _ in range(20_000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids[:: len(ids) // 100]:
        value = uuid.UUID(text)
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert before_ms <= value.int >> 80 <= after_ms
        assert text == text.lower()


def test_seq_survives_reopen_and_is_never_reused_after_prune(db_path: Path) -> None:
    now = T0_UNIX + 30 * DAY_S
    with EventStore.open(db_path, gateway="gw", site="hq", retention_days=21) as store:
        store.append(visit_events(1, 30 * DAY_S - 10, 30 * DAY_S), wall=wall, clock_synced=True)
        # The newest rows carry old timestamps (a Pi without RTC before NTP sync), so prune
        # deletes the highest seqs.
        store.append(visit_events(2, 1.0, 2.0), wall=wall, clock_synced=False)
        store.flush()
        assert store.mark_synced([1, 2, 3, 4]) == 4
        assert store.prune(now, include_unsynced=False) == 2
        assert raw_seqs(db_path) == [1, 2]
    with EventStore.open(db_path, gateway="gw", site="hq") as store:
        assert store.last_seq == 4
        assert store.stats()["last_seq"] == 2
        (event,) = store.append([presence()], wall=wall, clock_synced=True)
        assert event["seq"] == 5
    with EventStore.open(db_path, gateway="gw", site="hq") as store:
        assert store.last_seq == 5
    assert raw_seqs(db_path) == [1, 2, 5]


def test_commits_are_grouped(db_path: Path) -> None:
    with EventStore.open(db_path, gateway="gw", site="hq", commit_interval_s=3600) as store:
        for visit in range(1, 6):
            store.append(visit_events(visit, visit, visit + 30), wall=wall, clock_synced=True)
        assert store.maybe_flush() == 0
        assert raw_seqs(db_path) == []
        assert list(store.events()) == []
        assert store.flush() == 10
        assert raw_seqs(db_path) == list(range(1, 11))
        assert store.flush() == 0


def test_a_full_buffer_commits_without_waiting(db_path: Path) -> None:
    with EventStore.open(db_path, gateway="gw", site="hq", commit_interval_s=3600) as store:
        store.append([presence(visit=v) for v in range(499)], wall=wall, clock_synced=True)
        assert raw_seqs(db_path) == []
        store.append([presence(visit=499)], wall=wall, clock_synced=True)
        assert len(raw_seqs(db_path)) == 500


def test_commits_are_an_interval_apart_and_a_quiet_store_commits_at_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    fake = types.SimpleNamespace(
        monotonic=lambda: clock[0], perf_counter=time.perf_counter, time_ns=time.time_ns
    )
    monkeypatch.setattr(store_module, "time", fake)
    with EventStore.open(db_path, gateway="gw", site="hq", commit_interval_s=1.0) as store:
        store.append([presence(visit=1)], wall=wall, clock_synced=True)
        assert raw_seqs(db_path) == []  # the store opened a moment ago: the first waits
        clock[0] += 1.0
        assert store.maybe_flush() == 1
        clock[0] += 30.0  # a quiet entrance: the next event leaves at once
        store.append([presence(visit=2)], wall=wall, clock_synced=True)
        assert raw_seqs(db_path) == [1, 2]
        clock[0] += 0.25  # a crowd: the next waits for the rest of the interval, with others
        store.append([presence(visit=3)], wall=wall, clock_synced=True)
        clock[0] += 0.5
        store.append([presence(visit=4)], wall=wall, clock_synced=True)
        assert store.maybe_flush() == 0
        assert raw_seqs(db_path) == [1, 2]
        clock[0] += 0.25
        assert store.maybe_flush() == 2
        assert raw_seqs(db_path) == [1, 2, 3, 4]


def test_zero_commit_interval_commits_every_append(db_path: Path) -> None:
    with EventStore.open(db_path, gateway="gw", site="hq", commit_interval_s=0) as store:
        store.append([presence()], wall=wall, clock_synced=True)
        assert raw_seqs(db_path) == [1]


def test_close_flushes(db_path: Path) -> None:
    with EventStore.open(db_path, gateway="gw", site="hq", commit_interval_s=3600) as store:
        store.append([presence()], wall=wall, clock_synced=True)
    assert raw_seqs(db_path) == [1]
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.append([presence()], wall=wall, clock_synced=True)


def test_failed_commit_keeps_the_rows_for_a_retry(db_path: Path, store: EventStore) -> None:
    conn = sqlite3.connect(db_path)
    # A row that is not ours takes seq 2, so the grouped commit hits a constraint and rolls back.
    conn.execute(
        "INSERT INTO events (seq, id, gateway, site, type, ts, app, rssi_max, sightings,"
        " first_seen, last_seen, clock_synced, ts_unix)"
        " VALUES (2, 'x', 'g', 's', 'entry', 't', 'gaen', 0, 0, 't', 't', 0, 0)"
    )
    conn.commit()
    store.append(visit_events(1, 1.0, 2.0), wall=wall, clock_synced=True)
    with pytest.raises(StoreError, match="could not commit 2 events"):
        store.flush()
    conn.execute("DELETE FROM events WHERE id = 'x'")
    conn.commit()
    conn.close()
    assert store.flush() == 2
    assert [e["seq"] for e in store.events()] == [1, 2]


def test_outbox(db_path: Path, store: EventStore) -> None:
    for visit in range(1, 4):
        store.append(visit_events(visit, visit, visit + 60), wall=wall, clock_synced=True)
    store.flush()
    pending = store.pending()
    assert [e["seq"] for e in pending] == [1, 2, 3, 4, 5, 6]
    assert pending == list(store.events())
    assert [e["seq"] for e in store.pending(limit=2)] == [1, 2]
    assert store.mark_synced(iter([1, 2, 4, 99])) == 3
    assert store.mark_synced([1]) == 0
    assert [e["seq"] for e in store.pending()] == [3, 5, 6]
    stats = store.stats()
    assert stats == {
        "events": 6,
        "outbox": 3,
        "first_seq": 1,
        "last_seq": 6,
        "oldest_unsynced_ts": iso_utc(wall(2.0)),  # seq 3, the entry of visit 2
        "path": str(db_path),
    }


def test_pending_after_seq_skips_what_is_in_flight(store: EventStore) -> None:
    for visit in range(1, 4):
        store.append(visit_events(visit, visit, visit + 60), wall=wall, clock_synced=True)
    store.flush()
    assert [e["seq"] for e in store.pending(limit=2, after_seq=3)] == [4, 5]


def test_disk_pressure_drops_the_oldest_unsynced_and_counts_them(store: EventStore) -> None:
    for visit in range(1, 4):
        store.append(visit_events(visit, visit, visit + 60), wall=wall, clock_synced=True)
    store.flush()
    store.mark_synced([1])
    assert store.drop_oldest_unsynced(2) == 2  # seqs 2 and 3: unsynced, oldest first
    assert [e["seq"] for e in store.events()] == [1, 4, 5, 6]
    assert store.drop_oldest_unsynced(10) == 3
    assert [e["seq"] for e in store.events()] == [1]  # the synced one is not the outbox's
    assert store.state("dropped_unsynced") == "5"
    store.set_state(broker="connected", last_puback_ts="2020-08-08T07:00:00.000Z")
    assert store.state("broker") == "connected"
    assert store.state("nothing") is None


def test_prune_keeps_unsynced_unless_asked(store: EventStore) -> None:
    now_s = 40 * DAY_S
    store.append(visit_events(1, 1.0, 2.0), wall=wall, clock_synced=True)  # old, synced
    store.append(visit_events(2, 3.0, 4.0), wall=wall, clock_synced=True)  # old, unsynced
    store.append(visit_events(3, now_s - 5, now_s), wall=wall, clock_synced=True)  # recent
    store.flush()
    store.mark_synced([1, 2, 5, 6])
    assert store.prune(wall(now_s), include_unsynced=False) == 2
    assert [e["seq"] for e in store.events()] == [3, 4, 5, 6]
    assert store.prune(wall(now_s), include_unsynced=True) == 2
    assert [e["seq"] for e in store.events()] == [5, 6]
    assert store.pending() == []
    assert store.stats()["outbox"] == 0


def test_queries(store: EventStore) -> None:
    for visit in range(1, 5):
        store.append(
            visit_events(visit, visit * 100, visit * 100 + 50), wall=wall, clock_synced=True
        )
    store.flush()
    exits = list(store.events(type=EventType.EXIT))
    assert [e["seq"] for e in exits] == [2, 4, 6, 8]
    assert [e["seq"] for e in store.events(since=wall(300))] == [5, 6, 7, 8]
    assert [e["seq"] for e in store.events(since=wall(300), type=EventType.ENTRY, limit=1)] == [5]
    assert [e["seq"] for e in store.events_between(3, 5)] == [3, 4, 5]
    assert store.events_between(9, 20) == []


def test_second_writer_is_refused_but_readers_are_not(db_path: Path, store: EventStore) -> None:
    store.append(visit_events(1, 1.0, 2.0), wall=wall, clock_synced=True)
    store.flush()
    with pytest.raises(StoreError, match=rf"in use by another process \(pid {os.getpid()}\)"):
        EventStore.open(db_path, gateway="gw", site="hq")
    with EventStore.open(db_path, gateway="gw", site="hq", readonly=True) as reader:
        assert [e["seq"] for e in reader.events()] == [1, 2]
        assert reader.last_seq == 2
        with pytest.raises(StoreError, match="read-only"):
            reader.append([presence()], wall=wall, clock_synced=True)
        with pytest.raises(StoreError, match="read-only"):
            reader.mark_synced([1])
    store.close()
    EventStore.open(db_path, gateway="gw", site="hq").close()


def test_readonly_refuses_what_is_not_an_event_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"missing\.db"):
        EventStore.open(tmp_path / "missing.db", gateway="g", site="s", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="not an up-to-date event store"):
        EventStore.open(other, gateway="g", site="s", readonly=True)


@pytest.mark.parametrize("readonly", [False, True])
def test_corrupt_file_is_a_store_error(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database\n" * 200)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        EventStore.open(path, gateway="g", site="s", readonly=readonly)
    # The failed open released its lock.
    with pytest.raises(StoreError, match="not a usable event store"):
        EventStore.open(path, gateway="g", site="s")


def test_pragmas(db_path: Path, store: EventStore) -> None:
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    db = store._db  # the store's own connection: these PRAGMAs are per connection
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == 16 * 1024 * 1024
    other = db_path.with_name("normal.db")
    with EventStore.open(other, gateway="g", site="s", synchronous="normal") as normal:
        assert normal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


# --- kill -9 -------------------------------------------------------------------------------

KILL_ROUNDS = 24


def run_writer_until_killed(db_path: Path, rng: random.Random) -> list[int]:
    """Start a writer, SIGKILL it after a random number of commit reports; return all reports."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(30, proc.kill)  # never hang the suite on a stuck writer
    watchdog.start()
    committed = []
    try:
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 12)):
            line = proc.stdout.readline()
            assert line.startswith("committed "), (line, proc.stderr and proc.stderr.read())
            committed.append(int(line.split()[1]))
        # A random extra delay lands the kill anywhere: in append, in a commit, in a print.
        time.sleep(rng.uniform(0, 0.004))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        # The writer ran ahead of us: every report it printed before dying counts.
        tail = proc.stdout.read().splitlines(keepends=True)
        committed += [int(line.split()[1]) for line in tail if line.endswith("\n")]
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    return committed


def check_after_kill(db_path: Path) -> dict[int, str]:
    """Integrity, no gaps or duplicates in seq; return seq -> id."""
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute("SELECT seq, id FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(1, len(seqs) + 1))
    return dict(rows)


def test_kill_9_never_loses_a_committed_event(db_path: Path) -> None:
    rng = random.Random(20200808)
    previous: dict[int, str] = {}
    for round_ in range(KILL_ROUNDS):
        committed = run_writer_until_killed(db_path, rng)
        rows = check_after_kill(db_path)
        last_committed = committed[-1]
        assert len(rows) >= last_committed, f"round {round_}: committed events lost"
        # The writer continued from the right seq: its first commit follows everything before.
        assert committed[0] == max(previous, default=0) + EVENTS_PER_FLUSH, round_
        # Rows of earlier rounds are untouched: no seq was reused or rewritten.
        assert {seq: rows[seq] for seq in previous} == previous, round_
        previous = rows
    assert len(previous) >= KILL_ROUNDS * EVENTS_PER_FLUSH


def unsynced_wall(t: float) -> float:
    """A Pi's clock after a power cut: three days behind until NTP answers."""
    return wall(t) - 3 * DAY_S


def test_correct_clock_restamps_this_boots_unsynced_events_and_requeues_them(tmp_path):
    path = tmp_path / "events.db"
    with EventStore.open(path, gateway="gw", site="hq", boot_id="boot-a") as store:
        store.append([presence(visit=1, at=5.0)], wall=unsynced_wall, clock_synced=False)
    with EventStore.open(path, gateway="gw", site="hq", boot_id="boot-b") as store:
        store.append(visit_events(2, 100.0, 130.0), wall=unsynced_wall, clock_synced=False)
        store.flush()
        store.mark_synced([1, 2, 3])  # all three were published before the clock was right
        store.append([presence(visit=4, at=200.0)], wall=wall, clock_synced=True)
        store.flush()
        before = {e["seq"]: e for e in store.events()}

        assert store.correct_clock(wall(0.0)) == [2, 3]

        after = {e["seq"]: e for e in store.events()}
        # 2 and 3 are back in the outbox beside 4, which was never sent; 1 is not.
        assert [e["seq"] for e in store.pending()] == [2, 3, 4]
        assert store.correct_clock(wall(0.0)) == []  # nothing left to correct
    for seq in (2, 3):
        assert after[seq]["clock_synced"] is True
        assert after[seq]["id"] == before[seq]["id"]
        for key in ("ts", "first_seen", "last_seen"):
            moved = parse_iso_utc(after[seq][key]) - parse_iso_utc(before[seq][key])
            assert moved == pytest.approx(3 * DAY_S, abs=0.002)
    assert after[3]["ts"] == iso_utc(wall(130.0))
    assert after[3]["dwell_s"] == before[3]["dwell_s"] == 30.0
    # Another boot's monotonic clock is gone: its event cannot be corrected and says so.
    assert after[1] == before[1]
    assert after[1]["clock_synced"] is False
    assert after[4] == before[4]
    # The sortable time moved too: retention and `events --since` see the corrected time.
    with EventStore.open(path, gateway="", site="", readonly=True) as reader:
        recent = [e["seq"] for e in reader.events(since=wall(0.0))]
    assert recent == [2, 3, 4]


def test_a_store_without_a_boot_id_corrects_nothing(db_path):
    with EventStore.open(db_path, gateway="gw", site="hq") as store:
        store.append([presence()], wall=unsynced_wall, clock_synced=False)
        assert store.correct_clock(wall(0.0)) == []
        store.flush()
        assert [e["clock_synced"] for e in store.events()] == [False]


def test_on_commit_reports_each_commits_duration_and_rows(store):
    commits: list[tuple[float, int]] = []
    store.on_commit = lambda seconds, rows: commits.append((seconds, rows))
    store.append(visit_events(1, 1.0, 2.0), wall=wall, clock_synced=True)
    store.flush()
    store.flush()  # nothing buffered: no commit, no call
    assert [rows for _, rows in commits] == [2]
    assert commits[0][0] > 0


def test_linked_keys_share_the_visit_id_of_the_first_entry(store: EventStore) -> None:
    old_id, new_id = "0a" * 12, "0b" * 12
    store.append(
        [
            presence(EventType.ENTRY, visit=1, at=10.0, rolling_id=old_id, key=old_id),
            # The phone's next rolling ID enters, linked by the engine (chain = visit 1) ...
            presence(
                EventType.ENTRY, visit=2, at=40.0, rolling_id=new_id, key=new_id, chain=1,
                continues=old_id,
            ),
            # ... then the old ID times out, and later the new one leaves.
            presence(EventType.EXIT, visit=1, at=30.0, rolling_id=old_id, key=old_id),
            presence(EventType.EXIT, visit=2, at=70.0, rolling_id=new_id, key=new_id, chain=1),
            presence(EventType.ENTRY, visit=3, at=80.0),  # someone else
        ],
        wall=wall,
        clock_synced=True,
    )  # fmt: skip
    store.flush()
    first, second, first_exit, second_exit, other = store.events()
    assert {e["visit_id"] for e in (first, second, first_exit, second_exit)} == {first["id"]}
    assert second["continues"] == old_id
    assert first["continues"] is None
    assert second_exit["entry_id"] == second["id"]  # the per-key contract is unchanged
    assert other["visit_id"] == other["id"]


def test_migration_gives_old_events_their_own_visits(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with EventStore.open(path, gateway="gw", site="hq") as store:
        store.append(visit_events(1, 1.0, 5.0), wall=wall, clock_synced=True)
    # As an older gateway left it: no visit columns yet.
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX events_visit_id")
        db.execute("ALTER TABLE events DROP COLUMN visit_id")
        db.execute("ALTER TABLE events DROP COLUMN continues")
        db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_visits'")
    with EventStore.open(path, gateway="gw", site="hq") as store:
        entry, exit_ = store.events()
    assert entry["visit_id"] == exit_["visit_id"] == entry["id"]
