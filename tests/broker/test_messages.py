"""Payload models: what the security work added to the wire contract."""

from __future__ import annotations

from actimesh.broker.asyncapi import payload_schemas
from actimesh.broker.messages import AlertKind, DeviceKind


def test_command_schema_documents_a_required_64_byte_signature() -> None:
    command = payload_schemas()["Command"]
    sig = command["properties"]["sig"]
    assert (sig["type"], sig["format"], sig["minLength"], sig["maxLength"]) == (
        "string",
        "binary",
        64,
        64,
    )
    assert "Ed25519" in sig["description"]
    assert "sig" in command["required"]
    assert command["additionalProperties"] is False


def test_storm_alerts_and_holster_sensors_are_on_the_wire() -> None:
    assert AlertKind("storm") is AlertKind.STORM
    assert DeviceKind("holster") is DeviceKind.HOLSTER
    assert DeviceKind.HOLSTER.value in payload_schemas()["DeviceKind"]["enum"]
