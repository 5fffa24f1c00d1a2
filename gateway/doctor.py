"""``bluezone-gateway doctor``: one table of checks, each OK, WARN or FAIL with a hint.

For IT staff diagnosing a gateway over SSH: it reads the configuration, looks at the data
directory, asks BlueZ for the adapter, connects once to the broker with the configured
credentials, and reads the clock and systemd's watchdog setting. It changes nothing: the
broker sees one clean connect and disconnect, the adapter is only looked at.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from gateway import config
from gateway.adapter import AdapterCare, AdapterError
from gateway.clock import clock_check
from gateway.store import EventStore, StoreError
from gateway.sync import Publisher, SyncError

PROBE_TIMEOUT_S: Final = 15.0
UNIT: Final = "bluezone-gateway.service"


class Level(StrEnum):
    """How a check came out."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's table."""

    name: str
    level: Level
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the check as JSON-ready values."""
        return {
            "check": self.name,
            "level": self.level.value,
            "detail": self.detail,
            "hint": self.hint,
        }


async def examine(config_path: Path | None) -> list[Check]:
    """Run every check; return them in the order of the table."""
    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        return [
            Check(
                "config",
                Level.FAIL,
                str(e),
                "fix the line it names; deploy/gateway.toml documents every key",
            )
        ]
    checks = [Check("config", Level.OK, str(config_path or "defaults (no --config)"))]
    checks += _data_dir(cfg)
    checks += await _bluez(cfg)
    checks.append(await _broker(cfg))
    checks.append(_clock(cfg.gateway.clock_check))
    checks.append(_watchdog())
    return checks


def _data_dir(cfg: config.Config) -> list[Check]:
    directory = cfg.db_path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as e:
        return [
            Check(
                "data dir",
                Level.FAIL,
                f"{directory}: {e.strerror}",
                "run as the service user; check StateDirectory= / [gateway] data_dir",
            )
        ]
    free_mb = shutil.disk_usage(directory).free / 2**20
    level = Level.OK if free_mb >= 4 * cfg.store.min_free_mb else Level.WARN
    checks = [
        Check(
            "data dir",
            level,
            f"{directory} writable, {free_mb:,.0f} MiB free",
            ""
            if level is Level.OK
            else "free some space: below [store] min_free_mb "
            "the oldest unsynced events are dropped",
        )
    ]
    if cfg.db_path.exists():
        try:
            with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
                stats = store.stats()
        except StoreError as e:
            checks.append(
                Check(
                    "store",
                    Level.FAIL,
                    str(e),
                    "move the file aside; the daemon starts a new one (seq restarts at 1)",
                )
            )
        else:
            waiting = stats["outbox"]
            level = Level.WARN if waiting and not cfg.mqtt.enabled else Level.OK
            checks.append(
                Check(
                    "store",
                    level,
                    f"{stats['events']:,} events, {waiting:,} waiting for the broker",
                    "no [mqtt] host: nothing is synced" if level is Level.WARN else "",
                )
            )
    return checks


async def _bluez(cfg: config.Config) -> list[Check]:
    care = AdapterCare()
    checks = []
    try:
        for ident in cfg.scanner.names:
            try:
                info = await care.find(ident)
            except AdapterError as e:
                access = "AccessDenied" in str(e) or "not allowed" in str(e)
                hint = (
                    "add the service user to the bluetooth group (SupplementaryGroups=)"
                    if access
                    else "plug the adapter in; check `bluetoothctl list`, "
                    "`rfkill list` and that bluetooth.service runs"
                )
                checks.append(Check(f"adapter {ident}", Level.FAIL, str(e), hint))
                continue
            level = Level.OK if info.powered else Level.WARN
            passive = (
                "passive scanning available"
                if info.passive_capable
                else ("no advertisement monitor (passive needs BlueZ >= 5.56 --experimental)")
            )
            checks.append(
                Check(
                    f"adapter {ident}",
                    level,
                    f"{info.name} {info.address}, "
                    f"{'powered' if info.powered else 'powered off'}, {passive}",
                    "" if info.powered else "the daemon powers it on at start",
                )
            )
    finally:
        care.close()
    checks.append(_bluez_version())
    return checks


def _bluez_version() -> Check:
    binary = shutil.which("bluetoothd") or next(
        (
            p
            for p in ("/usr/libexec/bluetooth/bluetoothd", "/usr/lib/bluetooth/bluetoothd")
            if Path(p).exists()
        ),
        None,
    )
    if binary is None:
        return Check("bluez", Level.WARN, "bluetoothd not found", "apt-get install bluez")
    found = subprocess.run(  # noqa: S603 - a fixed command line of our own
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    version_text = found.stdout.strip()
    return Check("bluez", Level.OK, f"bluetoothd {version_text or '(version unknown)'}")


async def _broker(cfg: config.Config) -> Check:
    mqtt = cfg.mqtt
    if not mqtt.enabled:
        return Check(
            "broker",
            Level.WARN,
            "no [mqtt] host: sync is off",
            "set [mqtt] host (and credentials) to sync events to the central broker",
        )
    where = f"{mqtt.host}:{mqtt.broker_port} ({'TLS' if mqtt.tls else 'plain'})"
    try:
        # The probe records broker state as the daemon does: in a scratch store, not in the
        # real one, which the running daemon holds.
        with tempfile.TemporaryDirectory(prefix="bluezone-doctor-") as tmp:
            await _probe(cfg, Path(tmp) / "probe.db")
    except config.ConfigError as e:
        return Check(
            "broker", Level.FAIL, str(e), "make the password file readable by the service user"
        )
    except (SyncError, OSError, TimeoutError) as e:
        text = str(e) or type(e).__name__
        hint = "check [mqtt] host/port, the network and the firewall"
        if "Not authorized" in text or "Bad user name" in text:
            hint = "the broker refused the credentials: check [mqtt] username, password_file"
        elif "TLS" in text:
            hint = "check [mqtt] ca_file (the CA that signed the broker's certificate)"
        return Check("broker", Level.FAIL, f"{where}: {text}", hint)
    return Check("broker", Level.OK, f"{where}: connected as {cfg.gateway.id}")


async def _probe(cfg: config.Config, scratch_db: Path) -> None:
    with EventStore.open(scratch_db, gateway=cfg.gateway.id, site=cfg.gateway.site) as scratch:
        publisher = Publisher(
            cfg.mqtt, scratch, gateway=cfg.gateway.id, site=cfg.gateway.site, boot_time=time.time()
        )
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await publisher.probe()


def _clock(setting: str) -> Check:
    source = {"kernel": "the kernel's NTP state", "trust": "trusted"}.get(setting, setting)
    if clock_check(setting)():
        return Check("clock", Level.OK, f"synchronised ({source})")
    return Check(
        "clock",
        Level.WARN,
        f"not synchronised ({source}): events say clock_synced=false until it is, then are"
        " restamped; retention waits",
        "check `timedatectl` and that NTP can reach a server",
    )


def _watchdog() -> Check:
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").exists():
        return Check(
            "systemd",
            Level.WARN,
            "systemd is not running here",
            "on the gateway: install deploy/bluezone-gateway.service",
        )
    command = [systemctl, "show", UNIT, "-p", "WatchdogUSec", "-p", "LoadState"]
    shown = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)  # noqa: S603
    values = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    if values.get("LoadState") != "loaded":
        return Check(
            "systemd",
            Level.WARN,
            f"{UNIT} is not installed",
            "install deploy/bluezone-gateway.service and enable it",
        )
    watchdog = values.get("WatchdogUSec", "0")
    if watchdog in ("0", "infinity", ""):
        return Check(
            "systemd",
            Level.WARN,
            f"{UNIT} has no watchdog",
            "set WatchdogSec= (deploy/bluezone-gateway.service uses 60s)",
        )
    return Check("systemd", Level.OK, f"{UNIT} loaded, watchdog {watchdog}")


def exit_code(checks: list[Check]) -> int:
    """Return 1 if any check failed, else 0 (warnings are for reading)."""
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
