"""The live terminal report of ``actimesh up`` and ``actimesh sim``.

It is an integrator like any other: it subscribes to the activation, acknowledgement and
dead-letter topics over MQTT and prints what it sees, so what the terminal shows is what
reached the wire, not what the engine believes it did. On the secured broker it logs in
as ``svc-monitor``, whose ACL lets it read exactly those topics.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import aiomqtt
from rich.console import Console

from actimesh.broker.client import (
    LinkSettings,
    MqttLink,
    MqttProtocol,
    Subscription,
    TlsSettings,
    as_bytes,
)
from actimesh.broker.codec import MAX_ACTIVATION_BYTES, decode
from actimesh.broker.messages import Ack, AckStatus, Activation, Alert, DeadLetter
from actimesh.broker.topics import DeviceChannel, Topics, mqtt_client_id
from actimesh.errors import PayloadError

__all__ = ["Monitor"]

#: Left-out cameras named on an activation's line, at most (the rest are counted).
_LEFT_OUT_SHOWN = 5


def _clock_str(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


class Monitor:
    """Prints activations, acknowledgements and rejections as they cross the broker."""

    def __init__(
        self,
        *,
        topics: Topics,
        broker_host: str,
        broker_port: int,
        console: Console,
        status: Callable[[], str] | None = None,
        status_every_s: float = 10.0,
        gps_margin_m: float = 0.0,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        protocol: MqttProtocol = "5",
    ) -> None:
        self.topics = topics
        self.console = console
        #: The policy's widest GPS margin: a camera up to radius + this is "within".
        self.gps_margin_m = gps_margin_m
        self.status = status
        self.status_every_s = status_every_s
        self.counts: Counter[str] = Counter()
        self.link = MqttLink(
            LinkSettings(
                host=broker_host,
                port=broker_port,
                client_id=mqtt_client_id(f"{topics.agency}-monitor-{int(time.time())}"),
                username=username,
                password=password,
                tls=tls,
                protocol=protocol,
                subscriptions=(
                    Subscription(topics.all_activations, 1),
                    Subscription(topics.all_devices(DeviceChannel.ACK), 1),
                    Subscription(topics.all_deadletters, 0),
                    Subscription(topics.all_alerts, 1),
                ),
            ),
            self._on_message,
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.link.run(), name="monitor-link")
            if self.status is not None:
                tg.create_task(self._status_loop(self.status), name="monitor-status")

    async def _status_loop(self, status: Callable[[], str]) -> None:
        while True:
            await asyncio.sleep(self.status_every_s)
            self.console.print(f"[dim]{_clock_str(time.time())}  {status()}[/dim]")

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = as_bytes(message.payload)
        try:
            if topic.startswith(f"{self.topics.prefix}/activations/"):
                self._activation(decode(Activation, payload, max_bytes=MAX_ACTIVATION_BYTES))
            elif topic.startswith(f"{self.topics.prefix}/deadletter/"):
                self._deadletter(decode(DeadLetter, payload))
            elif topic.startswith(f"{self.topics.prefix}/alerts/"):
                self._alert(decode(Alert, payload))
            else:
                parsed = self.topics.parse_device(topic)
                if parsed is not None:
                    self._ack(parsed.device_id, decode(Ack, payload))
        except PayloadError as exc:
            self.console.print(f"[red]unreadable message on {topic}: {exc}[/red]")

    def _activation(self, act: Activation) -> None:
        self.counts["activations"] += 1
        paired = [c.id for c in act.cameras if c.reason == "paired"]
        near = [
            f"{c.id}@{c.dist:.1f}m"
            for c in act.cameras
            if c.dist is not None and c.reason == "proximity"
        ]
        where = f"{act.lat:.5f},{act.lon:.5f}" if act.lat is not None else "no fix"
        why = ", ".join(
            f"{c.id} {c.reason.value}" + (f"@{c.dist:.2f}m" if c.dist is not None else "")
            for c in act.left_out[:_LEFT_OUT_SHOWN]
        )
        if len(act.left_out) > _LEFT_OUT_SHOWN:
            why += f", +{len(act.left_out) - _LEFT_OUT_SHOWN} more"
        latency_ms = (act.ts - act.ets) * 1000
        self.console.print(
            f"[bold yellow]{_clock_str(act.ets)}  {act.type:<16}[/bold yellow] from {act.src} "
            f"at {where}: {len(act.cameras)} camera(s) commanded in {latency_ms:.0f} ms "
            f"[cyan]paired[/cyan] {', '.join(paired) or '-'}  "
            f"[green]within {self._radius(act.radius)}[/green] {', '.join(near) or '-'}  "
            f"[dim]left out {act.excluded}{f' ({why})' if why else ''}[/dim]"
        )

    def _radius(self, radius: float) -> str:
        """``9.14 m`` or, with a GPS margin, ``9.14 m +6 m GPS = 15.14 m``: the effective
        radius the engine included cameras in, beside the rule's."""
        if self.gps_margin_m <= 0:
            return f"{radius:.2f} m"
        return f"{radius:.2f} m +{self.gps_margin_m:g} m GPS = {radius + self.gps_margin_m:.2f} m"

    def _ack(self, device_id: str, ack: Ack) -> None:
        self.counts["acks"] += 1
        if ack.status is AckStatus.RECEIVED:
            return  # the first of two answers; the second says what the camera kept
        if ack.status is AckStatus.RECORDING:
            self.console.print(
                f"           [green]● {device_id}[/green] recording, "
                f"pre-roll {ack.pre_cov:.1f} s  [dim]{ack.rec or ''}[/dim]"
            )
        else:
            self.console.print(f"           [red]✗ {device_id}[/red] {ack.status}: {ack.detail}")

    def _alert(self, alert: Alert) -> None:
        self.counts["alerts"] += 1
        self.console.print(
            f"[bold red]ALERT {alert.alert.value}[/bold red] camera {alert.device or '-'} "
            f"activation {alert.aid or '-'}: {alert.detail or ''}"
        )

    def _deadletter(self, letter: DeadLetter) -> None:
        self.counts["deadletters"] += 1
        self.console.print(f"[red]rejected[/red] {letter.topic}: {letter.reason} ({letter.detail})")
