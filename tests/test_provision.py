"""Provisioned credentials against deploy/broker's own mosquitto config, started for real.

One mosquitto per module, from deploy/broker/mosquitto.conf with test paths and ports: its
password listener serves gateways provisioned with passwords, its certificate listener those
provisioned with client certificates signed by a site CA made with deploy/README.md's openssl
command.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import re
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway import config, provision
from gateway.store import EventStore
from gateway.sync import Publisher
from tests.broker import Broker
from tests.test_cli import assert_usage_error
from tests.test_cli import gateway as run_cli
from tests.test_sync import fill

pytest_plugins = ("tests.broker",)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "broker"
CENTRAL_PASSWORD = "central-secret"  # noqa: S105 - a throw-away broker
PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a throw-away CA
CERT_DAYS = 30


class Deployed(NamedTuple):
    """deploy/broker's mosquitto, running, and what was provisioned for it."""

    out: Path
    """``provision --out``: gw-101 and gw-102 with passwords, gw-201 and gw-202 with certs."""
    port: int
    """The password listener (8883 in deploy/broker/mosquitto.conf)."""
    cert_port: int
    """The client-certificate listener (8884 there)."""
    client_ca: Path
    client_ca_key: Path
    """Encrypted with `PASSPHRASE`, the first line of `passphrase`."""
    passphrase: Path
    broker_ca: Path
    """The CA of the broker's server certificate (tests/broker.py's session CA)."""
    session_broker: Broker
    """tests/broker.py's session broker: its CA is another CA than `client_ca`."""
    log: Path


def free_ports(count: int) -> list[int]:
    """Ports free on loopback, all different (their sockets are held open together)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def readme_openssl_command() -> list[str]:
    """deploy/README.md's command that creates the site client CA, as argv."""
    lines = (ROOT / "deploy" / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("openssl req -x509 "))
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command))


