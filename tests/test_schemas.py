"""The published MQTT contract: JSON Schemas, the AsyncAPI document, docs/mqtt.md, real events."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from gateway import schemas
from gateway.model import App, EventType, Platform, PresenceEvent
from gateway.store import EVENT_FIELDS, EventStore

PAYLOADS = ("event", "status", "health", "cmd-replay", "cmd-result")
"""The payload schemas; `schemas.NAMES` also has the AsyncAPI document."""
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "mqtt.md"
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ISO_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
T0_UNIX = 1_596_870_000.0  # 2020-08-08T07:00:00Z

ENTRY: dict[str, Any] = {
    "id": "0173ccde-bc1f-7269-b2a7-4de452e6b438",
    "seq": 41,
    "gateway": "gw-001",
    "site": "hanoi-hq",
    "type": "entry",
    "ts": "2020-08-08T07:00:16.020Z",
    "app": "bluezone",
    "platform": "android",
    "rolling_id": "b9a665d754fe65e665d76a45",
    "rssi_max": -61,
    "sightings": 4,
    "first_seen": "2020-08-08T07:00:14.613Z",
    "last_seen": "2020-08-08T07:00:16.020Z",
    "dwell_s": None,
    "entry_id": None,
    "checked_in": None,
    "clock_synced": True,
    "direction": None,
    "visit_id": "0173ccde-bc1f-7269-b2a7-4de452e6b438",
    "continues": None,
}
EXIT: dict[str, Any] = {
    **ENTRY,
    "id": "0173ccdf-93ca-70c5-a6a3-a4506513270e",
    "seq": 42,
    "type": "exit",
    "ts": "2020-08-08T07:00:41.215Z",
    "rssi_max": -52,
    "sightings": 212,
    "last_seen": "2020-08-08T07:00:41.215Z",
    "dwell_s": 25.2,
    "entry_id": ENTRY["id"],
    "checked_in": False,
}
ONLINE: dict[str, Any] = {
    "state": "online",
    "gateway": "gw-001",
    "site": "hanoi-hq",
    "version": "0.2.0",
    "boot_time": "2020-08-08T06:58:02.114Z",
    "ts": "2020-08-08T06:58:05.902Z",
    "reason": None,
}
OFFLINE: dict[str, Any] = {**ONLINE, "state": "offline", "reason": "shutdown"}
HEALTH: dict[str, Any] = {
    "gateway": "gw-001",
    "site": "hanoi-hq",
    "version": "0.2.0",
    "ts": "2020-08-08T08:30:05.902Z",
    "uptime_s": 5523.8,
    "clock_synced": True,
    "disk_free_mb": 24576.3,
    "present": 3,
    "present_ids": 4,
    "adverts_per_s": 41.7,
    "outbox": {
        "depth": 1280,
        "oldest_unsynced_ts": "2020-08-08T07:12:44.080Z",
        "oldest_unsynced_age_s": 4641.8,
        "last_puback_ts": "2020-08-08T07:12:40.517Z",
        "first_seq": 1,
        "last_seq": 1409,
    },
    "scanners": [
        {
            "adapter": "DC:A6:32:0B:1E:5F",
            "name": "hci1",
            "state": "scanning",
            "adverts": 230114,
            "malformed": 2,
            "recoveries": {"restart discovery": 1, "power-cycle": 1, "re-open": 1},
            "last_advert_age_s": 0.2,
        },
        {
            "adapter": "hci0",
            "name": "hci0",
            "state": "recovering",
            "adverts": 198220,
            "malformed": 0,
            "recoveries": {"stall": 1, "restart discovery": 1},
            "last_advert_age_s": 75.3,
        },
    ],
    "counters": {
        "dropped_adverts": 0,
        "dropped_unsynced_events": 0,
        "publish_failures": 3,
        "reconnects": 4,
        "recoveries": 4,
    },
}
REPLAY: dict[str, Any] = {"from_seq": 42, "to_seq": 43, "request_id": "gap-gw-001-42"}
RESULT: dict[str, Any] = {
    "command": "replay",
    "request_id": "gap-gw-001-42",
    "ok": True,
    "error": None,
    "published": 2,
    "missing": 0,
    "ts": "2020-08-08T07:15:00.412Z",
}
REJECTED: dict[str, Any] = {
    **RESULT,
    "command": "reboot",
    "request_id": None,
    "ok": False,
    "error": "unknown command 'reboot' (known: replay)",
    "published": None,
    "missing": None,
}
EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("event", ENTRY),
    ("event", EXIT),
    ("event", {**ENTRY, "future_field": "ignored"}),  # fields may be added
    (
        "event",
        {
            **ENTRY,
            "app": "gaen",
            "platform": None,
            "rolling_id": "0123456789abcdef0123456789abcdef",
            "clock_synced": False,
            "direction": "in",
        },
    ),
    ("event", {**ENTRY, "platform": "ios", "rolling_id": None}),  # iPhone before its GATT read
    (  # the phone's next rolling ID, linked to its previous one
        "event",
        {
            **ENTRY,
            "id": "0173cce7-0000-7000-8000-000000000000",
            "seq": 57,
            "rolling_id": "0123456789abcdef01234567",
            "continues": ENTRY["rolling_id"],
        },
    ),
    ("event", {**EXIT, "app": "bluetrace", "rolling_id": None, "entry_id": None, "dwell_s": None}),
    ("status", ONLINE),
    ("status", OFFLINE),
    ("status", {**OFFLINE, "reason": "connection lost"}),
    ("health", HEALTH),
    (
        "health",
        {
            **HEALTH,
            "outbox": {
                "depth": 0,
                "oldest_unsynced_ts": None,
                "oldest_unsynced_age_s": None,
                "last_puback_ts": None,
                "first_seq": None,
                "last_seq": None,
            },
            "scanners": [{**HEALTH["scanners"][0], "adapter": "simulator", "state": "simulated"}],
        },
    ),
    (
        "health",
        {
            **HEALTH,
            "uptime_s": 0.8,
            "scanners": [
                {
                    "adapter": "hci0",
                    "name": None,
                    "state": "starting",
                    "adverts": 0,
                    "malformed": 0,
                    "recoveries": {},
                    "last_advert_age_s": 0.8,
                }
            ],
        },
    ),
    ("cmd-replay", REPLAY),
    ("cmd-replay", {"from_seq": 1, "to_seq": 100_000}),
    ("cmd-result", RESULT),
    ("cmd-result", REJECTED),
]


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schemas.load(name), format_checker=FormatChecker())


def failing_keys(name: str, payload: Any) -> set[str]:
    """Dotted paths of the keys that make ``payload`` invalid (a missing key counts too)."""
    keys: set[str] = set()
    for error in validator(name).iter_errors(payload):
        path = [str(part) for part in error.absolute_path]
        if error.validator == "required":
            keys.update(
                ".".join([*path, key]) for key in error.validator_value if key not in error.instance
            )
        else:
            keys.add(".".join(path))
    return keys


def changed(payload: dict[str, Any], path: str, value: Any = ...) -> dict[str, Any]:
    """A deep copy of ``payload`` with the dotted ``path`` set to ``value`` (deleted if omitted)."""
    out = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


def walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every (JSON pointer, value) in a JSON document."""
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local ``#/a/b`` reference."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def property_schemas(schema: dict[str, Any], where: str = "") -> Iterator[tuple[str, Any]]:
    """Every property definition in ``properties``, nested objects and array items included."""
    for key, sub in schema.get("properties", {}).items():
        yield f"{where}{key}", sub
        yield from property_schemas(sub, f"{where}{key}.")
        if "items" in sub:
            yield from property_schemas(sub["items"], f"{where}{key}[].")


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return schemas.load("asyncapi")


