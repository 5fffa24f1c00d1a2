"""The collector: gateway messages in, one database transaction per batch, then the PUBACKs.

Threads, not asyncio: paho-mqtt's network thread receives; the main thread validates,
writes a batch in one transaction and only then acknowledges its messages (paho's manual
acks), so a crash anywhere loses nothing the broker has not been told it may forget. The
database is the only shared state between collectors: deduplication on the event ``id``, each
gateway's seqs and the gaps are all there (`central.store`).

Two ways to receive events, both splitting the load among the collectors of one group:

``mqtt``
    an MQTT shared subscription ``$share/<group>/<prefix>/+/+/events`` with a persistent
    session (Clean Start 0 and a session expiry), so that messages wait in the broker while a
    collector restarts. mosquitto, EMQX, HiveMQ, VerneMQ.
``jetstream``
    for NATS, whose MQTT listener speaks 3.1.1 without shared subscriptions: a JetStream
    stream over the events subjects and one durable pull consumer per group, which every
    collector of the group pulls from; what a dead collector had not acknowledged goes to
    another after ``ack_wait_s``. Status, health and commands still go over MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import jsonschema_rs
import orjson
import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central.store import Batch, CentralStore, Counts
from gateway import schemas
from gateway.model import GatewayError

_LOGGER = logging.getLogger(__name__)

BATCH_MAX: Final = 500
"""Messages per transaction at most: what one commit acknowledges."""
RECEIVE_MAXIMUM: Final = 1000
"""MQTT 5 Receive Maximum: QoS 1 messages the broker may send before our acknowledgements."""
JETSTREAM_BATCH: Final = 100
"""Messages one pull asks for: small enough that a burst spreads over the group's collectors."""
BATCH_WAIT_S: Final = 0.05
"""How long the writer waits for more messages before committing a partial batch."""
DB_RETRY_FIRST_S: Final = 0.5
DB_RETRY_MAX_S: Final = 30.0
"""A database outage is waited out, doubling from half a second to this; the messages stay
unacknowledged meanwhile, so the broker holds everything behind them."""
RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 60
MAX_SEQ: Final = 2**63 - 1
"""PostgreSQL's bigint: a seq beyond it could never be stored."""
KINDS: Final = ("events", "status", "health", "cmd-result")
# jsonschema-rs, not jsonschema: 5 µs an event here against 900 µs, which capped a collector at
# about a thousand events a second (bench/central.py). Both implement draft 2020-12.
_VALIDATORS: Final = {
    kind: jsonschema_rs.validator_for(schemas.load("event" if kind == "events" else kind))
    for kind in KINDS
}


