"""Whether the system clock is synchronised, as the kernel sees it.

A Raspberry Pi has no RTC: until NTP answers, its clock may be days off. The kernel knows:
adjtimex(2) returns TIME_ERROR while STA_UNSYNC is set, which is what ``timedatectl``'s
"System clock synchronized" reads too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
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
