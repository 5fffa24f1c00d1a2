"""The configuration file (TOML): every key optional, every mistake named with its line.

All validation happens here, before the daemon opens the database or the radio.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from gateway.linker import LinkPolicy
from gateway.model import GatewayError, PresencePolicy

NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Gateway ids and sites become MQTT topic levels and file names: no '/', '+', '#' or spaces."""
APP_DIR: Final = "bluezone-gateway"


class ConfigError(GatewayError):
    """A configuration file that cannot be used; names the file, key and line."""


def default_data_dir() -> Path:
    """Return where the gateway keeps its data when ``[gateway] data_dir`` is not set.

    Under systemd that is ``$STATE_DIRECTORY`` (``StateDirectory=``, /var/lib/...); otherwise
    ``$XDG_DATA_HOME/bluezone-gateway``, ~/.local/share/bluezone-gateway by default.
    """
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / APP_DIR


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """``[gateway]``: who this gateway is and where it keeps its data."""

    id: str = field(default_factory=socket.gethostname)
    """Unique id of this gateway (default: the host name); stamped on every event."""
    site: str = "default"
    """The office or entrance this gateway belongs to."""
    data_dir: Path = field(default_factory=default_data_dir)
    clock_check: str = "kernel"
    """How to tell that the wall clock is right: ``kernel`` (adjtimex, what ``timedatectl``
    shows), ``trust`` (an RTC or GPS keeps it right from boot), or the path of a file whose
    existence means synchronised (``/run/systemd/timesync/synchronized``)."""

    def __post_init__(self) -> None:
        """Check ``clock_check``."""
        if self.clock_check not in ("kernel", "trust") and not self.clock_check.startswith("/"):
            msg = f"clock_check must be kernel, trust or an absolute path: {self.clock_check!r}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class StoreSection:
    """``[store]``: the SQLite event log."""

    path: Path | None = None
    """The SQLite file; default ``<data_dir>/events.db``."""
    retention_days: float = 21.0
    """Events older than this are deleted (once synced, when MQTT sync is on)."""
    synchronous: Literal["full", "normal"] = "full"
    """``full`` survives power cuts (commits are grouped, so it costs little); ``normal`` may
    lose the last commits on power loss but never corrupts."""
    commit_interval_s: float = 1.0
    """Events are committed in groups at most this far apart (one fsync per group)."""
    min_free_mb: float = 64.0
    """Below this much free disk, the oldest unsynced events are dropped (and counted)."""

    def __post_init__(self) -> None:
        """Reject what `EventStore.open` would reject, so that it fails here, with the line."""
        if not self.retention_days > 0:
            msg = f"retention_days must be > 0, got {self.retention_days}"
            raise ValueError(msg)
        if not self.commit_interval_s >= 0:
            msg = f"commit_interval_s must be >= 0, got {self.commit_interval_s}"
            raise ValueError(msg)


ROLES: Final = ("outside", "inside")


