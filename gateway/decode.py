"""Recognise contact-tracing phones in adverts (protocol.md §9, §10.2); pure, never raises.

`decode_advert` maps an `Advert` to a `Sighting` or to a `Rejection` that says why not. Every
branch is a dictionary lookup and a length check: this runs once per advert heard.
"""

from __future__ import annotations

from typing import Final

from gateway.model import Advert, App, Evidence, Platform, Rejection, Sighting

BLUEZONE_ANDROID_UUID: Final = "00004e56-0000-1000-8000-00805f9b34fb"
"""16-bit service 0x4E56 ("VN" on air) in the base UUID (AppConstants.BLE_UUID_ANDROID)."""
BLUEZONE_IOS_SERVICE: Final = "00004e56-73f5-4bc4-a12f-17d1ad07a667"
"""128-bit service an iPhone advertises and hosts (BLE_UUID_IOS)."""
BLUEZONE_IOS_ID_CHAR: Final = "00004e56-73f5-4bc4-a12f-17d1ad07a689"
"""GATT characteristic holding the iPhone's 12-byte rolling ID (BLE_UUID_CHARECTIC)."""
BLUEZONE_NAME: Final = "Bluezone"
BLUEZONE_COMPANY: Final = 0x22B5
"""8885, "XU": company id of the manufacturer data carrying the Android rolling ID."""
BLUEZONE_ID_LEN: Final = 12
APPLE_COMPANY: Final = 0x004C
APPLE_OVERFLOW_TYPE: Final = 0x01
APPLE_OVERFLOW_LEN: Final = 17
"""Type byte + 16-byte bitmask of iOS's background "overflow area"."""
BLUEZONE_OVERFLOW_MASK: Final = 0x08
"""Bitmask byte 0, bit 3: what Bluezone's own Android scanner matches (protocol.md §2.3)."""
BLUEZONE_IBEACON_PREFIX: Final = bytes.fromhex("0215c7afef7b17884f4aa87d691d53bf21c400140014")
"""iBeacon of Bluezone Android 3.0.7+ (UUID C7AFEF7B-…, major 20, minor 20): no ID (§1.5)."""
GAEN_UUID: Final = "0000fd6f-0000-1000-8000-00805f9b34fb"
GAEN_DATA_LEN: Final = 20
"""16-byte rolling proximity identifier + 4-byte encrypted metadata (EN Bluetooth spec 1.2)."""
GAEN_RPI_LEN: Final = 16
BLUETRACE_UUIDS: Final = frozenset(
    {
        "b82ab3fc-1595-4f6a-80f0-fe094cc218f9",  # OpenTrace README, production sample
        "17e033d3-490e-4bc9-9fe8-2f567643f4d3",  # OpenTrace README, staging sample
    }
)
BLUETRACE_COMPANY: Final = 0x03FF
"""1023: OpenTrace's manufacturer frame, 3 random ASCII characters (BLEAdvertiser.kt)."""
BLUETRACE_DATA_LEN: Final = 3
BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"
RSSI_MIN: Final = -127
RSSI_MAX: Final = 20
"""HCI reports RSSI in -127..20 dBm; 127 means "not available"."""

NOT_TRACING: Final = Rejection("no contact-tracing payload")
APPLE_OTHER: Final = Rejection("apple frame without the Bluezone overflow bit")
BLUEZONE_IBEACON: Final = Rejection(
    "bluezone android companion ibeacon: carries no ID, the phone is counted by its own advert"
)


def decode_advert(advert: Advert) -> Sighting | Rejection:
    """Return the tracing phone this advert shows, or why it shows none."""
    rssi = advert.rssi
    if not RSSI_MIN <= rssi <= RSSI_MAX:
        return Rejection(f"rssi {rssi} is outside {RSSI_MIN}..{RSSI_MAX} dBm", malformed=True)
    mfr = advert.manufacturer_data
    uuids = advert.service_uuids
    if mfr:
        payload = mfr.get(BLUEZONE_COMPANY)
        if payload is not None:
            return _bluezone_android(advert, payload)
    if BLUEZONE_ANDROID_UUID in uuids:
        return Rejection("service 0x4e56 without the 12-byte ID of company 0x22b5", malformed=True)
    if BLUEZONE_IOS_SERVICE in uuids or advert.name == BLUEZONE_NAME:
        return _iphone(advert, Evidence.SERVICE_UUID)
    if mfr:
        apple = mfr.get(APPLE_COMPANY)
        if apple is not None:
            return _apple(advert, apple)
    if advert.service_data or GAEN_UUID in uuids:
        gaen = advert.service_data.get(GAEN_UUID)
        if gaen is not None or GAEN_UUID in uuids:
            return _gaen(advert, gaen)
    return _bluetrace(advert)


