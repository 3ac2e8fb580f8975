"""docs/asyncapi.yaml says what the code does: same schemas, same topics, every message."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from actimesh.adapters import (
    OWNTRACKS_FILTER,
    OWNTRACKS_MAX_BYTES,
    owntracks_device,
    owntracks_topic,
    parse_owntracks,
)
from actimesh.broker.asyncapi import main, payload_schemas, replace_schemas
from actimesh.broker.messages import MESSAGE_TYPES
from actimesh.broker.topics import Topics, device_client_id
from actimesh.errors import PayloadError
from actimesh.runtime.cluster import CLUSTER_MQTT

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
PARAMETERS = {"agency", "device", "eventType", "reason", "engine", "kind", "phone"}
#: The one channel that is not actimesh's own scheme: the OwnTracks app's topic and JSON.
OWNTRACKS = "owntracks"
_PARAM = re.compile(r"\{([^{}/]+)\}")

#: Every method of Topics that builds a topic, with sample arguments, and the channel
#: whose address template it must match.
TOPIC_BUILDERS: dict[str, tuple[Callable[[Topics], str], str]] = {
    "telemetry": (lambda t: t.telemetry("bc-1"), "telemetry"),
    "event": (lambda t: t.event("cew-7"), "event"),
    "presence": (lambda t: t.presence("bc-1"), "presence"),
    "command": (lambda t: t.command("bc-1"), "command"),
    "ack": (lambda t: t.ack("bc-1"), "ack"),
    "confirm": (lambda t: t.confirm("cew-7"), "confirm"),
    "alerts": (lambda t: t.alerts("no_ack"), "alerts"),
    "activations": (lambda t: t.activations("taser_draw"), "activations"),
    "activations_json": (lambda t: t.activations_json("taser_draw"), "activationsJson"),
    "deadletter": (lambda t: t.deadletter("too_old"), "deadletter"),
    "engine_status": (lambda t: t.engine_status("engine-1"), "engineStatus"),
    "slowdown": (lambda t: t.slowdown(), "slowdown"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return loaded


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _template_regex(address: str) -> re.Pattern[str]:
    parts = _PARAM.split(address)
    # split() alternates literal text and parameter names.
    pattern = "".join(re.escape(p) if i % 2 == 0 else "[^/+#]+" for i, p in enumerate(parts))
    return re.compile(pattern)


def test_document_is_asyncapi_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "actimesh"
    assert doc["info"]["version"] == "1.0.0"
    assert doc["defaultContentType"] == "application/msgpack"
    assert doc["servers"]["local"] == {
        "host": "127.0.0.1:1883",
        "protocol": "mqtt",
        "protocolVersion": "5.0",
        "description": doc["servers"]["local"]["description"],
        "security": [{"$ref": "#/components/securitySchemes/brokerAccount"}],
    }
    # Nothing reaches the managed broker without an account (no anonymous access).
    assert "anonymous access on" not in doc["servers"]["local"]["description"]
    assert doc["components"]["securitySchemes"]["brokerAccount"]["type"] == "userPassword"


def test_the_cluster_server_is_the_mqtt_3_1_1_listener_and_says_what_differs(
    doc: dict[str, Any],
) -> None:
    cluster = doc["servers"]["cluster"]
    assert cluster["protocol"] == "mqtt"
    assert cluster["protocolVersion"] == CLUSTER_MQTT == "3.1.1"
    assert set(_PARAM.findall(cluster["host"])) == set(cluster["variables"])
    assert cluster["bindings"]["mqtt"]["cleanSession"] is False
    text = " ".join(cluster["description"].split())
    for differs in (
        "No user properties",
        "No message expiry",
        "`exp`",
        "No `$share`",
        "No will for the engine status",
        "QoS",
        f"connects as `{device_client_id('demo', 'cam.7')}`",
    ):
        assert differs in text, differs
    # The MQTT 5-only binding that the description says does not apply there.
    bindings = doc["operations"]["sendCommand"]["bindings"]["mqtt"]
    assert "messageExpiryInterval" in bindings


def test_schemas_are_generated_from_the_models(doc: dict[str, Any]) -> None:
    assert doc["components"]["schemas"] == payload_schemas(), (
        "docs/asyncapi.yaml is stale: run `.venv/bin/python -m actimesh.broker.asyncapi`"
    )


def test_schemas_cover_every_payload_and_nested_type() -> None:
    names = set(payload_schemas())
    assert {model.__name__ for model in MESSAGE_TYPES.values()} <= names
    assert {
        "CameraActivation",
        "DeviceKind",
        "DeviceState",
        "ActivationReason",
        "AckStatus",
    } <= names


def test_schemas_use_no_keywords_newer_than_asyncapi_schema() -> None:
    # AsyncAPI's Schema Object is a superset of JSON Schema draft 07.
    text = yaml.safe_dump(payload_schemas())
    for keyword in ("$defs", "prefixItems", "unevaluatedProperties", "dependentRequired"):
        assert keyword not in text


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    for ref in _refs(doc):
        assert _resolve(doc, ref) is not None, ref


def test_channel_addresses_use_only_documented_parameters(doc: dict[str, Any]) -> None:
    for name, channel in doc["channels"].items():
        used = set(_PARAM.findall(channel["address"]))
        assert used <= PARAMETERS, name
        assert used == set(channel.get("parameters", {})), name
        if name != OWNTRACKS:
            assert channel["address"].startswith("am/v1/{agency}/"), name


@pytest.mark.parametrize("builder", sorted(TOPIC_BUILDERS))
def test_every_built_topic_matches_its_channel(doc: dict[str, Any], builder: str) -> None:
    build, expected = TOPIC_BUILDERS[builder]
    topic = build(Topics("metro"))
    matching = [
        name
        for name, channel in doc["channels"].items()
        if _template_regex(channel["address"]).fullmatch(topic)
    ]
    assert matching == [expected], topic


def test_every_topic_builder_is_checked() -> None:
    methods = {
        name
        for name, member in vars(Topics).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }
    # device() is what the per-device builders call; the others build filters or parse.
    not_topics = {"device", "all_devices", "parse_device", "shared"}
    assert methods - not_topics == set(TOPIC_BUILDERS)


def test_every_channel_is_built_by_topics(doc: dict[str, Any]) -> None:
    built = {channel for _, channel in TOPIC_BUILDERS.values()}
    assert built | {OWNTRACKS} == set(doc["channels"])


def test_every_message_type_is_on_some_channel(doc: dict[str, Any]) -> None:
    carried: set[str] = set()
    for channel_name, channel in doc["channels"].items():
        if channel_name == OWNTRACKS:  # the app's JSON, checked against the adapter below
            continue
        for message_ref in channel["messages"].values():
            message = _resolve(doc, message_ref["$ref"])
            schema = message["payload"]["$ref"].rsplit("/", 1)[-1]
            name = message["name"]
            # Every payload is msgpack, except the JSON mirror of activation records.
            if message["contentType"] == "application/json":
                assert name.endswith("Json")
                name = name.removesuffix("Json")
            else:
                assert message["contentType"] == "application/msgpack"
            # The message is named after the model's `kind`, its payload after the class.
            assert MESSAGE_TYPES[name].__name__ == schema
            carried.add(schema)
    assert carried == {model.__name__ for model in MESSAGE_TYPES.values()}


def test_operations_point_at_their_channels_messages(doc: dict[str, Any]) -> None:
    seen = set()
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        channel = channel_ref.rsplit("/", 1)[-1]
        seen.add(channel)
        for message in op["messages"]:
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), name
        qos = op["bindings"]["mqtt"]["qos"]
        assert qos == (0 if channel in ("telemetry", "deadletter", OWNTRACKS) else 1), name
    assert seen == set(doc["channels"])


# ---------------------------------------------------------------------- OwnTracks


def _owntracks_messages(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    channel = doc["channels"][OWNTRACKS]
    return {name: _resolve(doc, ref["$ref"]) for name, ref in channel["messages"].items()}


def test_the_owntracks_channel_is_the_adapters_topic(doc: dict[str, Any]) -> None:
    channel = doc["channels"][OWNTRACKS]
    template = _template_regex(channel["address"])
    topic = owntracks_topic("bwc-1", "pixel")
    assert template.fullmatch(topic)
    assert owntracks_device(topic.encode()) == "bwc-1"
    # What the engine and the dispatch subscribe to is the address with wildcards.
    assert _PARAM.sub("+", channel["address"]) == OWNTRACKS_FILTER
    # No other channel's address matches the app's topic.
    others = [
        n for n, c in doc["channels"].items() if _template_regex(c["address"]).fullmatch(topic)
    ]
    assert others == [OWNTRACKS]
    text = " ".join(channel["description"].split())
    for said in ("[adapters.owntracks] enabled", "owntracks/<its id>/+", "deadletter"):
        assert said in text, said
    operation = doc["operations"]["receiveOwnTracks"]
    assert operation["channel"]["$ref"] == "#/channels/owntracks"
    assert operation["bindings"]["mqtt"]["qos"] == 0


def test_every_documented_owntracks_example_parses_as_documented(doc: dict[str, Any]) -> None:
    messages = _owntracks_messages(doc)
    assert set(messages) == {"owntracksLocation", "owntracksLwt"}
    location, lwt = messages["owntracksLocation"], messages["owntracksLwt"]
    schema = location["payload"]
    assert location["contentType"] == lwt["contentType"] == "application/json"
    assert set(schema["required"]) == {"_type", "lat", "lon", "tst"}
    assert schema["additionalProperties"] is True  # the apps add fields; they are ignored
    assert {"lat", "lon", "tst", "acc", "batt"} <= set(schema["properties"])
    assert str(OWNTRACKS_MAX_BYTES) in location["description"]
    assert location["examples"]
    for example in location["examples"]:
        payload = example["payload"]
        fix = parse_owntracks(json.dumps(payload).encode())
        assert fix is not None, example["name"]
        assert (fix.lat, fix.lon, fix.ts) == (payload["lat"], payload["lon"], payload["tst"])
        assert fix.acc == payload.get("acc")
        assert fix.batt == payload.get("batt")
        # The fields the schema requires are what the parser cannot do without.
        for field in schema["required"]:
            without = {k: v for k, v in payload.items() if k != field}
            with pytest.raises(PayloadError):
                parse_owntracks(json.dumps(without).encode())
    for example in lwt["examples"]:
        assert example["payload"]["_type"] == lwt["payload"]["properties"]["_type"]["const"]
        assert parse_owntracks(json.dumps(example["payload"]).encode()) is None


def test_every_documented_owntracks_refusal_is_refused_for_that_reason(
    doc: dict[str, Any],
) -> None:
    refused = _owntracks_messages(doc)["owntracksLocation"]["x-refused"]
    assert {r["reason"] for r in refused} == {"invalid", "unsupported", "malformed"}
    described = " ".join(doc["channels"][OWNTRACKS]["description"].split())
    for case in refused:
        with pytest.raises(PayloadError) as raised:
            parse_owntracks(case["payload"].encode())
        assert raised.value.reason == case["reason"], case["why"]
        assert f"`{case['reason']}`" in described
    too_big = b'{"_type":"location","pad":"' + b"x" * OWNTRACKS_MAX_BYTES + b'"}'
    with pytest.raises(PayloadError, match="limit") as raised:
        parse_owntracks(too_big)
    assert f"`{raised.value.reason}`" in described


# ---------------------------------------------------------------------- the generator


_SAMPLE = """\
asyncapi: 3.0.0
components:
  messages:
    a: {}
  # generated
  schemas:
    Old:
      type: string

    Older:
      type: integer
  parameters:
    p: {}
