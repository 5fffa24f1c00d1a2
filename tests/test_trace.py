"""Tracing an F0 and the daily report, over a simulated day at three gateways.

A phone with a known daily key (protocol.md §10.1's) walks through three gateways of two sites,
changing its rolling ID at 07:45 on the way; other phones come and go, some inside at the same
time. Their adverts go through the gateway's real pipeline into each gateway's store; the
events go into the central database (SQLite and PostgreSQL, the same code). Every visit and
every co-present ID is known from the walk, exactly.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from central import cli as central_cli
from central.store import Batch, CentralStore, create_engine, migrate
from gateway import cli as gateway_cli
from gateway import config, rolling
from gateway import trace as tracing
from gateway.model import Advert, iso_utc, parse_iso_utc
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.store import EventStore
from tests.factories import android_advert, gaen_advert
from tests.postgres import PostgresCluster

pytest_plugins = ("tests.postgres",)

KEY = bytes.fromhex("4C5224B397F8AB3896781D5AA0F3119F280513F1B592CA280EBDED6357E21084")
DAY = date(2020, 8, 8)
GATEWAYS = {"gw-a": "hq", "gw-b": "hq", "gw-c": "branch"}


def t(hhmmss: str) -> float:
    return parse_iso_utc(f"2020-08-08T{hhmmss}Z")


def f0_id(at: float) -> str:
    return rolling.id_at(KEY, DAY, at).hex()


def other(n: int) -> str:
    return f"{n:024x}"


# Who is where, from when to when (adverts every second, both ends included).
WALK: list[tuple[str, str, str, str]] = [
    ("F0", "gw-a", "07:00:00", "07:10:00"),
    ("F0", "gw-b", "07:20:00", "07:25:00"),
    ("F0", "gw-c", "07:40:00", "07:50:00"),  # its ID changes at 07:45:00
    ("P1", "gw-a", "07:05:00", "07:12:00"),  # with the F0 07:05-07:10
    ("P2", "gw-a", "06:50:00", "07:02:00"),  # 07:00-07:02
    ("P3", "gw-a", "07:11:00", "07:20:00"),  # after the F0 left: not co-present
    ("P4", "gw-b", "07:24:00", "07:30:00"),  # 07:24-07:25
    ("P5", "gw-c", "07:30:00", "07:50:00"),  # with both of the F0's visits at gw-c
    ("P6", "gw-a", "07:20:00", "07:25:00"),  # while the F0 was at gw-b: another gateway
    ("G1", "gw-a", "07:03:00", "07:06:00"),  # a GAEN phone: not a Bluezone ID
    ("P8", "gw-c", "07:48:00", "07:55:00"),  # still inside at the end: an open visit
]
PHONE_IDS = {"P1": other(1), "P2": other(2), "P3": other(3), "P4": other(4), "P5": other(5),
             "P6": other(6), "P8": other(8)}  # fmt: skip
END = {"gw-a": None, "gw-b": None, "gw-c": t("07:55:10")}
"""When the gateway's replay stops; None: it ends every open visit (as a clean stop does)."""


def adverts(gateway: str) -> Iterator[Advert]:
    stream: list[Advert] = []
    for n, (who, where, start, end) in enumerate(WALK):
        if where != gateway:
            continue
        for s in range(int(t(start)), int(t(end)) + 1):
            address = f"5A:1F:33:0C:{n:02X}:{s % 256:02X}"
            if who == "G1":
                stream.append(gaen_advert(float(s), rssi=-55, rpi="ab" * 16, address=address))
            else:
                rid = f0_id(s) if who == "F0" else PHONE_IDS[who]
                stream.append(android_advert(float(s), rssi=-55, rolling_id=rid, address=address))
    return iter(sorted(stream, key=lambda a: a.t))


def build_store(path: Path, gateway: str) -> Path:
    presence = config.load(None).presence
    with EventStore.open(path, gateway=gateway, site=GATEWAYS[gateway]) as store:
        pipeline = Pipeline(PresenceTracker(presence), store, wall=float, clock_synced=lambda: True)
        stream = list(adverts(gateway))
        pipeline.replay(stream)
        last = stream[-1].t if stream else 0.0
        end = END[gateway]
        if end is None:
            pipeline.close()
        else:
            for s in range(int(last) + 1, int(end) + 1):
                pipeline.tick(float(s))
            store.flush()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("gateways")
    return {g: build_store(directory / f"{g}.db", g) for g in GATEWAYS}


def visit(rid: str, gateway: str, entry: str, exit_: str | None) -> dict[str, Any]:
    return {
        "rolling_id": rid, "gateway": gateway, "site": GATEWAYS[gateway],
        "entry": f"2020-08-08T{entry}.000Z",
        "exit": None if exit_ is None else f"2020-08-08T{exit_}.000Z",
    }  # fmt: skip


