"""The desk's state as timelines: the check-in panel, the counts, the list; no clock read."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.desk import HOUR_S, Desk, short_id
from gateway.model import App, CheckIn, Platform, iso_utc
from tests.factories import ROLLING_ID

HANOI = timezone(timedelta(hours=7))
# 2020-08-08 14:00 in Hanoi (07:00 UTC): midnight there was 14 h earlier.
NOON_ISH = datetime(2020, 8, 8, 14, 0, tzinfo=HANOI).timestamp()
MIDNIGHT = datetime(2020, 8, 8, tzinfo=HANOI).timestamp()


def desk(**kw: Any) -> Desk:
    settings = {"hold_s": 5.0, "reading_timeout_s": 20.0, "reads_ids": True, "tz": HANOI, **kw}
    return Desk(**settings)


def stored(seq: int, kind: str, ts: float, app: str = "bluezone", **kw: Any) -> dict[str, Any]:
    """An event as the store returns it (the contract's dict)."""
    return {
        "id": f"id-{seq}", "seq": seq, "gateway": "gw", "site": "s", "type": kind,
        "ts": iso_utc(ts), "app": app, "platform": "android", "rolling_id": ROLLING_ID,
        "rssi_max": -50, "sightings": 9, "first_seen": iso_utc(ts), "last_seen": iso_utc(ts),
        "dwell_s": 12.5 if kind == "exit" else None, "entry_id": None,
        "checked_in": False if kind == "exit" else None, "clock_synced": True, "direction": None,
        **kw,
    }  # fmt: skip


def checkin(
    app: App = App.BLUEZONE,
    platform: Platform | None = Platform.ANDROID,
    rolling_id: str | None = ROLLING_ID,
    key: str = ROLLING_ID,
) -> CheckIn:
    return CheckIn(key, 0.0, -40, app, platform, rolling_id)


def test_short_id_keeps_six_hex_digits():
    assert short_id(ROLLING_ID) == "b9a665…"
    assert short_id(None) is None


# The check-in panel


def test_android_checkin_turns_the_panel_green_then_neutral():
    d = desk()
    assert d.panel(0.0) == {"state": "idle", "n": 0}
    panel = d.checkin(checkin(), at=NOON_ISH)
    assert panel == {
        "state": "bluezone", "app": "bluezone", "platform": "android", "id_short": "b9a665…",
        "ts": "2020-08-08T07:00:00.000Z", "n": 1, "remaining_s": 5.0,
    }  # fmt: skip
    assert d.panel(NOON_ISH + 4.9)["state"] == "bluezone"
    assert d.panel(NOON_ISH + 5.0) == {"state": "idle", "n": 1}


def test_iphone_shows_reading_until_its_id_is_read():
    d = desk()
    phone = checkin(platform=Platform.IOS, rolling_id=None, key="4C:11:22:33:44:55")
    assert d.checkin(phone, at=100.0)["state"] == "reading"
    assert d.id_read("AA:AA:AA:AA:AA:AA", ROLLING_ID, 101.0) is None  # another iPhone
    panel = d.id_read("4C:11:22:33:44:55", ROLLING_ID, 103.0)
    assert panel is not None
    assert (panel["state"], panel["id_short"], panel["n"]) == ("bluezone", "b9a665…", 2)
    assert panel["remaining_s"] == 5.0  # held from the read, not from the check-in
    assert d.panel(108.0)["state"] == "idle"


def test_iphone_whose_read_fails_is_shown_unread():
    d = desk()
    d.checkin(checkin(platform=Platform.IOS, rolling_id=None, key="ios"), at=100.0)
    panel = d.id_read("ios", None, 102.0)
    assert panel is not None
    assert (panel["state"], panel["id_short"]) == ("unread", None)


def test_reading_gives_up_after_the_timeout():
    d = desk(reading_timeout_s=20.0)
    d.checkin(checkin(platform=Platform.IOS, rolling_id=None, key="ios"), at=100.0)
    assert d.expire(119.9) is None
    panel = d.expire(120.5)
    assert panel is not None
    assert (panel["state"], panel["remaining_s"]) == ("unread", 5.0)
    assert d.expire(121.0) is None
    assert d.id_read("ios", ROLLING_ID, 121.0) is None  # too late: it gave up
    assert d.panel(125.5)["state"] == "idle"


def test_iphone_without_a_gatt_reader_is_green_at_once():
    d = desk(reads_ids=False)
    panel = d.checkin(checkin(platform=Platform.IOS, rolling_id=None, key="ios"), at=1.0)
    assert (panel["state"], panel["id_short"]) == ("bluezone", None)


def test_another_tracing_app_is_not_bluezone():
    d = desk()
    panel = d.checkin(checkin(app=App.GAEN, platform=None, rolling_id="0f" * 16), at=1.0)
    assert (panel["state"], panel["app"]) == ("other", "gaen")


def test_a_new_checkin_replaces_the_panel_and_counts_up():
    d = desk()
    d.checkin(checkin(app=App.GAEN), at=1.0)
    panel = d.checkin(checkin(), at=2.0)
    assert (panel["state"], panel["n"]) == ("bluezone", 2)


# Counts and the list


def test_counts_by_app_for_the_last_hour_and_today():
    d = desk()
    now = NOON_ISH
    d.add_events(
        [
            stored(1, "entry", MIDNIGHT - 60),  # yesterday: neither today nor in the hour
            stored(2, "entry", now - 2 * HOUR_S),  # today, not in the last hour
            stored(3, "exit", now - 600),
            stored(4, "entry", now - 60),
            stored(5, "entry", now - 30, app="gaen", platform=None),
        ],
        now,
    )
    counts = d.counts(now, {"bluezone": 3, "gaen": 1}, {"bluezone": 4, "gaen": 1})
    assert counts["day"] == "2020-08-08"
    assert counts["bluezone"] == {
        "present": 3, "ids": 4, "hour": {"entry": 1, "exit": 1},
        "today": {"entry": 2, "exit": 1},
    }  # fmt: skip
    assert counts["gaen"] == {"present": 1, "ids": 1, "hour": {"entry": 1, "exit": 0},
                              "today": {"entry": 1, "exit": 0}}  # fmt: skip
    assert counts["bluetrace"]["present"] == 0
    # The hour slides; the day ends at local midnight.
    later = d.counts(now + 3100, {})
    assert later["bluezone"]["hour"] == {"entry": 1, "exit": 0}
    tomorrow = d.counts(MIDNIGHT + 86_400 + 1, {})
    assert tomorrow["day"] == "2020-08-09"
    assert tomorrow["bluezone"]["today"] == {"entry": 0, "exit": 0}


def test_an_exit_stamped_before_midnight_but_decided_after_it_is_yesterdays():
    d = desk()
    after = MIDNIGHT + 86_400 + 20
    d.add_events([stored(1, "exit", MIDNIGHT + 86_400 - 10)], after)
    counts = d.counts(after, {})["bluezone"]
    assert counts["today"]["exit"] == 0
    assert counts["hour"]["exit"] == 1


def test_load_from_the_store_gives_the_counts_a_live_run_had():
    events = [stored(n, "entry" if n % 2 else "exit", NOON_ISH - 5000 + 100 * n) for n in range(40)]
    live = desk()
    for event in events:
        live.add_events([event], parse_ts(event))
    restarted = desk()
    start = restarted.window_start(NOON_ISH)
    assert start == MIDNIGHT
    restarted.load([e for e in events if parse_ts(e) >= start], NOON_ISH)
    assert restarted.counts(NOON_ISH, {}) == live.counts(NOON_ISH, {})
    assert restarted.recent() == live.recent()


def test_recent_events_are_newest_first_bounded_and_never_show_a_full_id():
    d = desk(recent_max=3)
    items = d.add_events([stored(n, "entry", NOON_ISH + n) for n in range(5)], NOON_ISH + 5)
    assert [i["seq"] for i in items] == [0, 1, 2, 3, 4]
    assert [i["seq"] for i in d.recent()] == [4, 3, 2]
    assert items[0] == {
        "seq": 0, "ts": iso_utc(NOON_ISH), "type": "entry", "app": "bluezone",
        "platform": "android", "id_short": "b9a665…", "dwell_s": None, "checked_in": None,
        "direction": None,
    }  # fmt: skip
    d.checkin(checkin(), at=NOON_ISH + 5)
    text = orjson.dumps(d.snapshot(NOON_ISH + 5, {"bluezone": 1})).decode()
    assert ROLLING_ID not in text
    assert not re.search(r"[0-9a-f]{12}", text)


def test_today_follows_the_local_zone():
    utc_desk, hanoi_desk = desk(tz=UTC), desk(tz=HANOI)
    # 20:00 UTC on the 8th is 03:00 on the 9th in Hanoi.
    evening = datetime(2020, 8, 8, 20, tzinfo=UTC).timestamp()
    assert utc_desk.counts(evening, {})["day"] == "2020-08-08"
    assert hanoi_desk.counts(evening, {})["day"] == "2020-08-09"
    assert hanoi_desk.day_start(evening) == datetime(2020, 8, 9, tzinfo=HANOI).timestamp()


def parse_ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


@given(
    st.lists(
        st.tuples(
            st.integers(0, 4000),  # seconds until the event is decided
            st.integers(0, 40),  # how long before that it was stamped (an exit: last seen)
            st.sampled_from(["entry", "exit"]),
            st.sampled_from(["bluezone", "gaen"]),
        ),
        max_size=60,
    )
)
def test_counts_equal_a_recount_of_every_event(steps):
    d = desk()
    now = MIDNIGHT + 86_400 - 7200  # crosses midnight on the way
    seen: list[dict[str, Any]] = []
    for delay, age, kind, app in steps:
        now += delay
        event = stored(len(seen), kind, now - age, app=app)
        seen.append(event)
        d.add_events([event], now)
    counts = d.counts(now, {})
    start = d.day_start(now)
    for app in ("bluezone", "gaen"):
        for kind in ("entry", "exit"):
            mine = [parse_ts(e) for e in seen if (e["type"], e["app"]) == (kind, app)]
            assert counts[app]["hour"][kind] == sum(ts >= now - HOUR_S for ts in mine)
            assert counts[app]["today"][kind] == sum(start <= ts < start + 86_400 for ts in mine)
