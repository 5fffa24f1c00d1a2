"""decode_advert against every advertisement of protocol.md §10.2, plus invariants."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from gateway.decode import (
    APPLE_COMPANY,
    BLUETRACE_COMPANY,
    BLUEZONE_ANDROID_UUID,
    BLUEZONE_COMPANY,
    BLUEZONE_IOS_SERVICE,
    GAEN_UUID,
    decode_advert,
)
from gateway.model import Advert, App, Evidence, Platform, Rejection, Sighting

T = TypeVar("T")

T0 = 1596865500.25  # 2020-08-08 05:45:00.25 UTC: slot 23, the slot of ROLLING_ID
ADDRESS = "5A:1F:33:0C:9E:71"
ROLLING_ID = "b9a665d754fe65e665d76a45"  # slot 23 of the thaidn key, protocol.md §10.1
OVERFLOW = "0108" + "00" * 15  # Apple type 0x01 + 16-byte bitmask, Bluezone bit only (§2.3)
IBEACON = "0215c7afef7b17884f4aa87d691d53bf21c400140014c5"
GAEN_DATA = "3f1a9c0277e4510bc82d96ae1044f36b5e910cd2"  # 16-byte RPI + 4-byte AEM
BLUETRACE_UUID = "b82ab3fc-1595-4f6a-80f0-fe094cc218f9"
MI_BAND_UUID = "0000fee0-0000-1000-8000-00805f9b34fb"

_DEFAULTS: dict[str, Any] = {"t": T0, "address": ADDRESS, "rssi": -71, "adapter": "hci0"}


def advert(**kw) -> Advert:
    """An advert as bleak reports it; fields not given take harmless defaults."""
    return Advert(**{**_DEFAULTS, **kw})


def sighting(app, platform, rolling_id, evidence, key=ADDRESS, rssi=-71) -> Sighting:
    """The sighting `advert()` with these fields decodes to."""
    return Sighting(T0, key, ADDRESS, rssi, app, platform, rolling_id, evidence, "hci0")


def uuid16(short: int) -> str:
    """A 16-bit service UUID in the Bluetooth base UUID, as bleak writes it."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


def from_air(ad_hex: str, **kw) -> Advert:
    """Turn raw AD structures (as on air) into the advert bleak would report.

    Only the AD types §10.2 uses: flags, 16/128-bit UUID lists, name, TX power, 16-bit service
    data and manufacturer data (company id little-endian, bleak keeps the bytes after it).
    """
    raw = bytes.fromhex(ad_hex)
    uuids: list[str] = []
    service_data: dict[str, bytes] = {}
    mfr: dict[int, bytes] = {}
    name = tx_power = None
    i = 0
    while i < len(raw):
        length, ad_type, data = raw[i], raw[i + 1], raw[i + 2 : i + 1 + raw[i]]
        assert len(data) == length - 1, f"truncated AD structure at byte {i}"
        i += 1 + length
        if ad_type in (0x02, 0x03):
            uuids += [
                uuid16(int.from_bytes(data[j : j + 2], "little")) for j in range(0, len(data), 2)
            ]
        elif ad_type in (0x06, 0x07):
            h = data[::-1].hex()
            uuids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        elif ad_type == 0x09:
            name = data.decode()
        elif ad_type == 0x0A:
            tx_power = int.from_bytes(data, signed=True)
        elif ad_type == 0x16:
            service_data[uuid16(int.from_bytes(data[:2], "little"))] = data[2:]
        elif ad_type == 0xFF:
            mfr[int.from_bytes(data[:2], "little")] = data[2:]
        else:
            assert ad_type == 0x01, f"AD type {ad_type:#04x} not expected in §10.2"
    return advert(
        name=name,
        tx_power=tx_power,
        service_uuids=tuple(uuids),
        service_data=service_data,
        manufacturer_data=mfr,
        **kw,
    )