# --- the schemas themselves -----------------------------------------------------------------


@pytest.mark.parametrize("name", PAYLOADS)
def test_schema_is_valid_draft_2020_12(name):
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://bluezone-gateway.example/schemas/v1/{name}.json"
    assert schema["title"]
    assert schema["description"]
    assert schema["type"] == "object"
    assert set(schema["required"]) <= set(schema["properties"])


@pytest.mark.parametrize("name", PAYLOADS)
def test_every_property_is_described_and_objects_list_required_keys(name):
    schema = schemas.load(name)
    for where, sub in property_schemas(schema):
        assert sub.get("description"), f"{name}: {where} has no description"
        if sub.get("type") == "object" and "properties" in sub:
            assert set(sub["required"]) == set(sub["properties"]), where
        if "items" in sub and "properties" in sub["items"]:
            assert set(sub["items"]["required"]) == set(sub["items"]["properties"]), where


@pytest.mark.parametrize("name", PAYLOADS)
def test_unknown_keys_are_allowed_for_later_versions(name):
    for _, sub in walk(schemas.load(name)):
        if isinstance(sub, dict) and "properties" in sub and "required" in sub:
            assert sub.get("additionalProperties", True) is True


def test_shared_definitions_are_the_same_in_every_schema():
    """Each file is self-contained, so its copies of the common definitions must agree."""
    for key, pattern in (("isoTime", ISO_RE), ("name", NAME_RE)):
        copies = [d[key] for s in map(schemas.load, PAYLOADS) if key in (d := s.get("$defs", {}))]
        assert len(copies) >= 2
        assert all(c == copies[0] for c in copies)
        assert copies[0]["pattern"] == pattern


