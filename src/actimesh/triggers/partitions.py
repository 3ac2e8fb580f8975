"""Geographic partitions in the engine: who holds which fix, who plans which trigger.

With ``[engine] partitions = N`` (N > 1) the globe's cells are split over N partitions
(:class:`~actimesh.geofence.partition.PartitionMap`) and each engine serves the ones in
``[engine] partition``. Three things change; nothing else in the engine does:

* **Telemetry is relayed once, to its partitions.** A broker routes by topic, and a
  device's position is in its payload. So every engine also takes a share of the raw
  telemetry (a shared subscription, ``$share/<group>-relay/...``: each message to one
  engine, a dead engine's share moving to the others by itself), reads the fix, and
  republishes the payload unchanged on ``<prefix>/engine/part/<k>/dev/<id>/telemetry``
  for the fix's owner and for every partition whose halo it is in
  (:meth:`~actimesh.geofence.partition.PartitionMap.partitions_for`). An engine's
  telemetry link subscribes to its own partitions' relayed subjects only, and
  :meth:`Partitioning.unroute` gives the intake the device's own topic back: rate
  limits, validation and refusals are the owner's, exactly as without partitions.
  A payload the relay cannot place (unreadable, or with no fix) goes to the device's
  home partition (a hash of its id), whose engine refuses or records it.
* **Each trigger is planned by the owner of its position.** Every partition has its own
  shared subscription to trigger events (``$share/<group>-p<k>/...``), so each event
  reaches one engine per partition; the engine that took it for partition ``k`` plans
  it only if ``k`` owns the event's position (:meth:`Partitioning.event_owner`) and
  otherwise acknowledges it, counted in ``events_elsewhere``. The owner's index holds
  every fix within the halo, the widest search radius of any rule, so its plan is the
  one an engine holding the whole fleet would make.
* **Failover is configuration.** Replicas that list the same partition share its event
  subscription and each holds its whole telemetry: a hot standby. An engine that lists
  a dead engine's partition too takes over its events (still waiting in that
  partition's subscription) and its relayed telemetry, once restarted with it.

An event without a position is placed at its sender's fix in this engine's index; an
engine holding no fix of the sender leaves it to the sender's home partition. (If the
sender has a fix elsewhere but none in its home partition, both the partition holding
it and the home partition plan it: two activations, no camera missed.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from actimesh.broker.client import Subscription
from actimesh.broker.codec import decode_telemetry
from actimesh.broker.ingest import Publish
from actimesh.broker.messages import Event
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError, PayloadError
from actimesh.geofence import InclusionPolicy, PartitionMap, SpatialIndex
from actimesh.triggers.rules import RuleTable
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["Partitioning", "halo_for"]

log = logging.getLogger(__name__)


def halo_for(rules: RuleTable, policy: InclusionPolicy) -> float:
    """How far beyond its cells a partition must hear of fixes: the widest radius any
    plan searches (the widest rule's radius plus the policy's band)."""
    return max((policy.search_radius_m(rule.radius_m) for rule in rules), default=0.0)


class Partitioning:
    """One engine's view of the partitions: the relay, the routed topics and the owner
    of each trigger. Built by the engine when ``settings.partitions > 1``."""

    def __init__(
        self,
        *,
        topics: Topics,
        settings: EngineSettings,
        rules: RuleTable,
        policy: InclusionPolicy,
        stats: EngineStats,
        cells: PartitionMap | None = None,
    ) -> None:
        self.cells = cells or PartitionMap(
            settings.partitions,
            cell_m=settings.partition_cell_m,
            halo_m=halo_for(rules, policy),
        )
        if self.cells.count != settings.partitions:
            raise ValueError(
                f"the partition map has {self.cells.count} partitions, "
                f"engine.partitions says {settings.partitions}"
            )
        needed = halo_for(rules, policy)
        if self.cells.halo_m < needed:
            # A camera within a rule's reach across a boundary would be missed.
            raise ValueError(
                f"the partitions' halo ({self.cells.halo_m:g} m) is narrower than the widest "
                f"search radius of the rules ({needed:g} m)"
            )
        if self.cells.halo_m > self.cells.cell_m / 4:
            # Not wrong, only costly: docs/SCALING.md measures it.
            log.warning(
                "partitions: a halo of %g m on %g m cells copies most fixes to several "
                "partitions; cap the widest rule's radius or make the cells larger",
                self.cells.halo_m,
                self.cells.cell_m,
            )
        self.served = settings.served
        self._topics = topics
        self._stats = stats
        self._out: Outbound | None = None
        group = settings.share_group or "engines"
        self._relay_group = f"{group}-relay"
        self._event_group = f"{group}-p"
        prefix = topics.prefix
        self._dev_root = f"{prefix}/".encode()
        self._dev_head = f"{prefix}/dev/".encode()
        self._routed_root = f"{prefix}/engine/part/"
        self._routed_head = [f"{self._routed_root}{k}/" for k in range(self.cells.count)]

    # ------------------------------------------------------------------ subscriptions
    def relay_subscription(self) -> Subscription:
        """The relay's share of every device's raw telemetry."""
        tm = self._topics.all_devices(DeviceChannel.TELEMETRY)
        return Subscription(self._topics.shared(self._relay_group, tm), 0)

    def routed_subscriptions(self) -> tuple[Subscription, ...]:
        """The relayed telemetry of the partitions this engine serves."""
        tail = f"dev/+/{DeviceChannel.TELEMETRY.value}"
        return tuple(Subscription(f"{self._routed_head[k]}{tail}", 0) for k in self.served)

    def event_subscription(self, partition: int) -> Subscription:
        """Partition ``partition``'s share of trigger events."""
        events = self._topics.all_devices(DeviceChannel.EVENT)
        return Subscription(self._topics.shared(f"{self._event_group}{partition}", events), 1)

    def routed_topic(self, partition: int, device_topic: str) -> str:
        """Where the relay republishes ``device_topic`` for ``partition``."""
        return self._routed_head[partition] + device_topic[len(self._dev_root) :]

    # ------------------------------------------------------------------ the relay
    def attach(self, out: Outbound) -> None:
        """Relay through ``out`` (a link of its own: relaying never delays a command)."""
        self._out = out

    async def relay(self, batch: Sequence[Publish]) -> None:
        """The relay link's handler: each raw fix to the partitions that must hold it."""
        out, stats, cells = self._out, self._stats, self.cells
        if out is None or not out.connected:
            stats.relay_dropped += len(batch)
            return
        heads, root = self._routed_head, len(self._dev_root)
        for topic, payload in batch:
            stats.relayed += 1
            if not topic.startswith(self._dev_head):
                stats.relay_unplaced += 1
                continue  # not a device's topic: nobody's to refuse
            name = topic.decode(errors="replace")
            try:
                _ts, _state, lat, lon, _acc = decode_telemetry(payload)
            except PayloadError:
                lat = lon = None
            if lat is None or lon is None:
                # No fix to place it by: its home partition's engine records it (state
                # only) or refuses it, with the device charged, as without partitions.
                stats.relay_unplaced += 1
                device = name[len(self._dev_head) :].partition("/")[0]
                targets: tuple[int, ...] = (cells.home(device),)
            else:
                targets = cells.partitions_for(lat, lon)
            tail = name[root:]
            try:
                for partition in targets:
                    out.publish_nowait(heads[partition] + tail, payload, qos=0)
                    stats.relay_copies += 1
            except BrokerError:
                stats.relay_dropped += 1  # the link went down: best effort, as telemetry is
        out.flush()

    def unroute(self, batch: Sequence[Publish]) -> list[Publish]:
        """Relayed telemetry with the device's own topics, for the intake."""
        root = self._routed_root.encode()
        dev_root = self._dev_root
        unrouted: list[Publish] = []
        for routed, payload in batch:
            cut = routed.find(b"/", len(root)) if routed.startswith(root) else -1
            unrouted.append((dev_root + routed[cut + 1 :] if cut > 0 else routed, payload))
        return unrouted

    # ------------------------------------------------------------------ triggers
    def event_owner(self, event: Event, source: str, index: SpatialIndex) -> int:
        """The partition that plans ``event`` from ``source`` (see the module)."""
        if event.lat is not None and event.lon is not None:
            return self.cells.owner(event.lat, event.lon)
        fix = index.get(source)
        if fix is not None:
            return self.cells.owner(fix.lat, fix.lon)
        return self.cells.home(source)

    def home(self, source: str) -> int:
        """The partition answerable for ``source``'s messages that have no position."""
        return self.cells.home(source)
