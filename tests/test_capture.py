"""The capture format: parsing, round trips, and a precise error for every bad field."""

from __future__ import annotations

import io
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.capture import (
    CaptureError,
    advert_from_dict,
    advert_to_dict,
    dumps,
    parse_line,
    read,
    write,
)
from gateway.decode import decode_advert
from gateway.model import Advert, App, GatewayError, Platform, Sighting

ANDROID_UUID = "00004e56-0000-1000-8000-00805f9b34fb"
GAEN_UUID = "0000fd6f-0000-1000-8000-00805f9b34fb"
ROLLING_ID = "b9a665d754fe65e665d76a45"

# The record of the module docstring, its placeholders filled in (protocol.md §10.2 A).
EXAMPLE = (
    '{"t": 1596870000.123, "address": "5A:1F:33:0C:9E:71", "rssi": -71, "tx_power": null,'
    ' "name": null, "service_uuids": ["00004e56-0000-1000-8000-00805f9b34fb"], "service_data":'
    ' {"0000fd6f-0000-1000-8000-00805f9b34fb": "00ff"}, "manufacturer_data":'
    ' {"8885": "b9a665d754fe65e665d76a45"}, "adapter": "hci0"}'
)
EXAMPLE_ADVERT = Advert(
    t=1596870000.123,
    address="5A:1F:33:0C:9E:71",
    rssi=-71,
    tx_power=None,
    name=None,
    service_uuids=(ANDROID_UUID,),
    service_data={GAEN_UUID: b"\x00\xff"},
    manufacturer_data={8885: bytes.fromhex(ROLLING_ID)},
    adapter="hci0",
)


def line(**fields) -> bytes:
    """A capture line: a valid minimal record with some fields changed (None drops a field)."""
    record = {"t": 1596870000.5, "address": "A", "rssi": -60, **fields}
    return orjson.dumps({k: v for k, v in record.items() if v is not None})


def test_parse_line_reads_the_docstring_example():
    assert parse_line(EXAMPLE) == EXAMPLE_ADVERT
    assert parse_line(EXAMPLE.encode() + b"\n") == EXAMPLE_ADVERT


def test_the_docstring_example_decodes_to_its_bluezone_id():
    result = decode_advert(parse_line(EXAMPLE))
    assert isinstance(result, Sighting)
    assert (result.app, result.platform, result.rolling_id, result.adapter) == (
        App.BLUEZONE,
        Platform.ANDROID,
        ROLLING_ID,
        "hci0",
    )


def test_minimal_record_takes_defaults():
    advert = parse_line(b'{"t": 5, "address": "A", "rssi": -60}')
    assert advert == Advert(5.0, "A", -60)
    assert type(advert.t) is float


def test_null_collections_are_empty():
    assert parse_line(line()).service_uuids == ()  # absent
    nulls = b'{"t":1,"address":"A","rssi":-1,"service_uuids":null,"service_data":null,'
    advert = parse_line(nulls + b'"manufacturer_data":null,"tx_power":null,"adapter":null}')
    assert (advert.service_uuids, advert.service_data, advert.manufacturer_data) == ((), {}, {})
    assert (advert.tx_power, advert.adapter) == (None, None)


def test_unknown_keys_are_ignored():
    extra = line(future_field={"nested": [1, 2, None]}, rssi_smoothed=-61.5, adapter="hci1")
    assert parse_line(extra) == Advert(1596870000.5, "A", -60, adapter="hci1")


def test_upper_case_hex_and_uuids_are_accepted_and_uuids_lowered():
    advert = parse_line(
        line(
            service_uuids=["00004E56-0000-1000-8000-00805F9B34FB"],
            service_data={"0000FD6F-0000-1000-8000-00805F9B34FB": "3F1A9C"},
            manufacturer_data={"8885": ROLLING_ID.upper()},
        )
    )
    assert advert.service_uuids == (ANDROID_UUID,)
    assert advert.service_data == {GAEN_UUID: bytes.fromhex("3f1a9c")}
    assert advert.manufacturer_data == {8885: bytes.fromhex(ROLLING_ID)}