# (raw AD hex as printed in protocol.md §10.2, the same advert the way bleak reports it)
AIR = {
    "A android": (
        "020102 0fffb522b9a665d754fe65e665d76a45 0303564e",
        advert(
            service_uuids=(BLUEZONE_ANDROID_UUID,),
            manufacturer_data={8885: bytes.fromhex(ROLLING_ID)},
        ),
    ),
    "B ibeacon": (
        "1aff4c000215c7afef7b17884f4aa87d691d53bf21c400140014c5",
        advert(manufacturer_data={76: bytes.fromhex(IBEACON)}),
    ),
    "C ios foreground": (
        "02011a 110767a607add1172fa1c44bf573564e0000 0909426c75657a6f6e65",
        advert(name="Bluezone", service_uuids=(BLUEZONE_IOS_SERVICE,)),
    ),
    "D ios background": (
        "02011a 14ff4c00" + OVERFLOW,
        advert(manufacturer_data={76: bytes.fromhex(OVERFLOW)}),
    ),
    "E gaen": (
        "02011a 03036ffd 17166ffd3f1a9c0277e4510bc82d96ae1044f36b5e910cd2",
        advert(service_uuids=(GAEN_UUID,), service_data={GAEN_UUID: bytes.fromhex(GAEN_DATA)}),
    ),
    "F bluetrace": (
        "020102 06ffff03336639 020af9 1107f918c24c09fef0806a4f9515fcb32ab8",
        advert(tx_power=-7, service_uuids=(BLUETRACE_UUID,), manufacturer_data={1023: b"3f9"}),
    ),
    "G apple nearby": (
        "02011a 0aff4c0010050b1c2a3b4c",
        advert(manufacturer_data={76: bytes.fromhex("10050b1c2a3b4c")}),
    ),
    "G mi band": (
        "020106 0303e0fe 1009" + b"Mi Smart Band 4".hex(),
        advert(name="Mi Smart Band 4", service_uuids=(MI_BAND_UUID,)),
    ),
}


@pytest.mark.parametrize(("ad_hex", "bleak_form"), AIR.values(), ids=AIR.keys())
def test_bleak_forms_match_the_bytes_on_air(ad_hex, bleak_form):
    # Guards the table below: each bleak-form advert is what its on-air bytes really say.
    assert from_air(ad_hex.replace(" ", "")) == bleak_form


BLUEZONE_ANDROID = sighting(
    App.BLUEZONE, Platform.ANDROID, ROLLING_ID, Evidence.ADVERT_ID, key=ROLLING_ID
)
IPHONE_FOREGROUND = sighting(App.BLUEZONE, Platform.IOS, None, Evidence.SERVICE_UUID)
IPHONE_BACKGROUND = sighting(App.BLUEZONE, Platform.IOS, None, Evidence.OVERFLOW_BIT)
RPI = GAEN_DATA[:32]

SIGHTINGS = {
    "A bluezone android v3": (AIR["A android"][1], BLUEZONE_ANDROID),
    "A upper-case address kept": (
        AIR["A android"][1]._replace(address="5a:1f:33:0c:9e:71"),
        BLUEZONE_ANDROID._replace(address="5a:1f:33:0c:9e:71"),
    ),
    "C foreground uuid and name": (AIR["C ios foreground"][1], IPHONE_FOREGROUND),
    "C foreground uuid only (name in SCAN_RSP, passive scan)": (
        advert(service_uuids=(BLUEZONE_IOS_SERVICE,)),
        IPHONE_FOREGROUND,
    ),
    "C foreground name only": (advert(name="Bluezone"), IPHONE_FOREGROUND),
    "D background overflow bit": (AIR["D ios background"][1], IPHONE_BACKGROUND),
    "D overflow bit with another app's bit": (
        advert(manufacturer_data={76: bytes.fromhex("0108" + "00" * 14 + "80")}),
        IPHONE_BACKGROUND,
    ),
    "D overflow bit among other bits of byte 0": (
        advert(manufacturer_data={76: bytes.fromhex("01ff" + "00" * 15)}),
        IPHONE_BACKGROUND,
    ),
    "E gaen": (AIR["E gaen"][1], sighting(App.GAEN, None, RPI, Evidence.RPI, key=RPI)),
    "E gaen service data without the uuid list": (
        advert(service_data={GAEN_UUID: bytes.fromhex(GAEN_DATA)}),
        sighting(App.GAEN, None, RPI, Evidence.RPI, key=RPI),
    ),
    "F bluetrace android": (
        AIR["F bluetrace"][1],
        sighting(App.BLUETRACE, Platform.ANDROID, None, Evidence.BLUETRACE),
    ),
    "F bluetrace ios (no manufacturer data)": (
        advert(service_uuids=("17e033d3-490e-4bc9-9fe8-2f567643f4d3",)),
        sighting(App.BLUETRACE, None, None, Evidence.BLUETRACE),
    ),
    "F bluetrace, deployment's own uuid with the 3-char frame": (
        advert(
            service_uuids=("0b5e1a2c-7d3f-4a6b-9c8d-1e2f3a4b5c6d",),
            manufacturer_data={1023: b"x7q"},
        ),
        sighting(App.BLUETRACE, Platform.ANDROID, None, Evidence.BLUETRACE),
    ),
    "rssi at the low end": (
        AIR["A android"][1]._replace(rssi=-127),
        BLUEZONE_ANDROID._replace(rssi=-127),
    ),
    "rssi at the high end": (
        AIR["A android"][1]._replace(rssi=20),
        BLUEZONE_ANDROID._replace(rssi=20),
    ),
}


