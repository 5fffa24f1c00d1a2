"""Whether the system clock is synchronised, and which boot this is.

A Raspberry Pi has no RTC: until NTP answers, its clock may be days off. The kernel knows:
adjtimex(2) returns TIME_ERROR while STA_UNSYNC is set, which is what ``timedatectl``'s
"System clock synchronized" reads too. ``[gateway] clock_check`` may name another source
(`clock_check`).

The rule the gateway follows (README "Clock"): the engine runs on the monotonic clock; an
event's wall time is its monotonic time plus the offset of the moment. Events stamped while the
clock is not synchronised say ``clock_synced: false`` and keep that offset; when the clock
becomes synchronised in the same boot they are restamped with the right offset and published
again (same id and seq, ``clock_synced: true``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

_LOGGER = logging.getLogger(__name__)

TIME_ERROR: Final = 5
"""adjtimex's return value when the clock is not synchronised (linux/timex.h)."""
_TIMEX_BYTES: Final = 256
"""struct timex is 208 bytes on 64-bit Linux; a larger zeroed buffer keeps ``modes`` = 0
(read only) whatever the architecture's padding."""


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def clock_synced() -> bool:
    """Return whether the kernel considers the clock synchronised (False if it cannot tell)."""
    try:
        buffer = ctypes.create_string_buffer(_TIMEX_BYTES)
        state = _libc().adjtimex(buffer)
    except (OSError, AttributeError) as e:
        _LOGGER.warning("cannot ask the kernel whether the clock is synchronised: %s", e)
        return False
    return bool(state >= 0 and state != TIME_ERROR)


BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """Return this boot's id (a new random UUID at every boot), None where Linux has none."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError as e:
        _LOGGER.warning("cannot read the boot id (%s): clock corrections are off", e)
        return None


def clock_check(setting: str) -> Callable[[], bool]:
    """Return the check ``[gateway] clock_check`` names.

    ``kernel``: the kernel's synchronisation flag (NTP, chrony, systemd-timesyncd all set it).
    ``trust``: always synchronised (an RTC or GPS HAT keeps the clock right from boot).
    An absolute path: synchronised while that file exists, e.g.
    ``/run/systemd/timesync/synchronized``, which systemd-timesyncd touches at its first sync.
    """
    if setting == "kernel":
        return clock_synced
    if setting == "trust":
        return lambda: True
    path = Path(setting)
    return path.exists
