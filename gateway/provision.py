"""Per-gateway credentials and configuration, for IT staff provisioning a fleet.

For each gateway, one of:

* a random password and the line for mosquitto's password file (the ``$7$`` PBKDF2-SHA512
  format ``mosquitto_passwd`` writes, so the broker's host needs no extra tool);
* a private key and a client certificate (CN = the gateway id) signed by the site's client CA
  (`ClientCA`; needs the ``cryptography`` package, the ``[provision]`` extra);

and a ``gateway.toml`` with ``[gateway]`` and ``[mqtt]`` filled in. The central broker's side
(``deploy/broker/``) confines each gateway to its own topics by its user name: the password
file's, or the certificate's CN (``use_identity_as_username``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from gateway.config import NAME_RE
from gateway.model import GatewayError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

PBKDF2_ITERATIONS: Final = 10_000
"""mosquitto_passwd's default is 101; the broker checks a password once per connect, so a
hundred times more costs it milliseconds and an attacker with a stolen file much more."""
SALT_BYTES: Final = 12
PASSWORD_BYTES: Final = 24
"""32 URL-safe characters: typed by nobody, pasted by Ansible."""
CONFIG_DIR: Final = "/etc/bluezone"
RESERVED_USERS: Final = frozenset({"central"})
"""Broker accounts of deploy/broker/acl that are not gateways."""
CERT_PORT: Final = 8884
"""deploy/broker/mosquitto.conf's client-certificate listener: ``mqtts://`` without a port
means this one when provisioning certificates (8883 takes passwords)."""
DEFAULT_CERT_DAYS: Final = 825
"""Client certificates' validity (about 27 months); provision again, with a new key, before."""
CERT_BACKDATE: Final = timedelta(hours=1)
"""Certificates are valid from an hour before they were minted: a broker whose clock is a
little behind still accepts a fresh one."""
INSTALL_HINT: Final = "pip install 'bluezone-gateway[provision]'"


class ProvisionError(GatewayError):
    """The provisioning request cannot be carried out as given."""


@dataclass(frozen=True, slots=True)
class Broker:
    """Where gateways connect: ``mqtts://host[:port]`` (or ``mqtt://`` without TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str, *, client_cert: bool = False) -> Broker:
        """Parse a broker URL; with ``client_cert`` the default port is `CERT_PORT`.

        Raises:
            ProvisionError: not ``mqtt://`` or ``mqtts://`` with a host, or ``mqtt://`` with
                ``client_cert`` (a certificate is presented in the TLS handshake).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            msg = f"--broker {url!r} must look like mqtts://host[:port] (or mqtt://)"
            raise ProvisionError(msg)
        tls = parts.scheme == "mqtts"
        if client_cert and not tls:
            msg = f"--broker {url!r}: client certificates (--client-ca) need mqtts://"
            raise ProvisionError(msg)
        try:
            port = parts.port or ((CERT_PORT if client_cert else 8883) if tls else 1883)
        except ValueError:
            msg = f"--broker {url!r} has a bad port"
            raise ProvisionError(msg) from None
        return cls(parts.hostname, port, tls)