class CollectorError(GatewayError):
    """The collector cannot run as configured."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How a collector connects; the MQTT options match the gateway's ``[mqtt]`` keys."""

    broker: str
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS; 1883 and 8883 by default)."""
    group: str = "ingest"
    """The shared-subscription group (JetStream: the durable consumer's name)."""
    client_id: str | None = None
    """Default ``bluezone-central-<host>-<group>``: one per collector process."""
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    topic_prefix: str = "bluezone/v1"
    keepalive_s: int = 60
    session_expiry_s: int = 86_400
    """How long the broker keeps this collector's session (and queues its share) while it is
    away; a collector retired for good should be started once more with ``--session-expiry-s
    0`` or its queued share waits this long (gap healing recovers what then expires)."""
    intake: Literal["mqtt", "jetstream"] = "mqtt"
    nats: str | None = None
    """``nats://host:4222`` (or ``tls://``) for ``intake = "jetstream"``."""
    nats_stream: str = "BLUEZONE_EVENTS"
    nats_replicas: int = 1
    """Replicas when the collector creates the stream (3 on a three-node NATS cluster)."""
    ack_wait_s: float = 30.0
    """JetStream: a message a collector took but did not acknowledge goes to another after this."""
    gap_check_s: float = 30.0
    gap_grace_s: float = 120.0
    """A hole in a gateway's seqs must stay open this long before ``cmd/replay`` is sent."""
    gap_retry_s: float = 300.0
    gap_max_attempts: int = 5
    stats_interval_s: float = 60.0

    def __post_init__(self) -> None:
        """Refuse what cannot work, before anything connects."""
        parts = urlsplit(self.broker)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            msg = f"--broker {self.broker!r}: expected mqtt://host[:port] or mqtts://host[:port]"
            raise CollectorError(msg)
        if (self.cert_file is None) != (self.key_file is None):
            msg = "--cert-file and --key-file go together"
            raise CollectorError(msg)
        if self.intake == "jetstream" and not self.nats:
            msg = "--intake jetstream needs --nats nats://host:4222"
            raise CollectorError(msg)
        if not self.group or any(c in self.group for c in "/+#$."):
            msg = f"--group {self.group!r}: letters, digits, '-' and '_' only"
            raise CollectorError(msg)
        if min(self.gap_check_s, self.gap_grace_s, self.gap_retry_s, self.ack_wait_s) <= 0:
            msg = "--gap-check-s, --gap-grace-s, --gap-retry-s and --ack-wait-s must be > 0"
            raise CollectorError(msg)

    @property
    def tls(self) -> bool:
        """Whether the broker URL asks for TLS."""
        return urlsplit(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        """The broker's host name (as in its certificate)."""
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        """The broker's port (8883 with TLS, 1883 without, unless given)."""
        return urlsplit(self.broker).port or (8883 if self.tls else 1883)

    @property
    def identity(self) -> str:
        """The MQTT client id."""
        return self.client_id or f"bluezone-central-{socket.gethostname()}-{self.group}"

    def password(self) -> str | None:
        """Read the password file (None without one).

        Raises:
            CollectorError: the file cannot be read.
        """
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            msg = f"--password-file {self.password_file}: {e.strerror}"
            raise CollectorError(msg) from None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context: the broker verified against ``ca_file`` (default: the system's CAs)."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message (MQTT, or JetStream with its subject as a topic)."""

    topic: str
    payload: bytes


def classify(prefix: str, deliveries: list[Delivery]) -> Batch:
    """Validate messages against the shipped schemas and sort them into a `Batch`.

    Nothing raises: a message that is not JSON, breaks its schema, arrives on an unexpected
    topic, or names another gateway than its topic is quarantined with the reason.
    """
    batch = Batch()
    for delivery in deliveries:
        item = _validate(prefix, delivery.topic, delivery.payload)
        if isinstance(item, str):
            batch.rejected.append((delivery.topic, delivery.payload, item))
            continue
        kind, base, payload = item
        if kind == "events":
            batch.events.append((base, payload))
        elif kind == "status":
            batch.statuses.append((base, payload))
        elif kind == "health":
            batch.healths.append((base, payload))
        else:
            batch.results.append(payload)
    return batch


def _validate(prefix: str, topic: str, payload: bytes) -> tuple[str, str, dict[str, Any]] | str:
    """Return (kind, topic base, payload), or why the message is refused."""
    levels = topic.removeprefix(prefix + "/").split("/")
    if not topic.startswith(prefix + "/") or len(levels) != 3 or levels[2] not in KINDS:
        return f"unexpected topic (expected {prefix}/<site>/<gateway>/{{{','.join(KINDS)}}})"
    site, gateway, kind = levels
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        return f"not JSON: {e}"
    validator = _VALIDATORS[kind]
    if not validator.is_valid(data):
        error = next(iter(validator.iter_errors(data)))
        where = "/".join(str(p) for p in error.instance_path) or "(the object)"
        return f"{kind} schema: {where}: {error.message}"
    if kind == "events" and data["seq"] > MAX_SEQ:
        return f"events schema: seq: {data['seq']} is beyond a 64-bit integer"
    if kind != "cmd-result" and data["gateway"] != gateway:
        # The broker's ACL fences a gateway into its own topics, not its payloads.
        return f"gateway {data['gateway']!r} in the payload, {gateway!r} in the topic"
    return kind, f"{prefix}/{site}/{gateway}", data


class Collector:
    """One collector process: receive, validate, store, acknowledge; heal gaps; log counters."""

    def __init__(self, store: CentralStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.counts = Counts()
        self.received = 0
        self.replays_requested = 0
        self.gaps_closed = 0
        self.db_retries = 0
        self.connected = threading.Event()
        """Set while the MQTT connection is up and subscribed."""
        self._lock = threading.Lock()
        self._inbox: queue.Queue[tuple[int, mqtt.MQTTMessage]] = queue.Queue()
        self._generation = 0
        """+1 per MQTT connection: a message's mid is only valid on the connection it came on."""
        self._client: mqtt.Client | None = None
        self._password = settings.password()
        self._jetstream: JetStreamIntake | None = None
        self._closing = False

    # --- the service loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Collect until ``stop`` is set; then store what was received, disconnect cleanly."""
        s = self.settings
        client = self._client = self._new_client()
        client.connect_async(
            s.host,
            s.port,
            s.keepalive_s,
            clean_start=False if s.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self._connect_properties(),
        )
        client.loop_start()
        if s.intake == "jetstream":
            self._jetstream = JetStreamIntake(s, self._password, self._store_deliveries, stop)
            self._jetstream.start()
        next_gaps = time.monotonic() + s.gap_check_s
        next_stats = time.monotonic() + s.stats_interval_s
        try:
            while not stop.is_set():
                self._drain(wait_s=BATCH_WAIT_S, stop=stop)
                now = time.monotonic()
                if now >= next_gaps:
                    next_gaps = now + s.gap_check_s
                    self.check_gaps()
                if now >= next_stats:
                    next_stats = now + s.stats_interval_s
                    self._log_stats("Collected so far")
        finally:
            self._shutdown(stop)

    def _shutdown(self, stop: threading.Event) -> None:
        stop.set()
        if self._jetstream is not None:
            self._jetstream.join(timeout=self.settings.ack_wait_s)
        client = self._client
        if client is not None:
            # Store and acknowledge what already arrived, then leave; the session stays.
            client.on_message = None
            self._drain(wait_s=0.0, stop=None)
            self._closing = True
            client.disconnect()
            client.loop_stop()
        self._log_stats("Stopped")

    def _drain(self, *, wait_s: float, stop: threading.Event | None) -> None:
        """Store a batch from the MQTT inbox and acknowledge it (everything if ``stop`` is None)."""
        while True:
            taken: list[tuple[int, mqtt.MQTTMessage]] = []
            try:
                taken.append(
                    self._inbox.get(timeout=wait_s) if wait_s else self._inbox.get_nowait()
                )
                while len(taken) < BATCH_MAX:
                    taken.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if not taken:
                return
            deliveries = [Delivery(m.topic, bytes(m.payload)) for _, m in taken]
            if not self._store_deliveries(deliveries, stop):
                return
            client = self._client
            for generation, message in taken:
                # A message from an earlier connection is redelivered on this one (persistent
                # session): its old mid must not acknowledge whatever now has that mid.
                if client is not None and generation == self._generation and message.qos:
                    client.ack(message.mid, message.qos)
            if stop is not None:
                return

    def _store_deliveries(
        self, deliveries: list[Delivery], retry_until: threading.Event | None = None
    ) -> bool:
        """Classify and store; return whether it is stored (so the messages may be acknowledged).

        A database outage is retried with back-off until ``retry_until`` is set (None: one
        attempt, as at shutdown). A message the database itself refuses (a value out of its
        range) is quarantined alone, so that it cannot block the messages behind it.
        """
        batch = classify(self.settings.topic_prefix, deliveries)
        delay = DB_RETRY_FIRST_S
        while True:
            try:
                counts = self.store.ingest(batch, time.time())
                break
            except (sa.exc.DataError, sa.exc.IntegrityError) as e:
                if len(deliveries) > 1:
                    return all(self._store_deliveries([d], retry_until) for d in deliveries)
                reason = f"the database refused it: {getattr(e, 'orig', e)}"
                batch = Batch(rejected=[(deliveries[0].topic, deliveries[0].payload, reason)])
            except sa.exc.SQLAlchemyError as e:
                with self._lock:
                    self.db_retries += 1
                _LOGGER.error(  # noqa: TRY400 - one line per retry, not a traceback each time
                    "Cannot store %d messages (%s); retrying in %.1f s",
                    len(deliveries),
                    str(e).splitlines()[0],
                    delay,
                )
                if retry_until is None or retry_until.wait(delay):
                    return False
                delay = min(DB_RETRY_MAX_S, delay * 2)
        for topic, _, reason in batch.rejected:
            _LOGGER.warning("Quarantined a message on %s: %s", topic, reason)
        with self._lock:
            self.received += len(deliveries)
            self.counts.add(counts)
        return True

    def check_gaps(self) -> int:
        """Run one gap check now and publish the replays that fell due; return how many."""
        s = self.settings

        def closed(_gateway: str, _gap: object) -> None:
            with self._lock:
                self.gaps_closed += 1

        try:
            requests = self.store.check_gaps(
                time.time(),
                grace_s=s.gap_grace_s,
                retry_s=s.gap_retry_s,
                max_attempts=s.gap_max_attempts,
                on_closed=closed,
            )
        except Exception:
            _LOGGER.exception("Gap check failed; trying again in %.0f s", s.gap_check_s)
            return 0
        client = self._client
        for request in requests:
            if client is not None:
                # QoS 1, never retained (docs/mqtt.md); paho queues it while disconnected, and
                # the gap is asked for again after gap_retry_s if nothing closes it.
                client.publish(request.topic, orjson.dumps(request.payload), qos=1, retain=False)
        with self._lock:
            self.replays_requested += len(requests)
        return len(requests)

    def stats(self) -> dict[str, Any]:
        """Return the counters (thread-safe snapshot)."""
        with self._lock:
            return {
                "received": self.received,
                **self.counts.as_dict(),
                "replays_requested": self.replays_requested,
                "gaps_closed": self.gaps_closed,
                "db_retries": self.db_retries,
                "connected": self.connected.is_set(),
            }

    def _log_stats(self, what: str) -> None:
        stats = self.stats()
        _LOGGER.info("%s: %s", what, ", ".join(f"{k} {v}" for k, v in stats.items()))

    # --- MQTT -----------------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.identity,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,  # 3.1.1: a persistent session too
            manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, self._password)
        if s.tls:
            client.tls_set_context(s.ssl_context())
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _connect_properties(self) -> Properties | None:
        if self.settings.protocol != "5":
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho 2.2
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        # Let the broker have up to a batch unacknowledged with us: we acknowledge after each
        # commit, so the in-flight window is the batch size (mosquitto's default is 20).
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        return properties

    def subscriptions(self) -> list[str]:
        """Return the topic filters this collector subscribes to."""
        s = self.settings
        prefix = s.topic_prefix
        # Statuses are retained: a shared subscription gets no retained messages under the
        # MQTT 5 specification, so every collector reads them (they are few). NATS's 3.1.1
        # listener has no $share at all (it would take it for a topic).
        shared = f"$share/{s.group}/" if s.intake == "mqtt" else ""
        filters = [f"{prefix}/+/+/status", f"{shared}{prefix}/+/+/health"]
        filters.append(f"{shared}{prefix}/+/+/cmd-result")
        if s.intake == "mqtt":
            filters.insert(0, f"{shared}{prefix}/+/+/events")
        return filters

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        if reason.is_failure:
            hint = " (check --username and --password-file)" if reason.value in (134, 135) else ""
            _LOGGER.error("The broker refused the connection: %s%s", reason.getName(), hint)
            return
        self._generation += 1
        _LOGGER.info(
            "Connected to %s as %s (session %s)",
            self.settings.broker,
            self.settings.identity,
            "resumed" if flags.session_present else "new",
        )
        client.subscribe([(f, 1) for f in self.subscriptions()])

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Any,
    ) -> None:
        refused = [
            f"{f}: {r.getName()}"
            for f, r in zip(self.subscriptions(), reasons, strict=False)
            if r.is_failure
        ]
        if refused:
            _LOGGER.error(
                "The broker refused subscriptions (check its ACL): %s", "; ".join(refused)
            )
        _LOGGER.info("Subscribed to %s", ", ".join(self.subscriptions()))
        self.connected.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        if self._closing:
            _LOGGER.info("Disconnected from %s", self.settings.broker)
        elif self.connected.is_set():
            _LOGGER.warning("Lost the broker: %s; reconnecting", reason.getName())
        self.connected.clear()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put((self._generation, message))


class JetStreamIntake(threading.Thread):
    """Events from a NATS JetStream durable consumer shared by the group (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        password: str | None,
        store: Callable[[list[Delivery], threading.Event | None], bool],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="jetstream", daemon=True)
        self.settings = settings
        self._password = password
        self._store = store
        self._stop_event = stop

    @property
    def subject(self) -> str:
        """The NATS subject of every gateway's events (MQTT's ``/`` is NATS's ``.``)."""
        return self.settings.topic_prefix.replace("/", ".") + ".*.*.events"

    def run(self) -> None:
        """Pull, store, acknowledge until stopped; reconnect after failures."""
        delay = DB_RETRY_FIRST_S
        while not self._stop_event.is_set():
            try:
                asyncio.run(self._pull())
                delay = DB_RETRY_FIRST_S
            except Exception:
                _LOGGER.exception("JetStream intake failed; again in %.1f s", delay)
                self._stop_event.wait(delay)
                delay = min(DB_RETRY_MAX_S, delay * 2)

    async def _pull(self) -> None:
        import nats  # the [central] extra; only this intake needs it
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
        from nats.js.errors import NotFoundError

        s = self.settings
        options: dict[str, Any] = {"servers": [s.nats], "max_reconnect_attempts": -1}
        if s.username is not None:
            options.update(user=s.username, password=self._password)
        if s.nats and s.nats.startswith("tls://"):
            options["tls"] = s.ssl_context()
        nc = await nats.connect(**options)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(s.nats_stream)
            except NotFoundError:
                # Interest retention: a message stays until every consumer group took it, like
                # the queue of a persistent MQTT session; the consumer must exist before the
                # gateways publish, or their events are not kept.
                await js.add_stream(
                    StreamConfig(
                        name=s.nats_stream,
                        subjects=[self.subject],
                        retention=RetentionPolicy.INTEREST,
                        num_replicas=s.nats_replicas,
                    )
                )
                _LOGGER.info("Created JetStream stream %s on %s", s.nats_stream, self.subject)
            config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=s.ack_wait_s)
            sub = await js.pull_subscribe(
                self.subject, durable=s.group, stream=s.nats_stream, config=config
            )
            _LOGGER.info("Pulling %s from JetStream consumer %s", self.subject, s.group)
            loop = asyncio.get_running_loop()
            while not self._stop_event.is_set():
                try:
                    messages = await sub.fetch(JETSTREAM_BATCH, timeout=1.0)
                except NatsTimeout:
                    continue
                deliveries = [Delivery(m.subject.replace(".", "/"), m.data) for m in messages]
                stored = await loop.run_in_executor(None, self._store, deliveries, self._stop_event)
                if stored:
                    for m in messages:
                        await m.ack()
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
