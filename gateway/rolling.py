"""Bluezone rolling IDs (protocol.md §3): daily-key chain, sub-keys and quarter-hour slots.

Pure functions: no clock is read; dates and timestamps are arguments.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from typing import Final

SALT: Final = b"bluzonesubkey"
"""Sub-key salt, spelled as in the app (``BluezoneIdConstants``), with the missing "e"."""
SLOTS_PER_DAY: Final = 96
"""``MaxNumberSubKeyPerDay``: 24 h × 4 quarter hours."""
SLOT_S: Final = 86_400 // SLOTS_PER_DAY
"""900 s: IDs change at hh:00, :15, :30 and :45 UTC."""
ID_OFFSETS: Final = (0, 4, 8, 12, 16, 18, 20, 22, 24, 26, 28, 30)
"""Bytes of a sub-key that make the 12-byte ID: every 4th of the first half, every 2nd after."""
KEY_LEN: Final = 32


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        msg = f"a Bluezone daily key is {KEY_LEN} bytes, got {len(key)}"
        raise ValueError(msg)


def daily_key(base_key: bytes, base_date: date, day: date) -> bytes:
    """Return the daily key of ``day`` from the key of ``base_date`` (DKₙ = SHA-256(DKₙ₋₁)).

    Raises:
        ValueError: the key is not 32 bytes, or ``day`` is before ``base_date`` (the chain only
            goes forward).
    """
    _check_key(base_key)
    days = (day - base_date).days
    if days < 0:
        msg = f"{day} is before the key's date {base_date}: the daily-key chain only goes forward"
        raise ValueError(msg)
    key = base_key
    for _ in range(days):
        key = _sha256(key)
    return key


def day_ids(key: bytes) -> list[bytes]:
    """Return the 96 rolling IDs of the day whose daily key is ``key``, slot 0 first."""
    _check_key(key)
    ids = []
    sub = _sha256(key + SALT)
    for _ in range(SLOTS_PER_DAY):
        ids.append(bytes(sub[i] for i in ID_OFFSETS))
        sub = _sha256(sub)
    return ids


def slot_of(unix_s: float) -> tuple[date, int]:
    """Return the UTC day and the quarter-hour slot (0..95) that contain ``unix_s``."""
    stamp = datetime.fromtimestamp(unix_s, UTC)
    seconds = stamp.hour * 3600 + stamp.minute * 60 + stamp.second
    return stamp.date(), seconds // SLOT_S


def slot_start(day: date, slot: int) -> datetime:
    """Return the UTC start of ``slot`` on ``day``."""
    if not 0 <= slot < SLOTS_PER_DAY:
        msg = f"slot {slot} is outside 0..{SLOTS_PER_DAY - 1}"
        raise ValueError(msg)
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return midnight + timedelta(seconds=slot * SLOT_S)


def id_at(base_key: bytes, base_date: date, unix_s: float) -> bytes:
    """Return the ID a phone with this base key and date broadcasts at ``unix_s``."""
    day, slot = slot_of(unix_s)
    return day_ids(daily_key(base_key, base_date, day))[slot]


class AddressIds:
    """Rolling IDs learned out of band (an iPhone's GATT read), by address, for their slot.

    Bluezone itself caches MAC → ID until the quarter-hour slot changes (protocol.md §2.4);
    so does this. Bounded: the oldest entries go first beyond ``max_entries``.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._ids: dict[str, tuple[str, date, int]] = {}
        self._max = max_entries

    def __len__(self) -> int:
        """Return how many addresses have an ID."""
        return len(self._ids)

    def __contains__(self, address: object) -> bool:
        """Return whether an ID (perhaps of a past slot) is known for ``address``."""
        return address in self._ids

    def learn(self, address: str, rolling_id: str, unix_s: float) -> None:
        """Remember that ``address`` broadcast ``rolling_id`` at ``unix_s``."""
        self._ids.pop(address, None)
        self._ids[address] = (rolling_id, *slot_of(unix_s))
        if len(self._ids) > self._max:
            del self._ids[next(iter(self._ids))]

    def get(self, address: str, unix_s: float) -> str | None:
        """Return the ID of ``address`` if it was learned in the slot of ``unix_s``."""
        known = self._ids.get(address)
        if known is None:
            return None
        if (known[1], known[2]) != slot_of(unix_s):
            del self._ids[address]  # the phone has moved on to the next ID
            return None
        return known[0]
