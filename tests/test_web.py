"""The desk view over HTTP against a running daemon: real aiohttp and SQLite, scripted phones."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import pytest

from gateway import config
from gateway.daemon import Daemon
from gateway.store import EVENT_FIELDS, EventStore
from gateway.web import CLIENT_QUEUE_MAX, SECURITY_HEADERS
from tests.deskrun import (
    InstantGatt,
    Phones,
    desk_config,
    next_event,
    running,
    sse_events,
)
from tests.factories import ROLLING_ID, gaen_advert, iphone_advert

SHORT = ROLLING_ID[:6] + "…"


async def wait_for(check, timeout_s: float = 10.0):
    """Poll ``check`` (an async callable) until it returns something truthy; return that."""
    async with asyncio.timeout(timeout_s):
        while not (result := await check()):  # noqa: ASYNC110 - polls over HTTP
            await asyncio.sleep(0.05)
    return result


async def get_json(session: aiohttp.ClientSession, url: str, **kw) -> tuple[int, Any]:
    async with session.get(url, **kw) as response:
        return response.status, await response.json()


async def test_api_shapes_after_a_phone_is_held_close(tmp_path):
    async with running(desk_config(tmp_path)) as gw, aiohttp.ClientSession() as http:
        gw.phones.hold_close()
        gw.phones.send(gaen_advert(rssi=-55))

        async def present():
            status, body = await get_json(http, f"{gw.url}/api/present")
            assert status == 200
            return body if body["count"] == 2 else None

        body = await wait_for(present)
        assert body["by_app"] == {"bluezone": 1, "gaen": 1}
        phone = next(d for d in body["devices"] if d["app"] == "bluezone")
        assert phone["rolling_id"] == ROLLING_ID
        assert phone["platform"] == "android"
        assert set(phone) == {"key", "app", "platform", "rolling_id", "first_seen", "last_seen",
                              "rssi_max", "visit"}  # fmt: skip
        assert body["people"] == 2  # two phones, not linked: two visits

        status, health = await get_json(http, f"{gw.url}/api/status")
        assert status == 200
        assert health["gateway"] == "gw-desk"
        assert health["outbox"]["depth"] >= 0
        desk = health["desk"]
        assert desk["counts"]["bluezone"]["present"] == 1
        assert desk["counts"]["gaen"]["present"] == 1
        assert desk["panel"]["state"] == "bluezone"

        async def events():
            _, body = await get_json(http, f"{gw.url}/api/events")
            return body if len(body["events"]) == 2 else None

        listed = await wait_for(events)  # committed within commit_interval_s
        assert [e["type"] for e in listed["events"]] == ["entry", "entry"]
        assert list(listed["events"][0]) == list(EVENT_FIELDS)  # the full contract, for machines
        assert listed["events"][0]["rolling_id"] == ROLLING_ID
        assert listed["more"] is False

        async with http.get(f"{gw.url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            metrics = await response.text()
        assert "bluezone_gateway_present 2.0" in metrics
        assert 'bluezone_gateway_sightings_total{app="bluezone"} 4.0' in metrics
        assert 'bluezone_gateway_sightings_total{app="gaen"} 1.0' in metrics
        assert 'bluezone_gateway_events_total{type="entry"} 2.0' in metrics
        assert "bluezone_gateway_checkins_total 1.0" in metrics
        assert "bluezone_gateway_outbox_depth 2.0" in metrics
        assert 'bluezone_gateway_store_commit_seconds_bucket{le="+Inf"} 1.0' in metrics
        assert "bluezone_gateway_adverts_per_second" in metrics
        assert 'bluezone_gateway_info{gateway="gw-desk"' in metrics


async def test_events_since_limit_and_type(tmp_path):
    async with running(desk_config(tmp_path, presence="exit_timeout_s = 0.5")) as gw:
        gw.phones.hold_close()
        async with aiohttp.ClientSession() as http:

            async def both():
                _, body = await get_json(http, f"{gw.url}/api/events")
                return body if len(body["events"]) == 2 else None

            await wait_for(both)  # the entry, and the exit after half a second of silence
            _, one = await get_json(http, f"{gw.url}/api/events?limit=1")
            assert (len(one["events"]), one["more"]) == (1, True)
            _, exits = await get_json(http, f"{gw.url}/api/events?type=exit")
            assert [e["type"] for e in exits["events"]] == ["exit"]
            assert exits["events"][0]["checked_in"] is True
            future = time.time() + 3600
            _, none = await get_json(http, f"{gw.url}/api/events?since={future}")
            assert none["events"] == []
            _, iso = await get_json(http, f"{gw.url}/api/events?since=2020-01-01T00:00:00Z")
            assert len(iso["events"]) == 2


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("since=yesterday", "since"), ("since=nan", "since"), ("since=-1", "since"),
     ("since=1e300", "since"), ("limit=0", "limit"), ("limit=ten", "limit"),
     ("limit=1001", "limit"), ("type=visit", "type"), ("sinse=0", "sinse")],
)  # fmt: skip
async def test_bad_event_queries_are_400_naming_the_parameter(tmp_path, query, parameter):
    async with running(desk_config(tmp_path)) as gw, aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{gw.url}/api/events?{query}")
    assert status == 400
    assert body["parameter"] == parameter
    assert body["error"].startswith(f"{parameter}: ")


async def test_stream_sends_a_snapshot_then_the_checkin_and_the_event(tmp_path):
    async with (
        running(desk_config(tmp_path)) as gw,
        aiohttp.ClientSession() as http,
        http.get(f"{gw.url}/api/stream") as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        stream = sse_events(response)
        event, snapshot = await anext(stream)
        assert event == "snapshot"
        assert snapshot["language"] == "vi"
        assert snapshot["panel"] == {"state": "idle", "n": 0}
        assert snapshot["counts"]["bluezone"]["present"] == 0
        assert snapshot["health"]["scanner"]["level"] == "ok"

        gw.phones.hold_close()
        _, added = await next_event(stream, lambda e, _: e == "events")
        assert [(e["type"], e["id_short"]) for e in added["events"]] == [("entry", SHORT)]
        assert added["counts"]["bluezone"]["present"] == 1
        assert added["counts"]["bluezone"]["today"]["entry"] == 1
        _, panel = await next_event(stream, lambda e, _: e == "panel")
        assert (panel["state"], panel["platform"], panel["id_short"]) == (
            "bluezone", "android", SHORT
        )  # fmt: skip
        assert panel["remaining_s"] == pytest.approx(5.0, abs=0.5)
        assert ROLLING_ID not in str((snapshot, added, panel))


async def test_iphone_panel_reads_then_turns_green_or_unread(tmp_path):
    gatt = InstantGatt({"4C:11:22:33:44:55": ROLLING_ID})
    async with (
        running(desk_config(tmp_path), gatt=gatt) as gw,
        aiohttp.ClientSession() as http,
        http.get(f"{gw.url}/api/stream") as response,
    ):
        stream = sse_events(response)
        await anext(stream)
        gw.phones.hold_close(iphone_advert)
        _, panel = await next_event(stream, lambda e, _: e == "panel")
        assert (panel["state"], panel["platform"], panel["id_short"]) == ("reading", "ios", None)
        _, panel = await next_event(stream, lambda e, _: e == "panel")
        assert (panel["state"], panel["id_short"]) == ("bluezone", SHORT)

        gw.phones.hold_close(iphone_advert, address="4C:99:99:99:99:99")  # it never answers
        _, panel = await next_event(stream, lambda e, d: e == "panel" and d["n"] == 3)
        assert panel["state"] == "reading"
        _, panel = await next_event(stream, lambda e, _: e == "panel")
        assert (panel["state"], panel["id_short"]) == ("unread", None)


async def test_a_page_that_falls_behind_is_cut_off_not_buffered(tmp_path):
    async with running(desk_config(tmp_path)) as gw, aiohttp.ClientSession() as http:
        web = gw.daemon.web
        assert web is not None
        async with http.get(f"{gw.url}/api/stream") as response:
            stream = sse_events(response)
            await anext(stream)
            # More messages than its queue holds, with no chance to send any in between.
            for _ in range(CLIENT_QUEUE_MAX + 1):
                web.on_events([])
            remaining = [event async for event, _ in stream]  # ends: the server hung up
        assert len(remaining) <= CLIENT_QUEUE_MAX
        assert web.dropped_clients == 1
        _, status = await get_json(http, f"{gw.url}/api/status")
        assert (status["desk"]["pages"], status["desk"]["pages_dropped"]) == (0, 1)
        async with http.get(f"{gw.url}/api/stream") as response:  # it may come back
            assert (await anext(sse_events(response)))[0] == "snapshot"


async def test_page_and_assets_are_served_gzipped_with_security_headers(tmp_path):
    async with running(desk_config(tmp_path, web='language = "en"')) as gw:
        async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/") as page:
            assert page.status == 200
            assert page.headers["Content-Encoding"] == "gzip"
            html = await page.text()
            for name, value in SECURITY_HEADERS.items():
                assert page.headers[name] == value
            etag = page.headers["ETag"]
        assert 'data-default-lang="en"' in html
        assert "<script>" not in html  # no inline script: the CSP forbids it
        assert "http" not in html.replace('"http-equiv"', "")  # no CDN, nothing external
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.url}/", headers={"If-None-Match": etag}) as again:
                assert again.status == 304
            for name, kind in [("desk.js", "text/javascript"), ("desk.css", "text/css"),
                               ("icon.svg", "image/svg+xml")]:  # fmt: skip
                async with http.get(f"{gw.url}/static/{name}") as asset:
                    assert asset.status == 200
                    assert asset.headers["Content-Type"].startswith(kind)
            async with http.get(f"{gw.url}/static/../web.py") as escape:
                assert escape.status == 404
            async with http.get(f"{gw.url}/static/gateway.py") as unknown:
                assert unknown.status == 404


# Access


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "web-token"
    path.write_text("s3cret-token-for-the-desk\n")
    return path


def open_config(tmp_path, token_file):
    web = f'listen = "0.0.0.0:0"\ntoken_file = "{token_file}"\n'
    return desk_config(tmp_path, web=web)


@pytest.mark.parametrize(
    "path", ["/", "/static/desk.js", "/api/status", "/api/present", "/api/events", "/api/stream",
             "/metrics", "/no/such/page"],
)  # fmt: skip
async def test_off_loopback_every_route_needs_the_token(tmp_path, token_file, path):
    async with running(open_config(tmp_path, token_file)) as gw, aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            async with http.get(f"{gw.url}{path}", headers=headers) as response:
                assert response.status == 401
                assert await response.read() == b'{"error": "unauthorized"}'
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{gw.url}{path}?token=wrong") as response:
            assert response.status == 401
        bearer = {"Authorization": "Bearer s3cret-token-for-the-desk"}
        async with http.get(f"{gw.url}{path}", headers=bearer) as response:
            assert response.status == (404 if path == "/no/such/page" else 200)


async def test_off_loopback_the_health_probe_is_open(tmp_path, token_file):
    async with running(open_config(tmp_path, token_file)) as gw, aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{gw.url}/healthz")
    assert (status, body) == (200, {"status": "ok"})


async def test_a_token_in_the_address_becomes_a_cookie(tmp_path, token_file):
    # unsafe: keep the cookies of an IP address, as browsers do (aiohttp's jar does not).
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        running(open_config(tmp_path, token_file)) as gw,
        aiohttp.ClientSession(cookie_jar=jar) as http,
    ):
        async with http.get(
            f"{gw.url}/?token=s3cret-token-for-the-desk&x=1", allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/?x=1"
            cookie = response.cookies["bzgw_token"]
            assert cookie["httponly"] is True
            assert cookie["samesite"] == "Strict"
        # The session keeps the cookie: the page, its assets and its stream now load.
        for path in ("/?x=1", "/static/desk.css", "/api/stream"):
            async with http.get(f"{gw.url}{path}") as response:
                assert response.status == 200, path


def test_listening_off_loopback_without_a_token_is_refused():
    with pytest.raises(config.ConfigError, match=r":2: \[web\] listen = '0.0.0.0:8080' is reach"):
        config.parse('[web]\nlisten = "0.0.0.0:8080"\n')
    assert config.parse('[web]\nlisten = "127.0.0.5:8080"\n').web.loopback
    assert config.parse('[web]\nlisten = "[::1]:8080"\n').web.loopback
    assert config.parse('[web]\nlisten = "localhost:80"\n').web.loopback
    assert not config.parse('[web]\nenabled = false\nlisten = "0.0.0.0:80"\n').web.enabled


async def test_an_unreadable_token_file_stops_the_start_before_the_store(tmp_path):
    cfg = desk_config(tmp_path, web=f'listen = "0.0.0.0:0"\ntoken_file = "{tmp_path}/none"\n')
    with pytest.raises(config.ConfigError, match="token_file"):
        await Daemon(cfg, Phones()).run()
    assert not cfg.db_path.exists()


async def test_a_port_in_use_leaves_the_gateway_running_without_its_page(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = desk_config(tmp_path, web=f'listen = "127.0.0.1:{port}"\n')
        phones = Phones()
        daemon = Daemon(cfg, phones)
        task = asyncio.create_task(daemon.run())
        async with asyncio.timeout(10):
            while not phones.started:  # noqa: ASYNC110 - the daemon starts it
                await asyncio.sleep(0.01)
        phones.hold_close()
        await asyncio.sleep(0.3)  # a commit interval or two
        daemon.stop()
        assert await task == 0
    assert daemon.web is None
    assert f"No desk view: cannot listen on 127.0.0.1:{port}" in caplog.text
    with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
        assert [e["type"] for e in store.events()] == ["entry", "exit"]


async def test_restart_keeps_todays_counts(tmp_path):
    cfg = desk_config(tmp_path)
    async with running(cfg) as gw:
        gw.phones.hold_close()
    async with (
        running(cfg) as gw,
        aiohttp.ClientSession() as http,
        http.get(f"{gw.url}/api/stream") as response,
    ):
        _, snapshot = await anext(sse_events(response))
    today = snapshot["counts"]["bluezone"]["today"]
    assert today == {"entry": 1, "exit": 1}  # the stop closed the visit
    assert [e["type"] for e in snapshot["recent"]] == ["exit", "entry"]


async def test_recount_sends_the_pages_a_fresh_snapshot(tmp_path):
    async with (
        running(desk_config(tmp_path)) as gw,
        aiohttp.ClientSession() as http,
        http.get(f"{gw.url}/api/stream") as response,
    ):
        web = gw.daemon.web
        assert web is not None
        stream = sse_events(response)
        await anext(stream)
        gw.phones.hold_close()
        await next_event(stream, lambda e, _: e == "events")

        async def committed():
            _, body = await get_json(http, f"{gw.url}/api/events")
            return body["events"]

        await wait_for(committed)
        web.recount()  # as after the store restamped its events
        _, snapshot = await next_event(stream, lambda e, _: e == "snapshot")
        assert snapshot["counts"]["bluezone"]["today"]["entry"] == 1
        assert [e["id_short"] for e in snapshot["recent"]] == [SHORT]
