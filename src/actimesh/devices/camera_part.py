"""The camera side of a device agent, whether or not the device has a camera.

Every device agent (:mod:`actimesh.devices.agent`) reports presence and telemetry and
raises trigger events; only a camera takes commands and records. The agent is given a
:class:`CameraPart` for that side: :class:`~actimesh.devices.control.CameraControl`
for a camera, :class:`NoCamera` for a sensor (cruiser gateway, CEW), which answers
every question the way a device without a camera must. The agent itself never asks
which one it has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from actimesh.broker.messages import Command, DeviceState, Event
from actimesh.devices.camera import ActivationResult, Camera, CancelResult
from actimesh.security.signing import CommandVerifier

__all__ = [
    "Answer",
    "CameraPart",
    "CommandStats",
    "MessageHandler",
    "NoCamera",
    "ReceivedCommand",
]

#: Publishes an encoded ``Ack`` on this device's ack topic (QoS 1); raises BrokerError.
Answer = Callable[[bytes], Awaitable[None]]
#: Handles the payload of a message that arrived on one topic.
MessageHandler = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """A command as a camera received it (the drill reads these to measure latency)."""

    command: Command
    received_at: float
    result: ActivationResult


@dataclass(slots=True)
class CommandStats:
    """What a camera did with the commands and cancels it was given."""

    commands: int = 0  # commands that verified (duplicates included)
    duplicate_commands: int = 0  # verified commands for an activation already handled
    rejected_commands: int = 0  # commands refused, all reasons
    cancels: int = 0  # false activations the officer cancelled (accepted by the camera)
    cancels_refused: int = 0  # cancels the camera refused (window closed, not its recording)
    #: Final answers dropped unsent because too many waited for the broker at once.
    answers_dropped: int = 0
    #: Refused commands by reason: unsigned, bad_signature, expired, invalid, …
    refused_commands: Counter[str] = field(default_factory=Counter)


class CameraPart(Protocol):
    """What a device agent asks of its camera side, whether or not it has a camera."""

    #: The engine's public key; a camera without one refuses every command.
    verifier: CommandVerifier | None
    #: Models slow storage: a camera that takes this long before it commits.
    commit_delay_s: float
    #: Commands that verified, as received (the drills read these).
    received: list[ReceivedCommand]

    @property
    def camera(self) -> Camera | None:
        """The camera core, or None for a sensor."""
        ...

    def replace_camera(self, camera: Camera) -> None:
        """Film with ``camera`` from now on (e.g. the same source, now with its key)."""
        ...

    @property
    def pre_roll_s(self) -> float | None:
        """The pre-roll the presence message offers, or None for a sensor."""
        ...

    @property
    def state(self) -> DeviceState:
        """The state telemetry reports."""
        ...

    @property
    def unsent_cancels(self) -> int:
        """``cancelled`` answers not yet taken by the broker."""
        ...

    @property
    def unsent_answers(self) -> int:
        """Final answers (``recording``, ``refused``, ``cancelled``) not yet taken by the
        broker."""
        ...

    def handlers(self) -> dict[str, MessageHandler]:
        """The topics this part listens on, and what handles each."""
        ...

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Background loops to run beside the agent's, by name suffix."""
        ...

    def power_on(self) -> None:
        """Switch a camera that is off back on (cold)."""
        ...

    async def power_off(self) -> None:
        """Switch the camera off: no buffer, no activation."""
        ...

    async def retry(self) -> None:
        """Send again what the broker has not taken yet (called while connected)."""
        ...

    async def activate_locally(self, event: Event, source: str) -> ActivationResult | None:
        """A paired sensor's event over the local link (no broker involved)."""
        ...

    async def stop_recording(self) -> None:
        """The officer stops the recording on the device."""
        ...

    async def cancel_activation(self, aid: str | None, *, by: str) -> CancelResult | None:
        """The officer ``by`` cancels a false activation on the device."""
        ...

    async def set_stealth(self, on: bool) -> bool:
        """The officer turns the recording light off (``on=True``) or back on."""
        ...


class NoCamera:
    """A sensor's camera side: it takes no command and records nothing."""

    def __init__(
        self, verifier: CommandVerifier | None = None, commit_delay_s: float = 0.0
    ) -> None:
        self.verifier = verifier
        self.commit_delay_s = commit_delay_s
        self.received: list[ReceivedCommand] = []

    @property
    def camera(self) -> None:
        """A sensor has none."""

    def replace_camera(self, camera: Camera) -> None:
        """Refused: only cameras have a camera."""
        raise ValueError(f"{camera.device_id}: cameras need a Camera and only cameras have one")

    @property
    def pre_roll_s(self) -> None:
        """A sensor offers no pre-roll."""

    @property
    def state(self) -> DeviceState:
        """A sensor is always ready to raise a trigger."""
        return DeviceState.BUFFERING

    @property
    def unsent_cancels(self) -> int:
        """Never any."""
        return 0

    @property
    def unsent_answers(self) -> int:
        """Never any."""
        return 0

    def handlers(self) -> dict[str, MessageHandler]:
        """A sensor listens for no command."""
        return {}

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        """No media clock to run."""
        return {}

    def power_on(self) -> None:
        """Nothing to switch on."""

    async def power_off(self) -> None:
        """Nothing to switch off."""

    async def retry(self) -> None:
        """Nothing to send."""

    async def activate_locally(self, event: Event, source: str) -> None:
        """Nothing to activate."""

    async def stop_recording(self) -> None:
        """Nothing to stop."""

    async def cancel_activation(self, aid: str | None, *, by: str) -> None:
        """Nothing to cancel."""

    async def set_stealth(self, on: bool) -> bool:  # noqa: ARG002
        """No recording light to turn off."""
        return False