@dataclass(frozen=True, slots=True)
class ScannerSection:
    """``[scanner]``: which Bluetooth adapters to listen on, and how."""

    adapter: str = "hci0"
    """The adapter: its name (``hci0``) or its MAC address (survives renumbering)."""
    adapters: tuple[str, ...] = ()
    """Two adapters for direction, outside and inside the door (overrides ``adapter``)."""
    roles: tuple[str, ...] = ()
    """Role of each of ``adapters``: ``outside``/``inside`` (default: in that order)."""
    mode: Literal["active", "passive", "auto"] = "active"
    """``active`` scanning with BlueZ's duplicate filter off (every advert reported);
    ``passive`` through BlueZ's advertisement monitor (BlueZ >= 5.56, which de-duplicates
    again: fewer repeats); ``auto``: passive where the adapter offers it, else active."""
    stall_after_s: float = 60.0
    """No advert at all for this long while scanning restarts the scanner (see the ladder)."""
    gatt: bool = True
    """Read Bluezone iPhones' rolling IDs over GATT (one short connection at a time)."""
    gatt_timeout_s: float = 10.0
    """Give up a GATT read after this long (Bluezone itself waits 10 s)."""
    gatt_retry_s: float = 60.0
    """Wait at least this long before trying a failed iPhone again (doubling up to 16x)."""

    def __post_init__(self) -> None:
        """Check adapters, roles and durations."""
        if self.adapters and len(self.adapters) != len(ROLES):
            msg = f"adapters must name exactly two adapters (outside, inside), got {self.adapters}"
            raise ValueError(msg)
        if self.roles and sorted(self.roles) != sorted(ROLES):
            msg = f"roles must be {list(ROLES)} in some order, got {list(self.roles)}"
            raise ValueError(msg)
        if self.roles and not self.adapters:
            msg = "roles needs adapters"
            raise ValueError(msg)
        for name in ("stall_after_s", "gatt_timeout_s", "gatt_retry_s"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0"
                raise ValueError(msg)

    def role_of(self) -> dict[str, str]:
        """Return adapter → role for two-adapter set-ups (empty with one adapter)."""
        if not self.adapters:
            return {}
        return dict(zip(self.adapters, self.roles or ROLES, strict=True))

    @property
    def names(self) -> tuple[str, ...]:
        """Return the adapters to scan on."""
        return self.adapters or (self.adapter,)


@dataclass(frozen=True, slots=True)
class WebSection:
    """``[web]``: the security desk's live page, its JSON API and Prometheus ``/metrics``."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    """``host:port`` to serve on. Loopback by default (the desk's own screen); any other
    address requires ``token_file``. Port 0 picks a free port (tests)."""
    token_file: Path | None = None
    """A file holding the access token; required unless ``listen`` is on loopback."""
    language: Literal["vi", "en"] = "vi"
    """The page's language until the desk switches it (Vietnamese by default)."""
    checkin_hold_s: float = 5.0
    """How long the check-in panel stays green before it returns to neutral."""

    def __post_init__(self) -> None:
        """Check ``listen``, and that a page reachable from the network needs a token."""
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            msg = f"listen must be host:port, got {self.listen!r}"
            raise ValueError(msg)
        if self.enabled and not self.loopback and self.token_file is None:
            msg = (
                f"listen = {self.listen!r} is reachable from the network: set token_file"
                " (a file holding the access token), or listen on 127.0.0.1"
            )
            raise ValueError(msg)
        if not self.checkin_hold_s > 0:
            msg = "checkin_hold_s must be > 0"
            raise ValueError(msg)

    @property
    def loopback(self) -> bool:
        """Return whether ``listen`` is a loopback address (no token needed)."""
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name other than localhost may resolve to anything

    @property
    def host(self) -> str:
        """Return the address to bind (brackets of an IPv6 literal removed)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """Return the port to bind."""
        return int(self.listen.rpartition(":")[2])

    def token(self) -> str | None:
        """Read the token file (None without one).

        Raises:
            ConfigError: the file cannot be read or is empty.
        """
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            msg = f"[web] token_file {self.token_file}: {e.strerror}"
            raise ConfigError(msg) from None
        if not token:
            msg = f"[web] token_file {self.token_file} is empty"
            raise ConfigError(msg)
        return token


@dataclass(frozen=True, slots=True)
class IndicatorSection:
    """``[indicator]``: optional LEDs and a buzzer on the Pi's GPIO (gpiozero pin names).

    No pin set means no indicator. Pins are gpiozero names: ``GPIO17``, ``BOARD11``, ``17``.
    """

    green_pin: str | None = None
    """Lights on a check-in (a Bluezone phone held to the gateway)."""
    buzzer_pin: str | None = None
    """Beeps on a check-in."""
    red_pin: str | None = None
    """Lights while a scanner is stalled or the outbox is older than ``outbox_alarm_s``."""
    checkin_s: float = 3.0
    """How long the green LED stays on after a check-in."""
    beep_s: float = 0.2
    """How long the buzzer sounds for a check-in."""
    outbox_alarm_s: float = 900.0
    """Red when the oldest event not yet acknowledged by the broker is older than this."""

    def __post_init__(self) -> None:
        """Check durations."""
        for name in ("checkin_s", "beep_s", "outbox_alarm_s"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0"
                raise ValueError(msg)

    @property
    def enabled(self) -> bool:
        """Return whether any pin is set."""
        return any((self.green_pin, self.buzzer_pin, self.red_pin))


TOPIC_LEVELS_RE: Final = re.compile(r"^[^#+/\x00]+(/[^#+/\x00]+)*$")


@dataclass(frozen=True, slots=True)
class MqttSection:
    """``[mqtt]``: the central broker; no ``host`` means sync is off (events wait in the outbox)."""

    host: str | None = None
    """The broker's host name (as in its TLS certificate)."""
    port: int | None = None
    """Default 8883 with TLS, 1883 without."""
    username: str | None = None
    """Default: none (client-certificate or anonymous brokers)."""
    password_file: Path | None = None
    """A file holding the password (so it is never in the config or the logs)."""
    tls: bool = True
    """TLS with the broker's certificate verified; switch off only on a trusted network."""
    ca_file: Path | None = None
    """The CA that signed the broker's certificate; default: the system's CAs."""
    cert_file: Path | None = None
    """A client certificate (per-gateway credentials instead of, or with, a password)."""
    key_file: Path | None = None
    topic_prefix: str = "bluezone/v1"
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT 5 reports refused publishes (an ACL) in the PUBACK; 3.1.1 silently drops them."""
    health_interval_s: float = 60.0
    keepalive_s: int = 60
    inflight: int = 20
    """Publishes awaiting PUBACK at once (paho's default; mosquitto allows 20 by default)."""

    def __post_init__(self) -> None:
        """Check the combinations that cannot work."""
        if (self.cert_file is None) != (self.key_file is None):
            msg = "cert_file and key_file go together"
            raise ValueError(msg)
        if self.port is not None and not 0 < self.port < 65536:
            msg = f"port must be 1..65535, got {self.port}"
            raise ValueError(msg)
        if not TOPIC_LEVELS_RE.match(self.topic_prefix):
            msg = f"topic_prefix {self.topic_prefix!r} must be topic levels without + # or //"
            raise ValueError(msg)
        if not (self.health_interval_s > 0 and self.keepalive_s > 0 and self.inflight > 0):
            msg = "health_interval_s, keepalive_s and inflight must be > 0"
            raise ValueError(msg)

    @property
    def enabled(self) -> bool:
        """Return whether a broker is configured."""
        return self.host is not None

    @property
    def broker_port(self) -> int:
        """Return the port to connect to."""
        return self.port or (8883 if self.tls else 1883)

    def password(self) -> str | None:
        """Read the password file (None without one).

        Raises:
            ConfigError: the file cannot be read.
        """
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            msg = f"[mqtt] password_file {self.password_file}: {e.strerror}"
            raise ConfigError(msg) from None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    store: StoreSection = field(default_factory=StoreSection)
    presence: PresencePolicy = field(default_factory=PresencePolicy)
    link: LinkPolicy = field(default_factory=LinkPolicy)
    """The linker's parameters (gateway/linker.py); ``[presence] link`` switches it."""
    scanner: ScannerSection = field(default_factory=ScannerSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    web: WebSection = field(default_factory=WebSection)
    indicator: IndicatorSection = field(default_factory=IndicatorSection)
    source: Path | None = None
    """The file it was read from, if any."""

    @property
    def db_path(self) -> Path:
        """Return the SQLite file: ``[store] path`` or ``events.db`` in the data dir."""
        return self.store.path or self.gateway.data_dir / "events.db"


_SECTIONS: Final[dict[str, type]] = {
    "gateway": GatewaySection,
    "store": StoreSection,
    "presence": PresencePolicy,
    "link": LinkPolicy,
    "scanner": ScannerSection,
    "mqtt": MqttSection,
    "web": WebSection,
    "indicator": IndicatorSection,
}


def load(path: Path | None) -> Config:
    """Read and validate a configuration file; ``None`` gives the defaults.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown section or key, wrong type or value.
    """
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        msg = f"{path}: cannot read the configuration: {e}"
        raise ConfigError(msg) from None
    return parse(text, path)


def parse(text: str, path: Path | None = None) -> Config:
    """Validate configuration text (``path`` only names it in errors)."""
    where = str(path) if path else "<config>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python 3.11's TOMLDecodeError has no lineno attribute (3.14 adds one); its message
        # ends "(at line N, column M)".
        found = re.search(r"\(at line (\d+),", str(e))
        line = f":{found.group(1)}" if found else ""
        msg = f"{where}{line}: not valid TOML: {e}"
        raise ConfigError(msg) from None
    sections: dict[str, Any] = {}
    for name, table in doc.items():
        if name not in _SECTIONS:
            known = ", ".join(f"[{s}]" for s in _SECTIONS)
            msg = f"{where}{_line(text, name, None)}: unknown section [{name}] (known: {known})"
            raise ConfigError(msg)
        if not isinstance(table, dict):
            msg = f"{where}{_line(text, None, name)}: {name} must be a [{name}] section"
            raise ConfigError(msg)
        sections[name] = _section(_SECTIONS[name], name, table, text, where)
    return Config(**sections, source=path)


def _section(cls: type, name: str, table: dict[str, Any], text: str, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if (name, f.name) not in _NOT_KEYS}
    values: dict[str, Any] = {}
    for key, value in table.items():
        at = f"{where}{_line(text, name, key)}"
        if (name, key) in _NOT_KEYS:
            msg = f"{at}: {name}.{key} is not set here: {_NOT_KEYS[name, key]}"
            raise ConfigError(msg)
        f = fields.get(key)
        if f is None:
            msg = f"{at}: unknown key {name}.{key} (known: {', '.join(fields)})"
            raise ConfigError(msg)
        values[key] = _coerce(f"{name}.{key}", _FIELD_TYPES.get((name, key), float), value, at)
    if cls is PresencePolicy:
        values = _with_hysteresis(values)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        bad = next((k for k in table if k in str(e)), None)
        msg = f"{where}{_line(text, name, bad)}: [{name}] {e}"
        raise ConfigError(msg) from None


_DEFAULT_POLICY: Final = PresencePolicy()
_HYSTERESIS_DB: Final = _DEFAULT_POLICY.enter_rssi - _DEFAULT_POLICY.exit_rssi  # 3 dB


def _with_hysteresis(values: dict[str, Any]) -> dict[str, Any]:
    """Give an omitted ``enter_rssi``/``exit_rssi`` the default gap from the one that is set.

    Otherwise ``enter_rssi = -80`` alone would meet the default ``exit_rssi = -78`` and be
    rejected, though every key may be omitted.
    """
    enter, exit_ = values.get("enter_rssi"), values.get("exit_rssi")
    if enter is not None and exit_ is None:
        return {**values, "exit_rssi": max(enter - _HYSTERESIS_DB, -127.0)}
    if exit_ is not None and enter is None:
        return {**values, "enter_rssi": min(exit_ + _HYSTERESIS_DB, 20.0)}
    return values


_NOT_KEYS: Final[dict[tuple[str, str], str]] = {
    ("link", "enabled"): "[presence] link switches linking on or off",
}
"""Fields of a section's class that the file does not set, and what to set instead."""

# What each key holds; anything not listed is a number (int or float).
_FIELD_TYPES: Final[dict[tuple[str, str], Any]] = {
    ("gateway", "id"): "name",
    ("gateway", "site"): "name",
    ("gateway", "data_dir"): Path,
    ("gateway", "clock_check"): "text",
    ("store", "path"): Path,
    ("store", "synchronous"): ("full", "normal"),
    ("presence", "checkin_samples"): int,
    ("presence", "max_devices"): int,
    ("presence", "link"): bool,
    ("scanner", "adapter"): "adapter",
    ("scanner", "adapters"): "adapters",
    ("scanner", "roles"): "roles",
    ("scanner", "mode"): ("active", "passive", "auto"),
    ("scanner", "gatt"): bool,
    ("mqtt", "host"): "text",
    ("mqtt", "port"): int,
    ("mqtt", "username"): "text",
    ("mqtt", "password_file"): Path,
    ("mqtt", "tls"): bool,
    ("mqtt", "ca_file"): Path,
    ("mqtt", "cert_file"): Path,
    ("mqtt", "key_file"): Path,
    ("mqtt", "topic_prefix"): "text",
    ("mqtt", "protocol"): ("5", "3.1.1"),
    ("mqtt", "keepalive_s"): int,
    ("mqtt", "inflight"): int,
    ("web", "enabled"): bool,
    ("web", "listen"): "text",
    ("web", "token_file"): Path,
    ("web", "language"): ("vi", "en"),
    ("indicator", "green_pin"): "text",
    ("indicator", "buzzer_pin"): "text",
    ("indicator", "red_pin"): "text",
}
ADAPTER_RE: Final = re.compile(r"^(hci\d{1,3}|([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})$")


def _coerce(key: str, kind: Any, value: Any, at: str) -> Any:  # noqa: C901 - one branch a type
    if kind in ("adapters", "roles"):
        if isinstance(value, list):
            return tuple(_coerce(key, kind[:-1], item, at) for item in value)
        msg = f"{at}: {key} must be a list, got {value!r}"
    elif kind == "adapter":
        if isinstance(value, str) and ADAPTER_RE.match(value):
            return value
        msg = f"{at}: {key} must be an adapter name (hci0) or MAC address, got {value!r}"
    elif kind == "role":
        if value in ROLES:
            return value
        msg = f"{at}: {key} entries must be one of {', '.join(map(repr, ROLES))}, got {value!r}"
    elif kind is bool:
        if isinstance(value, bool):
            return value
        msg = f"{at}: {key} must be true or false, got {value!r}"
    elif kind == "text":
        if isinstance(value, str) and value:
            return value
        msg = f"{at}: {key} must be a non-empty string, got {value!r}"
    elif kind == "name":
        if isinstance(value, str) and NAME_RE.match(value):
            return value
        msg = f"{at}: {key} must be 1-64 letters, digits, '.', '_' or '-', got {value!r}"
    elif kind is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
        msg = f"{at}: {key} must be a path (a string), got {value!r}"
    elif isinstance(kind, tuple):
        if value in kind:
            return value
        msg = f"{at}: {key} must be one of {', '.join(map(repr, kind))}, got {value!r}"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        msg = f"{at}: {key} must be an integer, got {value!r}"
    else:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        msg = f"{at}: {key} must be a number, got {value!r}"
    raise ConfigError(msg)


def _line(text: str, section: str | None, key: str | None) -> str:
    """Return ``:N`` for the line defining ``key`` in ``[section]`` (best effort), else ''."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]\s]+)\s*\]", stripped)
        if header:
            current = header.group(1)
            if key is None and current == section:
                return f":{number}"
            continue
        if (
            key is not None
            and current == section
            and re.match(rf"^\"?{re.escape(key)}\"?\s*=", stripped)
        ):
            return f":{number}"
    return ""
