"""The intake target: a real engine fed as its MQTT links would feed it, every outcome
held to an oracle built from the codec and the topic scheme."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from actimesh.broker.codec import (
    MAX_ACTIVATION_BYTES,
    REASONS,
    check_clock,
    decode,
    decode_telemetry,
    encode,
)
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import (
    Ack,
    Activation,
    Alert,
    Command,
    Confirmation,
    ConfirmStatus,
    DeadLetter,
    DeviceKind,
    DeviceState,
    EngineStatus,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.errors import PayloadError
from actimesh.fuzz._cases import Case
from actimesh.fuzz._findings import Finding, _describe
from actimesh.fuzz._scenario import _CAMERAS, _EIDS, _ENGINE_CHANNELS, CENTER, POOL
from actimesh.geofence import InclusionPolicy
from actimesh.ledger import Ledger
from actimesh.security.signing import CommandSigner
from actimesh.triggers.engine import Engine
from actimesh.triggers.rules import DEFAULT_RULES, RuleTable
from actimesh.triggers.settings import EngineSettings

#: Reasons the engine adds to the codec's own: a foreign topic, a clock, an unknown rule.
ENGINE_REASONS = frozenset({"bad_topic", "bad_time", "future", "too_old", "unknown_event_type"})
_KNOWN_REASONS = REASONS | ENGINE_REASONS


class _Clock:
    """The engine's clock during a fuzz run: set per case, never read from the wall."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


#: ("rejected", reason) | ("accepted", channel) | ("ignored", "") | ("crash", detail)
_Outcome = tuple[str, str]
_IGNORED: _Outcome = ("ignored", "")


def _check_output(head: str, tail: str, payload: bytes) -> str | None:
    """Decode what the engine published on ``{prefix}/{head}/{tail}``; the dead letter's
    reason, if it was one. Raises PayloadError (or ValueError) if it does not decode."""
    if head == "deadletter":
        letter = decode(DeadLetter, payload)
        if letter.reason != tail:
            raise PayloadError("invalid", f"reason {letter.reason} on topic {tail}")
        return tail
    if head == "dev" and tail.endswith("/cmd"):
        decode(Command, payload)
    elif head == "dev" and tail.endswith("/confirm"):
        decode(Confirmation, payload)
    elif head == "alerts":
        decode(Alert, payload)
    elif head == "activations":
        decode(Activation, payload, max_bytes=MAX_ACTIVATION_BYTES)
    elif head == "json":
        json.loads(payload)
    elif head == "engine" and tail.endswith("/status"):
        decode(EngineStatus, payload)
    else:
        raise PayloadError("bad_topic", "not a topic the engine publishes on")
    return None


class _Outputs:
    """Listens to what the engine publishes on its bus: checks and counts it, and keeps
    the commands and confirmations of the activations and events it watches."""

    def __init__(self, topics: Topics) -> None:
        self.prefix = topics.prefix + "/"
        self.published: Counter[str] = Counter()
        self.deadletters: Counter[str] = Counter()
        self.last_deadletter = ""
        self.bad_output: list[str] = []
        #: Commands and confirmations are kept for these activation and event ids only.
        self.watch: set[str] = set()
        self.commands: dict[str, set[str]] = {}
        self.confirmed: dict[str, str] = {}

    def __call__(self, topic: str, payload: bytes) -> None:
        self._record(topic, payload)

    def _record(self, topic: str, payload: bytes) -> None:
        rest = topic.removeprefix(self.prefix)
        head, _, tail = rest.partition("/")
        self.published[head] += 1
        try:
            reason = _check_output(head, tail, payload)
        except (PayloadError, ValueError) as exc:
            if len(self.bad_output) < 20:
                self.bad_output.append(f"{topic}: {exc}")
            return
        if reason is not None:
            self.deadletters[reason] += 1
            self.last_deadletter = reason
        elif self.watch and head == "dev":
            self._keep(tail, payload)

    def _keep(self, tail: str, payload: bytes) -> None:
        device, _, channel = tail.partition("/")
        if channel == "cmd":
            command = decode(Command, payload)
            if command.aid in self.watch:
                self.commands.setdefault(command.aid, set()).add(device)
        elif channel == "confirm":
            confirmation = decode(Confirmation, payload)
            if confirmation.eid in self.watch:
                self.confirmed[confirmation.eid] = confirmation.status.value