@dataclass(frozen=True, slots=True)
class ClientCA:
    """The site CA that signs gateways' client certificates, loaded and checked (`load`)."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    days: int
    """Validity of the certificates it issues."""

    @classmethod
    def load(
        cls,
        cert_file: Path,
        key_file: Path,
        password_file: Path | None = None,
        *,
        days: int = DEFAULT_CERT_DAYS,
    ) -> ClientCA:
        """Load ``--client-ca`` and ``--client-ca-key`` (PEM) and check they can sign.

        Args:
            cert_file: the CA certificate.
            key_file: its private key (ECDSA, RSA, Ed25519 or Ed448), encrypted or not.
            password_file: the key's passphrase on the first line (openssl's ``file:``).
            days: validity of the certificates to issue; they may not outlive the CA.

        Raises:
            ProvisionError: ``cryptography`` is missing, a file is unreadable or not PEM, the
                key is encrypted and no passphrase was given (or the wrong one), the
                certificate is not a CA's, or the key is not the certificate's.
        """
        try:
            import cryptography  # noqa: F401 - only checks that it is there
        except ImportError:
            msg = f"--client-ca needs the cryptography package: {INSTALL_HINT}"
            raise ProvisionError(msg) from None
        if days < 1:
            msg = f"--days {days}: a certificate must be valid for at least 1 day"
            raise ProvisionError(msg)
        cert = _load_ca_cert(cert_file)
        key = _load_ca_key(key_file, password_file)
        _check_pair(cert, cert_file, key, key_file)
        left = cert.not_valid_after_utc - datetime.now(UTC)
        if days * 86400 > left.total_seconds():
            msg = (
                f"--days {days}: the certificates would outlive --client-ca {cert_file}, which "
                f"expires on {cert.not_valid_after_utc:%Y-%m-%d}; give fewer days or a newer CA"
            )
            raise ProvisionError(msg)
        return cls(cert, key, days)

    @property
    def subject(self) -> str:
        """The CA's name, as openssl prints it (``CN=…``)."""
        return self.cert.subject.rfc4514_string()

    def issue(self, gateway: str) -> tuple[bytes, bytes]:
        """Mint a key (ECDSA P-256) and a client certificate for ``gateway``; return both as PEM.

        The certificate: CN = ``gateway``, a random serial, valid from `CERT_BACKDATE` ago for
        `days`, not a CA, key usage digitalSignature, extended key usage clientAuth.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CERT_BACKDATE)
            .not_valid_after(now + timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        pure = isinstance(self.key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        cert = builder.sign(self.key, None if pure else hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The CA's own subject key id if it has one (OpenSSL matches issuers by it)."""
        from cryptography import x509

        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _read(option: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        msg = f"{option} {path}: {e.strerror}"
        raise ProvisionError(msg) from None


def _load_ca_cert(path: Path) -> x509.Certificate:
    """The ``--client-ca`` certificate, which must be a CA's that may sign certificates."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(_read("--client-ca", path))
    except ValueError:
        msg = f"--client-ca {path} is not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        raise ProvisionError(msg) from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError as e:  # cryptography parses the extensions only now
        msg = f"--client-ca {path}: its extensions cannot be parsed: {e}"
        raise ProvisionError(msg) from None
    name = cert.subject.rfc4514_string()
    if constraints is None or not constraints.ca:
        msg = (
            f"--client-ca {path} ({name}) is not a CA certificate (no basicConstraints CA:TRUE):"
            " give the CA that signs gateways' certificates, not one it signed"
        )
        raise ProvisionError(msg)
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        msg = f"--client-ca {path} ({name}): its key usage does not allow keyCertSign"
        raise ProvisionError(msg)
    if cert.not_valid_after_utc <= datetime.now(UTC):
        msg = f"--client-ca {path} ({name}) expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        raise ProvisionError(msg)
    return cert


def _load_ca_key(path: Path, password_file: Path | None) -> CertificateIssuerPrivateKeyTypes:
    """The ``--client-ca-key`` private key, decrypted with the passphrase if one is given."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    data = _read("--client-ca-key", path)
    password = None
    if password_file is not None:
        lines = _read("--client-ca-key-password-file", password_file).splitlines()
        if not lines or not lines[0]:
            msg = f"--client-ca-key-password-file {password_file}: its first line is empty"
            raise ProvisionError(msg)
        password = lines[0]
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:  # encrypted without a password, or a password for a plain key
        if password is None:
            msg = (
                f"--client-ca-key {path} is encrypted: put its passphrase in a file and give"
                " --client-ca-key-password-file FILE"
            )
        else:
            msg = (
                f"--client-ca-key {path} is not encrypted: leave out --client-ca-key-password-file"
            )
        raise ProvisionError(msg) from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            msg = (
                f"--client-ca-key {path}: cannot decrypt it with the passphrase in"
                f" --client-ca-key-password-file {password_file} (a wrong passphrase?)"
            )
        else:
            msg = f"--client-ca-key {path} is not a PEM private key (-----BEGIN … PRIVATE KEY-----)"
        raise ProvisionError(msg) from None
    except UnsupportedAlgorithm as e:
        msg = f"--client-ca-key {path}: {e}"
        raise ProvisionError(msg) from None
    signing = (
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
    )
    if not isinstance(key, signing):
        msg = (
            f"--client-ca-key {path} is a {type(key).__name__}; a CA's key is ECDSA, RSA,"
            " Ed25519 or Ed448"
        )
        raise ProvisionError(msg)
    return key


def _check_pair(
    cert: x509.Certificate, cert_file: Path, key: CertificateIssuerPrivateKeyTypes, key_file: Path
) -> None:
    """Refuse a key that is not the certificate's: what it signed would not verify."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(Encoding.DER, spki) != key.public_key().public_bytes(
        Encoding.DER, spki
    ):
        msg = (
            f"--client-ca-key {key_file} is not the key of --client-ca {cert_file}"
            f" ({cert.subject.rfc4514_string()})"
        )
        raise ProvisionError(msg)


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
    target = _new_target(site, gateway, out)
    target.mkdir(parents=True)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    secret = target / "mqtt-password"
    secret.write_text(password)
    secret.chmod(0o600)
    _write_config(
        target,
        site,
        gateway,
        broker,
        ca_file,
        f'username = "{gateway}"\npassword_file = "{CONFIG_DIR}/mqtt-password"\n',
    )
    line = password_line(gateway, password)
    (target / "mosquitto-passwd.line").write_text(line + "\n")
    return line


def provision_certificate(
    site: str,
    gateway: str,
    broker: Broker,
    out: Path,
    client_ca: ClientCA,
    ca_file: Path | None = None,
) -> Path:
    """Write ``out/<gateway>/`` (config, client certificate and key, CA); return the certificate.

    The broker needs no per-gateway line: it trusts every certificate ``client_ca`` signs, and
    the certificate's CN (the gateway id) is the user name its ACL sees.

    Raises:
        ProvisionError: as `provision`.
    """
    target = _new_target(site, gateway, out)
    cert_pem, key_pem = client_ca.issue(gateway)
    target.mkdir(parents=True)
    fd = os.open(target / "client.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(key_pem)
    cert_file = target / "client.crt"
    cert_file.write_bytes(cert_pem)
    _write_config(
        target,
        site,
        gateway,
        broker,
        ca_file,
        f"# The certificate's CN ({gateway}) is the user name on the broker; no password.\n"
        f'cert_file = "{CONFIG_DIR}/client.crt"\nkey_file = "{CONFIG_DIR}/client.key"\n',
    )
    return cert_file


def _new_target(site: str, gateway: str, out: Path) -> Path:
    """Check the ids; return ``out/<gateway>``, which must not exist yet."""
    for what, name in (("--site", site), ("--gateway", gateway)):
        if not NAME_RE.match(name):
            msg = f"{what} {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            raise ProvisionError(msg)
    if gateway in RESERVED_USERS:
        msg = (
            f"--gateway {gateway!r} is the broker's subscriber account (deploy/broker/acl): a"
            " gateway with that name would get central's rights; choose another id"
        )
        raise ProvisionError(msg)
    target = out / gateway
    if target.exists():
        msg = f"{target} exists: refusing to mint new credentials over it"
        raise ProvisionError(msg)
    return target


def _write_config(
    target: Path, site: str, gateway: str, broker: Broker, ca_file: Path | None, credentials: str
) -> None:
    """Write ``target/gateway.toml`` (and copy ``ca_file`` to ``target/ca.crt``)."""
    ca_line = ""
    if ca_file is not None:
        shutil.copyfile(ca_file, target / "ca.crt")
        ca_line = f'ca_file = "{CONFIG_DIR}/ca.crt"\n'
    (target / "gateway.toml").write_text(
        f"# Provisioned for gateway {gateway} at site {site}; every other key is at its\n"
        f"# default (deploy/gateway.toml documents them).\n"
        f'[gateway]\nid = "{gateway}"\nsite = "{site}"\n\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f"tls = {'true' if broker.tls else 'false'}\n{ca_line}{credentials}"
    )