def test_company_id_bounds_are_accepted():
    advert = parse_line(line(manufacturer_data={"0": "", "65535": "01", "08885": "02"}))
    assert advert.manufacturer_data == {0: b"", 65535: b"\x01", 8885: b"\x02"}


def test_str_and_bytes_lines_parse_alike():
    assert parse_line(line().decode()) == parse_line(line()) == parse_line(line() + b"\r\n")


# (line, words the reason must contain): each names the field (or says it is not JSON)
MALFORMED = {
    "not json": (b"{not json", ["not valid json"]),
    "truncated json": (line()[:-1], ["not valid json"]),
    "empty line": (b"", ["not valid json"]),
    "invalid utf-8": (b'{"t": 1, "address": "\xff"}', ["not valid json", "utf-8"]),
    "json array": (b"[1, 2, 3]", ["json object", "list"]),
    "json string": (b'"t"', ["json object", "str"]),
    "json null": (b"null", ["json object", "nonetype"]),
    "missing t": (b'{"address": "A", "rssi": -60}', ['"t"', "none"]),
    "str t": (line(t="1596870000.5"), ['"t"', "'1596870000.5'"]),
    "bool t": (line(t=True), ['"t"', "true"]),
    "NaN t token": (b'{"t": NaN, "address": "A", "rssi": -60}', ["not valid json"]),
    "NaN t string": (line(t="NaN"), ['"t"', "'nan'"]),
    "infinite t": (b'{"t": 1e400, "address": "A", "rssi": -60}', ["not valid json"]),
    "missing address": (b'{"t": 1, "rssi": -60}', ['"address"']),
    "empty address": (line(address=""), ['"address"', "non-empty"]),
    "numeric address": (line(address=42), ['"address"', "42"]),
    "missing rssi": (b'{"t": 1, "address": "A"}', ['"rssi"']),
    "bool rssi": (line(rssi=True), ['"rssi"', "true"]),
    "float rssi": (line(rssi=-60.0), ['"rssi"', "-60.0"]),
    "str rssi": (line(rssi="-60"), ['"rssi"', "'-60'"]),
    "str tx_power": (line(tx_power="-7"), ['"tx_power"']),
    "bool tx_power": (line(tx_power=False), ['"tx_power"']),
    "numeric name": (line(name=7), ['"name"']),
    "numeric adapter": (line(adapter=0), ['"adapter"']),
    "service_uuids a string": (line(service_uuids=ANDROID_UUID), ['"service_uuids"', "list"]),
    "service_uuids an object": (line(service_uuids={"a": 1}), ['"service_uuids"', "list"]),
    "service_uuids of numbers": (line(service_uuids=[ANDROID_UUID, 4]), ['"service_uuids"']),
    "service_data a list": (line(service_data=["00"]), ['"service_data"', "object"]),
    "service_data value a number": (
        line(service_data={GAEN_UUID: 12}),
        ['"service_data"', GAEN_UUID, "hex string"],
    ),
    "service_data value not hex": (
        line(service_data={GAEN_UUID: "0g"}),
        ['"service_data"', GAEN_UUID, "not hex"],
    ),
    "service_data odd-length hex": (
        line(service_data={GAEN_UUID: "abc"}),
        ['"service_data"', "not hex", "'abc'"],
    ),
    "manufacturer_data a list": (line(manufacturer_data=[8885]), ['"manufacturer_data"']),
    "manufacturer value not hex": (
        line(manufacturer_data={"8885": "b9a6zz"}),
        ['"manufacturer_data"', "8885", "not hex", "'b9a6zz'"],
    ),
    "manufacturer value a number": (
        line(manufacturer_data={"8885": 12}),
        ['"manufacturer_data"', "8885", "hex string"],
    ),
    "manufacturer key in hex": (
        line(manufacturer_data={"0x22b5": ROLLING_ID}),
        ['"manufacturer_data"', "'0x22b5'", "decimal"],
    ),
    "manufacturer key above 65535": (
        line(manufacturer_data={"65536": "00"}),
        ['"manufacturer_data"', "'65536'", "65535"],
    ),
    "manufacturer key negative": (
        line(manufacturer_data={"-1": "00"}),
        ['"manufacturer_data"', "'-1'"],
    ),
    "manufacturer key empty": (line(manufacturer_data={"": "00"}), ['"manufacturer_data"', "''"]),
    "manufacturer key with a space": (
        line(manufacturer_data={" 8885": "00"}),
        ['"manufacturer_data"', "' 8885'"],
    ),
    "manufacturer key in fullwidth digits": (
        line(manufacturer_data={"８８８５": "00"}),
        ['"manufacturer_data"', "decimal"],
    ),
    # Found by this test: int() refuses more than 4300 digits with ValueError, not CaptureError.
    "manufacturer key of 5000 digits": (
        line(manufacturer_data={"1" * 5000: "00"}),
        ['"manufacturer_data"', "decimal"],
    ),
    "manufacturer key of 5000 zeros": (
        line(manufacturer_data={"0" * 5000: "00"}),
        ['"manufacturer_data"', "decimal"],
    ),
}


