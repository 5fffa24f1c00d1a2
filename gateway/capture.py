"""The capture format: JSON Lines, one advert per line, UTF-8.

``{"t": 1596870000.123, "address": "5A:1F:33:0C:9E:71", "rssi": -71, "tx_power": null,
"name": null, "service_uuids": ["00004e56-0000-1000-8000-00805f9b34fb"], "service_data":
{"<128-bit uuid>": "<hex>"}, "manufacturer_data": {"8885": "<hex>"}, "adapter": "hci0"}``

``t`` is Unix seconds (UTC); manufacturer keys are company ids in decimal; values are hex of
the bytes after the company id or UUID (bleak's convention); ``adapter`` is optional; unknown
keys are ignored so that later versions can add fields. ``rolling_id`` is written for an
advert whose address had an ID learned over GATT (a Bluezone iPhone), so that a replay makes
the same events as the live run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final, NoReturn

import orjson

from gateway.model import Advert, GatewayError

_ABSENT: Final = object()
_ROLLING_ID_RE: Final = re.compile(r"^[0-9a-f]{24}$")


class CaptureError(GatewayError):
    """A capture line that is not a valid advert record; says which line and why."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")


def parse_line(line: bytes | str, lineno: int | None = None) -> Advert:
    """Parse one capture line.

    Raises:
        CaptureError: not JSON, not an object, or a field of the wrong type.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise CaptureError(f"not valid JSON ({e})", lineno) from None  # noqa: EM102
    if type(obj) is not dict:
        raise CaptureError(f"expected a JSON object, got {type(obj).__name__}", lineno)  # noqa: EM102
    try:
        return advert_from_dict(obj)
    except CaptureError as e:
        raise CaptureError(e.reason, lineno) from None


def _fail(reason: str) -> NoReturn:
    """Raise the `CaptureError` of a bad field (the line number is added by the caller)."""
    raise CaptureError(reason)


def advert_from_dict(obj: dict[str, Any]) -> Advert:
    """Build an `Advert` from a decoded capture record, checking every field it uses."""
    t = obj.get("t")
    if type(t) is not float and type(t) is not int:
        _fail(f'"t" must be a number of Unix seconds, got {t!r}')
    if not math.isfinite(t):
        _fail(f'"t" must be finite, got {t!r}')
    address = obj.get("address")
    if type(address) is not str or not address:
        _fail(f'"address" must be a non-empty string, got {address!r}')
    rssi = obj.get("rssi")
    if type(rssi) is not int:
        _fail(f'"rssi" must be an integer (dBm), got {rssi!r}')
    tx_power = obj.get("tx_power")
    if tx_power is not None and type(tx_power) is not int:
        _fail(f'"tx_power" must be an integer or null, got {tx_power!r}')
    name = obj.get("name")
    if name is not None and type(name) is not str:
        _fail(f'"name" must be a string or null, got {name!r}')
    adapter = obj.get("adapter")
    if adapter is not None and type(adapter) is not str:
        _fail(f'"adapter" must be a string or null, got {adapter!r}')
    rolling_id = obj.get("rolling_id")
    if rolling_id is not None and not (
        type(rolling_id) is str and _ROLLING_ID_RE.match(rolling_id)
    ):
        _fail(f'"rolling_id" must be 24 lower-case hex digits or null, got {rolling_id!r}')
    return Advert(
        float(t),
        address,
        rssi,
        tx_power,
        name,
        _uuids(obj.get("service_uuids", _ABSENT)),
        _service_data(obj.get("service_data", _ABSENT)),
        _manufacturer_data(obj.get("manufacturer_data", _ABSENT)),
        adapter,
        rolling_id,
    )


def _uuids(value: object) -> tuple[str, ...]:
    if value is _ABSENT or value is None:
        return ()
    if type(value) is not list or any(type(u) is not str for u in value):
        _fail(f'"service_uuids" must be a list of strings, got {value!r}')
    return tuple(u.lower() for u in value)


def _hex(field: str, key: str, value: object) -> bytes:
    if type(value) is not str:
        _fail(f'"{field}"["{key}"] must be a hex string, got {value!r}')
    try:
        return bytes.fromhex(value)
    except ValueError:
        _fail(f'"{field}"["{key}"] is not hex: {value!r}')


def _service_data(value: object) -> dict[str, bytes]:
    if value is _ABSENT or value is None:
        return {}
    if type(value) is not dict:
        _fail(f'"service_data" must be an object, got {value!r}')
    return {k.lower(): _hex("service_data", k, v) for k, v in value.items()}


def _manufacturer_data(value: object) -> dict[int, bytes]:
    if value is _ABSENT or value is None:
        return {}
    if type(value) is not dict:
        _fail(f'"manufacturer_data" must be an object, got {value!r}')
    out = {}
    for key, hex_value in value.items():
        # Length first: int() raises ValueError beyond 4300 digits (CPython's int_max_str_digits).
        if not (key.isdigit() and key.isascii() and len(key) <= 5 and int(key) <= 0xFFFF):
            _fail(f'"manufacturer_data" key {key!r} must be a company id in decimal (0..65535)')
        out[int(key)] = _hex("manufacturer_data", key, hex_value)
    return out


def advert_to_dict(advert: Advert) -> dict[str, Any]:
    """Return the capture record of an advert (``adapter`` only when known)."""
    record: dict[str, Any] = {
        "t": round(advert.t, 6),
        "address": advert.address,
        "rssi": advert.rssi,
        "tx_power": advert.tx_power,
        "name": advert.name,
        "service_uuids": list(advert.service_uuids),
        "service_data": {k: v.hex() for k, v in advert.service_data.items()},
        "manufacturer_data": {str(k): v.hex() for k, v in advert.manufacturer_data.items()},
    }
    if advert.adapter is not None:
        record["adapter"] = advert.adapter
    if advert.rolling_id is not None:
        record["rolling_id"] = advert.rolling_id
    return record


def dumps(advert: Advert) -> bytes:
    """Return one capture line, newline included."""
    return orjson.dumps(advert_to_dict(advert), option=orjson.OPT_APPEND_NEWLINE)


def write(adverts: Iterable[Advert], out: IO[bytes]) -> int:
    """Write adverts as capture lines; return how many."""
    count = 0
    for advert in adverts:
        out.write(dumps(advert))
        count += 1
    return count


def read(lines: Iterable[bytes]) -> Iterator[tuple[int, Advert | CaptureError]]:
    """Yield ``(line number, advert or the error of that line)``; blank lines are skipped.

    Errors are yielded, not raised, so that one bad line never stops a replay.
    """
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, parse_line(line, lineno)
        except CaptureError as e:
            yield lineno, e