def together(rid: str, gateway: str, seconds: float, first: str) -> dict[str, Any]:
    return {"rolling_id": rid, "gateway": gateway, "overlap_s": seconds,
            "first_overlap": f"2020-08-08T{first}.000Z"}  # fmt: skip


F0_VISITS = [
    visit(f0_id(t("07:00:00")), "gw-a", "07:00:00", "07:10:00"),
    visit(f0_id(t("07:20:00")), "gw-b", "07:20:00", "07:25:00"),
    visit(f0_id(t("07:40:00")), "gw-c", "07:40:00", "07:44:59"),
    visit(f0_id(t("07:45:00")), "gw-c", "07:45:00", "07:50:00"),
]
CO_PRESENT = [
    together(other(2), "gw-a", 120.0, "07:00:00"),
    together(other(1), "gw-a", 300.0, "07:05:00"),
    together(other(4), "gw-b", 60.0, "07:24:00"),
    # 07:40:00-07:44:59 with the first ID, 07:45:00-07:50:00 with the second.
    together(other(5), "gw-c", 299.0 + 300.0, "07:40:00"),
    # Open: taken to last until gw-c's newest event (the exits at 07:50:00).
    together(other(8), "gw-c", 120.0, "07:48:00"),
]


def test_the_walk_made_the_events_it_should(stores: dict[str, Path]) -> None:
    """The scenario's premise: one visit per phone and slot; gw-c's P8 still inside."""
    with EventStore.open(stores["gw-c"], gateway="", site="", readonly=True) as store:
        events = list(store.events())
    open_entries = {e["id"] for e in events if e["type"] == "entry"} - {
        e["entry_id"] for e in events if e["type"] == "exit"
    }
    assert [e["rolling_id"] for e in events if e["id"] in open_entries] == [other(8)]
    assert f0_id(t("07:44:59")) != f0_id(t("07:45:00"))


def load_central(url: str, stores: dict[str, Path]) -> None:
    engine = create_engine(url)
    migrate(engine)
    batch = Batch()
    for gateway, path in stores.items():
        with EventStore.open(path, gateway="", site="", readonly=True) as store:
            base = f"bluezone/v1/{GATEWAYS[gateway]}/{gateway}"
            batch.events += [(base, e) for e in store.events()]
    CentralStore(engine).ingest(batch, 0.0)
    engine.dispose()


