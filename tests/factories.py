"""Factories shared by the tests (after habluetooth's generate_advertisement_data)."""

from __future__ import annotations

from typing import Any

from gateway.decode import (
    BLUEZONE_ANDROID_UUID,
    BLUEZONE_COMPANY,
    BLUEZONE_IOS_SERVICE,
    GAEN_UUID,
)
from gateway.model import (
    Advert,
    App,
    Evidence,
    Platform,
    PresenceEvent,
    PresencePolicy,
    Sighting,
)

ROLLING_ID = "b9a665d754fe65e665d76a45"
"""Slot 23 of the thaidn capture's daily key (protocol.md §10.1)."""


def android_advert(
    t: float = 0.0,
    rssi: int = -60,
    rolling_id: str = ROLLING_ID,
    address: str = "5A:1F:33:0C:9E:71",
    **kw: Any,
) -> Advert:
    """A Bluezone Android v3 advert as bleak reports it (protocol.md §10.2 A)."""
    return Advert(
        t,
        address,
        rssi,
        service_uuids=(BLUEZONE_ANDROID_UUID,),
        manufacturer_data={BLUEZONE_COMPANY: bytes.fromhex(rolling_id)},
        **kw,
    )


def iphone_advert(
    t: float = 0.0, rssi: int = -60, address: str = "4C:11:22:33:44:55", **kw: Any
) -> Advert:
    """A Bluezone iPhone with the app in front: the service UUID, no ID (protocol.md §2.4)."""
    return Advert(t, address, rssi, service_uuids=(BLUEZONE_IOS_SERVICE,), **kw)


def gaen_advert(
    t: float = 0.0, rssi: int = -60, rpi: str = "0f" * 16, address: str = "6E:01:02:03:04:05"
) -> Advert:
    """An exposure-notification (GAEN) advert: 16-byte RPI and 4 bytes of metadata."""
    data = bytes.fromhex(rpi) + bytes(4)
    return Advert(t, address, rssi, service_uuids=(GAEN_UUID,), service_data={GAEN_UUID: data})


def sighting(
    key: str = ROLLING_ID,
    rssi: int = -60,
    at: float = 0.0,
    app: App = App.BLUEZONE,
    platform: Platform | None = Platform.ANDROID,
) -> Sighting:
    """A decoded sighting; the key doubles as the rolling ID."""
    rolling_id = key if platform is Platform.ANDROID else None
    return Sighting(
        at, key, "5A:1F:33:0C:9E:71", rssi, app, platform, rolling_id, Evidence.ADVERT_ID
    )


def policy(**kw: Any) -> PresencePolicy:
    """The default policy with some keys changed."""
    return PresencePolicy(**kw)


def kinds(events: Any) -> list[tuple[str, str, float]]:
    """Reduce engine output to (type, key, at) triples; check-ins show as ("checkin", ...)."""
    out = []
    for e in events:
        if isinstance(e, PresenceEvent):
            out.append((e.type.value, e.key, round(e.at, 3)))
        else:
            out.append(("checkin", e.key, round(e.at, 3)))
    return out
