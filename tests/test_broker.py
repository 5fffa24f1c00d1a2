"""The test broker (tests/broker.py): a real mosquitto with TLS, passwords, ACL and persistence.

Every test shares the session's broker; each uses its own site topic level (`unique_site`) and
client ids, so retained state and persistent sessions of one test never reach another.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

import tests.broker as broker_module
from tests.broker import (
    CENTRAL_USER,
    TOPIC_ROOT,
    Broker,
    BrokerUnavailableError,
    Message,
    NoConnackError,
    Subscriber,
    connect_result,
    publish_many,
    publish_once,
    unique_site,
)

# The fixtures live in tests/broker.py; a conftest that imports them makes this redundant.
pytest_plugins = ("tests.broker",)

NOT_AUTHORIZED = 135
BAD_CREDENTIALS = {134, 135}  # mosquitto 2.0 answers 135 "Not authorized", not 134


def events(site: str, gateway: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{gateway}/events"


def has_payloads(*payloads: bytes):
    """A `Subscriber.wait_for` predicate: all these payloads arrived (duplicates allowed)."""
    return lambda msgs: set(payloads) <= {m.payload for m in msgs}


def test_listeners_use_their_own_free_ports_never_the_system_broker(broker: Broker) -> None:
    ports = {broker.port, broker.tls_port, broker.cert_port}
    assert len(ports) == 3
    assert 1883 not in ports
    assert broker.host == "127.0.0.1"
    assert broker.running
    config = broker.config_file.read_text()
    for line in (
        "allow_anonymous false",
        "per_listener_settings false",
        "persistence true",
        "autosave_interval 1",
        "max_queued_messages 0",
        "tls_version tlsv1.2",
    ):
        assert line in config.splitlines()
    assert "log_type all" not in config
    assert stat.S_IMODE(broker.password_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("listener", ["plain", "tls"])
@pytest.mark.parametrize("user", ["gw-001", "gw-002", CENTRAL_USER])
def test_each_account_connects_with_its_password(broker: Broker, listener, user) -> None:
    rc = connect_result(broker, user, listener=listener)
    assert rc == 0, rc


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_wrong_password_unknown_user_and_anonymous_are_refused(broker: Broker, listener) -> None:
    wrong = connect_result(broker, "gw-001", "not-the-password", listener=listener)
    assert wrong.is_failure
    assert wrong.value in BAD_CREDENTIALS, wrong
    # Another account's password is wrong too.
    assert connect_result(broker, "gw-001", broker.passwords["gw-002"]).is_failure
    assert connect_result(broker, "gw-003", "whatever", listener=listener).value in BAD_CREDENTIALS
    assert connect_result(broker, None, listener=listener).value in BAD_CREDENTIALS


def test_gateway_may_publish_only_under_its_own_id(broker: Broker) -> None:
    site = unique_site()
    own = publish_once(broker, "gw-001", events(site, "gw-001"), b"{}")
    assert not own.is_failure, own  # 16 "No matching subscribers" is a success
    foreign = publish_once(broker, "gw-001", events(site, "gw-002"), b"{}")
    assert foreign.value == NOT_AUTHORIZED, foreign
    outside = publish_once(broker, "gw-001", f"{TOPIC_ROOT}/{site}/events", b"{}")
    assert outside.value == NOT_AUTHORIZED, outside


def test_mosquitto_closes_the_connection_after_a_denied_publish(broker: Broker) -> None:
    # mosquitto 2.0 (eclipse-mosquitto/mosquitto#2579): PUBACK 135, then the connection is
    # dropped, so the pipelined message behind the denied one is never processed. A gateway
    # with a wrong topic therefore sees PUBACK 135 *and* a disconnect.
    site = unique_site()
    with Subscriber(broker, CENTRAL_USER, [f"{TOPIC_ROOT}/{site}/#"]) as central:
        with pytest.raises(ConnectionError, match="connection closed after 1 of 2"):
            publish_many(
                broker,
                "gw-001",
                [(events(site, "gw-002"), b"denied"), (events(site, "gw-001"), b"ok")],
            )
        assert not publish_once(broker, "gw-001", events(site, "gw-001"), b"later").is_failure
        central.wait_for(has_payloads(b"later"))
        assert b"ok" not in central.payloads()
    assert "Bad socket read/write on client bulk-gw-001-" in broker.log_text()


def test_central_receives_gateway_messages_and_nothing_denied(broker: Broker) -> None:
    site = unique_site()
    with Subscriber(broker, CENTRAL_USER, [f"{TOPIC_ROOT}/{site}/#"]) as central:
        assert not publish_once(broker, "gw-001", events(site, "gw-001"), b"e1").is_failure
        assert publish_once(broker, "gw-002", events(site, "gw-001"), b"forged").is_failure
        assert not publish_once(broker, "gw-002", events(site, "gw-002"), b"e2").is_failure
        central.wait_for(has_payloads(b"e1", b"e2"))
        assert Message(events(site, "gw-001"), b"e1", 1, False, False) in central.messages()
        assert central.payloads(f"{TOPIC_ROOT}/{site}/gw-001/#") == [b"e1"]


def test_gateway_reads_only_its_own_subtree_and_central_can_command_it(broker: Broker) -> None:
    site = unique_site()
    # mosquitto grants the SUBACK for gw-002's subtree but filters on the read ACL at delivery.
    with Subscriber(broker, "gw-001", [f"{TOPIC_ROOT}/{site}/#"]) as gw1:
        assert not publish_once(broker, "gw-002", events(site, "gw-002"), b"other").is_failure
        cmd = f"{TOPIC_ROOT}/{site}/gw-001/cmd/rescan"
        assert not publish_once(broker, CENTRAL_USER, cmd, b"now").is_failure
        assert publish_once(broker, CENTRAL_USER, events(site, "gw-001"), b"x").is_failure
        gw1.wait_for(has_payloads(b"now"))
        assert gw1.payloads() == [b"now"]


def test_persistent_subscriber_gets_what_was_published_while_it_was_away(broker: Broker) -> None:
    site = unique_site()
    topics = [f"{TOPIC_ROOT}/{site}/#"]
    first = Subscriber(broker, CENTRAL_USER, topics)
    assert not first.session_present
    first.close()
    sent = [f"offline-{i}".encode() for i in range(5)]
    for payload in sent:
        assert not publish_once(broker, "gw-001", events(site, "gw-001"), payload).is_failure
    with Subscriber(broker, CENTRAL_USER, topics, client_id=first.client_id) as again:
        assert again.session_present
        got = again.wait_for(has_payloads(*sent))
        assert all(m.qos == 1 for m in got)


def test_a_long_outage_queues_more_than_mosquittos_default_1000(broker: Broker) -> None:
    site = unique_site()
    client_id = f"central-{site}"
    Subscriber(broker, CENTRAL_USER, [f"{TOPIC_ROOT}/{site}/#"], client_id=client_id).close()
    backlog = [(events(site, "gw-001"), f"{i}".encode()) for i in range(1500)]
    assert not any(rc.is_failure for rc in publish_many(broker, "gw-001", backlog))
    with Subscriber(broker, CENTRAL_USER, [], client_id=client_id) as again:
        again.wait_for(has_payloads(*(payload for _, payload in backlog)), timeout=20)


def test_close_without_keeping_the_session_discards_it(broker: Broker) -> None:
    site = unique_site()
    topics = [f"{TOPIC_ROOT}/{site}/#"]
    first = Subscriber(broker, CENTRAL_USER, topics)
    first.close(keep_session=False)
    assert not publish_once(broker, "gw-001", events(site, "gw-001"), b"lost").is_failure
    with Subscriber(broker, CENTRAL_USER, topics, client_id=first.client_id) as again:
        assert not again.session_present
        assert not publish_once(broker, "gw-001", events(site, "gw-001"), b"new").is_failure
        again.wait_for(has_payloads(b"new"))
        assert b"lost" not in again.payloads()


def test_session_and_queued_messages_survive_a_broker_restart(broker: Broker) -> None:
    site = unique_site()
    topics = [f"{TOPIC_ROOT}/{site}/#"]
    Subscriber(broker, CENTRAL_USER, topics, client_id=f"central-{site}").close()
    sent = [f"queued-{i}".encode() for i in range(5)]
    for payload in sent:
        assert not publish_once(broker, "gw-002", events(site, "gw-002"), payload).is_failure
    pid = broker.pid
    kills = broker.forced_kills
    broker.restart()
    assert broker.pid != pid
    assert broker.forced_kills == kills  # a clean stop: the database was saved on SIGTERM
    # No SUBSCRIBE this time: the subscription itself came back from the persistence file.
    with Subscriber(broker, CENTRAL_USER, [], client_id=f"central-{site}") as again:
        assert again.session_present
        again.wait_for(has_payloads(*sent))


def test_connected_subscriber_reconnects_and_resumes_after_a_restart(broker: Broker) -> None:
    site = unique_site()
    with Subscriber(broker, CENTRAL_USER, [f"{TOPIC_ROOT}/{site}/#"]) as central:
        broker.restart()
        central.wait_for_connected()  # paho's own reconnect, ~1 s (its minimum delay)
        assert not publish_once(broker, "gw-001", events(site, "gw-001"), b"after").is_failure
        central.wait_for(has_payloads(b"after"))


def test_autosave_keeps_queued_messages_through_a_kill(broker: Broker) -> None:
    site = unique_site()
    client_id = f"central-{site}"
    Subscriber(broker, CENTRAL_USER, [f"{TOPIC_ROOT}/{site}/#"], client_id=client_id).close()
    assert not publish_once(broker, "gw-001", events(site, "gw-001"), b"saved").is_failure
    broker.wait_for_autosave()  # autosave_interval 1: within ~2 s
    broker.kill()
    assert not broker.running
    broker.start()
    with Subscriber(broker, CENTRAL_USER, [], client_id=client_id) as again:
        again.wait_for(has_payloads(b"saved"))


def test_client_certificate_login_uses_the_cn_as_username(broker: Broker) -> None:
    site = unique_site()
    cert = broker.client_cert("gw-001")
    assert stat.S_IMODE(cert[1].stat().st_mode) == 0o600
    assert connect_result(broker, None, listener="cert", cert=cert) == 0
    own = publish_once(broker, None, events(site, "gw-001"), b"c", listener="cert", cert=cert)
    assert not own.is_failure, own
    foreign = publish_once(broker, None, events(site, "gw-002"), b"c", listener="cert", cert=cert)
    assert foreign.value == NOT_AUTHORIZED, foreign
    cmd = f"{TOPIC_ROOT}/{site}/gw-001/cmd/ping"
    with Subscriber(broker, None, [f"{TOPIC_ROOT}/{site}/#"], listener="cert", cert=cert) as gw1:
        assert not publish_once(broker, CENTRAL_USER, cmd, b"ping").is_failure
        assert not publish_once(broker, "gw-002", events(site, "gw-002"), b"other").is_failure
        gw1.wait_for(has_payloads(b"ping"))
        assert gw1.payloads() == [b"ping"]  # read ACL of gw-001, the certificate's CN
    with pytest.raises(NoConnackError):
        connect_result(broker, "gw-001", listener="cert")  # password alone is not enough there


def test_password_file_for_writes_a_private_file_the_gateway_can_read(
    broker: Broker, tmp_path: Path
) -> None:
    path = broker.password_file_for("gw-002", tmp_path / "secrets")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == broker.passwords["gw-002"]
    assert connect_result(broker, "gw-002", path.read_text(), listener="tls") == 0


def test_stop_right_after_start_needs_no_sigkill(broker: Broker) -> None:
    # mosquitto 2.0 can lose a SIGTERM that arrives just after READY=1; stop() repeats it.
    kills = broker.forced_kills
    started = time.monotonic()
    for _ in range(5):
        broker.restart()
    assert broker.forced_kills == kills
    assert time.monotonic() - started < 5
    assert connect_result(broker, "gw-001") == 0


def test_broker_fixture_starts_a_stopped_broker_again(broker: Broker) -> None:
    broker.stop()
    assert not broker.running
    broker.ensure_running()  # what the function-scoped fixture does before each test
    assert broker.running
    assert connect_result(broker, "gw-001") == 0
    assert "as probe-" in broker.log_text()  # log_type notice: connections are logged


def test_missing_mosquitto_is_an_error_with_an_install_hint(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(broker_module, "_mosquitto_binary", lambda: None)
    with pytest.raises(BrokerUnavailableError, match="apt-get install -y mosquitto"):
        Broker(tmp_path)


def test_missing_python_package_is_an_error_with_an_install_hint(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(broker_module, "_importable", lambda module: module != "paho.mqtt")
    with pytest.raises(BrokerUnavailableError, match=r"paho-mqtt not found.*pip install"):
        Broker(tmp_path)
