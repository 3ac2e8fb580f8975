"""A fuzz case, the context a generator works in, and the valid payload it starts from."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actimesh.broker.messages import (
    Ack,
    Command,
    DeviceKind,
    Event,
    Message,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.topics import DeviceChannel
from actimesh.fuzz._msgpack import _ALL_FIELDS, _FIELDS, _ODD_KEYS, _STRINGS, Pairs, _join, _pack
from actimesh.fuzz._scenario import _EIDS, _KINDS, CENTER, EPOCH, POOL


@dataclass(frozen=True, slots=True)
class Case:
    """One fuzz input: where it goes and what it carries."""

    index: int
    generator: str
    #: The model the payload was made from (for random bytes, one picked at random).
    model: type[Message]
    #: The intake it goes to: telemetry to the telemetry handler, the rest to control.
    channel: DeviceChannel
    topic: bytes
    payload: bytes
    #: The fuzz clock when this case is fed to the engine.
    now: float

    @property
    def topic_text(self) -> str:
        return self.topic.decode(errors="replace")


@dataclass(slots=True)
class _Ctx:
    r: random.Random
    model: type[Message]
    base: dict[str, Any]
    now: float
    device: str

    def pairs(self) -> Pairs:
        return [(_pack(k), _pack(v)) for k, v in self.base.items()]

    def valid(self) -> bytes:
        return _pack(self.base)

    def field(self, names: tuple[str, ...] = ()) -> str:
        """One of ``names`` (any field when empty), preferring those the payload has."""
        present = [n for n in names if n in self.base] if names else list(self.base)
        if present:
            return self.r.choice(present)
        own = [n for n in names if n in _FIELDS[self.model]]
        return self.r.choice(own or list(_FIELDS[self.model]))

    def replace(self, name: str, value: bytes) -> bytes:
        """The payload with field ``name`` set to the raw msgpack ``value``."""
        key = _pack(name)
        return _join([*((k, v) for k, v in self.pairs() if k != key), (key, value)])


def _random_value(r: random.Random, depth: int = 0) -> Any:
    """A random msgpack value, recursive like hypothesis's ``st.recursive``."""
    leaves: tuple[Callable[[], Any], ...] = (
        lambda: None,
        lambda: r.random() < 0.5,
        lambda: r.choice((0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, r.randrange(2**64))),
        lambda: r.choice(
            (
                r.uniform(-200, 200),
                math.nan,
                math.inf,
                -math.inf,
                -0.0,
                5e-324,
                sys.float_info.max,
                EPOCH + r.uniform(-1e4, 1e4),
            )
        ),
        lambda: "".join(
            chr(r.choice((r.randrange(32, 127), r.randrange(0x80, 0x3000))))
            for _ in range(r.randrange(12))
        ),
        lambda: r.randbytes(r.randrange(20)),
        lambda: r.choice(_STRINGS),
    )
    pick = r.randrange(len(leaves) + (3 if depth < 3 else 0))
    if pick < len(leaves):
        return leaves[pick]()
    if pick == len(leaves):
        keys = _ALL_FIELDS + _ODD_KEYS[:6]
        return {r.choice(keys): _random_value(r, depth + 1) for _ in range(r.randrange(6))}
    return [_random_value(r, depth + 1) for _ in range(r.randrange(6))]


def _telemetry(r: random.Random, now: float, _device: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "ts": now - r.uniform(0, 2),
        "state": r.choice(("off", "buffering", "recording")),
    }
    if r.random() < 0.9:
        body |= _fix(r)
    if r.random() < 0.5:
        body["batt"] = r.uniform(0, 100)
    return body


def _fix(r: random.Random) -> dict[str, float]:
    return {
        "lat": CENTER[0] + r.uniform(-4e-5, 4e-5),
        "lon": CENTER[1] + r.uniform(-6e-5, 6e-5),
        "acc": r.uniform(0, 10),
    }


def _presence(r: random.Random, now: float, device: str) -> dict[str, Any]:
    kind = _KINDS.get(device, DeviceKind.BODY_CAM)
    body: dict[str, Any] = {
        "v": 1,
        "online": r.random() < 0.85,
        "ts": now,
        "device_kind": kind.value,
        "unit": "fz-unit-1",
        "pre_roll": 30.0,
    }
    if kind is DeviceKind.CEW:
        body["paired"] = ("fz-bwc-1",)
    if not body["online"]:
        body["reason"] = r.choice(("connection_lost", "power_off"))
    return body


def _event(r: random.Random, now: float, device: str) -> dict[str, Any]:
    types: tuple[str, ...] = ("taser_draw",)
    if device == "fz-gw-1":
        types = ("emergency_lights", "collision")
    if r.random() < 0.1:
        types = ("taser_draw", "emergency_lights", "collision", "dispatch_zone")
    body: dict[str, Any] = {
        "v": 1,
        "eid": f"fz-e{r.randrange(_EIDS)}",
        "type": r.choice(types),
        "ts": now - r.uniform(0, 30),
    }
    if r.random() < 0.5:
        body |= _fix(r)
    if r.random() < 0.2:
        body["radius"] = r.uniform(1, 50)
    if r.random() < 0.1:
        body["by"] = "dispatcher 12"
    return body


def _ack(r: random.Random, now: float, _device: str) -> dict[str, Any]:
    # Often an activation the engine made (ids are deterministic), so acks find deliveries.
    aid = activation_id(r.choice(POOL)[0], f"fz-e{r.randrange(_EIDS)}")
    status = r.choice(("received", "recording", "refused"))
    body: dict[str, Any] = {"v": 1, "aid": aid, "status": status, "pre_cov": 30.0, "ts": now}
    if status == "recording":
        body["rec"] = f"r-{r.randrange(1000)}"
    elif status == "refused":
        body["detail"] = r.choice(("storage full", "bad_signature: forged", "expired"))
    return body


def _command(r: random.Random, now: float, _device: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "aid": activation_id("fz-cew-1", "fz-e1"),
        "eid": "fz-e1",
        "src": "fz-cew-1",
        "type": "taser_draw",
        "ets": now - 1,
        "pre": 30.0,
        "reason": "proximity",
        "dist": r.uniform(0, 9),
        "ts": now,
        "exp": now + 300,
    }
    if "sig" in Command.model_fields:  # signed commands: 64 bytes of forged signature
        body["sig"] = r.randbytes(64)
    return body


_BASES: dict[type[Message], Callable[[random.Random, float, str], dict[str, Any]]] = {
    Telemetry: _telemetry,
    Presence: _presence,
    Event: _event,
    Ack: _ack,
    Command: _command,
}