def make_site_ca(directory: Path) -> tuple[Path, Path, Path]:
    """Run the README's openssl command in ``directory``; return (cert, key, passphrase file)."""
    directory.mkdir(parents=True, exist_ok=True)
    passphrase = directory / "client-ca.pass"
    passphrase.write_text(PASSPHRASE + "\n")
    done = subprocess.run(
        [*readme_openssl_command(), "-passout", f"file:{passphrase}"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return directory / "client-ca.crt", directory / "client-ca.key", passphrase


def wait_for_ports(proc: subprocess.Popen[bytes], *ports: int) -> None:
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            assert proc.poll() is None, "mosquitto exited: see its log"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"mosquitto is not listening on {port}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, mqtt_broker: Broker) -> Iterator[Deployed]:
    """Provision two password and two certificate gateways (through the CLI), then run
    deploy/broker/mosquitto.conf with their password lines and the site CA."""
    tmp = tmp_path_factory.mktemp("provision")
    out = tmp / "fleet"
    client_ca, client_ca_key, passphrase = make_site_ca(tmp / "site-ca")
    port, cert_port = free_ports(2)
    done = run_cli(
        "provision", "--site", "hq", "--gateway", "gw-101", "--gateway", "gw-102",
        "--broker", f"mqtts://localhost:{port}", "--ca", mqtt_broker.ca_file, "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_cli(
        "provision", "--site", "hq", "--gateway", "gw-201", "--gateway", "gw-202",
        "--broker", f"mqtts://localhost:{cert_port}", "--ca", mqtt_broker.ca_file,
        "--client-ca", client_ca, "--client-ca-key", client_ca_key,
        "--client-ca-key-password-file", passphrase, "--days", str(CERT_DAYS), "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"from CN=hanoi-hq gateway client CA, valid 30 days" in done.stderr

    etc = tmp / "etc"
    etc.mkdir()
    central = provision.password_line("central", CENTRAL_PASSWORD)
    (etc / "passwd").write_text((out / "mosquitto-passwd").read_text() + central + "\n")
    shutil.copy(DEPLOY / "acl", etc / "acl")
    for name, source in (
        ("ca.crt", mqtt_broker.ca_file),
        ("server.crt", mqtt_broker.server_cert_file),
        ("server.key", mqtt_broker.server_key_file),
        ("client-ca.crt", client_ca),
    ):
        shutil.copy(source, etc / name)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/bluezone", str(etc))
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp}/")
    for deployed_port, test_port in ((8883, port), (8884, cert_port)):
        conf, found = re.subn(
            rf"^listener {deployed_port}$",
            f"listener {test_port} 127.0.0.1",
            conf,
            flags=re.MULTILINE,
        )
        assert found == 1, f"deploy/broker/mosquitto.conf has no 'listener {deployed_port}'"
    log = tmp / "mosquitto.log"
    conf += f"log_dest file {log}\n"
    if os.geteuid() == 0:
        conf += "user root\n"  # mosquitto drops to user mosquitto, who cannot read tmp
    (tmp / "mosquitto.conf").write_text(conf)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with subprocess.Popen([mosquitto, "-c", str(tmp / "mosquitto.conf")]) as proc:
        try:
            wait_for_ports(proc, port, cert_port)
            yield Deployed(
                out, port, cert_port, client_ca, client_ca_key, passphrase,
                mqtt_broker.ca_file, mqtt_broker, log,
            )  # fmt: skip
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()


def load_config(deployed: Deployed, gateway: str) -> config.Config:
    """The provisioned gateway.toml, with /etc/bluezone pointing at its fleet directory."""
    text = (deployed.out / gateway / "gateway.toml").read_text()
    return config.parse(text.replace(provision.CONFIG_DIR, str(deployed.out / gateway)))


def sync(settings: config.MqttSection, db: Path, gateway: str, pairs: int, timeout: float):
    """The gateway's own sync path: ``pairs`` visits into a store, drained to the broker."""
    with EventStore.open(db, gateway=gateway, site="hq") as store:
        fill(store, pairs)
        publisher = Publisher(settings, store, gateway=gateway, site="hq", boot_time=time.time())
        drained = asyncio.run(publisher.drain(timeout))
        return drained, publisher.acked, store.state("broker") or ""


@contextlib.contextmanager
def central(deployed: Deployed, topic: str) -> Iterator[list[bytes]]:
    """The ``central`` consumer on the password listener, subscribed to ``topic`` at QoS 1;
    yields the payloads received so far (a list paho's thread appends to)."""
    received: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"central-{secrets.token_hex(4)}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set("central", CENTRAL_PASSWORD)
    client.tls_set_context(ssl.create_default_context(cafile=str(deployed.broker_ca)))
    client.on_message = lambda _client, _userdata, message: received.append(bytes(message.payload))
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("localhost", deployed.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(5), "central was not subscribed within 5 s"
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def test_provisioned_gateways_sync_and_are_fenced_in(deployed, tmp_path):
    out = deployed.out
    files = sorted(p.name for p in (out / "gw-101").iterdir())
    assert files == ["ca.crt", "gateway.toml", "mosquitto-passwd.line", "mqtt-password"]
    assert (out / "gw-101" / "mqtt-password").stat().st_mode & 0o777 == 0o600
    cfg = load_config(deployed, "gw-101")
    assert (cfg.gateway.id, cfg.gateway.site, cfg.mqtt.port, cfg.mqtt.tls) == (
        "gw-101", "hq", deployed.port, True)  # fmt: skip

    assert sync(cfg.mqtt, tmp_path / "e.db", "gw-101", 5, 20)[:2] == (True, 10)
    # gw-101's credentials on gw-102's topics: deploy/broker/acl refuses them.
    assert sync(cfg.mqtt, tmp_path / "f.db", "gw-102", 1, 3)[:2] == (False, 0)
    # A wrong password is refused at CONNACK.
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it")
    locked_out = dataclasses.replace(cfg.mqtt, password_file=wrong)
    drained, acked, state = sync(locked_out, tmp_path / "g.db", "gw-101", 1, 3)
    assert (drained, acked) == (False, 0)
    assert "Not authorized" in state


def test_certificate_gateway_is_provisioned_as_documented(deployed):
    out = deployed.out
    files = sorted(p.name for p in (out / "gw-201").iterdir())
    assert files == ["ca.crt", "client.crt", "client.key", "gateway.toml"]
    assert (out / "gw-201" / "client.key").stat().st_mode & 0o777 == 0o600
    assert "gw-201" not in (out / "mosquitto-passwd").read_text()
    cfg = load_config(deployed, "gw-201")
    assert (cfg.gateway.id, cfg.mqtt.port, cfg.mqtt.tls) == ("gw-201", deployed.cert_port, True)
    assert (cfg.mqtt.username, cfg.mqtt.password_file) == (None, None)
    assert cfg.mqtt.cert_file == out / "gw-201" / "client.crt"
    assert cfg.mqtt.key_file == out / "gw-201" / "client.key"
    assert cfg.mqtt.ca_file == out / "gw-201" / "ca.crt"

    ca = x509.load_pem_x509_certificate(deployed.client_ca.read_bytes())
    certs = [
        x509.load_pem_x509_certificate((out / gw / "client.crt").read_bytes())
        for gw in ("gw-201", "gw-202")
    ]
    cert = certs[0]
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-201"
    assert cert.issuer == ca.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=CERT_DAYS) + provision.CERT_BACKDATE
    assert cert.not_valid_before_utc < datetime.datetime.now(datetime.UTC)
    assert certs[0].serial_number != certs[1].serial_number


def test_certificate_gateway_syncs_and_is_fenced_in(deployed, tmp_path):
    cfg = load_config(deployed, "gw-201")
    with central(deployed, "bluezone/v1/hq/gw-201/events") as received:
        drained, acked, state = sync(cfg.mqtt, tmp_path / "e.db", "gw-201", 5, 20)
        assert (drained, acked) == (True, 10), state
        deadline = time.monotonic() + 5
        while len(received) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(received) == 10
    assert all(b'"gateway":"gw-201"' in payload for payload in received), received[0]

    # gw-201's certificate on gw-202's topics: the CN is the user name the ACL fences in.
    drained, acked, state = sync(cfg.mqtt, tmp_path / "f.db", "gw-202", 1, 3)
    assert (drained, acked) == (False, 0)
    # Without a certificate the listener takes nobody, not even with a valid password.
    password = dataclasses.replace(
        cfg.mqtt,
        cert_file=None,
        key_file=None,
        username="gw-101",
        password_file=deployed.out / "gw-101" / "mqtt-password",
    )
    drained, acked, state = sync(password, tmp_path / "g.db", "gw-101", 1, 3)
    assert (drained, acked) == (False, 0)
    assert state.startswith("unreachable"), state


def connect_raw(
    deployed: Deployed, cert: Path, key: Path, *, tls12: bool, connect: bool = True
) -> tuple[str, bytes]:
    """TLS to the certificate listener, then an MQTT 3.1.1 CONNECT without user name; returns
    the TLS version and the CONNACK (``20 02 00 00``: accepted).

    With ``tls12`` the server verifies the client's certificate inside the handshake; a TLS 1.3
    client finishes its handshake first and hears the verdict as an alert on its first read
    (without ``connect``, that read comes before sending anything: a CONNECT sent into a
    connection the server is closing can turn its alert into a reset).
    """
    context = ssl.create_default_context(cafile=str(deployed.broker_ca))
    context.load_cert_chain(cert, key)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_id = f"raw-{secrets.token_hex(4)}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol name, level 4, clean session, 60 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    with (
        socket.create_connection(("127.0.0.1", deployed.cert_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        version = tls.version() or ""
        if connect:
            tls.sendall(bytes([0x10, len(variable) + len(payload)]) + variable + payload)
        return version, tls.recv(4)


def test_certificate_from_another_ca_is_refused_at_the_handshake(deployed, tmp_path):
    own = deployed.out / "gw-201" / "client.crt", deployed.out / "gw-201" / "client.key"
    # The session broker's CA is not the site CA: a well-formed certificate, CN gw-201.
    foreign = deployed.session_broker.client_cert("gw-201")
    for tls12, version in ((True, "TLSv1.2"), (False, "TLSv1.3")):
        assert connect_raw(deployed, *own, tls12=tls12) == (version, b"\x20\x02\x00\x00")
        with pytest.raises(ssl.SSLError, match=r"UNKNOWN_CA|unknown ca"):
            connect_raw(deployed, *foreign, tls12=tls12, connect=False)

    cfg = load_config(deployed, "gw-201")
    impostor = dataclasses.replace(cfg.mqtt, cert_file=foreign[0], key_file=foreign[1])
    drained, acked, state = sync(impostor, tmp_path / "e.db", "gw-201", 1, 3)
    assert (drained, acked) == (False, 0)
    assert state.startswith("unreachable"), state
    assert "certificate verify failed" in deployed.log.read_text()


@pytest.fixture
def cli_ca(deployed: Deployed) -> list[str | Path]:
    """The site CA's options, as the fixture provisioned gw-201 with them."""
    return ca_options(deployed.client_ca, deployed.client_ca_key, deployed.passphrase)


def ca_options(cert: Path, key: Path, password_file: Path | None = None) -> list[str | Path]:
    options: list[str | Path] = ["--client-ca", cert, "--client-ca-key", key]
    if password_file is not None:
        options += ["--client-ca-key-password-file", password_file]
    return options


def provision_cli(tmp_path: Path, *options: str | Path, broker: str = "mqtts://localhost"):
    """``provision`` of gw-900 into tmp_path/fleet; it must write nothing when it fails."""
    done = run_cli(
        "provision", "--site", "hq", "--gateway", "gw-900", "--broker", broker,
        "--out", tmp_path / "fleet", *options,
    )  # fmt: skip
    if done.returncode != 0:
        assert not (tmp_path / "fleet").exists()
    return done


def test_certificate_provisioning_defaults_to_the_certificate_listener(cli_ca, tmp_path):
    done = provision_cli(tmp_path, *cli_ca)
    assert done.returncode == 0, done.stderr
    assert "port = 8884\n" in (tmp_path / "fleet" / "gw-900" / "gateway.toml").read_text()
    assert provision.Broker.parse("mqtts://h", client_cert=True).port == provision.CERT_PORT
    assert provision.Broker.parse("mqtts://h").port == 8883


def test_cli_refuses_bad_certificate_authorities(deployed, cli_ca, tmp_path):
    gw = deployed.out / "gw-201"
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    wrong_pass = tmp_path / "wrong.pass"
    wrong_pass.write_text("not it\n")
    key, pass_file = deployed.client_ca_key, deployed.passphrase
    ca = deployed.client_ca
    cases: list[tuple[list[str | Path], tuple[str, ...]]] = [
        # The session broker's CA with the site CA's key.
        (
            ca_options(deployed.broker_ca, key, pass_file),
            ("--client-ca-key", "is not the key of --client-ca", str(deployed.broker_ca)),
        ),
        # A gateway's own certificate and key: a matching pair, but not a CA.
        (
            ca_options(gw / "client.crt", gw / "client.key"),
            ("--client-ca", "CN=gw-201", "is not a CA certificate"),
        ),
        (ca_options(garbled, key), ("--client-ca", str(garbled), "not a PEM certificate")),
        (
            ca_options(ca, garbled, pass_file),
            ("--client-ca-key", str(garbled), "not a PEM private key"),
        ),
        (
            ca_options(tmp_path / "missing.crt", key),
            ("--client-ca", "missing.crt", "No such file"),
        ),
        (
            ca_options(ca, key),
            ("--client-ca-key", str(key), "is encrypted", "--client-ca-key-password-file"),
        ),
        (
            ca_options(ca, key, wrong_pass),
            ("--client-ca-key", "cannot decrypt", str(wrong_pass)),
        ),
        (ca_options(ca, gw / "client.key", pass_file), ("--client-ca-key", "is not encrypted")),
        (["--client-ca", ca], ("--client-ca and --client-ca-key go together",)),
        (["--days", "30"], ("--days goes with --client-ca",)),
        ([*cli_ca, "--days", "0"], ("--days 0", "at least 1 day")),
        ([*cli_ca, "--days", "4000"], ("--days 4000", "outlive --client-ca", str(ca))),
    ]
    for options, needles in cases:
        assert_usage_error(provision_cli(tmp_path, *options), "provision", *needles)
    done = provision_cli(tmp_path, *cli_ca, broker="mqtt://localhost")
    assert_usage_error(done, "--broker", "need mqtts://")


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_rsa_and_ed25519_site_cas_sign_too(algorithm, tmp_path):
    """Not only the README's ECDSA CA: an RSA one (openssl's default) and an Ed25519 one."""
    key = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "rsa"
        else Ed25519PrivateKey.generate()
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{algorithm} CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, None if algorithm == "ed25519" else hashes.SHA256())
    )
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client_ca = provision.ClientCA.load(tmp_path / "ca.crt", tmp_path / "ca.key", days=99)
    cert_pem, key_pem = client_ca.issue("gw-1")
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca)
    assert serialization.load_pem_private_key(key_pem, None).public_key() == cert.public_key()
    with pytest.raises(
        provision.ProvisionError, match="--days 101: the certificates would outlive"
    ):
        provision.ClientCA.load(tmp_path / "ca.crt", tmp_path / "ca.key", days=101)


def test_cryptography_is_needed_only_for_certificates(cli_ca, tmp_path):
    """Without cryptography installed (a gateway's own venv): passwords work, certificates
    say which extra to install."""
    script = (
        "import sys; sys.modules['cryptography'] = None; from gateway.cli import main;"
        " sys.exit(main(sys.argv[1:]))"
    )
    common = ["provision", "--site", "hq", "--broker", "mqtts://localhost"]
    done = subprocess.run(
        [sys.executable, "-c", script, *common, "--gateway", "gw-1", "--out", tmp_path / "a",
         *cli_ca],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert_usage_error(done, "--client-ca", "pip install 'bluezone-gateway[provision]'")
    assert not (tmp_path / "a").exists()
    done = subprocess.run(
        [sys.executable, "-c", script, *common, "--gateway", "gw-1", "--out", tmp_path / "b"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b" / "gw-1" / "mqtt-password").is_file()


def test_provision_refuses_to_overwrite_and_bad_ids(tmp_path):
    out = tmp_path / "fleet"
    broker = provision.Broker.parse("mqtts://mqtt.example.vn")
    assert (broker.port, broker.tls) == (8883, True)
    provision.provision("hq", "gw-1", broker, out)
    with pytest.raises(provision.ProvisionError, match="exists"):
        provision.provision("hq", "gw-1", broker, out)
    with pytest.raises(provision.ProvisionError, match="--gateway"):
        provision.provision("hq", "gw/1", broker, out)
    with pytest.raises(provision.ProvisionError, match="central's rights"):
        provision.provision("hq", "central", broker, out)
    assert not (out / "central").exists()
    with pytest.raises(provision.ProvisionError, match="mqtts://"):
        provision.Broker.parse("http://mqtt.example.vn")
