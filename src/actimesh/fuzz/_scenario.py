"""The world a fuzz run plays in: the inbound models, the fuzz clock, the agency and its
fleet, and the channels payloads arrive on."""

from __future__ import annotations

from actimesh.broker.messages import (
    Ack,
    Command,
    DeviceKind,
    Event,
    Message,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import DeviceChannel

#: The inbound payload models: the engine's intake and, for Command, the devices'.
INBOUND: tuple[type[Message], ...] = (Telemetry, Presence, Event, Ack, Command)

#: The fuzz clock: case ``i`` is fed at ``EPOCH + i * STEP_S``. Deterministic, and slow
#: enough that commands expire and rate budgets refill during a run, as they would live.
EPOCH = 1_750_000_000.0
STEP_S = 0.01
AGENCY = "fuzz"
CENTER = (51.0447, -114.0719)
#: The fuzzed fleet. Device topics name only these: an unregistered id is the broker
#: ACL's to refuse, and the engine keeps a record of every device it hears from.
POOL: tuple[tuple[str, DeviceKind], ...] = (
    ("fz-bwc-1", DeviceKind.BODY_CAM),
    ("fz-bwc-2", DeviceKind.BODY_CAM),
    ("fz-bwc-3", DeviceKind.BODY_CAM),
    ("fz-dash-1", DeviceKind.DASH_CAM),
    ("fz-rear-1", DeviceKind.REAR_CAM),
    ("fz-gw-1", DeviceKind.GATEWAY),
    ("fz-cew-1", DeviceKind.CEW),
    ("fz-cew-2", DeviceKind.CEW),
)
_KINDS = dict(POOL)
_CAMERA_KINDS = (DeviceKind.BODY_CAM, DeviceKind.DASH_CAM, DeviceKind.REAR_CAM)
_CAMERAS = frozenset(d for d, k in POOL if k in _CAMERA_KINDS)
#: Event ids per device: most valid events are repeats, as on a real mesh.
_EIDS = 64
_ENGINE_CHANNELS = (
    DeviceChannel.TELEMETRY,
    DeviceChannel.EVENT,
    DeviceChannel.PRESENCE,
    DeviceChannel.ACK,
)
_HOME: dict[type[Message], DeviceChannel] = {
    Telemetry: DeviceChannel.TELEMETRY,
    Presence: DeviceChannel.PRESENCE,
    Event: DeviceChannel.EVENT,
    Ack: DeviceChannel.ACK,
}
