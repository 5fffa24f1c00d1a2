"""Value types shared by every layer; no I/O and no imports from the rest of the package."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, NamedTuple


class GatewayError(Exception):
    """Base of every error this package raises on purpose."""


class App(StrEnum):
    """Contact-tracing app family recognised on the air."""

    BLUEZONE = "bluezone"
    GAEN = "gaen"
    BLUETRACE = "bluetrace"


class Platform(StrEnum):
    """Phone platform, when the advert tells it."""

    ANDROID = "android"
    IOS = "ios"


class Evidence(StrEnum):
    """What in the advert made the decoder recognise the app (protocol.md §9)."""

    ADVERT_ID = "advert-id"
    """Bluezone Android: the rolling ID is in the manufacturer data."""
    SERVICE_UUID = "service-uuid"
    """Bluezone iPhone in the foreground: 128-bit service ...A667 or the name "Bluezone"."""
    OVERFLOW_BIT = "overflow-bit"
    """Bluezone iPhone in the background: Apple overflow frame with the Bluezone bit (candidate)."""
    GATT_READ = "gatt-read"
    """Bluezone iPhone whose rolling ID was read over GATT."""
    RPI = "rpi"
    """GAEN: rolling proximity identifier in service data 0xFD6F."""
    BLUETRACE = "bluetrace"
    """BlueTrace/OpenTrace service UUID or its manufacturer frame."""


class EventType(StrEnum):
    """Kinds of stored event."""

    ENTRY = "entry"
    EXIT = "exit"


class Advert(NamedTuple):
    """One advertisement as heard by an adapter: the record every source produces.

    A NamedTuple rather than a frozen dataclass: it is as immutable, and building one costs a
    third of a frozen dataclass (0.33 µs against 1.03 µs here), which matters at 100k adverts/s.

    Fields: ``t`` seconds on the source's clock (Unix seconds in a capture, monotonic seconds
    live); ``address`` as reported; ``rssi`` dBm; ``tx_power`` dBm or None; ``name`` the local
    name or None; ``service_uuids`` lower-case 128-bit strings; ``service_data`` 128-bit UUID to
    payload bytes; ``manufacturer_data`` company id to the bytes after it (bleak's convention);
    ``adapter`` the receiving adapter (``"hci0"``) or None; ``rolling_id`` an ID learned for
    this address out of band (an iPhone's GATT read), which the advert itself does not carry.
    """

    t: float
    address: str
    rssi: int
    tx_power: int | None = None
    name: str | None = None
    service_uuids: tuple[str, ...] = ()
    service_data: dict[str, bytes] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    manufacturer_data: dict[int, bytes] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    adapter: str | None = None
    rolling_id: str | None = None


class Sighting(NamedTuple):
    """A recognised contact-tracing phone in one advert.

    ``key`` identifies the device for presence: the rolling ID (lower-case hex) when the advert
    carries it, otherwise the address (an iPhone whose ID needs a GATT read, a BlueTrace phone).
    """

    t: float
    key: str
    address: str
    rssi: int
    app: App
    platform: Platform | None
    rolling_id: str | None
    evidence: Evidence
    adapter: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape printed by ``bluezone-gateway decode``."""
        return {
            "t": self.t,
            "address": self.address,
            "rssi": self.rssi,
            "app": self.app.value,
            "platform": None if self.platform is None else self.platform.value,
            "rolling_id": self.rolling_id,
            "evidence": self.evidence.value,
            "adapter": self.adapter,
        }


class Rejection(NamedTuple):
    """Why an advert is not a contact-tracing phone (or is one, malformed)."""

    reason: str
    malformed: bool = False
    """True when the advert claims to be a tracing app but its payload is wrong."""

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape printed by ``bluezone-gateway decode``."""
        return {"app": None, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """An entry or exit decided by the presence engine, on the source's clock."""

    type: EventType
    key: str
    """Device key (see `Sighting.key`)."""
    visit: int
    """Tracker-local visit number; the entry and exit of one visit share it."""
    at: float
    """Entry: when the device was judged inside. Exit: when it was last seen inside."""
    app: App
    platform: Platform | None
    rolling_id: str | None
    rssi_max: int
    """Strongest raw RSSI heard during the visit so far."""
    sightings: int
    """Sightings of the device during the visit so far (from its first one in this track)."""
    first_seen: float
    last_seen: float
    checked_in: bool = False
    """Exit only: whether the phone was held close (a check-in) during the visit."""
    direction: str | None = None
    """With two adapters: ``in`` or ``out`` (see `PresenceTracker`); None otherwise."""
    chain: int = 0
    """The visit number of the first key of this phone's visit: its own ``visit`` unless the
    linker (gateway/linker.py) found the key continues an earlier one; 0 means ``visit``."""
    continues: str | None = None
    """Entry only: the rolling ID of the key this one continues (None when not linked, or
    when the earlier key's ID was never learned)."""

    @property
    def visit_chain(self) -> int:
        """Return the visit number that identifies the whole visit (all linked keys)."""
        return self.chain or self.visit


@dataclass(frozen=True, slots=True)
class CheckIn:
    """A phone held very close to the gateway: the desk's live signal, not a stored event."""

    key: str
    at: float
    rssi: int
    app: App
    platform: Platform | None
    rolling_id: str | None


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """Thresholds of the presence engine: the ``[presence]`` config keys."""

    enter_rssi: float = -75.0
    """Smoothed RSSI (dBm) at or above which a device enters the zone."""
    exit_rssi: float = -78.0
    """Smoothed RSSI (dBm) below which a device inside counts as outside (hysteresis)."""
    exit_timeout_s: float = 30.0
    """Silence after the last sighting inside that ends a visit: 2× Bluezone's 15 s off-period."""
    smoothing_s: float = 1.0
    """Time constant of the decaying RSSI mean (s): about 8 adverts of a Bluezone Android phone."""
    rssi_sigma_db: float = 6.0
    """Advert-to-advert RSSI jitter assumed for a phone (dB); phones jitter by 5-10 dB."""
    confidence_z: float = 1.25
    """Standard errors by which the mean must clear a threshold before it counts (about 90 %)."""
    exit_weak_s: float = 3.0
    """How long the mean must stay surely below ``exit_rssi`` to end a visit while heard (s)."""
    checkin_rssi: float = -50.0
    """Raw RSSI at or above which a sample counts towards a check-in (phone held ~0.2 m away)."""
    checkin_samples: int = 3
    """Consecutive samples at or above ``checkin_rssi`` that make a check-in."""
    max_devices: int = 20_000
    """Devices tracked at once; the least recently heard is dropped (and exited) beyond it."""
    link: bool = True
    """Link a phone's new rolling ID or address to its previous one (gateway/linker.py), so
    that events carry one ``visit_id`` per phone visit and counts count people."""

    def __post_init__(self) -> None:
        """Reject policies that cannot work, naming the key."""
        for name in ("enter_rssi", "exit_rssi", "checkin_rssi"):
            value = getattr(self, name)
            if not -127 <= value <= 20:
                msg = f"{name} = {value} is outside the RSSI range -127..20 dBm"
                raise ValueError(msg)
        if self.exit_rssi > self.enter_rssi:
            msg = (
                f"exit_rssi ({self.exit_rssi}) must not be above enter_rssi ({self.enter_rssi}):"
                " the gap between them is the hysteresis"
            )
            raise ValueError(msg)
        for name in ("exit_timeout_s", "smoothing_s", "rssi_sigma_db"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0"
                raise ValueError(msg)
        if self.exit_weak_s < 0 or self.confidence_z < 0:
            msg = "exit_weak_s and confidence_z must be >= 0"
            raise ValueError(msg)
        if self.checkin_samples < 1 or self.max_devices < 1:
            msg = "checkin_samples and max_devices must be >= 1"
            raise ValueError(msg)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def iso_utc(unix_s: float) -> str:
    """Format Unix seconds as ISO 8601 UTC with milliseconds and ``Z`` (the event format)."""
    ms = math.floor(unix_s * 1000 + 0.5)
    seconds, millis = divmod(ms, 1000)
    stamp = datetime.fromtimestamp(seconds, UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def parse_iso_utc(text: str) -> float:
    """Parse an ISO 8601 timestamp (``Z`` or an offset; a naive one is taken as UTC)."""
    stamp = datetime.fromisoformat(text.replace("z", "Z"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (stamp - _EPOCH).total_seconds()
