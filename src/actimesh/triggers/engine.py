"""The trigger engine: device messages in, activation commands out. Wiring only.

The engine connects its parts and owns their loops, in one TaskGroup:

* :mod:`.intake` routes every device message, validates it and charges refusals to its
  device (:mod:`.refusals`: dead letters, quarantine);
* :mod:`.planning` is the trigger path: who may raise it, dedupe (:mod:`.dedupe`),
  rate and storm limits (:mod:`.storm`), the plan (:mod:`.fanout`);
* :mod:`.commands` signs and sends commands, confirms events and chases silence
  (:mod:`.delivery`);
* :mod:`.persistence` writes activations and acknowledgements to the ledger, and
  publishes the activation record once it is durable;
* :mod:`.alerts` tells dispatch and integrators what needs a person.

Four connections to the bus (:class:`~actimesh.broker.transport.Transport`), each
``<agency>-<engine>-<role>``, so that load on one cannot delay another: ``cmd``
publishes (commands, confirmations, alerts, records, dead letters) and carries the
engine-status will; ``ctl`` receives trigger
events and presence in a persistent session; ``ack`` receives acknowledgements; ``tm``
receives telemetry, best effort, which only moves devices in the spatial index.

With geographic partitions (``[engine] partitions`` > 1, :mod:`.partitions`) trigger
events come in on one link per partition served (``ctl-p<k>``), telemetry on ``tm`` is
the relayed telemetry of those partitions only, and two more links relay this engine's
share of the raw telemetry to the partitions that must hold it: ``relay`` reads it and
``route`` publishes it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable, Sequence

from actimesh import __version__
from actimesh.adapters.owntracks import OWNTRACKS_FILTER
from actimesh.broker.client import Subscription, Will
from actimesh.broker.codec import encode
from actimesh.broker.ingest import Publish
from actimesh.broker.messages import EngineStatus
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.broker.transport import Inbound, Outbound, Transport
from actimesh.errors import BrokerError
from actimesh.geofence import GridIndex, InclusionPolicy, PartitionMap, SpatialIndex
from actimesh.ledger import Ledger
from actimesh.security.signing import CommandSigner
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.answers import AckWriter
from actimesh.triggers.commands import Commander
from actimesh.triggers.dedupe import Dedupe
from actimesh.triggers.delivery import DeliveryTracker
from actimesh.triggers.fleet import DeviceDirectory, Fleet
from actimesh.triggers.followup import FollowUps
from actimesh.triggers.heap import HeapFreezer
from actimesh.triggers.intake import Intake
from actimesh.triggers.partitions import Partitioning
from actimesh.triggers.persistence import Persister
from actimesh.triggers.planning import Planner, TriggerTracer
from actimesh.triggers.quarantine import Quarantine
from actimesh.triggers.refusals import Refusals
from actimesh.triggers.rules import RuleTable
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.slowdown import SlowDownControl
from actimesh.triggers.stats import EngineStats
from actimesh.triggers.storm import StormControl

__all__ = ["Engine"]

log = logging.getLogger(__name__)

#: How long :meth:`Engine.run` waits for each connection before it gives up.
_CONNECT_TIMEOUT_S = 30


class Engine:
    """The trigger engine for one agency. Create inside the running loop; ``await run()``.

    ``transport`` opens the engine's connections to the bus. ``signer`` signs every
    command. ``directory`` is the authoritative source of what each device is (the
    device registry); without one, devices' own presence is taken at its word.
    ``dispatch_source`` is the device id dispatch publishes zones under: the only
    sender allowed to raise rules that name ``"dispatch"``. ``tracer`` is told when
    each trigger's handling starts and ends (the bench's ``--trace``). ``partitions``
    replaces the partition cells the settings describe (``settings.partitions`` > 1):
    a hand-drawn layout, or a test's boundary in a given place.
    """

    #: The relay's telemetry reader, with partitions (its drops are shed telemetry too).
    _relay_links: tuple[Inbound, ...] = ()

    def __init__(
        self,
        *,
        topics: Topics,
        transport: Transport,
        ledger: Ledger,
        rules: RuleTable,
        policy: InclusionPolicy,
        signer: CommandSigner,
        settings: EngineSettings | None = None,
        index: SpatialIndex | None = None,
        directory: DeviceDirectory | None = None,
        dispatch_source: str | None = None,
        clock: Callable[[], float] = time.time,
        quarantine: Quarantine | None = None,
        tracer: TriggerTracer | None = None,
        owntracks: bool = False,
        partitions: PartitionMap | None = None,
    ) -> None:
        self.topics = topics
        self.settings = s = settings or EngineSettings()
        self.ledger = ledger
        self.rules = rules
        self.policy = policy
        self.signer = signer
        self.clock = clock
        self.index: SpatialIndex = index if index is not None else GridIndex()
        self.fleet = Fleet(directory)
        self.storm = StormControl(s.storm_limits())
        self.stats = EngineStats()
        self.ready = asyncio.Event()
        #: Set once the engine plans events (after ``warmup_s``).
        self.warmed = asyncio.Event()
        self.deliveries = DeliveryTracker(ack_timeout_s=s.ack_timeout_s, retry_max_s=s.retry_max_s)
        #: Geographic partitions (:mod:`.partitions`); None: this engine holds every fix.
        self.partitioning: Partitioning | None = (
            Partitioning(
                topics=topics,
                settings=s,
                rules=rules,
                policy=policy,
                stats=self.stats,
                cells=partitions,
            )
            if s.partitions > 1 or partitions is not None
            else None
        )
        #: The trigger-event links of the partitions served (none without partitions).
        self.partition_links: tuple[Inbound, ...] = ()

        # Commands, confirmations, alerts and dead letters go out on their own link;
        # nothing arrives on it. Its session starts clean: what it sent and the broker
        # did not acknowledge is sent again by the delivery tracker, not by the session.
        # Each link's name is ``<agency>-<engine>-<role>``: stable, so that the
        # persistent sessions find themselves after a restart.
        name = f"{topics.agency}-{s.engine_id}"
        status = topics.engine_status(s.engine_id)
        offline = encode(EngineStatus(online=False, engine=s.engine_id))
        self.ctl: Outbound = transport.outbound(
            f"{name}-cmd", will=Will(status, offline), on_connect=self._announce
        )
        self.alerts = Alerts(
            out=self.ctl,
            ledger=ledger,
            topics=topics,
            engine_id=s.engine_id,
            storm=self.storm,
            stats=self.stats,
            clock=clock,
        )
        self.refusals = Refusals(
            out=self.ctl,
            topics=topics,
            settings=s,
            alerts=self.alerts,
            stats=self.stats,
            clock=clock,
            quarantine=quarantine,
            dispatch_source=dispatch_source,
        )
        self.dedupe = Dedupe(ledger, s.dedupe_memory, self.stats)
        self.commander = Commander(
            out=self.ctl,
            signer=signer,
            topics=topics,
            settings=s,
            deliveries=self.deliveries,
            fleet=self.fleet,
            alerts=self.alerts,
            stats=self.stats,
            clock=clock,
        )
        self.persister = Persister(
            ledger=ledger,
            out=self.ctl,
            topics=topics,
            settings=s,
            dedupe=self.dedupe,
            commander=self.commander,
            alerts=self.alerts,
            stats=self.stats,
        )
        self.acks = AckWriter(
            ledger=ledger, refusals=self.refusals, stats=self.stats, writing=self.dedupe.writing
        )
        planner = Planner(
            rules=rules,
            policy=policy,
            fleet=self.fleet,
            index=self.index,
            storm=self.storm,
            dedupe=self.dedupe,
            commander=self.commander,
            persister=self.persister,
            alerts=self.alerts,
            settings=s,
            stats=self.stats,
            clock=clock,
            dispatch_source=dispatch_source,
            tracer=tracer,
            partitioning=self.partitioning,
            follow_ups=self._follow_up_control(lambda: planner.policy),
        )
        self.intake = Intake(
            topics=topics,
            settings=s,
            fleet=self.fleet,
            index=self.index,
            deliveries=self.deliveries,
            planner=planner,
            commander=self.commander,
            acks=self.acks,
            refusals=self.refusals,
            alerts=self.alerts,
            stats=self.stats,
            clock=clock,
            dispatch_source=dispatch_source,
            owntracks=owntracks,
            follow_ups=self.follow_ups,
        )

        # Devices' messages come in on lean readers (broker/intake.py) that refuse a
        # device over its budget while reading the socket and serve devices in turn: a
        # flood from one stolen device is drained at the broker's speed and never sits
        # in front of another officer's trigger. Trigger events and presence on one
        # link, kept in a persistent session (what arrives while the engine restarts
        # waits in the broker); acknowledgements on their own, so that the ack writer's
        # pace never holds up a trigger.
        def device_messages(channel: DeviceChannel, qos: int = 1) -> Subscription:
            return Subscription(topics.all_devices(channel), qos)

        part = self.partitioning
        events = topics.all_devices(DeviceChannel.EVENT)
        if s.share_group:
            events = topics.shared(s.share_group, events)
        control: tuple[Subscription, ...] = (device_messages(DeviceChannel.PRESENCE),)
        if part is None:
            control += (Subscription(events, 1),)
        self.control_link = transport.control(
            f"{name}-ctl",
            control,
            self.intake.on_control,
            admit=self.intake.admit,
            session_expiry_s=s.session_expiry_s,
        )
        self.ack_link = transport.control(
            f"{name}-ack",
            (device_messages(DeviceChannel.ACK),),
            self.intake.on_control,
            admit=self.intake.admit,
            session_expiry_s=s.session_expiry_s,
        )
        # Telemetry on a lean QoS 0 reader, in batches (broker/ingest.py; ~9,000 msg/s
        # through aiomqtt, >100,000 this way).
        # With OwnTracks on, the phone app's locations come in on the same reader: they
        # are telemetry in another format (adapters/owntracks.py).
        positions: tuple[Subscription, ...] = (device_messages(DeviceChannel.TELEMETRY, qos=0),)
        on_telemetry = self.intake.on_telemetry
        if part is not None:
            positions = part.routed_subscriptions()
            on_telemetry = self._on_routed
        if owntracks:
            positions += (Subscription(OWNTRACKS_FILTER, 0),)
        self.telemetry_link = transport.stream(
            f"{name}-tm",
            positions,
            on_telemetry,
            max_queued=s.telemetry_queue,
        )
        self.links: tuple[Outbound | Inbound, ...] = (
            self.ctl,
            self.control_link,
            self.ack_link,
            self.telemetry_link,
        )
        if part is not None:
            self.links += self._partition_links(transport, part, name)
        #: Asks devices to report more slowly while the engine sheds telemetry.
        self.slowdown = self._slowdown_control(planner)

    def _follow_up_control(self, policy: Callable[[], InclusionPolicy]) -> FollowUps:
        #: Cameras left out stale, held for a fix after their trigger's event.
        self.follow_ups = FollowUps(
            policy=policy,
            fleet=self.fleet,
            commander=self.commander,
            persister=self.persister,
            settings=self.settings,
            stats=self.stats,
            clock=self.clock,
        )
        return self.follow_ups

    def _slowdown_control(self, planner: Planner) -> SlowDownControl:
        return SlowDownControl(
            out=self.ctl,
            signer=self.signer,
            topics=self.topics,
            settings=self.settings,
            stats=self.stats,
            clock=self.clock,
            shed=self._telemetry_shed,
            trust=planner.trust_heartbeat,
        )

    def _telemetry_shed(self) -> int:
        """Positions the engine's telemetry readers have dropped so far (full queues)."""
        streams = [self.telemetry_link, *self._relay_links]
        return sum(link.stats.dropped_incoming for link in streams)

    def _partition_links(
        self, transport: Transport, part: Partitioning, name: str
    ) -> tuple[Outbound | Inbound, ...]:
        """One event link per partition served (the handler must know which partition's
        share an event came in, to plan only the ones it owns), and the relay's two."""
        s = self.settings
        self.partition_links = tuple(
            transport.control(
                f"{name}-ctl-p{k}",
                (part.event_subscription(k),),
                functools.partial(self.intake.on_control, partition=k),
                admit=self.intake.admit,
                session_expiry_s=s.session_expiry_s,
            )
            for k in part.served
        )
        route = transport.outbound(f"{name}-route")
        part.attach(route)
        relay = transport.stream(
            f"{name}-relay", (part.relay_subscription(),), part.relay, max_queued=s.telemetry_queue
        )
        self._relay_links = (relay,)
        return (*self.partition_links, route, relay)

    async def _on_routed(self, batch: Sequence[Publish]) -> None:
        assert self.partitioning is not None  # the handler only when partitioned
        await self.intake.on_telemetry(self.partitioning.unroute(batch))

    @property
    def quarantine(self) -> Quarantine | None:
        """What disables a flooding device's account (None: nothing can)."""
        return self.refusals.quarantine

    @quarantine.setter
    def quarantine(self, quarantine: Quarantine | None) -> None:
        self.refusals.quarantine = quarantine

    def sizes(self) -> dict[str, int]:
        """How much each bounded structure holds now (for the fuzzer's memory checks)."""
        return {
            "fleet": len(self.fleet),
            "index": len(self.index),
            "dedupe": len(self.dedupe),
            "durable": self.dedupe.durable_count,
            "deliveries": len(self.deliveries),
            "held": self.intake.held,
            "follow_ups": len(self.follow_ups),
        }

    @property
    def backlog(self) -> int:
        """Triggers and acknowledgements waiting for their ledger write."""
        return self.persister.backlog + self.acks.backlog

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until cancelled. One TaskGroup owns the links and the engine's loops."""
        await self._recover()
        heap = HeapFreezer()
        try:
            await self._run_parts(heap)
        finally:
            heap.uninstall()  # installed by the warm-up

    async def _run_parts(self, heap: HeapFreezer) -> None:
        links = self.links
        eid = self.settings.engine_id
        async with asyncio.TaskGroup() as tg:
            for link in links:
                tg.create_task(link.run(), name=link.name)
            tg.create_task(self.commander.run_tracking(), name=f"{eid}-delivery")
            tg.create_task(self.persister.run(), name=f"{eid}-persister")
            tg.create_task(self.acks.run(), name=f"{eid}-acks")
            tg.create_task(self.commander.run_outcomes(), name=f"{eid}-commands")
            tg.create_task(self.refusals.run(), name=f"{eid}-quarantine")
            tg.create_task(self.alerts.run(), name=f"{eid}-alerts")
            tg.create_task(self.follow_ups.run(), name=f"{eid}-follow-ups")
            tg.create_task(self._renew_status(), name=f"{eid}-status")
            if self.settings.slowdown:
                tg.create_task(self.slowdown.run(), name=f"{eid}-slowdown")
            for link in links:
                await link.wait_connected(timeout=_CONNECT_TIMEOUT_S)
            tg.create_task(self._warm_up(heap), name=f"{eid}-warmup")
            self.ready.set()

    async def _recover(self) -> None:
        """After a restart: dedupe state and unfinished deliveries from the ledger."""
        now = self.clock()
        await self.dedupe.recover(since=now - self.settings.max_event_age_s)
        await self.commander.recover(self.ledger, now)

    async def _warm_up(self, heap: HeapFreezer) -> None:
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
            # And again after every full collection: the fleet mostly arrives after
            # this moment (heap.py says what that saves).
            heap.install()
        self.warmed.set()
        await self.intake.warm()

    async def _announce(self, link: Outbound) -> None:
        every = self.settings.status_every_s
        status = EngineStatus(
            online=True,
            engine=self.settings.engine_id,
            ts=self.clock(),
            version=__version__,
            ttl=3 * every,
        )
        await link.publish(
            self.topics.engine_status(self.settings.engine_id), encode(status), retain=True
        )

    async def _renew_status(self) -> None:
        """Say "online" again every ``status_every_s``: a status that stops being renewed
        goes stale for its readers (a crash leaves no will on a NATS cluster)."""
        while True:
            await asyncio.sleep(self.settings.status_every_s)
            if not self.ctl.connected:
                continue  # the next connection announces itself
            try:
                await self._announce(self.ctl)
            except BrokerError as exc:
                log.info("engine status not renewed: %s", exc)