@pytest.mark.parametrize(("adv", "expected"), SIGHTINGS.values(), ids=SIGHTINGS.keys())
def test_tracing_phones_are_recognised(adv, expected):
    assert decode_advert(adv) == expected


def ids_of(n: int) -> bytes:
    """n bytes of a Bluezone ID (cut or padded): a payload of the wrong length."""
    return (bytes.fromhex(ROLLING_ID) * 3)[:n]


# (advert, malformed, words the reason must contain)
REJECTIONS = {
    "B companion ibeacon": (AIR["B ibeacon"][1], False, ["ibeacon", "no id"]),
    "G apple nearby info": (AIR["G apple nearby"][1], False, ["apple", "overflow bit"]),
    "G mi band": (AIR["G mi band"][1], False, ["no contact-tracing"]),
    "G nothing at all": (advert(), False, ["no contact-tracing"]),
    "G unknown 128-bit uuid without the bluetrace frame": (
        advert(service_uuids=("0b5e1a2c-7d3f-4a6b-9c8d-1e2f3a4b5c6d",)),
        False,
        ["no contact-tracing"],
    ),
    "G 3-char 0x03ff frame with only 16-bit uuids": (
        advert(service_uuids=(MI_BAND_UUID,), manufacturer_data={1023: b"3f9"}),
        False,
        ["no contact-tracing"],
    ),
    "apple overflow frame without the bluezone bit": (
        advert(manufacturer_data={76: bytes.fromhex("0107" + "00" * 14 + "80")}),
        False,
        ["overflow bit"],
    ),
    "apple overflow frame too short": (
        advert(manufacturer_data={76: bytes.fromhex("0108" + "00" * 14)}),
        True,
        ["16 bytes", "17"],
    ),
    "apple empty payload": (advert(manufacturer_data={76: b""}), False, ["apple"]),
    "G 0x22b5 without uuid 0x4e56": (
        advert(manufacturer_data={8885: bytes.fromhex(ROLLING_ID)}),
        True,
        ["0x22b5", "0x4e56"],
    ),
    "G 0x22b5 with another uuid (v1-style)": (
        advert(
            service_uuids=(BLUEZONE_IOS_SERVICE,),
            manufacturer_data={8885: b"ABCDEF"},
        ),
        True,
        ["0x4e56"],
    ),
    "uuid 0x4e56 without 0x22b5 data": (
        advert(service_uuids=(BLUEZONE_ANDROID_UUID,)),
        True,
        ["0x22b5", "12-byte"],
    ),
    **{
        f"G bluezone id of {n} bytes": (
            advert(service_uuids=(BLUEZONE_ANDROID_UUID,), manufacturer_data={8885: ids_of(n)}),
            True,
            [f"{n} bytes", "12"],
        )
        for n in (0, 6, 11, 13, 16, 31)
    },
    **{
        f"gaen data of {n} bytes": (
            advert(service_uuids=(GAEN_UUID,), service_data={GAEN_UUID: bytes(n)}),
            True,
            ["gaen", f"{n} bytes", "20"],
        )
        for n in (0, 16, 19, 21)
    },
    "gaen uuid without service data": (
        advert(service_uuids=(GAEN_UUID,)),
        True,
        ["0xfd6f", "service data"],
    ),
    **{
        f"rssi {rssi}": (AIR["A android"][1]._replace(rssi=rssi), True, ["rssi", str(rssi)])
        for rssi in (-128, -1000, 21, 127)
    },
}