def test_the_event_schema_lists_the_stores_fields_in_contract_order():
    schema = schemas.load("event")
    assert schema["required"] == list(EVENT_FIELDS)
    assert list(schema["properties"]) == list(EVENT_FIELDS)


def test_every_payload_names_every_key_required():
    """Null stands for "not applicable": a consumer never has to ask whether a key is there."""
    for name in PAYLOADS:
        schema = schemas.load(name)
        optional = set(schema["properties"]) - set(schema["required"])
        assert optional == ({"request_id"} if name == "cmd-replay" else set()), name


# --- the loader -------------------------------------------------------------------------------


def test_load_finds_every_shipped_file_as_a_package_resource():
    shipped = {
        entry.name
        for entry in resources.files("gateway.schemas").iterdir()
        if entry.name.endswith(".json")
    }
    assert shipped == {f"{name}.json" for name in schemas.NAMES}
    assert schemas.load("event.json") == schemas.load("event")


def test_load_returns_a_fresh_copy():
    schemas.load("event")["title"] = "changed"
    assert schemas.load("event")["title"] != "changed"


@pytest.mark.parametrize("name", ["nope", "../store", "event.yaml", ""])
def test_load_refuses_other_names(name):
    with pytest.raises(ValueError, match="no schema named"):
        schemas.load(name)


# --- examples, good and broken ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "payload"), EXAMPLES)
def test_a_realistic_payload_validates(name, payload):
    assert failing_keys(name, payload) == set()


