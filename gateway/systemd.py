"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and journald.

systemd-python does the talking; everything here is a no-op where it has nothing to talk to
(a laptop, a test, a container): `notify` returns False without ``$NOTIFY_SOCKET``, and logs
go to stderr unless journald is the one reading them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Final

_LOGGER = logging.getLogger(__name__)

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _daemon_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon  # optional: the [pi] extra installs it
    except ImportError:
        return None
    notify: Callable[[str], bool] = daemon.notify
    return notify


class Notifier:
    """Tells systemd how the daemon is doing (``Type=notify`` with ``WatchdogSec=``)."""

    def __init__(self) -> None:
        self._notify = _daemon_notify()
        if self._notify is None and os.environ.get("NOTIFY_SOCKET"):
            _LOGGER.warning(
                "NOTIFY_SOCKET is set but systemd-python is not installed: "
                "pip install 'bluezone-gateway[pi]'; systemd will time out our start"
            )
        self.watchdog_s = self._watchdog_interval()
        """How often to send WATCHDOG=1 (half of WatchdogSec=), or None without a watchdog."""

    @staticmethod
    def _watchdog_interval() -> float | None:
        # sd_watchdog_enabled(3): WATCHDOG_USEC, and WATCHDOG_PID when set must be us.
        # python-systemd 235 has no helper for it (deploy-notes §1).
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6 / 2

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when nobody listens."""
        if self._notify is None:
            return False
        return self._notify("\n".join(lines))

    def ready(self, status: str) -> None:
        """The config is valid, the store open and the scanner running."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A line a human reads in ``systemctl status``."""
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """The pipeline made progress since the last ping."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """SIGHUP: reloading the configuration (READY=1 follows)."""
        self.send("RELOADING=1")

    def stopping(self) -> None:
        """SIGTERM: shutting down cleanly."""
        self.send("STOPPING=1", "STATUS=stopping")


def under_journald() -> bool:
    """Return whether stderr is connected to journald (systemd sets ``$JOURNAL_STREAM``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    device, inode = stream.split(":", 1)
    return f"{stat.st_dev}" == device and f"{stat.st_ino}" == inode


def setup_logging(level: int, gateway_id: str | None = None) -> None:
    """Log to journald with structured fields under systemd, to stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_journal_handler(gateway_id) if under_journald() else _stderr_handler())


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def _journal_handler(gateway_id: str | None) -> logging.Handler:
    try:
        from systemd.journal import JournalHandler  # optional: the [pi] extra installs it
    except ImportError:
        return _stderr_handler()
    # Upper-case extras become journal fields (journald drops lower-case ones):
    # `journalctl GATEWAY_ID=gw-001` finds one gateway's lines.
    fields = {"GATEWAY_ID": gateway_id} if gateway_id else {}
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="bluezone-gateway", **fields)
    return handler