@pytest.mark.parametrize(("text", "words"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_lines_name_the_field_and_the_line(text, words):
    with pytest.raises(CaptureError) as caught:
        parse_line(text, 42)
    error = caught.value
    assert error.line == 42
    assert str(error) == f"line 42: {error.reason}"
    for word in words:
        assert word in error.reason.lower()


@pytest.mark.parametrize("text", [v[0] for v in MALFORMED.values()][:8])
def test_without_a_line_number_the_message_is_the_reason(text):
    with pytest.raises(CaptureError) as caught:
        parse_line(text)
    assert caught.value.line is None
    assert str(caught.value) == caught.value.reason
    assert isinstance(caught.value, GatewayError)


@pytest.mark.parametrize("t", [math.nan, math.inf, -math.inf])
def test_advert_from_dict_refuses_non_finite_t(t):
    # JSON cannot carry these (orjson refuses NaN and 1e400), but other callers can.
    with pytest.raises(CaptureError, match='"t" must be finite'):
        advert_from_dict({"t": t, "address": "A", "rssi": -60})


def test_read_yields_errors_without_stopping_and_skips_blank_lines():
    lines = [
        line(rssi=-50) + b"\n",
        b"\n",
        b"  \t\r\n",
        b"[]\n",
        b"",
        line(rssi=-51, manufacturer_data={"0x22b5": "00"}) + b"\n",
        line(rssi=-52) + b"\n",
    ]
    results = list(read(lines))
    assert [n for n, _ in results] == [1, 4, 6, 7]
    assert results[0][1] == Advert(1596870000.5, "A", -50)
    assert results[3][1] == Advert(1596870000.5, "A", -52)
    for n, error in results[1:3]:
        assert isinstance(error, CaptureError)
        assert error.line == n
        assert str(error).startswith(f"line {n}: ")
    assert "manufacturer_data" in str(results[2][1])


def test_read_is_lazy():
    def lines():
        yield b"nonsense\n"
        yield line() + b"\n"
        raise AssertionError("read() pulled a line nobody asked for")

    results = read(lines())
    assert isinstance(next(results)[1], CaptureError)
    assert next(results) == (2, Advert(1596870000.5, "A", -60))


def test_write_then_read_a_file():
    adverts = [EXAMPLE_ADVERT, Advert(1.0, "B", -90, name="Bluezone")]
    out = io.BytesIO()
    assert write(adverts, out) == 2
    assert out.getvalue().count(b"\n") == 2
    out.seek(0)
    assert [a for _, a in read(out)] == adverts


def test_adapter_is_written_only_when_known():
    assert "adapter" not in advert_to_dict(Advert(1.0, "A", -60))
    assert advert_to_dict(Advert(1.0, "A", -60, adapter="hci0"))["adapter"] == "hci0"


def test_t_is_written_to_the_microsecond():
    assert parse_line(dumps(Advert(1596870000.1234567, "A", -60))).t == 1596870000.123457


# --- round trip and robustness ---------------------------------------------------------------

uuid_strs = st.uuids().map(str)
adverts = st.builds(
    Advert,
    t=st.floats(allow_nan=False, allow_infinity=False),
    address=st.text(min_size=1),
    rssi=st.integers(-(2**63), 2**63 - 1),
    tx_power=st.none() | st.integers(-128, 127),
    name=st.none() | st.text(),
    service_uuids=st.lists(uuid_strs, max_size=3).map(tuple),
    service_data=st.dictionaries(uuid_strs, st.binary(max_size=31), max_size=2),
    manufacturer_data=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=31), max_size=3),
    adapter=st.none() | st.text(),
    rolling_id=st.none() | st.binary(min_size=12, max_size=12).map(bytes.hex),
)


