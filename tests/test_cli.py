"""Tests of the ``bluezone-gateway`` command line, run as real processes on real files."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from gateway import __version__
from gateway.store import EVENT_FIELDS

_SCRIPT = Path(sys.executable).with_name("bluezone-gateway")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway"]
SUBCOMMANDS = ["run", "decode", "replay", "events", "ids", "simulate", "calibrate"]
SIMULATION = ["--people", "40", "--minutes", "10", "--seed", "5"]
DAILY_KEY = "4C5224B397F8AB3896781D5AA0F3119F280513F1B592CA280EBDED6357E21084"
HEX_RE = re.compile(r"^[0-9a-f]+$")
ISO_SECOND_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# An Android Bluezone advert: service 0x4E56 and the rolling ID after company id 0x22B5 (8885).
BLUEZONE_ANDROID = (
    b'{"t":1596870000.5,"address":"5A:1F:33:0C:9E:71","rssi":-60,'
    b'"service_uuids":["00004e56-0000-1000-8000-00805f9b34fb"],'
    b'"manufacturer_data":{"8885":"B9A665D754FE65E665D76A45"}}\n'
)
NOT_A_PHONE = b'{"t":1596870001,"address":"D3:18:25:30:BB:1D","rssi":-85,"name":"LE-Speaker-1"}\n'


def gateway(
    *args: str | Path, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the console script; never raises on a non-zero exit."""
    return subprocess.run(
        [*COMMAND, *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """Exit 2 with one line on stderr, no traceback, naming every needle; return the line."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def jsonl(data: bytes) -> list[Any]:
    return [orjson.loads(line) for line in data.splitlines()]


class Capture(NamedTuple):
    path: Path
    truth: Path
    lines: list[bytes]


class Replayed(NamedTuple):
    db: Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]


@pytest.fixture(scope="session")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    """One small simulated lobby for the whole session (about 18k adverts)."""
    where = tmp_path_factory.mktemp("capture")
    path, truth = where / "lobby.jsonl", where / "lobby-truth.jsonl"
    proc = gateway("simulate", *SIMULATION, "--out", path, "--truth", truth)
    assert proc.returncode == 0, proc.stderr.decode()
    return Capture(path, truth, path.read_bytes().splitlines(keepends=True))


@pytest.fixture(scope="session")
def replayed(capture: Capture, tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    """The session capture replayed once (with --json and --truth) into a database."""
    db = tmp_path_factory.mktemp("replayed") / "lobby.db"
    proc = gateway("replay", capture.path, "--db", db, "--json", "--truth", capture.truth)
    assert proc.returncode == 0, proc.stderr.decode()
    (summary,) = jsonl(proc.stdout)
    events = jsonl(gateway("events", "--db", db, "--format", "jsonl").stdout)
    return Replayed(db, summary, events)


def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without their random UUIDs: entry_id and visit_id become the seqs they name."""
    seq_of = {e["id"]: e["seq"] for e in events}
    return [
        {
            **{k: v for k, v in e.items() if k != "id"},
            "entry_id": e["entry_id"] and seq_of[e["entry_id"]],
            "visit_id": seq_of[e["visit_id"]],
        }
        for e in events
    ]


# Help and version


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_every_command_has_help_with_examples(command: str | None) -> None:
    proc = gateway(*([command] if command else []), "--help")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert out.startswith("usage: bluezone-gateway")
    assert "examples:\n  bluezone-gateway " in out
    if command is None:
        for name in SUBCOMMANDS:
            assert name in out


def test_python_m_gateway_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == f"bluezone-gateway {__version__}"


def test_no_command_is_a_usage_error() -> None:
    proc = gateway()
    assert proc.returncode == 2
    assert b"usage:" in proc.stderr


# decode


def assert_decoded(record: dict[str, Any], advert: dict[str, Any]) -> None:
    """Check one output line of `decode` against the contract."""
    if record["app"] is None:
        assert set(record) == {"app", "reason"}
        assert isinstance(record["reason"], str)
        assert record["reason"]
        return
    assert record["t"] == advert["t"]
    assert record["address"] == advert["address"]
    assert record["rssi"] == advert["rssi"]
    assert record["app"] in {"bluezone", "gaen", "bluetrace"}
    assert record["platform"] in {"android", "ios", None}
    rolling_id = record["rolling_id"]
    assert rolling_id is None or HEX_RE.match(rolling_id), rolling_id


def test_decode_gives_one_line_per_line_and_exits_0(capture: Capture) -> None:
    proc = gateway("decode", stdin=b"".join(capture.lines))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    records = jsonl(proc.stdout)
    assert len(records) == len(capture.lines)
    for record, line in zip(records, capture.lines, strict=True):
        assert_decoded(record, orjson.loads(line))
    seen = {(r["app"], r.get("platform")) for r in records}
    assert {("bluezone", "android"), ("bluezone", "ios"), ("gaen", None)} <= seen
    assert "bluetrace" in {app for app, _ in seen}
    assert (None, None) in seen  # the lobby's speakers and watches


def test_decode_reads_the_rolling_id(capture: Capture) -> None:
    proc = gateway("decode", stdin=BLUEZONE_ANDROID + NOT_A_PHONE)
    assert proc.returncode == 0, proc.stderr.decode()
    phone, speaker = jsonl(proc.stdout)
    assert phone["app"] == "bluezone"
    assert phone["platform"] == "android"
    assert phone["rolling_id"] == "b9a665d754fe65e665d76a45"  # lower case, from upper-case hex
    assert speaker["app"] is None
    assert speaker["reason"]


def test_decode_reports_a_bad_line_and_carries_on() -> None:
    proc = gateway("decode", stdin=BLUEZONE_ANDROID + b"{not json\n" + NOT_A_PHONE)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "line 2" in err
    assert "Traceback" not in err
    records = jsonl(proc.stdout)
    assert len(records) == 3
    assert records[0]["rolling_id"] == "b9a665d754fe65e665d76a45"
    assert records[1]["app"] is None
    assert isinstance(records[1]["reason"], str)
    assert records[2]["app"] is None


def test_decode_counts_every_bad_line() -> None:
    stdin = b"[1, 2]\n" + BLUEZONE_ANDROID + b'{"t": "soon"}\n'
    proc = gateway("decode", stdin=stdin)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "line 1" in err
    assert "line 3" in err
    assert "line 2" not in err
    assert len(jsonl(proc.stdout)) == 3


# simulate


def test_simulate_is_deterministic(capture: Capture, tmp_path: Path) -> None:
    again = gateway(
        "simulate", *SIMULATION, "--out", "again.jsonl", "--truth", "truth.jsonl", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "again.jsonl").read_bytes() == capture.path.read_bytes()
    assert (tmp_path / "truth.jsonl").read_bytes() == capture.truth.read_bytes()


def test_simulate_differs_for_another_seed(capture: Capture) -> None:
    other = gateway("simulate", "--people", "40", "--minutes", "10", "--seed", "6", "--out", "-")
    assert other.returncode == 0, other.stderr.decode()
    assert other.stdout
    assert other.stdout != capture.path.read_bytes()


def test_simulate_writes_the_capture_format(capture: Capture) -> None:
    ts = []
    for line in capture.lines:
        advert = orjson.loads(line)
        assert {"t", "address", "rssi"} <= set(advert)
        ts.append(advert["t"])
    assert ts == sorted(ts)
    assert 0 < ts[-1] - ts[0] <= 10 * 60


def test_simulate_truth_lines(capture: Capture) -> None:
    visits = jsonl(capture.truth.read_bytes())
    assert visits
    for visit in visits:
        assert {"key", "start", "end", "observable"} <= set(visit)
        assert isinstance(visit["key"], str)
        assert visit["start"] <= visit["end"]
        assert isinstance(visit["observable"], bool)
    assert any(v["observable"] for v in visits)


def test_simulate_to_an_unwritable_truth_is_a_usage_error(tmp_path: Path) -> None:
    proc = gateway(
        "simulate",
        *SIMULATION,
        "--out",
        "out.jsonl",
        "--truth",
        "no/such/dir/truth.jsonl",
        cwd=tmp_path,
    )
    assert_usage_error(proc, "truth.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # failed before doing anything


def test_simulate_rejects_a_bad_scenario(tmp_path: Path) -> None:
    proc = gateway(
        "simulate", "--people", "-1", "--minutes", "1", "--seed", "1", "--out", "x", cwd=tmp_path
    )
    assert_usage_error(proc, "people")
    assert not (tmp_path / "x").exists()


# replay


def test_replay_json_summary(capture: Capture, replayed: Replayed) -> None:
    summary = replayed.summary
    assert summary["adverts"] == len(capture.lines)
    assert summary["invalid_lines"] == 0
    entries, exits = summary["events"]["entry"], summary["events"]["exit"]
    assert entries > 0
    assert entries == exits
    assert summary["seq"] == [1, entries + exits]
    assert set(summary["sightings"]) <= {"bluezone", "gaen", "bluetrace"}
    assert summary["rejected"] > 0
    score = summary["score"]
    assert 0 < score["precision"] <= 1
    assert 0 < score["recall"] <= 1


def test_replay_prints_a_summary(capture: Capture, replayed: Replayed, tmp_path: Path) -> None:
    proc = gateway(
        "replay", capture.path, "--db", "text.db", "--truth", capture.truth, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    entries = replayed.summary["events"]["entry"]
    assert f"replayed {len(capture.lines):,} adverts" in out
    assert f"events: {entries:,} entries, {entries:,} exits" in out
    assert "precision" in out
    assert "recall" in out


def test_replayed_events_come_in_entry_exit_pairs(replayed: Replayed) -> None:
    events = replayed.events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    entries = {e["id"]: e for e in events if e["type"] == "entry"}
    exits = [e for e in events if e["type"] == "exit"]
    assert len(entries) + len(exits) == len(events)
    assert len(exits) == replayed.summary["events"]["exit"]
    for exit_ in exits:
        entry = entries[exit_["entry_id"]]
        assert entry["rolling_id"] == exit_["rolling_id"]
        assert entry["app"] == exit_["app"]
        assert entry["seq"] < exit_["seq"]
        assert entry["ts"] <= exit_["ts"]
        assert exit_["dwell_s"] >= 0
        assert isinstance(exit_["checked_in"], bool)
    # No visit left open: every entry is closed by exactly one exit.
    closed = [e["entry_id"] for e in exits]
    assert sorted(closed) == sorted(entries)
    assert all(e["entry_id"] is None and e["dwell_s"] is None for e in entries.values())


def test_replay_is_deterministic(capture: Capture, replayed: Replayed, tmp_path: Path) -> None:
    db = tmp_path / "again.db"
    proc = gateway("replay", capture.path, "--db", db)
    assert proc.returncode == 0, proc.stderr.decode()
    again = jsonl(gateway("events", "--db", db, "--format", "jsonl").stdout)
    assert comparable(again) == comparable(replayed.events)
    assert {e["id"] for e in again}.isdisjoint(e["id"] for e in replayed.events)


def test_replay_from_stdin(capture: Capture, replayed: Replayed, tmp_path: Path) -> None:
    db = tmp_path / "stdin.db"
    proc = gateway("replay", "-", "--db", db, "--json", stdin=capture.path.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    (summary,) = jsonl(proc.stdout)
    assert summary["events"] == replayed.summary["events"]


def test_replay_skips_a_garbage_line_and_exits_1(
    capture: Capture, replayed: Replayed, tmp_path: Path
) -> None:
    path = tmp_path / "garbage.jsonl"
    middle = len(capture.lines) // 2
    path.write_bytes(b"".join([*capture.lines[:middle], b"\x00garbage\n", *capture.lines[middle:]]))
    db = tmp_path / "garbage.db"
    proc = gateway("replay", path, "--db", db, "--json")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"line {middle + 1}" in err
    assert "Traceback" not in err
    (summary,) = jsonl(proc.stdout)
    assert summary["invalid_lines"] == 1
    assert summary["adverts"] == len(capture.lines)
    stored = jsonl(gateway("events", "--db", db, "--format", "jsonl").stdout)
    assert stored
    assert comparable(stored) == comparable(replayed.events)


def test_replay_with_the_minimal_config(capture: Capture, tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("[presence]\nenter_rssi = -80\n")
    db = tmp_path / "minimal.db"
    proc = gateway("replay", capture.path, "--db", db, "--config", "gateway.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert db.exists()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        pytest.param(
            "[presence]\nenter_rssi = -80\nloudness = 3\n",
            ["bad.toml:3:", "presence.loudness"],
            id="unknown-key",
        ),
        pytest.param(
            "[store]\nretention_days = -1\n",
            ["bad.toml:2:", "retention_days"],
            id="negative-retention",
        ),
        pytest.param(
            "[link]\nmargin = -1\n", ["bad.toml:2:", "margin must be > 0"], id="link-margin"
        ),
    ],
)
def test_replay_with_a_bad_config_exits_2(
    capture: Capture, tmp_path: Path, text: str, needles: list[str]
) -> None:
    (tmp_path / "bad.toml").write_text(text)
    proc = gateway("replay", capture.path, "--db", "never.db", "--config", "bad.toml", cwd=tmp_path)
    assert_usage_error(proc, *needles)
    assert proc.stdout == b""
    assert not (tmp_path / "never.db").exists()  # config is checked before the database


def test_replay_takes_the_linker_s_parameters_from_the_config(tmp_path: Path) -> None:
    # Eight minutes across 07:15Z: every Bluezone Android phone inside then rotates its ID.
    path = tmp_path / "rotation.jsonl"
    start = "2020-08-08T07:11:00Z"
    args = ["--people", "60", "--minutes", "8", "--seed", "3", "--start", start, "--out"]
    assert gateway("simulate", *args, path).returncode == 0

    def continuing(config: str) -> int:
        (tmp_path / "gateway.toml").write_text(config)
        db = tmp_path / f"{len(config)}.db"
        proc = gateway("replay", path, "--db", db, "--config", "gateway.toml", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        events = jsonl(gateway("events", "--db", db, "--format", "jsonl").stdout)
        return sum(1 for e in events if e["continues"])

    assert continuing("[presence]\nlink = true\n") > 0
    # Leaving a new key unlinked costs next to nothing: no link is worth making.
    assert continuing("[presence]\nlink = true\n[link]\nunlinked_cost = 0.01\n") == 0


def test_replay_of_a_missing_capture_exits_2(tmp_path: Path) -> None:
    proc = gateway("replay", "absent.jsonl", "--db", "x.db", cwd=tmp_path)
    assert_usage_error(proc, "absent.jsonl")


def test_replay_into_a_file_that_is_not_a_database_exits_2(capture: Capture) -> None:
    proc = gateway("replay", capture.path, "--db", capture.truth)
    assert_usage_error(proc, "not a usable event store")


# events


def test_events_jsonl(replayed: Replayed) -> None:
    assert replayed.events
    for event in replayed.events:
        assert list(event) == list(EVENT_FIELDS)


def test_events_csv(replayed: Replayed) -> None:
    proc = gateway("events", "--db", replayed.db, "--format", "csv")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.reader(io.StringIO(proc.stdout.decode())))
    assert tuple(rows[0]) == EVENT_FIELDS
    assert len(rows) == 1 + len(replayed.events)
    assert [row[0] for row in rows[1:]] == [e["id"] for e in replayed.events]


def test_events_table(replayed: Replayed) -> None:
    proc = gateway("events", "--db", replayed.db, "--format", "table")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    for column in ("seq", "ts", "type", "app", "platform", "rolling_id", "dwell_s"):
        assert column in lines[0].split()
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + len(replayed.events)


def test_events_default_format_off_a_terminal_is_jsonl(replayed: Replayed) -> None:
    proc = gateway("events", "--db", replayed.db)
    assert proc.returncode == 0
    assert jsonl(proc.stdout) == replayed.events


def test_events_type_filter(replayed: Replayed) -> None:
    proc = gateway("events", "--db", replayed.db, "--type", "exit", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    exits = jsonl(proc.stdout)
    assert exits == [e for e in replayed.events if e["type"] == "exit"]


@pytest.mark.parametrize("suffix", ["Z", "", "+00:00"])
def test_events_since_filter(replayed: Replayed, suffix: str) -> None:
    since = replayed.events[len(replayed.events) // 2]["ts"]  # e.g. 2020-08-08T07:04:12.345Z
    proc = gateway("events", "--db", replayed.db, "--since", since.removesuffix("Z") + suffix)
    assert proc.returncode == 0, proc.stderr.decode()
    later = jsonl(proc.stdout)
    # The ISO strings share one format, so they order as the times do.
    assert later == [e for e in replayed.events if e["ts"] >= since]
    assert 0 < len(later) < len(replayed.events)


def test_events_limit(replayed: Replayed) -> None:
    proc = gateway("events", "--db", replayed.db, "--limit", "3", "--format", "jsonl")
    assert jsonl(proc.stdout) == replayed.events[:3]


def test_events_bad_since_exits_2(replayed: Replayed) -> None:
    proc = gateway("events", "--db", replayed.db, "--since", "yesterday")
    assert_usage_error(proc, "--since", "yesterday")
    assert proc.stdout == b""


def test_events_on_a_missing_db_exits_2(tmp_path: Path) -> None:
    proc = gateway("events", "--db", "absent.db", cwd=tmp_path)
    assert_usage_error(proc, "absent.db")
    assert list(tmp_path.iterdir()) == []  # and creates nothing


# ids


def ids(*args: str) -> list[list[str]]:
    proc = gateway("ids", "--daily-key", DAILY_KEY, *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return [line.split(" ") for line in proc.stdout.decode().splitlines()]


def test_ids_protocol_vectors() -> None:
    rows = ids("--date", "2020-08-08")
    assert len(rows) == 96
    for slot, (number, start, id_hex) in enumerate(rows):
        assert int(number) == slot
        assert ISO_SECOND_RE.match(start)
        assert HEX_RE.match(id_hex)
        assert len(id_hex) == 24
    assert rows[0][1] == "2020-08-08T00:00:00Z"
    assert rows[23] == ["23", "2020-08-08T05:45:00Z", "b9a665d754fe65e665d76a45"]
    assert rows[24] == ["24", "2020-08-08T06:00:00Z", "3aa8dfc0a15682b27216fc31"]
    assert rows[95][1] == "2020-08-08T23:45:00Z"
    assert len({row[2] for row in rows}) == 96


def test_ids_next_day_from_the_base_date() -> None:
    rows = ids("--base-date", "2020-08-08", "--date", "2020-08-09")
    assert len(rows) == 96
    assert rows[0] == ["0", "2020-08-09T00:00:00Z", "64c0d2707c49d2f0d5e3e348"]


def test_ids_date_defaults_to_the_base_date() -> None:
    assert ids("--base-date", "2020-08-08")[23][2] == "b9a665d754fe65e665d76a45"


def test_ids_json() -> None:
    proc = gateway("ids", "--daily-key", DAILY_KEY.lower(), "--date", "2020-08-08", "--json")
    assert proc.returncode == 0
    rows = jsonl(proc.stdout)
    assert len(rows) == 96
    assert rows[24] == {
        "slot": 24,
        "start_utc": "2020-08-08T06:00:00Z",
        "id": "3aa8dfc0a15682b27216fc31",
    }


@pytest.mark.parametrize(
    ("key", "args", "needles"),
    [
        pytest.param(DAILY_KEY[:62], [], ["32 bytes", "31"], id="31-bytes"),
        pytest.param("xyz", [], ["--daily-key", "hex"], id="not-hex"),
        pytest.param(
            DAILY_KEY, ["--base-date", "2020-08-09", "--date", "2020-08-08"], ["before"], id="back"
        ),
    ],
)
def test_ids_bad_key_exits_2(key: str, args: list[str], needles: list[str]) -> None:
    proc = gateway("ids", "--daily-key", key, *args)
    assert_usage_error(proc, *needles)
    assert proc.stdout == b""


# run


def test_run_without_bluez_exits_1_with_the_reason(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n')
    proc = subprocess.run(
        [*COMMAND, "run", "--config", str(conf)], capture_output=True, timeout=60, check=False,
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"},
    )  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "cannot reach BlueZ on the system bus" in err
    assert "Traceback" not in err
