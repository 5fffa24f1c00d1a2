"""The published MQTT contract: JSON Schemas of every payload and the AsyncAPI document.

The files ship inside the package (docs/mqtt.md explains them for central-server developers):

- ``event.json``: one entry or exit on ``{prefix}/{site}/{gateway}/events``;
- ``status.json``: the retained ``…/status`` (and the Last Will);
- ``health.json``: the periodic ``…/health`` report;
- ``cmd-replay.json``: the ``…/cmd/replay`` command from central;
- ``cmd-result.json``: the gateway's answer on ``…/cmd-result``;
- ``asyncapi.json``: the AsyncAPI 3.1.0 document that ties them to topics, QoS and retain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

NAMES: Final = ("event", "status", "health", "cmd-replay", "cmd-result", "asyncapi")
"""Names that `load` accepts: the shipped files without ``.json``."""

MAX_REPLAY_RANGE: Final = 100_000
"""Most seqs one ``cmd/replay`` may ask for (``to_seq - from_seq + 1``)."""


def load(name: str) -> dict[str, Any]:
    """Return a fresh copy of a shipped schema (or of the AsyncAPI document).

    Args:
        name: One of `NAMES`, with or without ``.json`` (``"event"``, ``"cmd-replay.json"``).

    Raises:
        ValueError: ``name`` is not a shipped schema.
    """
    stem = name.removesuffix(".json")
    if stem not in NAMES:
        msg = f"no schema named {name!r} (known: {', '.join(NAMES)})"
        raise ValueError(msg)
    text = resources.files(__name__).joinpath(f"{stem}.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def replay_range_error(command: Mapping[str, Any]) -> str | None:
    """Check the rules of a replay command that JSON Schema cannot state; None when it is fine.

    Call it after validating ``command`` against ``cmd-replay.json``: it compares ``from_seq``
    and ``to_seq`` and returns the ``error`` text of the ``cmd-result``, naming the key.
    """
    from_seq, to_seq = command["from_seq"], command["to_seq"]
    if to_seq < from_seq:
        return f"to_seq: must be >= from_seq ({from_seq}), not {to_seq}"
    if to_seq - from_seq + 1 > MAX_REPLAY_RANGE:
        return f"to_seq: at most {MAX_REPLAY_RANGE} seqs per replay, not {to_seq - from_seq + 1}"
    return None