class _EngineDriver:
    """A real engine on an in-process bus (:class:`~actimesh.broker.memory.MemoryBus`),
    fed as its links would feed it: every control message passes the link's read-time
    admission and must be acknowledged, every telemetry message reaches the stream."""

    def __init__(self, engine: Engine, bus: MemoryBus, outputs: _Outputs, clock: _Clock) -> None:
        self.engine = engine
        self.bus = bus
        self.outputs = outputs
        self.clock = clock
        self.control_messages = 0

    @classmethod
    def build(cls, topics: Topics, ledger: Ledger, clock: _Clock) -> _EngineDriver:
        """The engine with the default rules and policy, on a bus of its own."""
        bus = MemoryBus()
        outputs = _Outputs(topics)
        bus.listen(outputs)
        engine = Engine(
            topics=topics,
            transport=bus,
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            signer=CommandSigner.generate(),
            # Every rejection dead-lettered (none suppressed) so each one is seen;
            # commands expire within the run, so delivery tracking has to let go of them.
            settings=EngineSettings(deadletters_per_s=1e12, warmup_s=0.01, command_expiry_s=30.0),
            clock=clock,
        )
        return cls(engine, bus, outputs, clock)

    async def feed(self, channel: DeviceChannel, topic: bytes, payload: bytes) -> None:
        e = self.engine
        if channel is DeviceChannel.TELEMETRY:
            await self.bus.hand(e.telemetry_link.name, topic, payload)
            return
        self.control_messages += 1
        link = e.ack_link if channel is DeviceChannel.ACK else e.control_link
        await self.bus.hand(link.name, topic, payload)

    def backlog(self) -> int:
        """Triggers and acknowledgements waiting for their ledger write."""
        return self.engine.backlog

    def idle(self) -> bool:
        """Every trigger and acknowledgement written, every control message acked."""
        return not self.backlog() and not self.bus.unacknowledged

    async def catch_up(self, high: int = 256, low: int = 32) -> None:
        """Let the ledger writers catch up. A broker hands messages over no faster than
        the engine's loop takes them, and the writers run between; fed back to back,
        their queues would fill (up to 110,000 rows) and look like a leak."""
        await asyncio.sleep(0)
        if self.backlog() > high:
            while self.backlog() > low:  # noqa: ASYNC110 - the queues have no low-water event
                await asyncio.sleep(0.001)

    def sizes(self) -> dict[str, int]:
        return self.engine.sizes()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The engine, running on the bus and warm."""
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(self.engine.run(), name="fuzz-engine")
            try:
                async with asyncio.timeout(10):
                    await self.engine.warmed.wait()
                yield
            finally:
                task.cancel()


def _expect(case: Case, topics: Topics, rules: RuleTable, settings: EngineSettings) -> _Outcome:
    """What the engine must do with ``case``, from the codec and the topic scheme alone."""
    try:
        parsed = topics.parse_device(case.topic.decode())
    except UnicodeDecodeError:
        parsed = None
    telemetry = case.channel is DeviceChannel.TELEMETRY
    if parsed is None or (telemetry and parsed.channel is not DeviceChannel.TELEMETRY):
        return ("rejected", "bad_topic")
    if not telemetry and parsed.channel not in _ENGINE_CHANNELS[1:]:
        return _IGNORED  # commands and confirmations are not the engine's to read
    if parsed.channel is DeviceChannel.PRESENCE and not case.payload:
        return _IGNORED  # a cleared retained message
    age, skew = settings.max_event_age_s, settings.max_clock_skew_s
    try:
        if telemetry:
            check_clock(decode_telemetry(case.payload)[0], case.now, max_age_s=age, max_skew_s=skew)
        elif parsed.channel is DeviceChannel.EVENT:
            event = decode(Event, case.payload)
            check_clock(event.ts, case.now, max_age_s=age, max_skew_s=skew)
            if rules.get(event.type) is None:
                return ("rejected", "unknown_event_type")
        else:
            decode(Presence if parsed.channel is DeviceChannel.PRESENCE else Ack, case.payload)
    except PayloadError as exc:
        return ("rejected", exc.reason)
    return ("accepted", parsed.channel.value)


@dataclass(slots=True)
class _IntakeCounts:
    cases: int = 0
    control: int = 0
    seconds: float = 0.0
    #: What the oracle expected: rejection reasons, "accepted", "ignored".
    expected: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    ignored: int = 0
    #: Valid inputs the engine refused by policy (sender, rate limit, storm).
    policy: Counter[str] = field(default_factory=Counter)
    slowest_us: float = 0.0
    slowest_index: int | None = None


class _Intake:
    """Feeds cases to the engine and holds each outcome to :func:`_expect`."""

    def __init__(self, driver: _EngineDriver, seed: int, findings: list[Finding]) -> None:
        self.driver = driver
        self.engine = driver.engine
        self.seed = seed
        self.findings = findings
        self.counts = _IntakeCounts()

    def _find(self, problem: str, detail: str, case: Case | None = None) -> None:
        self.findings.append(Finding.of("intake", problem, detail, case))

    def _last_logged(self) -> str:
        """What the engine logged when it caught its handler's failure."""
        for finding in reversed(self.findings):
            if finding.problem == "logged_error":
                return finding.detail
        return "a handler failed (nothing logged)"

    def _snapshot(self) -> tuple[int, int, int, int, int]:
        s = self.engine.stats
        return s.rejected.total(), s.telemetry, s.events, s.presence, s.acks

    async def feed(self, case: Case) -> None:
        """Feed one case and check what the engine did with it."""
        counts, link, e = self.counts, self.driver.outputs, self.engine
        try:
            expected = _expect(case, e.topics, e.rules, e.settings)
        except Exception as exc:  # noqa: BLE001 - the codec target reports this crash
            expected = ("crash", _describe(exc))
        self.driver.clock.now = case.now
        before, letters = self._snapshot(), link.deadletters.total()
        failures = e.stats.handler_errors
        started = time.perf_counter()
        try:
            async with asyncio.timeout(10):
                await self.driver.feed(case.channel, case.topic, case.payload)
        except TimeoutError:
            self._find("hang", "no answer within 10 s", case)
            return
        except Exception as exc:  # noqa: BLE001 - an escaped exception is the finding
            self._find("crash", _describe(exc), case)
            return
        finally:
            spent = (time.perf_counter() - started) * 1e6
            counts.seconds += spent / 1e6
            counts.cases += 1
            counts.control += case.channel is not DeviceChannel.TELEMETRY
            if spent > counts.slowest_us:
                counts.slowest_us, counts.slowest_index = spent, case.index
        if e.stats.handler_errors > failures:
            # The engine caught and logged it (one message's failure is not the next
            # device's): still a crash of its handler, tied to this case.
            self._find("crash", self._last_logged(), case)
            return
        observed = self._observed(before, self._snapshot())
        counts.expected[expected[1] if expected[0] == "rejected" else expected[0]] += 1
        if observed[0] == "rejected":
            counts.rejected[observed[1]] += 1
            if link.deadletters.total() != letters + 1 or link.last_deadletter != observed[1]:
                self._find("uncounted", "a rejection without exactly one dead letter", case)
        elif observed[0] == "accepted":
            counts.accepted[observed[1]] += 1
        else:
            counts.ignored += 1
        if observed == expected:
            return
        by_policy = observed[1] not in _KNOWN_REASONS and expected[0] == "accepted"
        if observed[0] == "rejected" and by_policy:
            counts.policy[observed[1]] += 1
            return
        self._find("mismatch", f"expected {expected}, engine did {observed}", case)

    def _observed(
        self, before: tuple[int, int, int, int, int], after: tuple[int, int, int, int, int]
    ) -> _Outcome:
        rejections = after[0] - before[0]
        if rejections > 1:
            return ("rejected", f"{rejections} rejections")
        if rejections == 1:
            return ("rejected", self.driver.outputs.last_deadletter or "?")
        channels = ("telemetry", "event", "presence", "ack")
        for channel, b, a in zip(channels, before[1:], after[1:], strict=True):
            if a != b:
                return ("accepted", channel)
        return _IGNORED

    async def settle(self, timeout: float) -> None:
        """Wait until every trigger is durable and every message acknowledged."""
        try:
            async with asyncio.timeout(timeout):
                while not self.driver.idle():  # noqa: ASYNC110 - nothing to wait on but state
                    await asyncio.sleep(0.01)
        except TimeoutError:
            self._find("hang", f"not settled after {timeout:.0f} s: {self.driver.sizes()}")

    def check_totals(self) -> None:
        """Every rejection counted by the engine and dead-lettered; every message acked."""
        stats, link, bus = self.engine.stats, self.driver.outputs, self.driver.bus
        counted = +Counter(stats.rejected)
        if counted != +self.counts.rejected:
            self._find(
                "uncounted",
                f"engine counted {dict(counted)}, inputs rejected {dict(self.counts.rejected)}",
            )
        letters = link.deadletters + Counter({"(suppressed)": stats.deadletters_suppressed})
        if +letters != counted:
            self._find("uncounted", f"dead letters {dict(letters)}, rejections {dict(counted)}")
        if bus.stray_acks or bus.unacknowledged:
            self._find(
                "unacknowledged",
                f"{len(bus.unacknowledged)} of "
                f"{self.driver.control_messages} control messages never acknowledged, "
                f"{bus.stray_acks} acknowledged twice",
            )
        for problem in link.bad_output:
            self._find("bad_output", problem)

    def check_bounds(self, cases: int) -> dict[str, int]:
        """Engine state that must not grow with the number of hostile inputs."""
        sizes = self.driver.sizes()
        pool = len(POOL)
        # Each device's event ids, the final check's, and the few that mutations invent.
        limits = {
            "fleet": pool,
            "index": pool,
            "held": 0,
            "dedupe": pool * (_EIDS + 1) + cases // 100,
        }
        for name, limit in limits.items():
            if sizes[name] > limit:
                self._find("unbounded", f"{name} holds {sizes[name]:,} (bound {limit:,})")
        return sizes

    async def final_activation(self, timeout: float) -> dict[str, Any]:
        """Announce the fleet afresh; a taser draw must still activate its cameras."""
        driver, topics = self.driver, self.engine.topics
        driver.clock.now += 60.0  # fixes newer than any the fuzz left in the index
        now = driver.clock.now
        for device, kind in POOL:
            presence = Presence(
                online=True,
                ts=now,
                device_kind=kind,
                unit="fz-unit-1",
                paired=("fz-bwc-1",) if kind is DeviceKind.CEW else (),
            )
            fix = Telemetry(
                ts=now, state=DeviceState.BUFFERING, lat=CENTER[0], lon=CENTER[1], acc=1.0
            )
            await driver.feed(
                DeviceChannel.PRESENCE, topics.presence(device).encode(), encode(presence)
            )
            await driver.feed(
                DeviceChannel.TELEMETRY, topics.telemetry(device).encode(), encode(fix)
            )
        eid = f"final-{self.seed}"
        aid = activation_id("fz-cew-1", eid)
        driver.outputs.watch |= {aid, eid}
        event = Event(eid=eid, type="taser_draw", ts=now, lat=CENTER[0], lon=CENTER[1], acc=1.0)
        await driver.feed(DeviceChannel.EVENT, topics.event("fz-cew-1").encode(), encode(event))
        await self.settle(timeout)
        recorded = await self.engine.ledger.activation(aid) is not None
        commanded = driver.outputs.commands.get(aid, set())
        confirmed = driver.outputs.confirmed.get(eid)
        ok = recorded and commanded == _CAMERAS and confirmed == ConfirmStatus.ACTIVATED.value
        if not ok:
            self._find(
                "no_activation",
                f"after the fuzz a taser draw commanded "
                f"{sorted(commanded)}, in the ledger: {recorded}, confirmed: {confirmed}",
            )
        return {"ok": ok, "aid": aid, "commanded": sorted(commanded)}
