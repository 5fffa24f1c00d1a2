"""MQTT sync: the outbox to the central broker with paho-mqtt, driven by the asyncio loop.

paho runs without a thread of its own: its socket is registered with the event loop
(``add_reader``/``add_writer``, paho's ``loop_asyncio`` pattern) and ``loop_misc`` runs once a
second, so callbacks arrive on the loop's thread, where the store lives. Only the blocking
``connect`` (DNS, TCP, TLS handshake) runs on an executor thread.

Delivery: events are published in seq order, QoS 1, at most ``inflight`` awaiting PUBACK; an
outbox row is removed only after a PUBACK whose reason code is a success ("no matching
subscribers" is one). A refused publish (MQTT 5 reason >= 0x80, e.g. an ACL) stays in the
outbox and is counted. Every connection starts clean and resends whatever the outbox still
holds, so a PUBACK lost to a dropped connection means a duplicate at the consumer, never a
loss: consumers dedupe by ``id`` (docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway import __version__, schemas
from gateway.config import MqttSection
from gateway.model import GatewayError, iso_utc
from gateway.store import EventStore

_LOGGER = logging.getLogger(__name__)

BACKOFF_FIRST_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
"""Reconnect delays double from 1 s to a minute, each drawn from [half, all] of it (jitter:
a province of gateways must not reconnect in lockstep after a broker restart)."""
CONNACK_TIMEOUT_S: Final = 30.0
STABLE_S: Final = 60.0
"""A connection that lasted this long counts as good even if nothing needed acknowledging."""
ACK_FLUSH_S: Final = 0.2
"""PUBACKed seqs are removed from the outbox in one transaction at most this often..."""
PREFETCH: Final = 500
ACK_BATCH: Final = 500
"""...or once this many have gathered: what a crash can turn into duplicates, at most."""
POLL_S: Final = 0.25
DRAIN_POLL_S: Final = 0.02
"""How often an idle publisher looks for newly committed events."""
OFFLINE_WAIT_S: Final = 2.0
FAILURE_LOG_EVERY: Final = 100


class SyncError(GatewayError):
    """The broker cannot be used as configured."""


@dataclass(frozen=True, slots=True)
class Topics:
    """The gateway's topic tree (docs/mqtt.md)."""

    base: str
    """``{prefix}/{site}/{gateway}``."""
    events: str
    """One event per message, QoS 1."""
    status: str
    """Retained online/offline, also the Last Will."""
    health: str
    """Periodic, QoS 0."""
    commands: str
    """What central servers may ask (``cmd/#``)."""
    command_results: str
    """The answer to every command."""

    @classmethod
    def of(cls, prefix: str, site: str, gateway: str) -> Topics:
        """Return the topics of one gateway."""
        base = f"{prefix}/{site}/{gateway}"
        return cls(
            base,
            f"{base}/events",
            f"{base}/status",
            f"{base}/health",
            f"{base}/cmd/#",
            f"{base}/cmd-result",
        )