def _sighting(
    advert: Advert,
    key: str,
    app: App,
    platform: Platform | None,
    rolling_id: str | None,
    evidence: Evidence,
) -> Sighting:
    return Sighting(
        advert.t,
        key,
        advert.address,
        advert.rssi,
        app,
        platform,
        rolling_id,
        evidence,
        advert.adapter,
    )


def _iphone(advert: Advert, evidence: Evidence) -> Sighting:
    # Keyed by address even once its ID is known (over GATT), so that learning the ID does
    # not split the visit; the ID rides along for the events.
    if advert.rolling_id is not None:
        return _sighting(
            advert,
            advert.address,
            App.BLUEZONE,
            Platform.IOS,
            advert.rolling_id,
            Evidence.GATT_READ,
        )
    return _sighting(advert, advert.address, App.BLUEZONE, Platform.IOS, None, evidence)


def _bluezone_android(advert: Advert, payload: bytes) -> Sighting | Rejection:
    if BLUEZONE_ANDROID_UUID not in advert.service_uuids:
        # v1 (April 2020) put a 6-character user code here with another UUID (protocol.md §7).
        return Rejection(
            "company 0x22b5 data without service 0x4e56: not a Bluezone v2+ advert", malformed=True
        )
    if len(payload) != BLUEZONE_ID_LEN:
        return Rejection(
            f"bluezone ID is {len(payload)} bytes, expected {BLUEZONE_ID_LEN}", malformed=True
        )
    rolling_id = payload.hex()
    return _sighting(
        advert, rolling_id, App.BLUEZONE, Platform.ANDROID, rolling_id, Evidence.ADVERT_ID
    )


def _apple(advert: Advert, payload: bytes) -> Sighting | Rejection:
    if payload[:1] == b"\x01":
        if len(payload) != APPLE_OVERFLOW_LEN:
            return Rejection(
                f"apple overflow frame is {len(payload)} bytes, expected {APPLE_OVERFLOW_LEN}",
                malformed=True,
            )
        if payload[1] & BLUEZONE_OVERFLOW_MASK:
            # Only a candidate: another app's UUID can hash to the same bit (§2.3); a GATT read
            # of the ID characteristic confirms it where the scanner can connect.
            return _iphone(advert, Evidence.OVERFLOW_BIT)
        return APPLE_OTHER
    if payload.startswith(BLUEZONE_IBEACON_PREFIX):
        return BLUEZONE_IBEACON
    return APPLE_OTHER


def _gaen(advert: Advert, data: bytes | None) -> Sighting | Rejection:
    if data is None:
        return Rejection("service 0xfd6f listed without its service data", malformed=True)
    if len(data) != GAEN_DATA_LEN:
        return Rejection(
            f"gaen service data is {len(data)} bytes, expected {GAEN_DATA_LEN}", malformed=True
        )
    rpi = data[:GAEN_RPI_LEN].hex()
    return _sighting(advert, rpi, App.GAEN, None, rpi, Evidence.RPI)


def _bluetrace(advert: Advert) -> Sighting | Rejection:
    uuids = advert.service_uuids
    if not uuids:
        return NOT_TRACING
    frame = advert.manufacturer_data.get(BLUETRACE_COMPANY)
    known = not BLUETRACE_UUIDS.isdisjoint(uuids)
    # Deployments pick their own service UUID (OpenTrace README), so an unknown 128-bit UUID
    # counts only together with OpenTrace's 3-character manufacturer frame.
    framed = (
        frame is not None
        and len(frame) == BLUETRACE_DATA_LEN
        and any(not u.endswith(BASE_UUID_SUFFIX) for u in uuids)
    )
    if not (known or framed):
        return NOT_TRACING
    platform = Platform.ANDROID if frame is not None else None  # iOS cannot send manufacturer data
    return _sighting(advert, advert.address, App.BLUETRACE, platform, None, Evidence.BLUETRACE)
