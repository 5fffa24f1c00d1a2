"""Per-gateway credentials and configuration, for IT staff provisioning a fleet.

For each gateway: a random password, the line for mosquitto's password file (the ``$7$``
PBKDF2-SHA512 format ``mosquitto_passwd`` writes, so the broker's host needs no extra tool),
and a ``gateway.toml`` with ``[gateway]`` and ``[mqtt]`` filled in. The central broker's
side (``deploy/broker/``) confines each gateway to its own topics by its user name.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from gateway.config import NAME_RE
from gateway.model import GatewayError

PBKDF2_ITERATIONS: Final = 10_000
"""mosquitto_passwd's default is 101; the broker checks a password once per connect, so a
hundred times more costs it milliseconds and an attacker with a stolen file much more."""
SALT_BYTES: Final = 12
PASSWORD_BYTES: Final = 24
"""32 URL-safe characters: typed by nobody, pasted by Ansible."""
CONFIG_DIR: Final = "/etc/bluezone"


class ProvisionError(GatewayError):
    """The provisioning request cannot be carried out as given."""


@dataclass(frozen=True, slots=True)
class Broker:
    """Where gateways connect: ``mqtts://host[:port]`` (or ``mqtt://`` without TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """Parse a broker URL.

        Raises:
            ProvisionError: not ``mqtt://`` or ``mqtts://`` with a host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            msg = f"--broker {url!r} must look like mqtts://host[:port] (or mqtt://)"
            raise ProvisionError(msg)
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            msg = f"--broker {url!r} has a bad port"
            raise ProvisionError(msg) from None
        return cls(parts.hostname, port, tls)


def password_line(user: str, password: str, *, salt: bytes | None = None) -> str:
    """Return ``user:$7$…`` for mosquitto's ``password_file`` (mosquitto 2.0's format)."""
    salt = salt or os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return (
        f"{user}:$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def provision(
    site: str, gateway: str, broker: Broker, out: Path, ca_file: Path | None = None
) -> str:
    """Write ``out/<gateway>/`` (config, password, CA) and return its password-file line.

    Raises:
        ProvisionError: a bad id, or ``out/<gateway>`` exists already (never overwritten:
            that would lock the gateway out if it was deployed).
    """
    for what, name in (("--site", site), ("--gateway", gateway)):
        if not NAME_RE.match(name):
            msg = f"{what} {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            raise ProvisionError(msg)
    target = out / gateway
    if target.exists():
        msg = f"{target} exists: refusing to mint new credentials over it"
        raise ProvisionError(msg)
    target.mkdir(parents=True)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    secret = target / "mqtt-password"
    secret.write_text(password)
    secret.chmod(0o600)
    ca_line = ""
    if ca_file is not None:
        shutil.copyfile(ca_file, target / "ca.crt")
        ca_line = f'ca_file = "{CONFIG_DIR}/ca.crt"\n'
    (target / "gateway.toml").write_text(
        f"# Provisioned for gateway {gateway} at site {site}; every other key is at its\n"
        f"# default (deploy/gateway.toml documents them).\n"
        f'[gateway]\nid = "{gateway}"\nsite = "{site}"\n\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f"tls = {'true' if broker.tls else 'false'}\n{ca_line}"
        f'username = "{gateway}"\npassword_file = "{CONFIG_DIR}/mqtt-password"\n'
    )
    line = password_line(gateway, password)
    (target / "mosquitto-passwd.line").write_text(line + "\n")
    return line