BROKEN: list[tuple[str, dict[str, Any], str, Any, str]] = [
    # (schema, good payload, dotted key to change, new value or ... to delete, failing key)
    ("event", ENTRY, "ts", "2020-08-08T07:00:16Z", "ts"),  # no milliseconds
    ("event", ENTRY, "ts", "2020-08-08T14:00:16.020+07:00", "ts"),  # not UTC
    ("event", ENTRY, "ts", "2020-08-08 07:00:16.020Z", "ts"),
    ("event", EXIT, "last_seen", 1596870041.215, "last_seen"),  # Unix seconds, not ISO
    ("event", ENTRY, "type", "visit", "type"),
    ("event", ENTRY, "app", "covidsafe", "app"),
    ("event", ENTRY, "platform", "windows", "platform"),
    ("event", ENTRY, "seq", 0, "seq"),
    ("event", ENTRY, "seq", 41.5, "seq"),
    ("event", ENTRY, "id", ..., "id"),
    ("event", ENTRY, "direction", ..., "direction"),
    ("event", ENTRY, "visit_id", ..., "visit_id"),
    ("event", ENTRY, "visit_id", "gw-001:41", "visit_id"),
    ("event", EXIT, "continues", "b9a665d754fe65e665d76a45", "continues"),  # entries only
    ("event", ENTRY, "continues", "B9A665D754FE65E665D76A45", "continues"),
    ("event", ENTRY, "id", "not-a-uuid", "id"),
    ("event", ENTRY, "id", "0173ccde-bc1f-4269-b2a7-4de452e6b438", "id"),  # a UUIDv4
    ("event", ENTRY, "gateway", "gw/001", "gateway"),  # would break the topic tree
    ("event", ENTRY, "site", "", "site"),
    ("event", ENTRY, "rolling_id", "B9A665D754FE65E665D76A45", "rolling_id"),  # upper case
    ("event", ENTRY, "rolling_id", "0123456789abcdef0123456789abcdef", "rolling_id"),  # 16 bytes
    ("event", ENTRY, "sightings", 0, "sightings"),
    ("event", ENTRY, "clock_synced", 1, "clock_synced"),
    ("event", ENTRY, "dwell_s", 3.5, "dwell_s"),  # exit fields stay null on entries
    ("event", ENTRY, "checked_in", False, "checked_in"),
    ("event", EXIT, "dwell_s", -0.1, "dwell_s"),
    ("event", EXIT, "entry_id", "gw-001:41", "entry_id"),
    ("status", ONLINE, "state", "up", "state"),
    ("status", ONLINE, "boot_time", ..., "boot_time"),
    ("status", ONLINE, "reason", "shutdown", "reason"),  # online has no reason
    ("status", OFFLINE, "reason", None, "reason"),  # offline says why
    ("status", OFFLINE, "ts", "2020-08-08T18:00:01.337", "ts"),
    ("health", HEALTH, "outbox.depth", ..., "outbox.depth"),
    ("health", HEALTH, "outbox.first_seq", 0, "outbox.first_seq"),
    ("health", HEALTH, "outbox.last_puback_ts", "yesterday", "outbox.last_puback_ts"),
    ("health", HEALTH, "scanners.0.state", "broken", "scanners.0.state"),
    ("health", HEALTH, "scanners.1.recoveries.stall", -1, "scanners.1.recoveries.stall"),
    ("health", HEALTH, "counters.reconnects", ..., "counters.reconnects"),
    ("health", HEALTH, "present", -1, "present"),
    ("health", HEALTH, "clock_synced", "yes", "clock_synced"),
    ("cmd-replay", REPLAY, "from_seq", 0, "from_seq"),
    ("cmd-replay", REPLAY, "from_seq", "42", "from_seq"),
    ("cmd-replay", REPLAY, "to_seq", ..., "to_seq"),
    ("cmd-replay", REPLAY, "request_id", 7, "request_id"),
    ("cmd-result", RESULT, "error", "oops", "error"),  # ok true has no error
    ("cmd-result", REJECTED, "error", None, "error"),  # ok false says why
    ("cmd-result", REJECTED, "published", 0, "published"),  # a rejected command did nothing
    ("cmd-result", RESULT, "missing", -1, "missing"),
    ("cmd-result", RESULT, "request_id", ..., "request_id"),
    ("cmd-result", RESULT, "ts", ..., "ts"),
]


@pytest.mark.parametrize(("name", "payload", "path", "value", "key"), BROKEN)
def test_a_broken_payload_fails_on_the_right_key(name, payload, path, value, key):
    assert failing_keys(name, changed(payload, path, value)) == {key}


@pytest.mark.parametrize("payload", [[], "replay", None, 42])
def test_a_payload_that_is_not_an_object_fails(payload):
    for name in PAYLOADS:
        assert failing_keys(name, payload) == {""}


def test_replay_range_rules_that_json_schema_cannot_state():
    backwards = {"from_seq": 43, "to_seq": 42}
    assert failing_keys("cmd-replay", backwards) == set()  # the schema cannot compare keys...
    error = schemas.replay_range_error(backwards)  # ...so the gateway checks it as well
    assert error is not None
    assert error.startswith("to_seq: ")
    too_many = {"from_seq": 1, "to_seq": schemas.MAX_REPLAY_RANGE + 1}
    assert (schemas.replay_range_error(too_many) or "").startswith("to_seq: ")
    assert schemas.replay_range_error({"from_seq": 1, "to_seq": schemas.MAX_REPLAY_RANGE}) is None
    assert schemas.replay_range_error(REPLAY) is None
    assert schemas.replay_range_error({"from_seq": 7, "to_seq": 7}) is None
    assert str(schemas.MAX_REPLAY_RANGE) in schemas.load("cmd-replay")["description"]