def run_cli(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.fixture(params=["sqlite", "postgresql"])
def central_db(request: pytest.FixtureRequest, stores: dict[str, Path], tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'central.db'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.create_database()
    load_central(url, stores)
    return url


def test_central_trace_finds_every_visit_and_every_co_present_id(
    central_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_cli(
        central_cli.main,
        ["trace", "--db", central_db, "--daily-key", KEY.hex(), "--date", "2020-08-08"],
        capsys,
    )
    assert orjson.loads(out) == {"visits": F0_VISITS, "co_present": CO_PRESENT}


def test_gateway_trace_answers_the_same_from_its_own_file(
    stores: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Over gw-a's SQLite file alone: its part of the central answer, nothing else."""
    out = run_cli(
        gateway_cli.main,
        ["trace", "--db", str(stores["gw-a"]), "--daily-key", KEY.hex(), "--date", "2020-08-08"],
        capsys,
    )
    assert orjson.loads(out) == {
        "visits": [v for v in F0_VISITS if v["gateway"] == "gw-a"],
        "co_present": [c for c in CO_PRESENT if c["gateway"] == "gw-a"],
    }


def test_trace_from_the_base_id_and_its_date(
    central_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Base ID + creation date: the key two days before, chained forward to the traced day."""
    base = bytes.fromhex("ab" * 32)
    key = rolling.daily_key(base, date(2020, 8, 6), DAY)
    assert key != base
    # The walk used KEY on DAY; a base ID that chains to KEY is not computable (SHA-256 only
    # goes forward), so check the derivation against the same day's IDs instead.
    ids = tracing.f0_ids(base, DAY, 2, key_date=date(2020, 8, 6))
    assert ids[:96] == [i.hex() for i in rolling.day_ids(key)]
    assert ids[96:] == [
        i.hex()
        for i in rolling.day_ids(rolling.daily_key(base, date(2020, 8, 6), date(2020, 8, 9)))
    ]
    out = run_cli(
        central_cli.main,
        ["trace", "--db", central_db, "--daily-key", base.hex(), "--base-date", "2020-08-06",
         "--date", "2020-08-08", "--days", "2"],
        capsys,
    )  # fmt: skip
    assert orjson.loads(out) == {"visits": [], "co_present": []}


def test_a_two_day_trace_includes_the_first_day(
    central_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_cli(
        central_cli.main,
        ["trace", "--db", central_db, "--daily-key", KEY.hex(), "--date", "2020-08-08",
         "--days", "2"],
        capsys,
    )  # fmt: skip
    assert orjson.loads(out)["visits"] == F0_VISITS


def test_report_per_site_and_day(central_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(
        central_cli.main,
        ["report", "--db", central_db, "--date", "2020-08-08", "--format", "json"],
        capsys,
    )
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert rows == [
        # F0's 4 IDs, P5, P8; entries: F0 twice, P5, P8; at 07:48 F0, P5 and P8 are inside.
        # No phone stays through a quarter hour: as many visits as IDs.
        {"site": "branch", "date": "2020-08-08", "gateways": 1, "bluezone_visits": 4,
         "bluezone_ids": 4,
         "entries": 4, "peak_presence": 3, "peak_at": "2020-08-08T07:48:00.000Z"},
        # F0's 2 IDs here, P1-P4, P6; entries: those 7 and G1; F0, P1 and G1 at 07:05.
        {"site": "hq", "date": "2020-08-08", "gateways": 2, "bluezone_visits": 7,
         "bluezone_ids": 7,
         "entries": 8, "peak_presence": 3, "peak_at": "2020-08-08T07:05:00.000Z"},
    ]  # fmt: skip
    out = run_cli(
        central_cli.main,
        ["report", "--db", central_db, "--date", "2020-08-08", "--format", "csv"],
        capsys,
    )
    assert out.splitlines()[0] == ",".join(
        ("site", "date", "gateways", "bluezone_visits", "bluezone_ids", "entries",
         "peak_presence", "peak_at")
    )  # fmt: skip
    assert out.splitlines()[1].startswith("branch,2020-08-08,1,4,4,4,3,")


def test_trace_on_a_day_without_the_f0(central_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The day after the walk: the key of 2020-08-08 chained forward finds nothing."""
    out = run_cli(
        central_cli.main,
        ["trace", "--db", central_db, "--daily-key", KEY.hex(), "--base-date", "2020-08-08",
         "--date", "2020-08-09"],
        capsys,
    )  # fmt: skip
    assert orjson.loads(out) == {"visits": [], "co_present": []}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--daily-key", "zz", "--date", "2020-08-08"], "--daily-key must be hex"),
        (["--daily-key", "00" * 31, "--date", "2020-08-08"], "must be 32 bytes"),
        (["--daily-key", "00" * 32, "--date", "2020-08-08", "--days", "0"], "days must be 1..60"),
        (["--daily-key", "00" * 32, "--date", "2020-08-01", "--base-date", "2020-08-02"],
         "before the key's date"),
    ],
)  # fmt: skip
def test_bad_trace_options_say_which(
    argv: list[str], message: str, stores: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway_cli.main(["trace", "--db", str(stores["gw-a"]), *argv]) == 2
    assert message in capsys.readouterr().err


def test_gateway_trace_refuses_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "trace",
        "--db",
        str(tmp_path / "nope.db"),
        "--daily-key",
        KEY.hex(),
        "--date",
        "2020-08-08",
    ]
    assert gateway_cli.main(argv) == 2
    assert "does not exist" in capsys.readouterr().err


def test_central_trace_refuses_an_unmigrated_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    argv = ["trace", "--db", str(path), "--daily-key", KEY.hex(), "--date", "2020-08-08"]
    assert central_cli.main(argv) == 2
    assert "run 'bluezone-central migrate" in capsys.readouterr().err


def test_both_trace_commands_take_the_same_options() -> None:
    """gateway/cli.py spells the options out (to keep SQLAlchemy out of its start-up)."""

    def options(parser: argparse.ArgumentParser) -> dict[str, tuple[Any, ...]]:
        return {
            a.option_strings[0]: (a.required, a.default, a.metavar, a.help)
            for a in parser._actions
            if a.option_strings and a.dest not in ("help", "debug", "db")
        }

    def trace_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return sub.choices["trace"]  # type: ignore[no-any-return]

    reference = argparse.ArgumentParser()
    tracing.add_arguments(reference)
    assert options(trace_parser(gateway_cli._parser())) == options(reference)
    assert options(trace_parser(central_cli._parser())) == options(reference)


def test_open_visit_lasts_until_the_gateways_newest_event(stores: dict[str, Path]) -> None:
    engine = tracing.open_gateway_store(stores["gw-c"])
    with engine.connect() as conn:
        visits = tracing.load_visits(conn, tracing.events_table(), t("07:00:00"), t("08:00:00"))
    engine.dispose()
    (open_visit,) = [v for v in visits if v.exit is None]
    assert (open_visit.rolling_id, iso_utc(open_visit.end)) == (
        other(8),
        "2020-08-08T07:50:00.000Z",
    )


@pytest.mark.parametrize("command", [None, "collect", "migrate", "trace", "report", "gateways"])
def test_every_central_command_has_help_with_examples(
    command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        central_cli.main([*([command] if command else []), "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bluezone-central")
    assert "examples:\n  bluezone-central " in out


def test_gateway_trace_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        gateway_cli.main(["trace", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  bluezone-gateway trace --db" in out