class Publisher:
    """Keeps the broker up to date with the outbox, reconnecting for as long as it runs."""

    def __init__(
        self,
        settings: MqttSection,
        store: EventStore,
        *,
        gateway: str,
        site: str,
        boot_time: float,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.site = site
        self.topics = Topics.of(settings.topic_prefix, site, gateway)
        self.boot_time = boot_time
        self._health = health
        self._password = settings.password()
        self.connected = False
        self.reconnects = 0
        self.published = 0
        self.acked = 0
        self.publish_failures = 0
        self.last_puback: float | None = None
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._inflight: dict[int, int | None] = {}
        """mid → outbox seq (None: a replay, a status or a command result)."""
        self._acks: list[int] = []
        self._cursor = 0
        self._replays: deque[dict[str, Any]] = deque()
        self._ahead: deque[dict[str, Any]] = deque()
        """Outbox rows read ahead of the in-flight window (up to `PREFETCH`)."""
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._loop_thread: int | None = None
        self._awaited: tuple[int, asyncio.Event] | None = None
        self._closing = False
        self._write_soon = False
        """A publish whose PUBACK someone waits for (the offline status at shutdown)."""
        self._lost: asyncio.Event | None = None

    # --- the connection loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Publish the outbox for ever, reconnecting with back-off.

        A broker that is down or refuses us is logged and retried, never raised.
        """
        attempt = 0
        while True:
            try:
                await self._connect()
            except (OSError, SyncError, TimeoutError) as e:
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                attempt += 1
                self._record_broker(f"unreachable: {e}")
                _LOGGER.warning(
                    "MQTT broker %s:%d: %s; retrying in %.1f s",
                    self.settings.host,
                    self.settings.broker_port,
                    e,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            acked, since = self.acked, time.monotonic()
            try:
                await self._serve()
            finally:
                self._teardown()
            if self.acked > acked or time.monotonic() - since >= STABLE_S:
                attempt = 0
            else:
                # Connected, yet dropped before anything was acknowledged: mosquitto 2.0 closes
                # the connection after a publish its ACL refuses (eclipse/mosquitto#2579), so
                # back off as after a refused connection instead of retrying every second.
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                attempt += 1
                _LOGGER.warning(
                    "The broker dropped the connection before acknowledging anything; mosquitto "
                    "does that after a publish its ACL refuses: check that %s may publish to "
                    "%s/#. Retrying in %.1f s",
                    self.settings.username or self.gateway,
                    self.topics.base,
                    delay,
                )
                await asyncio.sleep(delay)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Publish until the outbox is empty and everything is PUBACKed (``sync --until-empty``).

        Returns False when ``timeout_s`` ran out first; broker outages are waited out.
        """
        runner = asyncio.create_task(self.run())
        drained = True
        try:
            async with asyncio.timeout(timeout_s):
                while not self._drained():
                    if runner.done():
                        runner.result()
                    await asyncio.sleep(DRAIN_POLL_S)
        except TimeoutError:
            drained = False
        finally:
            await self.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        return drained

    def _drained(self) -> bool:
        return (
            self.connected
            and not self._inflight
            and not self._acks
            and not self._ahead
            and not self.store.pending(limit=1)
        )

    async def close(self) -> None:
        """Say ``offline`` (retained), flush acknowledgements, disconnect cleanly."""
        client = self._client
        if client is None or not self.connected:
            return
        self._closing = True
        info = client.publish(
            self.topics.status, self._status("offline", "shutdown"), qos=1, retain=True
        )
        self._inflight[info.mid] = None
        self._awaited = (info.mid, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OFFLINE_WAIT_S):
                await self._awaited[1].wait()
        self._flush_acks()
        client.disconnect()
        # The DISCONNECT goes out on the loop's next write; until the broker has it, it would
        # treat the closing socket as a lost connection and publish our will.
        lost = self._lost
        if lost is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OFFLINE_WAIT_S):
                    await lost.wait()
        self._teardown()

    def committed(self) -> None:
        """New events are in the outbox (the store's commit hook): send them now.

        Otherwise the publisher finds them at its next look, up to `POLL_S` later.
        """
        self._wake.set()

    def restamped(self, seqs: Iterable[int]) -> None:
        """Publish these outbox events again: their stored copies changed (clock correction).

        A copy in flight, or acknowledged but not yet marked synced, is the old one: its PUBACK
        must not take the corrected copy out of the outbox. Events after the first of them that
        are in flight now go twice (delivery is at-least-once).
        """
        changed = set(seqs)
        if not changed:
            return
        for mid, seq in self._inflight.items():
            if seq in changed:
                self._inflight[mid] = None
        self._acks = [seq for seq in self._acks if seq not in changed]
        if self._ahead:
            self._cursor = min(self._cursor, self._ahead[0]["seq"] - 1)
            self._ahead.clear()
        self._cursor = min(self._cursor, min(changed) - 1)
        self._wake.set()

    async def probe(self) -> None:
        """Connect once with the configured credentials and TLS, then disconnect cleanly.

        For ``doctor``: nothing is published, and a clean DISCONNECT keeps the will unsent.

        Raises:
            SyncError, OSError, TimeoutError: what `run` would log and retry.
        """
        await self._connect()
        client, lost = self._client, self._lost
        if client is not None and lost is not None:
            self._closing = True
            client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OFFLINE_WAIT_S):
                    await lost.wait()
        self._teardown()

    async def _connect(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client = self._client = self._new_client()
        self._connack = loop.create_future()
        self._lost = asyncio.Event()
        s = self.settings
        kwargs: dict[str, Any] = {}
        if s.protocol == "5":
            kwargs["clean_start"] = True  # the outbox is the session: resend what it holds
        try:
            # Blocking: DNS, TCP and the TLS handshake; paho's socket callbacks hop back here.
            await loop.run_in_executor(
                None, lambda: client.connect(s.host or "", s.broker_port, s.keepalive_s, **kwargs)
            )
        except ssl.SSLError as e:
            self._teardown()
            _close_leaked_socket(e)
            msg = f"TLS with the broker failed: {e.reason or e}"
            raise SyncError(msg) from None
        except (OSError, socket.gaierror):
            self._teardown()
            raise
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT_S):
                reason = await self._connack
        except TimeoutError:
            self._teardown()
            raise
        if reason.is_failure:
            self._teardown()
            hint = (
                " (check [mqtt] username and password_file)" if reason.value in (134, 135) else ""
            )
            msg = f"the broker refused the connection: {reason.getName()}{hint}"
            raise SyncError(msg)

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.gateway,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,  # v5 says clean_start at connect() instead
        )
        client.max_inflight_messages_set(s.inflight)
        if s.username is not None:
            client.username_pw_set(s.username, self._password)
        if s.tls:
            context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            if s.cert_file is not None and s.key_file is not None:
                context.load_cert_chain(str(s.cert_file), str(s.key_file))
            client.tls_set_context(context)
        client.will_set(
            self.topics.status, self._status("offline", "connection lost"), qos=1, retain=True
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def _serve(self) -> None:
        client = self._client
        lost = self._lost
        if client is None or lost is None:
            return
        self.connected = True
        self._cursor = 0  # a clean session: everything still in the outbox goes again
        self._write_soon = False
        self._ahead.clear()
        self._record_broker("connected")
        _LOGGER.info(
            "Connected to MQTT broker %s:%d as %s",
            self.settings.host,
            self.settings.broker_port,
            self.gateway,
        )
        info = client.publish(self.topics.status, self._status("online", None), qos=1, retain=True)
        self._inflight[info.mid] = None
        client.subscribe(self.topics.commands, qos=1)
        next_health = time.monotonic()
        next_misc = time.monotonic() + 1.0
        last_flush = time.monotonic()
        while not lost.is_set():
            self._fill_window(client)
            now = time.monotonic()
            if self._acks and (
                now - last_flush >= ACK_FLUSH_S
                or len(self._acks) >= ACK_BATCH
                or not self._inflight
            ):
                self._flush_acks()
                last_flush = now
            if now >= next_misc:
                client.loop_misc()  # keep-alive PINGREQ, and paho's own timeouts
                next_misc = now + 1.0
            if self._health is not None and now >= next_health:
                next_health = now + self.settings.health_interval_s
                client.publish(self.topics.health, orjson.dumps(self._health()), qos=0)
            self._wake.clear()
            try:
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._flush_acks()

    def _fill_window(self, client: mqtt.Client) -> None:
        room = self.settings.inflight - len(self._inflight)
        while room > 0 and self._replays:
            self._publish_event(client, self._replays.popleft(), None)
            room -= 1
        ahead = self._ahead
        while room > 0:
            if not ahead:
                # One query for a batch, not one per PUBACK (a query per message cost 40 % of
                # the drain rate). Rows stay in the outbox until acknowledged either way.
                ahead.extend(self.store.pending(limit=PREFETCH, after_seq=self._cursor))
                if not ahead:
                    return
                self._cursor = ahead[-1]["seq"]
            event = ahead.popleft()
            self._publish_event(client, event, event["seq"])
            room -= 1

    def _publish_event(self, client: mqtt.Client, event: dict[str, Any], seq: int | None) -> None:
        info = client.publish(self.topics.events, orjson.dumps(event), qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            _LOGGER.warning("paho could not queue event %s: %s", event["seq"], info.rc)
            return
        self._inflight[info.mid] = seq
        self.published += 1

    def _flush_acks(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        self.store.mark_synced(acks)
        if self.last_puback is not None:
            self.store.set_state(last_puback_ts=iso_utc(self.last_puback))

    def _teardown(self) -> None:
        client = self._client
        self.connected = False
        self._inflight.clear()
        if client is not None and self._loop is not None:
            sock = client.socket()
            if sock is not None:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
                # paho closes its socket when it sees the connection end; not when we give
                # up on a client (a refused CONNACK, a timeout), and the client is dropped.
                sock.close()
        self._client = None

    # --- paho callbacks (on the loop's thread, but for socket_open during connect) -------------

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        if self._closing:
            self._record_broker("disconnected: shutdown")
        elif self.connected:
            self.reconnects += 1
            self._record_broker(f"disconnected: {reason.getName()}")
            _LOGGER.warning("Lost the MQTT broker: %s", reason.getName())
        self.connected = False
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(SyncError(f"disconnected: {reason.getName()}"))
        if self._lost is not None:
            self._lost.set()
        self._wake.set()

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _properties: Any
    ) -> None:
        if mid not in self._inflight:
            return
        seq = self._inflight.pop(mid)
        if self._awaited is not None and self._awaited[0] == mid:
            self._awaited[1].set()
        if reason.is_failure:
            self.publish_failures += 1
            if self.publish_failures % FAILURE_LOG_EVERY == 1:
                _LOGGER.error(
                    "The broker refused %s: %s (%d refused so far; it stays in the outbox)",
                    f"event seq {seq}" if seq else "a message",
                    reason.getName(),
                    self.publish_failures,
                )
        elif seq is not None:
            self._acks.append(seq)
            self.acked += 1
            self.last_puback = time.time()
        if self.connected and not self._closing and self._client is not None:
            # Refill the window right here, not on the next turn of _serve's loop: no event-loop
            # round trip per PUBACK.
            self._fill_window(self._client)
        if len(self._acks) >= ACK_BATCH or not self._inflight:
            self._wake.set()

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        name = message.topic.removeprefix(self.topics.base + "/cmd/")
        result = self._command(name, bytes(message.payload), retained=bool(message.retain))
        info = client.publish(self.topics.command_results, orjson.dumps(result), qos=1)
        self._inflight[info.mid] = None
        self._wake.set()

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_reader, sock, client.loop_read)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove, sock)

    def _on_register_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._want_write, sock, client)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the loop's thread: now if we are on it, else as soon as it can.

        Now, not later, when possible: the socket's file descriptor can be reused by the next
        connection, and a late remove_reader would then remove the new socket's reader.
        """
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _add_reader(self, sock: Any, read: Callable[[], Any]) -> None:
        if self._loop is not None:
            self._loop.add_reader(sock, read)

    def _want_write(self, sock: Any, client: mqtt.Client) -> None:
        """Paho has bytes to send: write them at the end of this turn of the loop.

        One write for all the publishes made in this turn, and a writer registered with the
        selector only when the socket's buffer is full: registering and removing one for
        every message (two epoll_ctl calls and two handles each) took the drain's CPU from
        54 to 73 µs a message here.
        """
        if not self._write_soon and self._loop is not None:
            self._write_soon = True
            self._loop.call_soon(self._write_now, sock, client)

    def _write_now(self, sock: Any, client: mqtt.Client) -> None:
        self._write_soon = False
        if client is not self._client or self._loop is None:
            return
        client.loop_write()
        # The socket buffer is full: wait until it drains. Unless the write found the
        # connection gone and paho closed the socket (at shutdown, or a broker lost).
        if client.want_write() and sock.fileno() >= 0:
            self._loop.add_writer(sock, client.loop_write)

    def _remove(self, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock)

    # --- commands ------------------------------------------------------------------------------

    def _command(self, name: str, payload: bytes, *, retained: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "command": name,
            "request_id": None,
            "ok": False,
            "error": None,
            "published": None,
            "missing": None,
            "ts": iso_utc(time.time()),
        }
        try:
            request = _parse_command(payload, retained=retained)
            result["request_id"] = request.get("request_id")
            published, missing = self._run_command(name, request)
        except ValueError as e:
            result["error"] = str(e)
            _LOGGER.warning("Refused command %s: %s", name, e)
        else:
            result.update(ok=True, published=published, missing=missing)
        return result

    def _run_command(self, name: str, request: dict[str, Any]) -> tuple[int, int]:
        if name != "replay":
            msg = f"unknown command {name!r} (known: replay)"
            raise ValueError(msg)
        return self._replay(request)

    def _replay(self, request: dict[str, Any]) -> tuple[int, int]:
        unknown = set(request) - {"from_seq", "to_seq", "request_id"}
        if unknown:
            msg = f"unknown key {sorted(unknown)[0]!r} (known: from_seq, to_seq, request_id)"
            raise ValueError(msg)
        low, high = _positive(request, "from_seq"), _positive(request, "to_seq")
        error = schemas.replay_range_error(request)
        if error is not None:
            raise ValueError(error)
        events = self.store.events_between(low, high)
        self._replays.extend(events)
        missing = high - low + 1 - len(events)
        _LOGGER.info(
            "Replaying events %d..%d on request: %d stored, %d gone",
            low,
            high,
            len(events),
            missing,
        )
        return len(events), missing

    # --- payloads and bookkeeping -------------------------------------------------------------

    def _status(self, state: str, reason: str | None) -> bytes:
        return orjson.dumps({
            "state": state, "gateway": self.gateway, "site": self.site, "version": __version__,
            "boot_time": iso_utc(self.boot_time), "ts": iso_utc(time.time()), "reason": reason,
        })  # fmt: skip

    def _record_broker(self, state: str) -> None:
        self.store.set_state(broker=state, broker_since=iso_utc(time.time()))

    def health(self) -> dict[str, Any]:
        """Return the publisher's counters for the health message."""
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "published": self.published,
            "acked": self.acked,
            "publish_failures": self.publish_failures,
            "last_puback_ts": None if self.last_puback is None else iso_utc(self.last_puback),
        }


