"""Tests of gateway.config: defaults, the minimal file, and errors that name key and line."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from gateway.config import (
    APP_DIR,
    Config,
    ConfigError,
    GatewaySection,
    StoreSection,
    default_data_dir,
    load,
    parse,
)
from gateway.linker import LinkPolicy
from gateway.model import PresencePolicy


@pytest.fixture(autouse=True)
def _no_state_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make the data-dir defaults independent of the environment the tests run in."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


# Defaults


def test_no_file_gives_the_defaults(tmp_path: Path) -> None:
    cfg = load(None)
    assert cfg == Config()
    assert cfg.source is None
    assert cfg.gateway.id == socket.gethostname()
    assert cfg.gateway.site == "default"
    assert cfg.gateway.data_dir == tmp_path / "home" / ".local" / "share" / APP_DIR
    assert cfg.store == StoreSection(
        path=None, retention_days=21.0, synchronous="full", commit_interval_s=1.0
    )
    assert cfg.presence == PresencePolicy()


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    cfg = load(path)
    assert dataclasses.replace(cfg, source=None) == Config()
    assert cfg.source == path


@pytest.mark.parametrize("text", ["[presence]\nenter_rssi = -80", "[presence]\nenter_rssi = -80\n"])
def test_the_minimal_file_is_valid(tmp_path: Path, text: str) -> None:
    cfg = load(write(tmp_path, text))
    assert cfg.presence.enter_rssi == -80
    assert cfg.presence.exit_rssi < cfg.presence.enter_rssi  # hysteresis kept
    # Everything else keeps its default.
    defaults = PresencePolicy()
    assert cfg.presence.exit_timeout_s == defaults.exit_timeout_s
    assert cfg.presence.max_devices == defaults.max_devices
    assert cfg.store == StoreSection()
    assert cfg.gateway.site == "default"


def test_exit_rssi_alone_is_valid_too() -> None:
    cfg = parse("[presence]\nexit_rssi = -70\n")
    assert cfg.presence.exit_rssi == -70
    assert cfg.presence.enter_rssi > -70


def test_empty_sections_are_valid() -> None:
    assert parse("[gateway]\n[store]\n[presence]\n") == Config()


def test_every_key_can_be_set(tmp_path: Path) -> None:
    text = f"""\
# a comment
[gateway]
id = "entrance-1"
site = "hanoi.office_2"
data_dir = "{tmp_path / "data"}"

[store]
path = "{tmp_path / "ev.db"}"
retention_days = 14
synchronous = "normal"
commit_interval_s = 0.5

