"""deploy/gateway.toml documents every key with its default, and stays loadable."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gateway import config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "gateway.toml"


def test_commented_config_names_every_key_with_its_default():
    text = DEPLOY.read_text()
    # Uncomment "# key = value" lines (not the prose) and load the result.
    active = re.sub(r"^# (\w+ = .*)$", r"\1", text, flags=re.MULTILINE)
    loaded = config.parse(active, DEPLOY)
    defaults = config.Config()
    assert loaded.presence == defaults.presence
    assert dataclasses.replace(loaded.store, path=None) == defaults.store
    assert loaded.scanner == defaults.scanner
    assert loaded.mqtt == defaults.mqtt
    assert loaded.web == defaults.web
    assert loaded.indicator == defaults.indicator
    for section in ("gateway", "store", "presence", "scanner", "mqtt", "web", "indicator"):
        for field in dataclasses.fields(getattr(defaults, section)):
            assert re.search(rf"^# (e\.g\. )?{field.name} = ", text, re.MULTILINE), field.name


def test_shipped_file_as_is_gives_the_defaults():
    assert config.load(DEPLOY).presence == config.Config().presence