# --- the AsyncAPI document ----------------------------------------------------------------------

CHANNELS = {
    # channel: (topic suffix, gateway's action, qos, retain, payload schema)
    "events": ("events", "send", 1, False, "event"),
    "status": ("status", "send", 1, True, "status"),
    "health": ("health", "send", 0, False, "health"),
    "cmdReplay": ("cmd/replay", "receive", 1, False, "cmd-replay"),
    "cmdResult": ("cmd-result", "send", 1, False, "cmd-result"),
}


def test_asyncapi_declares_version_3_1_0(asyncapi):
    assert asyncapi["asyncapi"] == "3.1.0"
    assert asyncapi["defaultContentType"] == "application/json"


def test_every_ref_in_asyncapi_points_to_a_shipped_schema_or_into_the_document(asyncapi):
    external = set()
    for where, node in walk(asyncapi):
        if not (isinstance(node, dict) and "$ref" in node):
            continue
        ref = node["$ref"]
        if ref.startswith("#/"):
            assert resolve(asyncapi, ref) is not None, f"{where}: {ref}"
            continue
        match = re.fullmatch(r"\./([a-z-]+)\.json", ref)
        assert match, f"{where}: {ref} is neither local nor ./<schema>.json"
        assert match[1] in PAYLOADS, f"{where}: {ref} is not a shipped payload schema"
        assert resources.files("gateway.schemas").joinpath(f"{match[1]}.json").is_file()
        external.add(match[1])
    assert external == set(PAYLOADS)


def test_every_channel_message_is_used_by_an_operation(asyncapi):
    used = set()
    for op_id, op in asyncapi["operations"].items():
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), op_id
            used.add(message["$ref"])
    declared = {
        f"#/channels/{channel}/messages/{message}"
        for channel, body in asyncapi["channels"].items()
        for message in body["messages"]
    }
    assert declared == used


@pytest.mark.parametrize("channel", CHANNELS)
def test_channel_topic_qos_retain_and_payload(asyncapi, channel):
    suffix, action, qos, retain, payload = CHANNELS[channel]
    body = asyncapi["channels"][channel]
    assert body["address"] == f"bluezone/v1/{{site}}/{{gatewayId}}/{suffix}"
    assert set(re.findall(r"{(\w+)}", body["address"])) == set(body["parameters"])
    ops = [op for op in asyncapi["operations"].values() if op["channel"]["$ref"].endswith(channel)]
    assert [op["action"] for op in ops] == [action]
    binding = ops[0]["bindings"]["mqtt"]
    assert (binding["qos"], binding["retain"], binding["bindingVersion"]) == (qos, retain, "0.2.0")
    for message in body["messages"].values():
        assert resolve(asyncapi, message["$ref"])["payload"] == {"$ref": f"./{payload}.json"}


def test_the_replay_command_is_answered_on_cmd_result(asyncapi):
    reply = asyncapi["operations"]["receiveCmdReplay"]["reply"]
    assert reply["channel"] == {"$ref": "#/channels/cmdResult"}


def test_server_is_mqtt5_over_tls_with_the_status_as_last_will(asyncapi):
    (server,) = asyncapi["servers"].values()
    assert (server["protocol"], server["protocolVersion"]) == ("mqtts", "5.0")
    assert server["host"].endswith(":8883")
    binding = server["bindings"]["mqtt"]
    assert binding["bindingVersion"] == "0.2.0"
    assert isinstance(binding["cleanSession"], bool)
    assert binding["keepAlive"] > 0
    will = binding["lastWill"]
    assert (will["qos"], will["retain"]) == (1, True)
    message = json.loads(will["message"])
    assert failing_keys("status", message) == set()
    assert (message["state"], message["reason"]) == ("offline", "connection lost")
    assert binding["clientId"] == message["gateway"]
    status_address = asyncapi["channels"]["status"]["address"]
    assert will["topic"] == status_address.format(
        site=message["site"], gatewayId=message["gateway"]
    )