[presence]
enter_rssi = -70
exit_rssi = -74.5
exit_timeout_s = 45
smoothing_s = 2
rssi_sigma_db = 5
confidence_z = 1
exit_weak_s = 0
checkin_rssi = -45
checkin_samples = 4
max_devices = 100
"""
    cfg = load(write(tmp_path, text))
    assert cfg.gateway == GatewaySection(
        id="entrance-1", site="hanoi.office_2", data_dir=tmp_path / "data"
    )
    assert cfg.store == StoreSection(
        path=tmp_path / "ev.db", retention_days=14.0, synchronous="normal", commit_interval_s=0.5
    )
    assert cfg.presence == PresencePolicy(
        enter_rssi=-70,
        exit_rssi=-74.5,
        exit_timeout_s=45,
        smoothing_s=2,
        rssi_sigma_db=5,
        confidence_z=1,
        exit_weak_s=0,
        checkin_rssi=-45,
        checkin_samples=4,
        max_devices=100,
    )
    assert isinstance(cfg.presence.enter_rssi, float)
    assert isinstance(cfg.presence.max_devices, int)
    assert cfg.db_path == tmp_path / "ev.db"


def test_the_linker_s_parameters_have_their_own_section() -> None:
    cfg = parse("[presence]\nlink = true\n[link]\nrestart_tolerance_s = 0.8\nmargin = 3\n")
    assert cfg.link == LinkPolicy(restart_tolerance_s=0.8, margin=3.0)
    assert cfg.presence.link
    assert parse("").link == LinkPolicy()


def test_paths_expand_the_home_dir(tmp_path: Path) -> None:
    cfg = parse('[gateway]\ndata_dir = "~/gw"\n[store]\npath = "~/x/events.db"\n')
    assert cfg.gateway.data_dir == tmp_path / "home" / "gw"
    assert cfg.store.path == tmp_path / "home" / "x" / "events.db"


# Errors: each names the file, the key and the line.

ERRORS = [
    pytest.param(
        '[gateway]\nsite = "lobby"\n\n[presence]\nenter_rssi = -80\nloudness = 3\n',
        ":6:",
        "presence.loudness",
        id="unknown-key",
    ),
    pytest.param(
        '[gateway]\nsite = "lobby"\n\n[webui]\nlisten = "0.0.0.0"\n',
        ":4:",
        "[webui]",
        id="unknown-section",
    ),
    pytest.param(
        '[presence]\nenter_rssi = "loud"\n',
        ":2:",
        "presence.enter_rssi",
        id="string-for-number",
    ),
    pytest.param(
        "[presence]\n\nexit_timeout_s = true\n",
        ":3:",
        "presence.exit_timeout_s",
        id="bool-for-number",
    ),
    pytest.param(
        "[presence]\nmax_devices = true\n",
        ":2:",
        "presence.max_devices",
        id="bool-for-integer",
    ),
    pytest.param(
        "[presence]\ncheckin_samples = 2.5\n",
        ":2:",
        "presence.checkin_samples",
        id="float-for-integer",
    ),
    pytest.param(
        "[presence]\nenter_rssi = -80\nexit_rssi = -70\n",
        ":2:",
        "exit_rssi",
        id="exit-above-enter",
    ),
    pytest.param(
        "[presence]\nexit_timeout_s = 10\nenter_rssi = -200\n",
        ":3:",
        "enter_rssi",
        id="rssi-out-of-range",
    ),
    pytest.param(
        "[presence]\nexit_timeout_s = 0\n",
        ":2:",
        "exit_timeout_s",
        id="zero-timeout",
    ),
    pytest.param(
        '[gateway]\nsite = "lobby"\nid = "hanoi/lobby"\n',
        ":3:",
        "gateway.id",
        id="slash-in-gateway-id",
    ),
    pytest.param(
        '[gateway]\nsite = "a b"\n',
        ":2:",
        "gateway.site",
        id="space-in-site",
    ),
    pytest.param(
        '[store]\nsynchronous = "fast"\n',
        ":2:",
        "store.synchronous",
        id="synchronous-fast",
    ),
    pytest.param(
        "[store]\nretention_days = -1\n",
        ":2:",
        "retention_days",
        id="negative-retention",
    ),
    pytest.param(
        "[store]\nsynchronous = 'full'\ncommit_interval_s = -0.5\n",
        ":3:",
        "commit_interval_s",
        id="negative-commit-interval",
    ),
    pytest.param(
        "[gateway]\ndata_dir = 5\n",
        ":2:",
        "gateway.data_dir",
        id="number-for-path",
    ),
    pytest.param(
        "gateway = 1\n",
        ":1:",
        "gateway",
        id="section-as-value",
    ),
    pytest.param(
        "[store]\npath = \n",
        ":2:",
        "not valid TOML",
        id="bad-toml",
    ),
    pytest.param(
        "[store]\nretention_days = 1\nretention_days = 2\n",
        ":3:",
        "not valid TOML",
        id="duplicate-key",
    ),
    pytest.param("[link]\nmargin = 0\n", ":2:", "margin must be > 0", id="link-margin"),
    pytest.param(
        "[link]\nmargin = 2\nenabled = false\n", ":3:", "[presence] link", id="link-enabled"
    ),
]


@pytest.mark.parametrize(("text", "line", "names"), ERRORS)
def test_errors_name_the_key_and_line(tmp_path: Path, text: str, line: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}{line}"), message
    assert names in message
    assert "\n" not in message


def test_parse_without_a_path_names_config() -> None:
    with pytest.raises(ConfigError, match=r"^<config>:2: unknown key presence\.bogus"):
        parse("[presence]\nbogus = 1\n")


def test_an_unknown_key_error_lists_the_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"known: .*enter_rssi.*max_devices"):
        parse("[presence]\nenter = -80\n")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load(path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\nsite = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load(path)


# Where the data lives


def test_data_dir_honours_state_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/bluezone-gateway")
    assert default_data_dir() == Path("/var/lib/bluezone-gateway")
    assert Config().gateway.data_dir == Path("/var/lib/bluezone-gateway")


def test_data_dir_takes_the_first_of_several_state_directories(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # systemd joins several StateDirectory= entries with ':'.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")
    assert default_data_dir() == Path("/var/lib/a")


def test_data_dir_falls_back_to_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / APP_DIR
    assert load(None).gateway.data_dir == tmp_path / "xdg" / APP_DIR


def test_data_dir_falls_back_to_local_share(tmp_path: Path) -> None:
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / APP_DIR


def test_db_path_defaults_to_events_db_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert Config().db_path == tmp_path / "state" / "events.db"
    cfg = parse(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n')
    assert cfg.db_path == tmp_path / "data" / "events.db"


def test_store_path_overrides_the_db_path(tmp_path: Path) -> None:
    cfg = parse(f'[gateway]\ndata_dir = "{tmp_path}"\n[store]\npath = "/srv/gw.db"\n')
    assert cfg.db_path == Path("/srv/gw.db")