@settings(max_examples=500)
@given(adverts)
def test_dumps_then_parse_line_is_the_same_advert(advert):
    text = dumps(advert)
    assert text.endswith(b"\n")
    assert text.count(b"\n") == 1  # one line per advert, whatever the name holds
    assert parse_line(text) == advert._replace(t=round(advert.t, 6))
    assert advert_from_dict(orjson.loads(orjson.dumps(advert_to_dict(advert)))) == parse_line(text)


def parse_or_error(text: bytes | str, lineno: int) -> Advert | CaptureError:
    """What `read` does with a line: the advert, or the error (anything else propagates)."""
    try:
        return parse_line(text, lineno)
    except CaptureError as e:
        return e


@settings(max_examples=3_000)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_lines_raise_only_capture_error(text):
    result = parse_or_error(text, 1)
    assert isinstance(result, Advert) or result.line == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["", "00", "B9A6", "zz", ANDROID_UUID.upper()]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
company_keys = st.sampled_from(["8885", "76", "0", "65535", "65536", "0x22b5", "-1", ""]) | (
    st.text("0123456789", max_size=7)
)
hex_values = st.binary(max_size=8).map(bytes.hex) | st.sampled_from(["B9A6", "zz", "abc", " 00"])


@st.composite
def mostly(draw, valid):
    """Valid 7 times in 8, else any JSON value: so that every field's checks are reached."""
    # Not st.one_of(valid, valid, ..., json_values): hypothesis flattens the branches.
    return draw(json_values if draw(st.integers(0, 7)) == 0 else valid)


records = st.fixed_dictionaries(
    {
        "t": mostly(st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**64 - 1)),
        "address": mostly(st.text(min_size=1, max_size=17)),
        "rssi": mostly(st.integers(-200, 50)),
    },
    optional={
        "tx_power": mostly(st.none() | st.integers(-128, 127)),
        "name": mostly(st.none() | st.text(max_size=10)),
        "adapter": mostly(st.none() | st.text(max_size=6)),
        "service_uuids": mostly(st.lists(st.text(max_size=8) | st.just(ANDROID_UUID), max_size=3)),
        "service_data": mostly(st.dictionaries(st.text(max_size=8), hex_values, max_size=3)),
        "manufacturer_data": mostly(st.dictionaries(company_keys, hex_values, max_size=3)),
        "extra": json_values,
    },
)


@settings(max_examples=500)
@given(records)
def test_random_records_raise_only_capture_error(record):
    advert = parse_or_error(orjson.dumps(record), 9)
    if isinstance(advert, CaptureError):
        assert advert.line == 9
        return
    assert type(advert.t) is float
    assert math.isfinite(advert.t)
    assert type(advert.rssi) is int
    assert all(type(u) is str and u == u.lower() for u in advert.service_uuids)
    assert all(0 <= k <= 0xFFFF for k in advert.manufacturer_data)
    # Whatever parses is written back and parses the same (t to the microsecond).
    again = parse_line(dumps(advert))
    assert again == advert._replace(t=round(advert.t, 6))