"""


def test_replace_schemas_keeps_everything_else() -> None:
    new = replace_schemas(_SAMPLE, "New:\n  type: number\n")
    assert new == _SAMPLE.replace(
        "    Old:\n      type: string\n\n    Older:\n      type: integer\n",
        "    New:\n      type: number\n",
    )
    assert yaml.safe_load(new)["components"]["parameters"] == {"p": {}}


def test_replace_schemas_refuses_a_document_without_them() -> None:
    with pytest.raises(ValueError, match="schemas"):
        replace_schemas("asyncapi: 3.0.0\n", "A: {}\n")


def test_generator_rewrites_only_the_schemas(tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.yaml"
    path.write_text(_SAMPLE)
    assert main(["--check", str(path)]) == 1
    assert path.read_text() == _SAMPLE
    assert main([str(path)]) == 0
    rewritten = yaml.safe_load(path.read_text())
    assert rewritten["components"]["schemas"] == payload_schemas()
    assert rewritten["components"]["parameters"] == {"p": {}}
    assert path.read_text().startswith(_SAMPLE.split("  schemas:", maxsplit=1)[0])
    assert main(["--check", str(path)]) == 0


def test_generator_leaves_the_real_document_unchanged() -> None:
    assert main(["--check", str(DOC_PATH)]) == 0
