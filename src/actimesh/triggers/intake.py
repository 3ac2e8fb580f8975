"""The engine's intake: every device message routed, validated, and charged to its device.

Telemetry only moves devices in the fleet and the spatial index; it is the hot path
(docs/PERFORMANCE.md) and is shed, never a trigger. Control messages (trigger events,
presence, acknowledgements) pass a per-device budget while they are read
(:meth:`Intake.admit`, run by the transport's reader), then are handled one at a time:
one message's failure is logged and counted, and never the next device's problem.

OwnTracks locations (``owntracks/<device id>/<phone>``, JSON; adapters/owntracks.py)
arrive with the telemetry when the engine takes them, and pass the same checks: the
device must be registered, within its telemetry rate, and its fix within the clock
window; the app reports no camera state, so a device's known state is kept.

Every refused input is counted by reason, logged with its topic, and dead-lettered
(:mod:`.refusals`). Trigger events that arrive before the engine has warmed up (heard
every device's position) are held and planned once it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from actimesh.adapters.owntracks import OWNTRACKS_ROOT, owntracks_device, parse_owntracks
from actimesh.broker.codec import check_clock, decode, decode_telemetry_report
from actimesh.broker.ingest import Publish
from actimesh.broker.intake import Delivery
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    AlertKind,
    DeviceState,
    OfflineReason,
    Presence,
)
from actimesh.broker.topics import DeviceChannel, Topics, is_identifier
from actimesh.errors import PayloadError
from actimesh.geofence import MotionPromise, SpatialIndex
from actimesh.ledger import AckRow
from actimesh.security.signing import UNVERIFIED_REFUSALS, refusal_code
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.answers import AckWriter
from actimesh.triggers.commands import Commander
from actimesh.triggers.delivery import DeliveryTracker
from actimesh.triggers.fleet import DeviceInfo, Fleet, LastFix
from actimesh.triggers.followup import FollowUps
from actimesh.triggers.planning import Planner
from actimesh.triggers.refusals import Refusals
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats
from actimesh.triggers.storm import TokenBucket
from actimesh.triggers.track import TRACK_STEP_S, PastFix, keep

__all__ = ["Intake"]

log = logging.getLogger(__name__)

#: Control-message budgets kept at most (one per device heard from).
_MAX_BUDGETS = 200_000
#: Longest a telemetry batch waits for a trigger, command answer or presence being
#: handled (they come first); beyond it a stuck handler cannot stop the positions.
_YIELD_MAX_S = 0.005


class Intake:
    """Routes device messages to their handlers. Its methods are the transport's
    handlers: :meth:`admit`, :meth:`on_control` and :meth:`on_telemetry`."""

    def __init__(
        self,
        *,
        topics: Topics,
        settings: EngineSettings,
        fleet: Fleet,
        index: SpatialIndex,
        deliveries: DeliveryTracker,
        planner: Planner,
        commander: Commander,
        acks: AckWriter,
        refusals: Refusals,
        alerts: Alerts,
        stats: EngineStats,
        clock: Callable[[], float],
        dispatch_source: str | None,
        owntracks: bool = False,
        follow_ups: FollowUps | None = None,
    ) -> None:
        self._follow_ups = follow_ups
        self._topics = topics
        self._settings = settings
        self._fleet = fleet
        self._index = index
        self._deliveries = deliveries
        self._planner = planner
        self._commander = commander
        self._acks = acks
        self._refusals = refusals
        self._alerts = alerts
        self._stats = stats
        self._clock = clock
        self._dispatch_source = dispatch_source
        # Each device's control-message budget (events, acks, presence), and the devices
        # over it now: one dead letter says a flood began, not one per message of it.
        self._budgets: dict[str, TokenBucket] = {}
        self._refusing: set[str] = set()
        self._dev_head = f"{topics.prefix}/dev/".encode()
        self._tm_tail = f"/{DeviceChannel.TELEMETRY.value}".encode()
        self._owntracks = f"{OWNTRACKS_ROOT}/".encode() if owntracks else None
        self._warm = False
        self._held: list[tuple[Delivery, int | None]] = []
        #: Control batches (triggers, presence, answers) being handled right now.
        self._control_busy = 0
        self._control_idle = asyncio.Event()
        self._control_idle.set()

    @property
    def held(self) -> int:
        """Trigger events held until the engine is warm."""
        return len(self._held)

    async def warm(self) -> None:
        """From now on events are planned; plan the ones held since start."""
        self._warm = True
        held, self._held = self._held, []
        if held:
            log.info("warm: planning %d event(s) held since start", len(held))
        for delivery, partition in held:
            await self.handle(delivery, partition)

    # ------------------------------------------------------------------ telemetry
    async def yield_to_control(self) -> None:
        """Wait (up to ``_YIELD_MAX_S``) while a control batch is being handled.

        Control and telemetry batches share one event loop. A trigger's handling awaits
        (its dedupe lookup, the ledger's back-pressure), and at every such await a whole
        telemetry batch could run before it resumes: under overload, a trigger would
        wait behind positions that the engine sheds anyway. So telemetry steps aside.
        """
        if not self._control_busy:
            return
        self._stats.telemetry_deferred += 1
        # Waited on, not polled: on a starved machine a polling loop would take the very
        # CPU the trigger needs.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_YIELD_MAX_S):
                await self._control_idle.wait()

    async def on_telemetry(self, batch: Sequence[Publish]) -> None:
        await self.yield_to_control()
        # The hot path (docs/PERFORMANCE.md): one clock read per batch, known devices
        # found by their topic without a regex, the fast decoder, and one id string per
        # device shared by the fleet and the index.
        now = self._clock()
        max_age, max_skew = self._settings.max_event_age_s, self._settings.max_clock_skew_s
        oldest, newest = now - max_age, now + max_skew
        fleet, index, stats = self._fleet, self._index, self._stats
        gap, step = self._gap_s(), TRACK_STEP_S
        source = self._telemetry_source
        rate, burst = self._settings.telemetry_rate_per_s, self._settings.telemetry_burst
        owntracks = self._owntracks
        for topic, payload in batch:
            if owntracks is not None and topic.startswith(owntracks):
                self._on_owntracks(topic, payload, now)
                continue
            try:
                device_id, info = source(topic)
                if info is not None:
                    # The device's token bucket, inline: this loop runs per message.
                    tokens = min(burst, info.tm_tokens + (now - info.tm_counted) * rate)
                    info.tm_counted = now
                    if tokens < 1.0:
                        info.tm_tokens = tokens
                        stats.telemetry_over_rate += 1
                        self._refusals.charge(device_id, "telemetry over its rate")
                        continue
                    info.tm_tokens = tokens - 1.0
                ts, state, lat, lon, acc, motion = decode_telemetry_report(payload)
                if not oldest <= ts <= newest:
                    check_clock(ts, now, max_age_s=max_age, max_skew_s=max_skew)
            except PayloadError as exc:
                self._refusals.reject(topic.decode(errors="replace"), payload, exc)
                continue
            stats.telemetry += 1
            if info is None:
                info = fleet.touch(device_id, now)
            else:
                info.last_seen = now
            info.state = state
            # A fix older than the one indexed arrived late: ignored. The fleet's id
            # string is stored, so each device's id exists once in memory.
            if lat is None or lon is None:
                continue
            if ts - info.fix_ts < gap and ts - info.track_ts < step:
                # Most fixes: no gap before it and none of the track's due (inline: the
                # track costs this path two comparisons and a store).
                if index.upsert_latest(info.device_id, lat, lon, acc, ts):
                    info.motion = motion
                    info.fix_ts = ts
            else:
                self._indexed(info, lat, lon, acc, ts, motion=motion)

    def _gap_s(self) -> float:
        """The gap in a device's telemetry from which a fix takes the slow path
        (:meth:`_indexed`): the track's step, or less. A camera held for a follow-up
        (:mod:`.followup`) has had no fix for the freshness limit at least, and the slow
        path is the one that tells the follow-ups of its next."""
        if self._follow_ups is None:
            return TRACK_STEP_S
        return min(TRACK_STEP_S, self._follow_ups.gap_s)

    def _on_owntracks(self, topic: bytes, payload: bytes, now: float) -> None:
        """An OwnTracks message: a location is the device's fix, as its telemetry would
        be; the rest is refused (``unsupported``) or, for the app's last will, ignored."""
        device_id = ""
        try:
            device_id = owntracks_device(topic)
            info = self._fleet.get(device_id)
            if info is None:
                self._check_registered(device_id)
            if not self._within_rate(device_id, info, now):
                return
            fix = parse_owntracks(payload)
            if fix is None:
                self._stats.owntracks_ignored += 1
                return
            max_age, max_skew = self._settings.max_event_age_s, self._settings.max_clock_skew_s
            check_clock(fix.ts, now, max_age_s=max_age, max_skew_s=max_skew)
        except PayloadError as exc:
            if device_id:
                self._refusals.charge(device_id, exc.reason)
            self._refusals.reject(topic.decode(errors="replace"), payload, exc)
            return
        self._stats.telemetry += 1
        self._stats.owntracks += 1
        if info is None:
            info = self._fleet.touch(device_id, now)
            info.state = DeviceState.BUFFERING  # a tracker says nothing of recording
        else:
            info.last_seen = now
        # OwnTracks: no motion-scaled promise.
        self._indexed(info, fix.lat, fix.lon, fix.acc, fix.ts, motion=None)

    def _indexed(
        self,
        info: DeviceInfo,
        lat: float,
        lon: float,
        acc: float | None,
        ts: float,
        *,
        motion: MotionPromise | None,
    ) -> None:
        """Index a device's fix unless a newer one is indexed (it arrived late), and keep
        its track (:mod:`.track`): every :data:`TRACK_STEP_S`, and both ends of a gap."""
        index = self._index
        before_gap = None
        if ts - info.fix_ts >= TRACK_STEP_S and info.fix_ts > info.track_ts:
            # Rare (a gap in the telemetry, or a slow heartbeat): read the fix the new
            # one replaces, the last known before the gap, before it is gone.
            before_gap = index.get(info.device_id)
        if not index.upsert_latest(info.device_id, lat, lon, acc, ts):
            return
        if before_gap is not None:
            spd = None if info.motion is None else info.motion[2]
            past = PastFix(before_gap.ts, before_gap.lat, before_gap.lon, before_gap.acc, spd)
            info.track = keep(info.track, past)
            info.track_ts = past.ts
        # The reporting mode goes with the fix it came with (policy.py judges the one
        # by the other).
        info.motion = motion
        info.fix_ts = ts
        spd = None if motion is None else motion[2]
        if ts - info.track_ts >= TRACK_STEP_S:
            info.track = keep(info.track, PastFix(ts, lat, lon, acc, spd))
            info.track_ts = ts
        if self._follow_ups is not None:
            # A camera held for a fix after its trigger's event (.followup) is held
            # because its telemetry stopped: its next fix comes after a gap, this way.
            self._follow_ups.on_fix(info.device_id, PastFix(ts, lat, lon, acc, spd))

    def _within_rate(self, device_id: str, info: DeviceInfo | None, now: float) -> bool:
        """Take one of a known device's telemetry tokens; False (counted) if none."""
        if info is None:
            return True
        rate, burst = self._settings.telemetry_rate_per_s, self._settings.telemetry_burst
        tokens = min(burst, info.tm_tokens + (now - info.tm_counted) * rate)
        info.tm_counted = now
        if tokens < 1.0:
            info.tm_tokens = tokens
            self._stats.telemetry_over_rate += 1
            self._refusals.charge(device_id, "telemetry over its rate")
            return False
        info.tm_tokens = tokens - 1.0
        return True

    def _telemetry_source(self, topic: bytes) -> tuple[str, DeviceInfo | None]:
        """The device a telemetry topic names, and what the fleet knows of it."""
        head, tail = self._dev_head, self._tm_tail
        if topic.startswith(head) and topic.endswith(tail):
            try:
                device_id = topic[len(head) : len(topic) - len(tail)].decode()
            except UnicodeDecodeError:
                device_id = ""
            info = self._fleet.get(device_id)
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
        directory = self._fleet.directory
        if directory is not None and directory.get(device_id) is None:
            raise PayloadError("unregistered", f"device {device_id!r} is not in the registry")

    # ------------------------------------------------------------------ control
    def admit(self, topic: bytes, payload: bytes) -> str | None:
        """Read-time admission for the control links: the device a message is from (its
        turn in the queue), or None for a device over its control budget (events, acks
        and presence together).

        Runs for every message of a flood, inside the socket's read callback, so the
        refusal is a bucket check and two counters; a flood's first refusal alone is
        dead-lettered (it says the flood began and why). The broker lets a device
        publish on its own topics only, so the id in the topic is the sender's."""
        head = self._dev_head
        end = topic.find(b"/", len(head))
        if not topic.startswith(head) or end < 0:
            return ""  # not a device topic: the handler refuses it with its reason
        device_id = topic[len(head) : end].decode(errors="replace")
        if device_id == self._dispatch_source or not self._over_budget(device_id):
            self._refusing.discard(device_id)
            return device_id
        self._stats.rejected["over_budget"] += 1
        self._refusals.charge(device_id, "over_budget")
        if device_id in self._refusing:
            self._stats.deadletters_suppressed += 1
        elif self._refusals.deadletter_token():
            self._refusing.add(device_id)
            detail = (
                f"{device_id} sent more than {self._settings.control_burst:g} control "
                f"messages at once or {self._settings.control_rate_per_s:g} a second"
            )
            self._refusals.deadletter(
                topic.decode(errors="replace"), payload, PayloadError("over_budget", detail)
            )
        return None

    def _over_budget(self, device_id: str) -> bool:
        """Take one of ``device_id``'s control-message tokens; True if it has none."""
        now = self._clock()
        bucket = self._budgets.get(device_id)
        if bucket is None:
            if len(self._budgets) >= _MAX_BUDGETS:
                # Bounded memory: made-up ids cannot grow this for ever. A device
                # forgotten here starts again with a full bucket.
                self._budgets.clear()
                self._refusing.clear()
            s = self._settings
            bucket = self._budgets[device_id] = TokenBucket.full(
                s.control_burst, s.control_rate_per_s, now
            )
        return not bucket.take(now)

    async def on_control(self, batch: Sequence[Delivery], partition: int | None = None) -> None:
        """The control links' handler; ``partition``: the partition whose share of trigger
        events the batch came in (geographic partitions, :mod:`.partitions`)."""
        self._control_busy += 1
        self._control_idle.clear()
        try:
            for delivery in batch:
                try:
                    await self.handle(delivery, partition)
                except Exception:  # one message's failure is not the next device's
                    self._stats.handler_errors += 1
                    log.exception("handler failed on %s", delivery.topic)
        finally:
            self._control_busy -= 1
            if not self._control_busy:
                self._control_idle.set()

    async def handle(self, delivery: Delivery, partition: int | None = None) -> None:
        """Handle one control message and acknowledge it: events once they are durable
        (the persister does), everything else once handled or refused."""
        topic, payload = delivery.topic, delivery.payload
        parsed = self._topics.parse_device(topic)
        if parsed is None:
            self._refusals.reject(topic, payload, PayloadError("bad_topic", "not a device topic"))
            delivery.ack()
            return
        if parsed.channel is DeviceChannel.EVENT and not self._warm:
            self._held.append((delivery, partition))  # planned (and acknowledged) once warm
            return
        try:
            if parsed.channel is DeviceChannel.EVENT:
                if await self._planner.handle(parsed.device_id, payload, delivery, partition):
                    return  # the persister acknowledges it
            elif parsed.channel is DeviceChannel.PRESENCE:
                self._on_presence(parsed.device_id, payload)
            elif parsed.channel is DeviceChannel.ACK:
                await self._on_ack(parsed.device_id, payload)
        except PayloadError as exc:
            self._refusals.reject(topic, payload, exc)
            if parsed.channel is DeviceChannel.EVENT:
                self._commander.refuse(parsed.device_id, payload, exc)
        delivery.ack()

    def _on_presence(self, device_id: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message
            return
        msg = decode(Presence, payload)
        if self._fleet.get(device_id) is None:
            self._check_registered(device_id)
        self._stats.presence += 1
        now = self._clock()
        fix = None
        if msg.online:
            # Back: whatever it missed while away is re-sent now, not at the next backoff.
            self._deliveries.expedite(device_id, now)
        elif msg.reason is OfflineReason.POWER_OFF:
            current = self._index.get(device_id)
            if current is not None:
                fix = LastFix(current.lat, current.lon, current.acc, current.ts)
            # A camera switched off cannot record: it leaves the index.
            self._index.remove(device_id)
        # A lost link is not a camera switched off: it keeps buffering, so it stays in the
        # index with its last fix (which goes stale by itself) and a command to it waits
        # in its broker session.
        self._fleet.presence(device_id, msg, now, fix)

    async def _on_ack(self, device_id: str, payload: bytes) -> None:
        msg = decode(Ack, payload)
        self._stats.acks += 1
        if msg.status is AckStatus.REFUSED and refusal_code(msg.detail) in UNVERIFIED_REFUSALS:
            await self._on_unverified(device_id, msg)
            return
        # ``cancelled`` is final too (the officer cancelled a false activation): the
        # camera is not commanded again for it, and it is not a failure to alert on.
        finished = self._deliveries.on_ack(msg.aid, device_id, msg.status)
        if finished is not None and msg.status is AckStatus.REFUSED:
            await self._alerts.alert(AlertKind.REFUSED, msg.aid, device_id, msg.detail or "refused")
        # Waits (never drops) if the writer is behind.
        await self._acks.put(self._ack_row(device_id, msg), msg.by)

    async def _on_unverified(self, device_id: str, msg: Ack) -> None:
        """A camera could not verify a command. Anyone able to publish on its command
        topic can provoke that, so it is not the camera's answer to the command we sent:
        that one stays pending and is re-sent. If we did command this camera, the
        camera may hold the wrong engine key: alert once, and keep the answer."""
        self._stats.unverified_refusals += 1
        delivery = self._deliveries.get(msg.aid, device_id)
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
            await self._alerts.alert(
                AlertKind.REFUSED,
                msg.aid,
                device_id,
                f"camera could not verify the command ({msg.detail}); check "
                "that it has this engine's public key",
            )
        await self._acks.put(self._ack_row(device_id, msg))

    def _ack_row(self, device_id: str, msg: Ack) -> AckRow:
        """The ledger row of ``msg`` from ``device_id``, received now."""
        return AckRow(
            msg.aid,
            device_id,
            msg.status.value,
            msg.pre_cov,
            msg.rec,
            msg.ts,
            self._clock(),
            msg.detail,
        )
