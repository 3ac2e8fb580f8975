"""The trigger engine: telemetry in, activation commands out.

Two MQTT links, so that load on one cannot delay the other:

* ``<engine>-ctl`` carries trigger events, presence and acknowledgements (QoS 1, never
  shed) and publishes commands, activation records and dead letters;
* ``<engine>-tm`` carries telemetry (QoS 0, bounded queue, overflow counted), which only
  moves devices in the spatial index.

The trigger path is: validate → dedupe → plan (pure, :mod:`.fanout`) → publish every
command concurrently (QoS 1, MQTT v5 message expiry) → hand the ledger write and the
activation record to the persister task. Commands go first because a camera's pre-roll
does not depend on when they arrive but an officer's safety may; the activation id is
deterministic, so if the engine dies before the ledger write, the redelivered event makes
the same commands again and cameras ignore the repeat.

Every rejected input is counted by reason, logged with its topic, and republished on the
dead-letter topic (rate-capped; the counters are never capped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

from actimesh import __version__
from actimesh.broker.client import LinkSettings, MqttLink, Subscription, Will, as_bytes
from actimesh.broker.codec import (
    MAX_ACTIVATION_BYTES,
    check_clock,
    decode,
    encode,
    hex_head,
)
from actimesh.broker.messages import (
    Ack,
    Activation,
    CameraActivation,
    Command,
    DeadLetter,
    EngineStatus,
    Event,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.errors import BrokerError, LedgerError, PayloadError
from actimesh.geofence import GridIndex, InclusionPolicy, SpatialIndex
from actimesh.triggers.fanout import Plan, plan_activation
from actimesh.triggers.fleet import Fleet, LastFix
from actimesh.triggers.ledger import AckRow, ActivationRow, Ledger
from actimesh.triggers.rules import RuleTable
from actimesh.triggers.settings import EngineSettings

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger(__name__)

_DEDUPE_CAPACITY = 200_000


@dataclass(slots=True)
class EngineStats:
    """Counters for metrics, the terminal view and tests."""

    telemetry: int = 0
    events: int = 0
    activations: int = 0
    duplicates: int = 0
    commands: int = 0
    command_failures: int = 0
    acks: int = 0
    presence: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    deadletters_suppressed: int = 0
    ledger_failures: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class _Persist:
    plan: Plan
    event: Event
    source: str
    received: float
    decided: float
    rule: dict[str, object]


class Engine:
    """The trigger engine for one agency. Create inside the running loop; ``await run()``."""

    def __init__(
        self,
        *,
        topics: Topics,
        broker_host: str,
        broker_port: int,
        ledger: Ledger,
        rules: RuleTable,
        policy: InclusionPolicy,
        settings: EngineSettings | None = None,
        index: SpatialIndex | None = None,
        clock: Callable[[], float] = time.time,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topics = topics
        self.settings = settings or EngineSettings()
        self.ledger = ledger
        self.rules = rules
        self.policy = policy
        self.index: SpatialIndex = index if index is not None else GridIndex()
        self.fleet = Fleet()
        self.stats = EngineStats()
        self.clock = clock
        self.ready = asyncio.Event()
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._persist: asyncio.Queue[_Persist] = asyncio.Queue(maxsize=10_000)
        self._deadletter_tokens = self.settings.deadletters_per_s
        self._deadletter_refill = clock()
        eid = self.settings.engine_id
        status = topics.engine_status(eid)
        offline = encode(EngineStatus(online=False, engine=eid))
        self.ctl = MqttLink(
            LinkSettings(
                host=broker_host,
                port=broker_port,
                client_id=f"{topics.agency}-{eid}-ctl",
                username=username,
                password=password,
                subscriptions=(
                    Subscription(topics.all_devices(DeviceChannel.PRESENCE), 1),
                    Subscription(topics.all_devices(DeviceChannel.EVENT), 1),
                    Subscription(topics.all_devices(DeviceChannel.ACK), 1),
                ),
                will=Will(status, offline),
            ),
            self._on_control,
            on_connect=self._announce,
        )
        self.telemetry_link = MqttLink(
            LinkSettings(
                host=broker_host,
                port=broker_port,
                client_id=f"{topics.agency}-{eid}-tm",
                username=username,
                password=password,
                subscriptions=(Subscription(topics.all_devices(DeviceChannel.TELEMETRY), 0),),
                max_queued_incoming=self.settings.telemetry_queue,
            ),
            self._on_telemetry,
        )

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until cancelled. One TaskGroup owns the links and the persister."""
        since = self.clock() - self.settings.max_event_age_s
        for key in await self.ledger.recent_events(since):
            self._remember(key)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ctl.run(), name=f"{self.ctl.settings.client_id}")
            tg.create_task(self.telemetry_link.run(), name=self.telemetry_link.settings.client_id)
            tg.create_task(self._persister(), name=f"{self.settings.engine_id}-persister")
            await self.ctl.wait_connected(timeout=30)
            await self.telemetry_link.wait_connected(timeout=30)
            self.ready.set()

    async def _announce(self, link: MqttLink) -> None:
        status = EngineStatus(
            online=True, engine=self.settings.engine_id, ts=self.clock(), version=__version__
        )
        await link.publish(
            self.topics.engine_status(self.settings.engine_id), encode(status), retain=True
        )

    # ------------------------------------------------------------------ intake
    async def _on_telemetry(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parsed = self.topics.parse_device(topic)
        payload = as_bytes(message.payload)
        if parsed is None:
            await self._reject(topic, payload, PayloadError("bad_topic", "not a device topic"))
            return
        now = self.clock()
        try:
            msg = decode(Telemetry, payload)
            check_clock(
                msg.ts,
                now,
                max_age_s=self.settings.max_event_age_s,
                max_skew_s=self.settings.max_clock_skew_s,
            )
        except PayloadError as exc:
            await self._reject(topic, payload, exc)
            return
        self.stats.telemetry += 1
        info = self.fleet.touch(parsed.device_id, now)
        info.state = msg.state
        if msg.lat is not None and msg.lon is not None:
            current = self.index.get(parsed.device_id)
            if current is None or current.ts <= msg.ts:  # ignore fixes that arrive late
                self.index.upsert(parsed.device_id, msg.lat, msg.lon, msg.acc, msg.ts)

    async def _on_control(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = as_bytes(message.payload)
        parsed = self.topics.parse_device(topic)
        if parsed is None:
            await self._reject(topic, payload, PayloadError("bad_topic", "not a device topic"))
            return
        try:
            if parsed.channel is DeviceChannel.EVENT:
                await self._on_event(parsed.device_id, payload)
            elif parsed.channel is DeviceChannel.PRESENCE:
                self._on_presence(parsed.device_id, payload)
            elif parsed.channel is DeviceChannel.ACK:
                await self._on_ack(parsed.device_id, payload)
        except PayloadError as exc:
            await self._reject(topic, payload, exc)

    def _on_presence(self, device_id: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message
            return
        msg = decode(Presence, payload)
        self.stats.presence += 1
        now = self.clock()
        fix = None
        if not msg.online:
            current = self.index.get(device_id)
            if current is not None:
                fix = LastFix(current.lat, current.lon, current.acc, current.ts)
            # An offline camera cannot record: it leaves the index so no one counts on it.
            self.index.remove(device_id)
        self.fleet.presence(device_id, msg, now, fix)

    async def _on_ack(self, device_id: str, payload: bytes) -> None:
        msg = decode(Ack, payload)
        self.stats.acks += 1
        row = AckRow(msg.aid, device_id, msg.status.value, msg.pre_cov, msg.rec, msg.ts,
                     self.clock(), msg.detail)  # fmt: skip
        try:
            await self.ledger.record_ack(row)
        except LedgerError:
            self.stats.ledger_failures += 1
            log.exception("ack from %s for %s not recorded", device_id, msg.aid)

    async def _on_event(self, source: str, payload: bytes) -> None:
        received = self.clock()
        event = decode(Event, payload)
        check_clock(
            event.ts,
            received,
            max_age_s=self.settings.max_event_age_s,
            max_skew_s=self.settings.max_clock_skew_s,
        )
        rule = self.rules.get(event.type)
        if rule is None:
            known = ", ".join(r.event_type for r in self.rules)
            raise PayloadError("unknown_event_type", f"{event.type!r} (known: {known})")
        self.stats.events += 1
        key = (source, event.eid)
        if key in self._seen:
            self.stats.duplicates += 1
            log.info("duplicate event %s from %s ignored", event.eid, source)
            return
        self._remember(key)
        plan = plan_activation(
            event=event,
            source=source,
            rule=rule,
            fleet=self.fleet,
            index=self.index,
            policy=self.policy,
        )
        decided = self.clock()
        await self._send_commands(plan, event, source, decided)
        self.stats.activations += 1
        rule_doc: dict[str, object] = {
            "event_type": rule.event_type,
            "camera_kinds": sorted(k.value for k in rule.camera_kinds),
            "radius_m": rule.radius_m,
            "pre_roll_s": rule.pre_roll_s,
            "include_paired": rule.include_paired,
            "policy": {
                "mode": self.policy.mode.value,
                "max_fix_age_s": self.policy.max_fix_age_s,
                "max_margin_m": self.policy.max_margin_m,
            },
        }
        # Waits (never drops) when the persister is behind: back-pressure, not loss.
        await self._persist.put(_Persist(plan, event, source, received, decided, rule_doc))

    def _remember(self, key: tuple[str, str]) -> None:
        self._seen[key] = self.clock()
        if len(self._seen) > _DEDUPE_CAPACITY:
            self._seen.popitem(last=False)

    async def _send_commands(self, plan: Plan, event: Event, source: str, now: float) -> None:
        expiry = self.settings.command_expiry_s

        async def send(target_id: str, command: Command) -> None:
            try:
                await self.ctl.publish(self.topics.command(target_id), encode(command), qos=1,
                                       expiry_s=expiry)  # fmt: skip
                self.stats.commands += 1
            except BrokerError:
                # The broker session keeps QoS 1 state; count it and let the ledger show
                # the camera as commanded-not-acknowledged.
                self.stats.command_failures += 1
                log.exception("command %s to %s not confirmed by the broker", plan.aid, target_id)

        async with asyncio.TaskGroup() as tg:
            for target in plan.targets:
                command = Command(
                    aid=plan.aid,
                    eid=event.eid,
                    src=source,
                    type=event.type,
                    ets=event.ts,
                    pre=plan.pre_roll_s,
                    reason=target.reason,
                    dist=target.distance_m,
                    ts=now,
                    exp=now + expiry,
                )
                tg.create_task(send(target.device_id, command), name=f"cmd-{target.device_id}")

    # ------------------------------------------------------------------ persistence
    async def _persister(self) -> None:
        while True:
            item = await self._persist.get()
            plan, event = item.plan, item.event
            row = ActivationRow(
                aid=plan.aid,
                src=item.source,
                eid=event.eid,
                type=event.type,
                event_ts=event.ts,
                received_ts=item.received,
                decided_ts=item.decided,
                lat=plan.lat,
                lon=plan.lon,
                acc=plan.acc,
                position_source=plan.position_source.value,
                radius_m=plan.radius_m,
                pre_roll_s=plan.pre_roll_s,
                rule=item.rule,
                initiated_by=event.by,
                engine=self.settings.engine_id,
            )
            try:
                await self.ledger.record_activation(row, plan.decisions)
            except LedgerError:
                self.stats.ledger_failures += 1
                log.exception("activation %s not written to the ledger", plan.aid)
            record = Activation(
                aid=plan.aid,
                eid=event.eid,
                src=item.source,
                type=event.type,
                ets=event.ts,
                ts=item.decided,
                lat=plan.lat,
                lon=plan.lon,
                radius=plan.radius_m,
                pre=plan.pre_roll_s,
                cameras=tuple(
                    CameraActivation(
                        id=t.device_id,
                        device_kind=t.kind,
                        reason=t.reason,
                        dist=t.distance_m,
                    )
                    for t in plan.targets
                    if t.kind is not None
                ),
                excluded=plan.excluded,
                by=event.by,
            )
            payload = encode(record)
            if len(payload) > MAX_ACTIVATION_BYTES:  # pragma: no cover - 10k cameras at once
                log.error("activation %s record too large to publish", plan.aid)
                continue
            try:
                await self.ctl.publish(self.topics.activations(event.type), payload, qos=1)
                if self.settings.publish_json:
                    await self.ctl.publish(
                        self.topics.activations_json(event.type),
                        record.model_dump_json(exclude_none=True).encode(),
                        qos=1,
                    )
            except BrokerError:
                log.exception("activation record %s not published", plan.aid)

    # ------------------------------------------------------------------ rejects
    async def _reject(self, topic: str, payload: bytes, exc: PayloadError) -> None:
        self.stats.rejected[exc.reason] += 1
        log.warning("rejected %s: %s", topic, exc)
        now = self.clock()
        rate = self.settings.deadletters_per_s
        self._deadletter_tokens = min(
            rate, self._deadletter_tokens + (now - self._deadletter_refill) * rate
        )
        self._deadletter_refill = now
        if self._deadletter_tokens < 1:
            self.stats.deadletters_suppressed += 1
            return
        self._deadletter_tokens -= 1
        letter = DeadLetter(
            ts=now,
            topic=topic[:512],
            reason=exc.reason,
            detail=exc.detail[:1024],
            size=len(payload),
            head=hex_head(payload),
        )
        try:
            await self.ctl.publish(self.topics.deadletter(exc.reason), encode(letter), qos=0)
        except BrokerError:
            log.warning("dead letter for %s not published", topic)