def _parse_command(payload: bytes, *, retained: bool) -> dict[str, Any]:
    """Return a command's JSON object, or raise ValueError saying what is wrong with it."""
    if retained:
        msg = "retained commands are ignored (publish commands with retain=false)"
        raise ValueError(msg)
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        msg = f"the payload is not JSON: {e}"
        raise ValueError(msg) from None
    if not isinstance(request, dict):
        msg = "the payload must be a JSON object"
        raise ValueError(msg)  # noqa: TRY004 - a bad command, answered in cmd-result
    if not isinstance(request.get("request_id", ""), str):
        msg = "request_id must be a string"
        raise ValueError(msg)  # noqa: TRY004
    return request


def _positive(request: dict[str, Any], key: str) -> int:
    value = request.get(key)
    if type(value) is not int or value < 1:
        msg = f"{key} must be an integer >= 1, got {value!r}"
        raise ValueError(msg)
    return value


def _close_leaked_socket(error: BaseException) -> None:
    """Close the TLS socket paho leaves open when the handshake fails.

    paho-mqtt 2.2's ``_ssl_wrap_socket`` raises out of ``do_handshake()`` without closing the
    socket it made, and the client never learns of it; it is reachable only from the frames of
    the traceback. Without this, every refused handshake leaks a descriptor until the garbage
    collector runs, and a gateway retrying for days against a misconfigured broker would
    accumulate them.
    """
    tb = error.__traceback__
    while tb is not None:
        sock = tb.tb_frame.f_locals.get("ssl_sock")
        if isinstance(sock, ssl.SSLSocket):
            sock.close()
        tb = tb.tb_next