@pytest.mark.parametrize(("adv", "malformed", "words"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_other_adverts_are_rejected_with_a_reason(adv, malformed, words):
    result = decode_advert(adv)
    assert isinstance(result, Rejection)
    assert result.malformed is malformed
    for word in words:
        assert word in result.reason.lower()


def test_sighting_as_dict_is_the_decode_command_shape():
    record = decode_advert(AIR["A android"][1]).as_dict()
    assert record == {
        "t": T0,
        "address": ADDRESS,
        "rssi": -71,
        "app": "bluezone",
        "platform": "android",
        "rolling_id": ROLLING_ID,
        "evidence": "advert-id",
        "adapter": "hci0",
    }
    # Plain JSON values (no enums leak): what `bluezone-gateway decode` prints.
    assert orjson.loads(orjson.dumps(record)) == record
    assert all(type(record[k]) is str for k in ("app", "platform", "evidence"))


def test_sighting_as_dict_platform_and_id_may_be_null():
    record = decode_advert(AIR["D ios background"][1]._replace(adapter=None)).as_dict()
    assert {"t", "address", "rssi", "app", "platform", "rolling_id"} <= record.keys()
    assert record["platform"] == "ios"
    assert record["rolling_id"] is None
    assert record["adapter"] is None
    gaen = decode_advert(AIR["E gaen"][1]).as_dict()
    assert (gaen["app"], gaen["platform"], gaen["rolling_id"]) == ("gaen", None, RPI)


def test_rejection_as_dict_is_app_null_and_reason():
    rejection = decode_advert(AIR["G mi band"][1])
    assert isinstance(rejection, Rejection)
    assert rejection.as_dict() == {"app": None, "reason": rejection.reason}
    assert orjson.dumps(rejection.as_dict()).startswith(b'{"app":null,"reason":"')


# --- invariants ------------------------------------------------------------------------------

KNOWN_UUIDS = (
    BLUEZONE_ANDROID_UUID,
    BLUEZONE_IOS_SERVICE,
    "00004e56-73f5-4bc4-a12f-17d1ad07a689",
    GAEN_UUID,
    BLUETRACE_UUID,
    "17e033d3-490e-4bc9-9fe8-2f567643f4d3",
    MI_BAND_UUID,
)
COMPANIES = (BLUEZONE_COMPANY, APPLE_COMPANY, BLUETRACE_COMPANY)
PAYLOADS = (
    ids_of(12),
    bytes.fromhex(OVERFLOW),
    bytes.fromhex(IBEACON),
    b"3f9",
    bytes.fromhex(GAEN_DATA),
)
NAMES = (None, "Bluezone", "Mi Smart Band 4", "")


class Fuzz:
    """Read a random advert off one byte string, as libFuzzer's FuzzedDataProvider does.

    One `st.binary` choice per example costs ~0.4 ms here against ~1.5 ms for the same advert
    composed from `st.builds`/`st.dictionaries`, which is what lets 10,000 examples run in a
    few seconds. Hypothesis still shrinks the bytes (towards zeros: the empty advert).
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.i = 0

    def take(self, n: int) -> bytes:
        out = self.raw[self.i : self.i + n]
        self.i += n
        return out.ljust(n, b"\0")

    def byte(self) -> int:
        return self.take(1)[0]

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def uuid(self) -> str:
        kind = self.byte() % 4
        if kind == 0:
            return str(uuid.UUID(bytes=self.take(16)))
        if kind == 1:
            return uuid16(int.from_bytes(self.take(2)))
        return self.pick(KNOWN_UUIDS)

    def payload(self) -> bytes:
        n = self.byte()
        return self.pick(PAYLOADS) if n >= 224 else self.take(n % 32)

    def company(self) -> int:
        kind = self.byte() % 4
        return int.from_bytes(self.take(2)) if kind == 3 else COMPANIES[kind]

    def name(self) -> str | None:
        kind = self.byte() % 5
        if kind < len(NAMES):
            return NAMES[kind]
        return self.take(self.byte() % 16).decode("utf-8", "replace")

    def rssi(self) -> int:
        if self.byte() < 32:  # 1 in 8: anything a 64-bit field could hold
            return int.from_bytes(self.take(8), signed=True)
        return self.byte() % 160 - 133  # -133..26: the valid range and just beyond it

    def advert(self) -> Advert:
        return Advert(
            t=struct.unpack("<d", self.take(8))[0],
            address=self.pick((ADDRESS, "", "aa:bb:cc:dd:ee:ff")),
            rssi=self.rssi(),
            tx_power=self.pick((None, -7, 127)),
            name=self.name(),
            service_uuids=tuple(self.uuid() for _ in range(self.byte() % 5)),
            service_data={self.uuid(): self.payload() for _ in range(self.byte() % 3)},
            manufacturer_data={self.company(): self.payload() for _ in range(self.byte() % 4)},
            adapter=self.pick((None, "hci0")),
        )


@settings(max_examples=10_000, deadline=None)
@given(st.binary(min_size=256, max_size=256))
def test_decode_never_raises_and_sightings_are_consistent(raw):
    adv = Fuzz(raw).advert()
    note(repr(adv))
    result = decode_advert(adv)
    if isinstance(result, Rejection):
        assert result.reason
        assert result.as_dict() == {"app": None, "reason": result.reason}
        return
    assert isinstance(result, Sighting)
    assert -127 <= result.rssi <= 20
    assert (result.rssi, result.address, result.adapter) == (adv.rssi, adv.address, adv.adapter)
    assert result.key == (result.rolling_id or adv.address)
    if result.rolling_id is not None:
        expected_len = {App.BLUEZONE: 24, App.GAEN: 32}[result.app]
        assert len(result.rolling_id) == expected_len
        assert result.rolling_id == bytes.fromhex(result.rolling_id).hex()  # lower-case hex
    assert result.as_dict()["app"] == result.app.value


uuids = st.one_of(
    st.sampled_from(KNOWN_UUIDS),
    st.uuids().map(str),
    st.integers(0, 0xFFFF).map(uuid16),
)
extras = st.lists(uuids, max_size=3)


@given(st.binary(min_size=12, max_size=12), extras, st.none() | st.text(max_size=10))
def test_any_12_byte_payload_with_uuid_4e56_is_that_id(payload, more_uuids, name):
    adv = advert(
        name=name,
        service_uuids=(*more_uuids, BLUEZONE_ANDROID_UUID),
        manufacturer_data={APPLE_COMPANY: bytes.fromhex(OVERFLOW), BLUEZONE_COMPANY: payload},
    )
    result = decode_advert(adv)
    assert isinstance(result, Sighting)
    assert result.rolling_id == result.key == payload.hex()
    assert (result.app, result.platform, result.evidence) == (
        App.BLUEZONE,
        Platform.ANDROID,
        Evidence.ADVERT_ID,
    )


@given(st.binary(max_size=64).filter(lambda b: len(b) != 12), extras)
def test_any_other_id_length_is_malformed(payload, more_uuids):
    adv = advert(
        service_uuids=(*more_uuids, BLUEZONE_ANDROID_UUID),
        manufacturer_data={BLUEZONE_COMPANY: payload},
    )
    result = decode_advert(adv)
    assert isinstance(result, Rejection)
    assert result.malformed
    assert f"{len(payload)} bytes" in result.reason