def test_asyncapi_examples_validate_against_their_payload_schemas(asyncapi):
    count = 0
    for name, message in asyncapi["components"]["messages"].items():
        schema = message["payload"]["$ref"].removeprefix("./").removesuffix(".json")
        for example in message["examples"]:
            assert failing_keys(schema, example["payload"]) == set(), (name, example["name"])
            count += 1
    assert count >= len(PAYLOADS)


# --- docs/mqtt.md ---------------------------------------------------------------------------------

DOC_EXAMPLE_RE = re.compile(r"<!-- schema: ([a-z-]+) -->\n```json\n(.*?)\n```", re.DOTALL)


def test_the_examples_in_docs_mqtt_md_validate():
    found = DOC_EXAMPLE_RE.findall(DOC.read_text(encoding="utf-8"))
    for name, text in found:
        assert failing_keys(name, json.loads(text)) == set(), text
    assert {name for name, _ in found} == set(PAYLOADS)


# --- events made by the real store --------------------------------------------------------------


def presence(type_: EventType, at: float, **kw: Any) -> PresenceEvent:
    fields: dict[str, Any] = {
        "key": "b9a665d754fe65e665d76a45",
        "visit": 1,
        "app": App.BLUEZONE,
        "platform": Platform.ANDROID,
        "rolling_id": "b9a665d754fe65e665d76a45",
        "rssi_max": -58,
        "sightings": 12,
        "first_seen": 0.613,
        "last_seen": at,
    }
    fields.update(kw)
    return PresenceEvent(type=type_, at=at, **fields)


VISITS: dict[str, dict[str, Any]] = {
    "bluezone android": {},
    "bluezone iphone, id learned after the entry": {"platform": Platform.IOS, "rolling_id": None},
    "gaen": {
        "app": App.GAEN,
        "platform": None,
        "rolling_id": "0123456789abcdef0123456789abcdef",
        "direction": "in",
    },
    "bluetrace": {"app": App.BLUETRACE, "rolling_id": None, "direction": "out"},
}


@pytest.mark.parametrize("visit", VISITS)
@pytest.mark.parametrize("clock_synced", [True, False])
def test_events_made_by_the_store_validate(tmp_path, visit, clock_synced):
    kw = VISITS[visit]
    entry = presence(EventType.ENTRY, 2.02, **kw)
    exit_kw = {**kw, "rssi_max": -49, "sightings": 212}
    if visit.startswith("bluezone iphone"):
        exit_kw["rolling_id"] = "b9a665d754fe65e665d76a45"  # read over GATT meanwhile
    exit_ = presence(EventType.EXIT, 41.215, checked_in=True, **exit_kw)

    def wall(t: float) -> float:
        return t + T0_UNIX

    with EventStore.open(
        tmp_path / "events.db", gateway="gw-001", site="hanoi-hq", commit_interval_s=3600
    ) as store:
        appended = store.append([entry, exit_], wall=wall, clock_synced=clock_synced)
        store.flush()
        stored = list(store.events())
    assert stored == appended
    assert [e["type"] for e in stored] == ["entry", "exit"]
    for event in stored:
        assert failing_keys("event", event) == set(), event
        assert json.loads(json.dumps(event)) == event  # what goes on the wire is the same
    assert stored[1]["entry_id"] == stored[0]["id"]
    assert stored[1]["seq"] == stored[0]["seq"] + 1


def test_an_exit_whose_entry_the_store_never_saw_validates(tmp_path):
    with EventStore.open(
        tmp_path / "events.db", gateway="gw-001", site="hanoi-hq", commit_interval_s=3600
    ) as store:
        store.append(
            [presence(EventType.EXIT, 41.215)], wall=lambda t: t + T0_UNIX, clock_synced=True
        )
        store.flush()
        (event,) = store.events()
    assert (event["entry_id"], event["dwell_s"]) == (None, None)
    assert failing_keys("event", event) == set()
