"""The trigger engine: telemetry in, activation commands out.

Two MQTT links, so that load on one cannot delay the other:

* ``<engine>-ctl`` carries trigger events, presence and acknowledgements (QoS 1, never
  shed) and publishes commands, activation records and dead letters;
* ``<engine>-tm`` carries telemetry (QoS 0, bounded queue, overflow counted), which only
  moves devices in the spatial index.

The trigger path is: validate → check the sender may raise this trigger type → dedupe
→ the device's rate limit → plan (pure, :mod:`.fanout`) → merge into the incident it
repeats, or pass the global storm bound (:mod:`.storm`) → sign and publish every command
concurrently (QoS 1, MQTT v5 message expiry) → hand the ledger write and the activation
record to the persister task. Commands go first because a camera's pre-roll
does not depend on when they arrive but an officer's safety may; the activation id is
deterministic, so if the engine dies before the ledger write, the redelivered event makes
the same commands again and cameras ignore the repeat.

Every command is signed (:mod:`actimesh.security.signing`), bound to its camera and
agency; cameras refuse anything that does not verify with the engine's public key.

Who may raise a trigger comes from the rule (``senders``) and what the sender is from
the fleet: the device registry when one is given (:class:`~.fleet.DeviceDirectory`),
the device's own presence otherwise. Replays are refused by the dedupe memory, backed by
the ledger once that memory has had to forget, and by the event age limit.

Every rejected input is counted by reason, logged with its topic, and republished on the
dead-letter topic (rate-capped; the counters are never capped).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actimesh import __version__
from actimesh.broker.client import (
    InFlight,
    LinkSettings,
    MqttLink,
    Subscription,
    Will,
)
from actimesh.broker.codec import (
    MAX_ACTIVATION_BYTES,
    check_clock,
    decode,
    decode_telemetry,
    encode,
    hex_head,
)
from actimesh.broker.ingest import Publish, StreamSubscriber
from actimesh.broker.intake import ControlSubscriber, Delivery
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Activation,
    ActivationReason,
    Alert,
    AlertKind,
    CameraActivation,
    Confirmation,
    ConfirmStatus,
    DeadLetter,
    DeviceState,
    EngineStatus,
    Event,
    OfflineReason,
    Presence,
)
from actimesh.broker.topics import DeviceChannel, Topics, is_identifier
from actimesh.errors import (
    BrokerError,
    LedgerError,
    NotCommandedError,
    PayloadError,
    SecurityError,
)
from actimesh.geofence import GridIndex, InclusionPolicy, SpatialIndex
from actimesh.ledger import AckRow, ActivationRow, Ledger
from actimesh.security.signing import UNVERIFIED_REFUSALS, CommandSigner, refusal_code
from actimesh.triggers.delivery import Action, ActionKind, DeliveryTracker
from actimesh.triggers.fanout import Plan, plan_activation
from actimesh.triggers.fleet import DeviceDirectory, DeviceInfo, Fleet, LastFix
from actimesh.triggers.quarantine import FloodWatch, Quarantine
from actimesh.triggers.rules import Rule, RuleTable
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.storm import Incident, StormControl, TokenBucket

__all__ = ["Engine", "EngineStats"]

#: Control-message budgets kept at most (one per device heard from).
_MAX_BUDGETS = 200_000

#: What the flood watch says a device sent when it answered activations it was not in.
_NOT_COMMANDED = "acknowledgements for activations that did not command it"

log = logging.getLogger(__name__)

#: Acknowledgements written to the ledger in one transaction, at most.
_ACK_BATCH = 512


@dataclass(slots=True)
class EngineStats:
    """Counters for metrics, the terminal view and tests."""

    telemetry: int = 0
    events: int = 0
    activations: int = 0  # activations this engine wrote to the ledger first
    duplicates: int = 0  # repeats of an event already handled here or by a replica
    commands: int = 0
    command_failures: int = 0
    acks: int = 0
    presence: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    deadletters_suppressed: int = 0
    ledger_failures: int = 0
    confirmations: int = 0
    retries: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    merged: int = 0  # triggers that joined the activation they repeat (storm control)
    #: Refusals by cameras that could not verify a command (forged ones provoke them).
    unverified_refusals: int = 0
    #: Dedupe questions the ledger answered because the memory had forgotten.
    ledger_lookups: int = 0
    #: Cameras whose officer cancelled the activation as false (``cancelled`` acks).
    false_activations: int = 0
    #: Answers from cameras their activation did not command: counted, never written
    #: (not dead-lettered either: one per ack of a flood would be a flood of its own).
    acks_not_commanded: int = 0
    #: Devices disabled for flooding refused messages, and quarantines not queued
    #: (the queue was full) or not carried out.
    quarantined: int = 0
    quarantines_failed: int = 0
    #: Position fixes dropped because their device sent them over its rate.
    telemetry_over_rate: int = 0
    #: Device messages whose handling raised something unexpected (logged).
    handler_errors: int = 0
    #: Alerts not raised because their queue was full (a thousand waiting).
    alerts_dropped: int = 0

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
    #: The trigger's message: acknowledged to the broker only once the activation is
    #: durable, so a crash before that redelivers it.
    delivery: Delivery
    #: The activation this trigger joined (storm control), or None for a new one.
    merged_into: str | None = None


class Engine:
    """The trigger engine for one agency. Create inside the running loop; ``await run()``.

    ``signer`` signs every command. ``directory`` is the authoritative source of what
    each device is (the device registry); without one, devices' own presence is taken
    at its word. ``dispatch_source`` is the device id dispatch publishes zones under:
    the only sender allowed to raise rules that name ``"dispatch"``.
    """

    def __init__(
        self,
        *,
        topics: Topics,
        broker_host: str,
        broker_port: int,
        ledger: Ledger,
        rules: RuleTable,
        policy: InclusionPolicy,
        signer: CommandSigner,
        settings: EngineSettings | None = None,
        index: SpatialIndex | None = None,
        directory: DeviceDirectory | None = None,
        dispatch_source: str | None = None,
        clock: Callable[[], float] = time.time,
        username: str | None = None,
        password: str | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.topics = topics
        self.settings = settings or EngineSettings()
        self.ledger = ledger
        self.rules = rules
        self.policy = policy
        self.signer = signer
        self.dispatch_source = dispatch_source
        self.index: SpatialIndex = index if index is not None else GridIndex()
        self.fleet = Fleet(directory)
        self.storm = StormControl(self.settings.storm_limits())
        self.floods = FloodWatch(self.settings.quarantine_after, self.settings.quarantine_window_s)
        self.quarantine = quarantine
        # Each device's control-message budget (events, acks, presence), and the devices
        # over it now: one dead letter says a flood began, not one per message of it.
        self._budgets: dict[str, TokenBucket] = {}
        self._refusing: set[str] = set()
        # Devices to quarantine, handled by their own task: disabling an account takes a
        # registry write and a broker round trip, which must not hold the control link.
        self._to_quarantine: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=1_000)
        # Alerts raised on the intake, published and written by their own task.
        self._deferred_alerts: asyncio.Queue[tuple[AlertKind, str, str]] = asyncio.Queue(
            maxsize=1_000
        )
        self.stats = EngineStats()
        self.clock = clock
        self.ready = asyncio.Event()
        # (source, event id) -> activation id, for dedupe and for re-confirming repeats.
        self._seen: OrderedDict[tuple[str, str], str] = OrderedDict()
        # Set once the dedupe memory has forgotten an event: from then on an event it
        # does not know is looked up in the ledger before it is planned.
        self._forgot = False
        # Activations written to the ledger: only those may be confirmed to a device.
        self._durable: set[str] = set()
        # A merged trigger's own activation id -> the activation it joined.
        self._aliases: dict[str, str] = {}
        self._warm = False
        #: Set once the engine plans events (after ``warmup_s``).
        self.warmed = asyncio.Event()
        self._held: list[Delivery] = []
        self.deliveries = DeliveryTracker(
            ack_timeout_s=self.settings.ack_timeout_s, retry_max_s=self.settings.retry_max_s
        )
        self._persist: asyncio.Queue[_Persist] = asyncio.Queue(maxsize=10_000)
        # Acknowledgements are written by their own task: a synced SQLite write per ack
        # on the control link would hold up the trigger events queued behind it.
        # Each with who cancelled, for a ``cancelled`` ack (a false activation).
        self._ack_rows: asyncio.Queue[tuple[AckRow, str | None]] = asyncio.Queue(maxsize=100_000)
        # Commands on their way, waiting for the broker's PUBACK (see _command_outcomes).
        self._inflight: asyncio.Queue[tuple[str, str, InFlight]] = asyncio.Queue(maxsize=100_000)
        self._deadletter_tokens = self.settings.deadletters_per_s
        self._deadletter_refill = clock()
        eid = self.settings.engine_id
        status = topics.engine_status(eid)
        offline = encode(EngineStatus(online=False, engine=eid))

        def link(suffix: str, *subscriptions: Subscription, **options: Any) -> LinkSettings:
            """One of this engine's connections: ``<agency>-<engine>-<suffix>``."""
            return LinkSettings(
                host=broker_host,
                port=broker_port,
                client_id=f"{topics.agency}-{eid}-{suffix}",
                username=username,
                password=password,
                subscriptions=subscriptions,
                **options,
            )

        def device_messages(channel: DeviceChannel, qos: int = 1) -> Subscription:
            return Subscription(topics.all_devices(channel), qos)

        # Commands, confirmations, alerts and dead letters go out on their own link;
        # nothing arrives on it. Its session starts clean: what it sent and the broker
        # did not acknowledge is sent again by the delivery tracker, not by the session.
        self.ctl = MqttLink(link("cmd", will=Will(status, offline)), on_connect=self._announce)
        # Devices' messages come in on lean readers (broker/intake.py) that refuse a
        # device over its budget while reading the socket and serve devices in turn: a
        # flood from one stolen device is drained at the broker's speed and never sits
        # in front of another officer's trigger. Trigger events and presence on one
        # link, kept in a persistent session (what arrives while the engine restarts
        # waits in the broker); acknowledgements on their own, so that the ack writer's
        # pace never holds up a trigger.
        kept = self.settings.session_expiry_s
        self.intake = ControlSubscriber(
            link(
                "ctl",
                device_messages(DeviceChannel.PRESENCE),
                Subscription(self._event_filter(), 1),
                session_expiry_s=kept,
            ),
            self._on_control_batch,
            admit=self._admit,
        )
        self.ack_link = ControlSubscriber(
            link("ack", device_messages(DeviceChannel.ACK), session_expiry_s=kept),
            self._on_control_batch,
            admit=self._admit,
        )
        # Telemetry skips aiomqtt: a lean QoS 0 subscriber hands it over in batches
        # (broker/ingest.py; ~9,000 msg/s through aiomqtt, >100,000 this way).
        self._dev_head = f"{topics.prefix}/dev/".encode()
        self._tm_tail = f"/{DeviceChannel.TELEMETRY.value}".encode()
        self.telemetry_link = StreamSubscriber(
            link(
                "tm",
                device_messages(DeviceChannel.TELEMETRY, qos=0),
                max_queued_incoming=self.settings.telemetry_queue,
            ),
            self._on_telemetry,
        )

    def _event_filter(self) -> str:
        events = self.topics.all_devices(DeviceChannel.EVENT)
        group = self.settings.share_group
        return self.topics.shared(group, events) if group else events

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until cancelled. One TaskGroup owns the links, persister and tracker."""
        await self._recover()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ctl.run(), name=f"{self.ctl.settings.client_id}")
            tg.create_task(self.intake.run(), name=f"{self.intake.settings.client_id}")
            tg.create_task(self.ack_link.run(), name=f"{self.ack_link.settings.client_id}")
            tg.create_task(self.telemetry_link.run(), name=self.telemetry_link.settings.client_id)
            self._start_loops(tg)
            await self.ctl.wait_connected(timeout=30)
            await self.intake.wait_connected(timeout=30)
            await self.ack_link.wait_connected(timeout=30)
            await self.telemetry_link.wait_connected(timeout=30)
            tg.create_task(self._warm_up(), name=f"{self.settings.engine_id}-warmup")
            self.ready.set()

    def _start_loops(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """The engine's own loops beside its links, started in ``tg``."""
        eid = self.settings.engine_id
        return [
            tg.create_task(self._track_deliveries(), name=f"{eid}-delivery"),
            tg.create_task(self._persister(), name=f"{eid}-persister"),
            tg.create_task(self._ack_writer(), name=f"{eid}-acks"),
            tg.create_task(self._command_outcomes(), name=f"{eid}-commands"),
            tg.create_task(self._quarantines(), name=f"{eid}-quarantine"),
            tg.create_task(self._raise_deferred_alerts(), name=f"{eid}-alerts"),
        ]

    async def _warm_up(self) -> None:
        """Plan the events held since start once the fleet is known (see ``warmup_s``)."""
        await asyncio.sleep(self.settings.warmup_s)
        if self.settings.freeze_heap:
            # Everything alive now (imported modules, the rules, the fleet so far) lives
            # as long as the process. Out of the collector's sight it no longer makes each
            # full collection a 20-50 ms pause in the middle of a trigger (measured:
            # docs/PERFORMANCE.md). Collected first, while events are still held, so no
            # garbage is frozen with it.
            gc.collect()
            gc.freeze()
        self._warm = True
        self.warmed.set()
        held, self._held = self._held, []
        if held:
            log.info("warm: planning %d event(s) held since start", len(held))
        for delivery in held:
            await self._on_control(delivery)

    async def _announce(self, link: MqttLink) -> None:
        status = EngineStatus(
            online=True, engine=self.settings.engine_id, ts=self.clock(), version=__version__
        )
        await link.publish(
            self.topics.engine_status(self.settings.engine_id), encode(status), retain=True
        )

    # ------------------------------------------------------------------ intake
    async def _on_telemetry(self, batch: Sequence[Publish]) -> None:
        # The hot path (docs/PERFORMANCE.md): one clock read per batch, known devices
        # found by their topic without a regex, the fast decoder, and one id string per
        # device shared by the fleet and the index.
        now = self.clock()
        max_age, max_skew = self.settings.max_event_age_s, self.settings.max_clock_skew_s
        oldest, newest = now - max_age, now + max_skew
        fleet, index, stats = self.fleet, self.index, self.stats
        source = self._telemetry_source
        rate, burst = self.settings.telemetry_rate_per_s, self.settings.telemetry_burst
        for topic, payload in batch:
            try:
                device_id, info = source(topic)
                if info is not None:
                    # The device's token bucket, inline: this loop runs per message.
                    tokens = min(burst, info.tm_tokens + (now - info.tm_counted) * rate)
                    info.tm_counted = now
                    if tokens < 1.0:
                        info.tm_tokens = tokens
                        stats.telemetry_over_rate += 1
                        self._refused_from(device_id, "telemetry over its rate")
                        continue
                    info.tm_tokens = tokens - 1.0
                ts, state, lat, lon, acc = decode_telemetry(payload)
                if not oldest <= ts <= newest:
                    check_clock(ts, now, max_age_s=max_age, max_skew_s=max_skew)
            except PayloadError as exc:
                self._reject(topic.decode(errors="replace"), payload, exc)
                continue
            stats.telemetry += 1
            if info is None:
                info = fleet.touch(device_id, now)
            else:
                info.last_seen = now
            info.state = state
            if lat is not None and lon is not None:
                # A fix older than the one indexed arrived late: ignored. The fleet's id
                # string is stored, so each device's id exists once in memory.
                index.upsert_latest(info.device_id, lat, lon, acc, ts)

    def _telemetry_source(self, topic: bytes) -> tuple[str, DeviceInfo | None]:
        """The device a telemetry topic names, and what the fleet knows of it."""
        head, tail = self._dev_head, self._tm_tail
        if topic.startswith(head) and topic.endswith(tail):
            try:
                device_id = topic[len(head) : len(topic) - len(tail)].decode()
            except UnicodeDecodeError:
                device_id = ""
            info = self.fleet.get(device_id)
            if info is not None:  # known ids were checked once
                return device_id, info
            if is_identifier(device_id):
                self._check_registered(device_id)
                return device_id, None
        raise PayloadError("bad_topic", "not a device topic")

    def _check_registered(self, device_id: str) -> None:
        """With a directory, a device it does not know is refused before the fleet and
        the index make room for it: otherwise anyone past the broker's ACL could grow
        them without bound with made-up ids."""
        directory = self.fleet.directory
        if directory is not None and directory.get(device_id) is None:
            raise PayloadError("unregistered", f"device {device_id!r} is not in the registry")

    def _admit(self, topic: bytes, payload: bytes) -> str | None:
        """Read-time admission for the intake links (broker/intake.py): the device a
        message is from (its turn in the queue), or None for a device over its control
        budget (events, acks and presence together).

        Runs for every message of a flood, inside the socket's read callback, so the
        refusal is a bucket check and two counters; a flood's first refusal alone is
        dead-lettered (it says the flood began and why). The broker lets a device publish on
        its own topics only, so the id in the topic is the sender's."""
        head = self._dev_head
        end = topic.find(b"/", len(head))
        if not topic.startswith(head) or end < 0:
            return ""  # not a device topic: the handler refuses it with its reason
        device_id = topic[len(head) : end].decode(errors="replace")
        if device_id == self.dispatch_source or not self._over_budget(device_id):
            self._refusing.discard(device_id)
            return device_id
        self.stats.rejected["over_budget"] += 1
        self._refused_from(device_id, "over_budget")
        if device_id in self._refusing:
            self.stats.deadletters_suppressed += 1
        elif self._deadletter_token():
            self._refusing.add(device_id)
            detail = (
                f"{device_id} sent more than {self.settings.control_burst:g} control "
                f"messages at once or {self.settings.control_rate_per_s:g} a second"
            )
            self._deadletter(
                topic.decode(errors="replace"), payload, PayloadError("over_budget", detail)
            )
        return None

    async def _on_control_batch(self, batch: Sequence[Delivery]) -> None:
        for delivery in batch:
            try:
                await self._on_control(delivery)
            except Exception:  # one message's failure is not the next device's (not Cancelled)
                self.stats.handler_errors += 1
                log.exception("handler failed on %s", delivery.topic)

    async def _on_control(self, delivery: Delivery) -> None:
        # Events are acknowledged once durable (in the persister), everything else as
        # soon as it has been handled or rejected.
        topic, payload = delivery.topic, delivery.payload
        parsed = self.topics.parse_device(topic)
        if parsed is None:
            self._reject(topic, payload, PayloadError("bad_topic", "not a device topic"))
            delivery.ack()
            return
        if parsed.channel is DeviceChannel.EVENT and not self._warm:
            self._held.append(delivery)  # planned (and acknowledged) once warm
            return
        try:
            if parsed.channel is DeviceChannel.EVENT:
                if await self._on_event(parsed.device_id, payload, delivery):
                    return  # the persister acknowledges it
            elif parsed.channel is DeviceChannel.PRESENCE:
                self._on_presence(parsed.device_id, payload)
            elif parsed.channel is DeviceChannel.ACK:
                await self._on_ack(parsed.device_id, payload)
        except PayloadError as exc:
            self._reject(topic, payload, exc)
            if parsed.channel is DeviceChannel.EVENT:
                self._refuse_event(parsed.device_id, payload, exc)
        delivery.ack()

    def _over_budget(self, device_id: str) -> bool:
        """Take one of ``device_id``'s control-message tokens; True if it has none."""
        now = self.clock()
        bucket = self._budgets.get(device_id)
        if bucket is None:
            if len(self._budgets) >= _MAX_BUDGETS:
                # Bounded memory: made-up ids cannot grow this for ever. A device
                # forgotten here starts again with a full bucket.
                self._budgets.clear()
                self._refusing.clear()
            s = self.settings
            bucket = self._budgets[device_id] = TokenBucket.full(
                s.control_burst, s.control_rate_per_s, now
            )
        return not bucket.take(now)

    def _on_presence(self, device_id: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message
            return
        msg = decode(Presence, payload)
        if self.fleet.get(device_id) is None:
            self._check_registered(device_id)
        self.stats.presence += 1
        now = self.clock()
        fix = None
        if msg.online:
            # Back: whatever it missed while away is re-sent now, not at the next backoff.
            self.deliveries.expedite(device_id, now)
        elif msg.reason is OfflineReason.POWER_OFF:
            current = self.index.get(device_id)
            if current is not None:
                fix = LastFix(current.lat, current.lon, current.acc, current.ts)
            # A camera switched off cannot record: it leaves the index.
            self.index.remove(device_id)
        # A lost link is not a camera switched off: it keeps buffering, so it stays in the
        # index with its last fix (which goes stale by itself) and a command to it waits
        # in its broker session.
        self.fleet.presence(device_id, msg, now, fix)

    async def _on_ack(self, device_id: str, payload: bytes) -> None:
        msg = decode(Ack, payload)
        self.stats.acks += 1
        if msg.status is AckStatus.REFUSED and refusal_code(msg.detail) in UNVERIFIED_REFUSALS:
            await self._on_unverified(device_id, msg)
            return
        # ``cancelled`` is final too (the officer cancelled a false activation): the
        # camera is not commanded again for it, and it is not a failure to alert on.
        finished = self.deliveries.on_ack(msg.aid, device_id, msg.status)
        if finished is not None and msg.status is AckStatus.REFUSED:
            await self._alert(AlertKind.REFUSED, msg.aid, device_id, msg.detail or "refused")
        # Waits (never drops) if the writer is behind.
        await self._ack_rows.put((self._ack_row(device_id, msg), msg.by))

    async def _on_unverified(self, device_id: str, msg: Ack) -> None:
        """A camera could not verify a command. Anyone able to publish on its command
        topic can provoke that, so it is not the camera's answer to the command we sent:
        that one stays pending and is re-sent. If we did command this camera, the
        camera may hold the wrong engine key: alert once, and keep the answer."""
        self.stats.unverified_refusals += 1
        delivery = self.deliveries.get(msg.aid, device_id)
        if delivery is None:
            log.warning(
                "%s refused a command %s it could not verify (not ours): %s",
                device_id,
                msg.aid,
                msg.detail,
            )
            return
        if not delivery.unverified:
            delivery.unverified = True
            await self._alert(
                AlertKind.REFUSED,
                msg.aid,
                device_id,
                f"camera could not verify the command ({msg.detail}); check "
                "that it has this engine's public key",
            )
        await self._ack_rows.put((self._ack_row(device_id, msg), None))

    def _ack_row(self, device_id: str, msg: Ack) -> AckRow:
        """The ledger row of ``msg`` from ``device_id``, received now."""
        return AckRow(
            msg.aid,
            device_id,
            msg.status.value,
            msg.pre_cov,
            msg.rec,
            msg.ts,
            self.clock(),
            msg.detail,
        )

    async def _ack_writer(self) -> None:
        # Group commit: whatever arrived while the last transaction was syncing goes
        # into the next one. Each trigger brings two acks per camera; one synced write
        # each made the ledger thread the busiest part of the engine at 100,000 devices.
        queue = self._ack_rows
        while True:
            batch = [await queue.get()]
            while len(batch) < _ACK_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            plain: list[AckRow] = []
            for row, cancelled_by in batch:
                if cancelled_by is None:
                    plain.append(row)
                    continue
                await self._write_acks(plain)  # in the order they came
                plain = []
                try:
                    # The ack and its false_activation record, in one transaction.
                    seq = await self.ledger.record_cancel(row, cancelled_by, only_commanded=True)
                except NotCommandedError as exc:
                    self.stats.acks_not_commanded += 1
                    self._refused_from(
                        row.device_id, "acknowledgements for activations that did not command it"
                    )
                    log.debug("%s", exc)  # counted: a flood must not flood the log
                except LedgerError:
                    self.stats.ledger_failures += 1
                    log.exception("cancel from %s for %s not recorded", row.device_id, row.aid)
                else:
                    if seq is not None:  # not a redelivery
                        self.stats.false_activations += 1
                    log.info(
                        "%s cancelled activation %s on %s as a false activation",
                        cancelled_by,
                        row.aid,
                        row.device_id,
                    )
            await self._write_acks(plain)

    async def _write_acks(self, rows: list[AckRow]) -> None:
        if not rows:
            return
        try:
            # An answer from a camera the activation did not command (a device flooding
            # acks for activations it was never part of) is counted, never written.
            written = await self.ledger.record_acks(rows, only_commanded=True)
        except LedgerError:
            if len(rows) == 1:
                self.stats.ledger_failures += 1
                log.exception("ack from %s for %s not recorded", rows[0].device_id, rows[0].aid)
                return
            # One bad row must not cost the others their record: one transaction each.
            for row in rows:
                await self._write_acks([row])
            return
        if written.refused:
            self.stats.acks_not_commanded += written.not_commanded
            for device_id in written.refused:
                self._refused_from(device_id, _NOT_COMMANDED)

    async def _on_event(
        self,
        source: str,
        payload: bytes,
        delivery: Delivery,
    ) -> bool:
        """Handle a trigger. True when the persister now owns the acknowledgement."""
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
        self._check_sender(source, rule)
        self.stats.events += 1
        key = (source, event.eid)
        seen = await self._already_seen(key)
        if seen is not None:
            # A repeat: the device did not get our confirmation (or the broker redelivered).
            # Confirm it only if the original is durable: confirming one still waiting for
            # its ledger write would let the device stop re-sending, and a crash now
            # would lose the activation.
            self.stats.duplicates += 1
            if seen in self._durable:
                log.info("duplicate event %s from %s: confirmed again", event.eid, source)
                self._confirm(
                    source, event.eid, ConfirmStatus.ACTIVATED, self._aliases.get(seen, seen)
                )
            return False
        ticket = self.storm.admit_event(source, received)
        if ticket is None:
            limits = self.storm.limits
            detail = (
                f"{source} raised more than {limits.device_burst:g} events at once or "
                f"{limits.device_rate_per_s:g} a second"
            )
            self._storm_alert(source, received, f"rate_limited: {detail}")
            raise PayloadError("rate_limited", detail)
        plan = plan_activation(
            event=event,
            source=source,
            rule=rule,
            fleet=self.fleet,
            index=self.index,
            policy=self.policy,
        )
        cameras = frozenset(t.device_id for t in plan.targets)
        joined = self.storm.merge_into(
            src=source,
            event_type=event.type,
            ets=event.ts,
            lat=plan.lat,
            lon=plan.lon,
            cameras=cameras,
            usable=lambda incident: self._mergeable(incident, cameras),
        )
        if joined is not None:
            self._remember(key, plan.aid)
            item = _Persist(
                plan,
                event,
                source,
                received,
                self.clock(),
                {},
                delivery,
                merged_into=joined.aid,
            )
            await self._persist.put(item)
            return True
        if not self.storm.admit_activation(ticket, received):
            detail = (
                f"over {self.storm.limits.activations_per_s:g} activations a second "
                "across the fleet"
            )
            self._storm_alert(source, received, f"storm: {detail}")
            raise PayloadError("storm", detail)
        self._remember(key, plan.aid)
        decided = self.clock()
        self.storm.remember(
            Incident(plan.aid, source, event.type, event.ts, plan.lat, plan.lon, cameras, decided)
        )
        await self._send_commands(plan, event, source, decided)
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
        item = _Persist(plan, event, source, received, decided, rule_doc, delivery)
        await self._persist.put(item)
        return True

    def _check_sender(self, source: str, rule: Rule) -> None:
        """Refuse a trigger type the sending device may not raise (``sender_not_allowed``)."""
        dispatch = self.dispatch_source is not None and source == self.dispatch_source
        kind = None if dispatch else self.fleet.kind_of(source)
        if rule.allows(kind, dispatch=dispatch):
            return
        what = "the dispatch source" if dispatch else (kind.value if kind else "of unknown kind")
        allowed = ", ".join(sorted(rule.senders)) or "nobody"
        raise PayloadError(
            "sender_not_allowed",
            f"{source} is {what}; {rule.event_type} may be raised by {allowed}",
        )

    async def _already_seen(self, key: tuple[str, str]) -> str | None:
        """The activation id of an event handled before, from memory or the ledger."""
        seen = self._seen.get(key)
        if seen is not None or not self._forgot:
            return seen
        # The memory had to forget: the ledger still knows every event recorded, and
        # the age limit refuses anything older, so a replay cannot slip between them.
        self.stats.ledger_lookups += 1
        try:
            found = await self.ledger.find(*key)
        except LedgerError:
            # Unanswered: plan it. The ledger's unique (device, event) key keeps the
            # record single and cameras dedupe the activation id.
            log.exception("dedupe lookup of %s from %s failed", key[1], key[0])
            return None
        if found is not None:
            self._remember(key, found, durable=True)
        return found

    def _mergeable(self, incident: Incident, cameras: frozenset[str]) -> bool:
        """May a repeat that would command ``cameras`` join ``incident``? Only once the
        incident is durable, and while every one of those cameras still reports that it
        is recording: one an officer has since stopped must be commanded again."""
        if incident.aid not in self._durable:
            return False
        for device_id in cameras:
            info = self.fleet.get(device_id)
            if info is None or info.state is not DeviceState.RECORDING:
                return False
        return True

    def _storm_alert(self, source: str, now: float, detail: str) -> None:
        """A ``storm`` alert, at most one per device per ``alert_every_s``, raised by its
        own task: publishing it and writing it to the ledger must not hold the intake."""
        if self.storm.should_alert(source, now):
            try:
                self._deferred_alerts.put_nowait((AlertKind.STORM, source, detail))
            except asyncio.QueueFull:
                self.stats.alerts_dropped += 1

    async def _raise_deferred_alerts(self) -> None:
        while True:
            kind, device, detail = await self._deferred_alerts.get()
            await self._alert(kind, None, device, detail)

    def _refuse_event(self, source: str, payload: bytes, exc: PayloadError) -> None:
        """Tell a device its event was refused, so it stops re-sending it."""
        try:
            eid = decode(Event, payload).eid
        except PayloadError:
            return  # unreadable: no event id to answer to
        # QoS 0, not waited for: a refusal the device misses only makes it re-send, and
        # is refused again; waiting here for the broker's PUBACK of every refusal held
        # the control link, so a device flooding refused events delayed other officers'
        # triggers by seconds. Not even for the write (aiomqtt's publish() waits a turn
        # of the loop for it, even at QoS 0): the intake serves devices in turn, and a
        # wait per refusal is a wait for the next device's trigger.
        confirmation = Confirmation(
            eid=eid,
            status=ConfirmStatus.REJECTED,
            ts=self.clock(),
            detail=str(exc)[:256],
        )
        try:
            self.ctl.publish_nowait(self.topics.confirm(source), encode(confirmation), qos=0)
            self.stats.confirmations += 1
        except BrokerError:
            log.warning("refusal of %s to %s not sent; the device will re-send", eid, source)

    def _remember(self, key: tuple[str, str], aid: str, *, durable: bool = False) -> None:
        self._seen[key] = aid
        if durable:
            self._durable.add(aid)
        if len(self._seen) > self.settings.dedupe_memory:
            _, oldest = self._seen.popitem(last=False)
            self._durable.discard(oldest)
            self._aliases.pop(oldest, None)
            self._forgot = True

    async def _send_commands(self, plan: Plan, event: Event, source: str, now: float) -> None:
        expiry = self.settings.command_expiry_s
        agency = self.topics.agency
        sent: list[tuple[str, str, InFlight]] = []
        for target in plan.targets:
            command = self.signer.command(
                agency=agency,
                device_id=target.device_id,
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
            payload = encode(command)
            self.deliveries.track(
                plan.aid, target.device_id, payload, now=now, expires_at=command.exp
            )
            self._queue_command(plan.aid, target.device_id, payload, command.exp, sent)
            # Each command leaves as soon as it is signed (~40 µs each): the first camera
            # of a cluster does not wait for the last one's signature.
            self.ctl.flush()
        await self._await_pubacks(sent)

    def _queue_command(
        self,
        aid: str,
        device_id: str,
        payload: bytes,
        exp: float,
        sent: list[tuple[str, str, InFlight]],
    ) -> None:
        try:
            expiry = max(1.0, exp - self.clock())
            inflight = self.ctl.publish_nowait(
                self.topics.command(device_id), payload, qos=1, expiry_s=expiry
            )
        except BrokerError:
            # The delivery tracker re-sends it; the ledger shows commanded-not-acknowledged.
            self.stats.command_failures += 1
            log.warning("command %s to %s not sent: no connection to the broker", aid, device_id)
            return
        sent.append((aid, device_id, inflight))

    async def _await_pubacks(self, sent: list[tuple[str, str, InFlight]]) -> None:
        # The commands left in this turn of the event loop (MqttLink.flush), not behind
        # whatever else was ready to run (docs/PERFORMANCE.md, "the command path"). Their
        # PUBACKs are awaited by _command_outcomes: the control link goes on at once.
        for item in sent:
            await self._inflight.put(item)  # waits only if 100,000 are unconfirmed

    async def _command_outcomes(self) -> None:
        """Count each command the broker acknowledged, and each it did not."""
        while True:
            aid, device_id, inflight = await self._inflight.get()
            try:
                await inflight.confirmed()
            except BrokerError:
                # The delivery tracker re-sends it; the ledger shows commanded-not-acknowledged.
                self.stats.command_failures += 1
                log.warning("command %s to %s not confirmed by the broker", aid, device_id)
            else:
                self.stats.commands += 1

    def _confirm(
        self,
        device_id: str,
        eid: str,
        status: ConfirmStatus,
        aid: str | None,
        *,
        cameras: int = 0,
        detail: str | None = None,
    ) -> None:
        """Tell a device what became of its event. Handed to the connection, never
        waited for: a device that misses it re-sends the event and is confirmed again,
        and a wait here (one broker round trip, more while it is busy) would be a wait
        for every other device's trigger behind it on the intake."""
        confirmation = Confirmation(
            eid=eid, status=status, aid=aid, cameras=cameras, ts=self.clock(), detail=detail
        )
        try:
            self.ctl.publish_nowait(self.topics.confirm(device_id), encode(confirmation), qos=1)
            self.stats.confirmations += 1
        except BrokerError:
            log.warning(
                "confirmation of %s to %s not sent; the device will re-send", eid, device_id
            )

    async def _alert(
        self, kind: AlertKind, aid: str | None, device: str | None, detail: str
    ) -> None:
        """Raise an alert for dispatch and integrators, and write it to the ledger."""
        self.stats.alerts[kind.value] += 1
        log.warning("alert %s: activation %s camera %s: %s", kind.value, aid, device, detail)
        alert = Alert(alert=kind, ts=self.clock(), aid=aid, device=device, detail=detail[:256])
        try:
            await self.ctl.publish(self.topics.alerts(kind.value), encode(alert), qos=1)
        except BrokerError:
            log.warning("alert %s for %s not published", kind.value, aid)
        try:
            await self.ledger.record_event(
                f"engine/{self.settings.engine_id}",
                "alert",
                device or aid or "engine",
                kind.value,
                {"aid": aid, "device": device, "detail": detail},
            )
        except LedgerError:
            self.stats.ledger_failures += 1
            log.exception("alert %s not written to the ledger", kind.value)

    async def _track_deliveries(self) -> None:
        """Re-send unanswered commands, alert on silence, give up on expiry."""

        def online(device_id: str) -> bool:
            info = self.fleet.get(device_id)
            return info is None or info.online

        while True:
            await asyncio.sleep(min(0.25, self.settings.ack_timeout_s / 4))
            for action in self.deliveries.due(self.clock(), online):
                try:
                    await self._act(action)
                except Exception:  # one failing action must not stop delivery tracking
                    log.exception(
                        "delivery action %s for %s failed", action.kind.value, action.delivery.aid
                    )

    async def _act(self, action: Action) -> None:
        d = action.delivery
        if action.kind is ActionKind.RETRY:
            self.stats.retries += 1
            sent: list[tuple[str, str, InFlight]] = []
            self._queue_command(d.aid, d.device_id, d.payload, d.expires_at, sent)
            self.ctl.flush()
            await self._await_pubacks(sent)
        elif action.kind is ActionKind.ALERT_NO_ACK:
            waited = self.clock() - d.commanded_at
            state = "received, not yet recording" if d.received else "no answer"
            await self._alert(AlertKind.NO_ACK, d.aid, d.device_id, f"{state} after {waited:.1f} s")
        else:
            await self._alert(
                AlertKind.EXPIRED,
                d.aid,
                d.device_id,
                f"command expired after {d.attempts} attempt(s)",
            )

    async def _recover(self) -> None:
        """After a restart: dedupe state and unfinished deliveries from the ledger."""
        now = self.clock()
        since = now - self.settings.max_event_age_s
        for source, eid, aid in await self.ledger.recent_events(since):
            self._remember((source, eid), aid, durable=True)
        expiry = self.settings.command_expiry_s
        for aid in await self.ledger.activation_ids(since=now - expiry, limit=100_000):
            found = await self.ledger.activation(aid)
            if found is None:
                continue
            row, decisions = found
            done = {
                a.device_id
                for a in await self.ledger.acks(aid)
                if a.status != AckStatus.RECEIVED.value
            }
            for d in decisions:
                if not d.commanded or d.device_id in done or row.decided_ts + expiry <= now:
                    continue
                proximity = d.reason == "proximity"
                command = self.signer.command(
                    agency=self.topics.agency,
                    device_id=d.device_id,
                    aid=aid,
                    eid=row.eid,
                    src=row.src,
                    type=row.type,
                    ets=row.event_ts,
                    pre=row.pre_roll_s,
                    reason=ActivationReason.PROXIMITY if proximity else ActivationReason.PAIRED,
                    dist=d.distance_m,
                    ts=now,
                    exp=row.decided_ts + expiry,
                )
                self.deliveries.track(
                    aid, d.device_id, encode(command), now=now, expires_at=command.exp
                )

    # ------------------------------------------------------------------ persistence
    async def _persister(self) -> None:
        while True:
            item = await self._persist.get()
            if item.merged_into is not None:
                await self._persist_merge(item, item.merged_into)
                continue
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
                inserted = await self.ledger.record_activation(row, plan.decisions)
            except LedgerError as exc:
                # Not durable: neither acknowledged nor confirmed, and forgotten, so the
                # device's re-send (or the broker's redelivery) is handled afresh. The
                # cameras were commanded already and dedupe the repeat.
                self.stats.ledger_failures += 1
                self._seen.pop((item.source, event.eid), None)
                self._durable.discard(plan.aid)
                log.exception("activation %s not written to the ledger", plan.aid)
                await self._alert(AlertKind.LEDGER, plan.aid, None, str(exc))
                continue
            self._durable.add(plan.aid)
            # Counted once durable and before the confirmation leaves: a device holding
            # its confirmation must find the activation counted (replicas' counters add
            # up to what the ledger holds at every moment a device can observe).
            if inserted:
                self.stats.activations += 1
            else:
                # Another replica of the share group recorded this trigger first (the
                # device re-sent it while that replica was still writing). It is durable,
                # so it is confirmed, but its record belongs to the replica that wrote it:
                # publishing it again would show integrators the activation twice.
                self.stats.duplicates += 1
                log.info(
                    "event %s from %s already recorded by another engine", event.eid, item.source
                )
            item.delivery.ack()
            self._confirm(
                item.source, event.eid, ConfirmStatus.ACTIVATED, plan.aid, cameras=len(plan.targets)
            )
            if not inserted:
                continue
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

    async def _persist_merge(self, item: _Persist, original: str) -> None:
        """Record a trigger that joined ``original``, then acknowledge and confirm it."""
        plan, event = item.plan, item.event
        body = {
            "aid": original,  # ties the record to the activation it joined (exports, retention)
            "merged_aid": plan.aid,
            "src": item.source,
            "eid": event.eid,
            "type": event.type,
            "event_ts": event.ts,
            "received_ts": item.received,
            "lat": plan.lat,
            "lon": plan.lon,
            "cameras": sorted(t.device_id for t in plan.targets),
            "initiated_by": event.by,
            "engine": self.settings.engine_id,
        }
        try:
            await self.ledger.record_event(
                f"engine/{self.settings.engine_id}", "merge", original, "merged", body
            )
        except LedgerError as exc:
            self.stats.ledger_failures += 1
            self._seen.pop((item.source, event.eid), None)
            log.exception("merge of %s into %s not written to the ledger", event.eid, original)
            await self._alert(AlertKind.LEDGER, original, None, str(exc))
            return
        self._durable.add(plan.aid)
        self._aliases[plan.aid] = original
        self.stats.merged += 1
        log.info("event %s from %s joined activation %s", event.eid, item.source, original)
        item.delivery.ack()
        self._confirm(
            item.source, event.eid, ConfirmStatus.ACTIVATED, original, cameras=len(plan.targets)
        )

    # ------------------------------------------------------------------ rejects
    def _refused_from(self, device_id: str, what: str) -> None:
        """Count a refused message against ``device_id``; quarantine it past the limit."""
        if device_id == self.dispatch_source or not self.floods.note(device_id, self.clock()):
            return
        reason = (
            f"quarantined: {self.floods.limit} refused messages within "
            f"{self.floods.window_s:g} s (last: {what})"
        )
        try:
            self._to_quarantine.put_nowait((device_id, reason))
        except asyncio.QueueFull:
            self.stats.quarantines_failed += 1

    async def _quarantines(self) -> None:
        """Disable the devices the flood watch names, alert dispatch, write the ledger."""
        while True:
            device_id, reason = await self._to_quarantine.get()
            if self.quarantine is None:
                detail = f"{reason}; NOT disabled: this engine cannot change accounts"
                await self._alert(AlertKind.QUARANTINE, None, device_id, detail)
                continue
            try:
                disabled = await self.quarantine.quarantine(device_id, reason)
            except (SecurityError, BrokerError, OSError) as exc:
                self.stats.quarantines_failed += 1
                detail = f"{reason}; NOT disabled: {exc}"
                await self._alert(AlertKind.QUARANTINE, None, device_id, detail)
                continue
            if disabled:  # else disabled already (by another replica, or an operator)
                self.stats.quarantined += 1
                await self._alert(AlertKind.QUARANTINE, None, device_id, reason)

    def _reject(self, topic: str, payload: bytes, exc: PayloadError) -> None:
        """Count a refused message, charge it to its device, and dead-letter it (within
        the dead-letter rate). Never waits."""
        self.stats.rejected[exc.reason] += 1
        parsed = self.topics.parse_device(topic)
        if parsed is not None:
            self._refused_from(parsed.device_id, exc.reason)
        if self._deadletter_token():
            self._deadletter(topic, payload, exc)

    def _deadletter_token(self) -> bool:
        """Take one of the dead-letter rate's tokens; False (and counted) if none."""
        now = self.clock()
        rate = self.settings.deadletters_per_s
        self._deadletter_tokens = min(
            rate, self._deadletter_tokens + (now - self._deadletter_refill) * rate
        )
        self._deadletter_refill = now
        if self._deadletter_tokens < 1:
            # Counted, not logged either: a flood must cost as little as it can.
            self.stats.deadletters_suppressed += 1
            return False
        self._deadletter_tokens -= 1
        return True

    def _deadletter(self, topic: str, payload: bytes, exc: PayloadError) -> None:
        log.warning("rejected %r: %s", topic, exc)  # as often as dead letters, no more
        letter = DeadLetter(
            ts=self.clock(),
            topic=topic[:512],
            reason=exc.reason,
            detail=exc.detail[:1024],
            size=len(payload),
            head=hex_head(payload),
        )
        try:
            self.ctl.publish_nowait(self.topics.deadletter(exc.reason), encode(letter), qos=0)
        except BrokerError:
            log.warning("dead letter for %s not published", topic)
