"""No lost activation: confirmations, re-sends, retries, alerts, outages and replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    AckStatus,
    Activation,
    Alert,
    AlertKind,
    DeviceKind,
    DeviceState,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.errors import LedgerError
from actimesh.ledger import ActivationRow, DecisionRow, SqliteLedger
from tests.integration.harness import CENTER, mesh
from tests.waiting import eventually, quiet_for

pytestmark = pytest.mark.integration


async def test_trigger_is_confirmed_to_its_device_once_durable(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        event = await cew.raise_event("taser_draw")
        await eventually(lambda: cew.unconfirmed == 0)
        assert cew.stats.events_confirmed == 1
        assert m.engine is not None
        assert await m.engine.ledger.find("cew", event.eid) == activation_id("cew", event.eid)


async def test_device_resends_until_an_engine_confirms(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """The event is raised while no engine runs (nobody holds it); re-sends deliver it."""
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        event = await cew.raise_event("taser_draw")
        await eventually(lambda: cew.stats.events_resent >= 1)  # nobody confirmed it
        assert cew.unconfirmed == 1
        async with (
            SqliteLedger(tmp_path / "late.sqlite3") as ledger,
            m.running_engine(ledger) as engine,
        ):
            aid = activation_id("cew", event.eid)
            assert await m.commanded(aid, {"bwc"}) == {"bwc"}
            await eventually(lambda: cew.unconfirmed == 0)
            assert engine.stats.activations == 1


@pytest.mark.logs_exception(LedgerError, reason="the ledger write fails on purpose (disk full)")
async def test_event_not_written_to_the_ledger_is_not_acknowledged_or_confirmed(
    agency: str, broker_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed ledger write leaves the event unconfirmed; the re-send is handled afresh
    and the activation lands exactly once, with the cameras recording it once."""
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        assert m.engine is not None
        ledger = m.engine.ledger
        real = ledger.record_activation
        failures = 0

        async def flaky(*args: object, **kwargs: object) -> bool:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise LedgerError("disk full (simulated)")
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(ledger, "record_activation", flaky)
        monkeypatch.setattr(ledger, "record_event", _ignore_event, raising=False)
        event = await cew.raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        await eventually(lambda: cew.unconfirmed == 0)
        assert failures == 1
        assert cew.stats.events_resent >= 1
        assert m.engine.stats.alerts["ledger"] == 1
        assert await ledger.activation_ids() == [aid]
        # The camera's command and the CEW's confirmation travel apart: wait for it.
        camera = bwc.camera
        assert camera is not None
        recording = await eventually(lambda: camera.recording)
        assert [a.aid for a in recording.activations] == [aid]


async def _ignore_event(*args: object, **kwargs: object) -> int:
    return 0


async def test_silent_camera_gets_retries_and_raises_a_no_ack_alert(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        cew = m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        async with m.client() as mute, m.client() as dispatch:
            # A camera that is online and near, but never answers its commands.
            presence = Presence(online=True, device_kind=DeviceKind.BODY_CAM)
            await mute.publish(m.topics.presence("mute"), encode(presence), qos=1, retain=True)
            lat, lon = CENTER
            fix = Telemetry(ts=time.time(), lat=lat, lon=lon, acc=0.0, state=DeviceState.BUFFERING)
            await mute.publish(m.topics.telemetry("mute"), encode(fix))
            await eventually(lambda: "mute" in engine.index)
            await dispatch.subscribe(m.topics.all_alerts, qos=1)
            event = await cew.raise_event("taser_draw")
            async with asyncio.timeout(5):
                message = await anext(aiter(dispatch.messages))
        assert isinstance(message.payload, bytes)
        alert = decode(Alert, message.payload)
        assert alert.alert is AlertKind.NO_ACK
        assert alert.device == "mute"
        assert alert.aid == activation_id("cew", event.eid)
        await eventually(lambda: engine.stats.retries >= 1)
        assert engine.deliveries.get(alert.aid, "mute") is not None


async def test_camera_out_of_coverage_gets_full_pre_roll_on_reconnect_with_recall(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=3.0, recall_s=60.0)
        cew = m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        bwc.disconnect_for(2.0)
        await eventually(lambda: not bwc.link.connected)
        event = await cew.raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        rc = bwc.received[0]
        assert rc.received_at - event.ts >= 1.5  # it really was late
        assert rc.result.pre_roll_covered_s == pytest.approx(30.0)


async def test_engine_replicas_handle_each_trigger_exactly_once(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        for n in range(6):
            m.add(f"bwc{n}", DeviceKind.BODY_CAM, at=float(n))
            m.add(f"cew{n}", DeviceKind.CEW, paired=(f"bwc{n}",))
        await m.ready()
        path = tmp_path / "shared-ledger.sqlite3"
        async with (
            SqliteLedger(path) as one,
            SqliteLedger(path) as two,
            m.running_engine(one, "engine-a") as a,
            m.running_engine(two, "engine-b") as b,
        ):
            engines = [a, b]
            for engine in engines:
                async with asyncio.timeout(10):
                    await engine.ready.wait()
            # Both know every device (retained presence) before the first trigger.
            await eventually(lambda: all(len(e.fleet) == 12 and e.warmed.is_set() for e in engines))
            events = [
                await m.agents[f"cew{n}"].raise_event("taser_draw")
                for _ in range(4)
                for n in range(6)
            ]
            await eventually(lambda: all(m.agents[f"cew{n}"].unconfirmed == 0 for n in range(6)))
            handled = [e.stats.activations for e in engines]
            assert sum(handled) == len(events) == 24
            assert all(h > 0 for h in handled), handled  # the group really shares the work
            assert len(await one.activation_ids()) == 24
            assert sum(e.stats.ledger_failures for e in engines) == 0


class _HeldLedger(SqliteLedger):
    """A ledger whose activation writes wait until ``release`` is set: a slow disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = asyncio.Event()

    async def record_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        await self.release.wait()
        return await super().record_activation(row, decisions)


async def test_replica_that_loses_the_ledger_race_confirms_without_republishing(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Engine A is slow to write; the device re-sends, engine B takes the re-send and
    records it first. The activation is counted and published once, by B."""
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        path = tmp_path / "shared-ledger.sqlite3"
        published: list[str] = []
        async with (
            _HeldLedger(path) as held,
            SqliteLedger(path) as other,
            m.client() as watcher,
            asyncio.TaskGroup() as tg,
        ):
            await watcher.subscribe(m.topics.all_activations, qos=1)

            async def watch() -> None:
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    published.append(decode(Activation, message.payload).aid)

            watching = tg.create_task(watch())
            async with m.running_engine(held, "engine-a") as slow:
                async with asyncio.timeout(10):
                    await slow.ready.wait()
                event = await cew.raise_event("taser_draw")
                aid = activation_id("cew", event.eid)
                await eventually(lambda: slow.stats.events >= 1)
                async with m.running_engine(other, "engine-b") as fast:
                    await eventually(lambda: cew.unconfirmed == 0, timeout=15)  # B confirmed
                    assert fast.stats.activations == 1
                    held.release.set()
                    await eventually(lambda: slow.stats.duplicates >= 1)
                    await eventually(lambda: slow.stats.confirmations >= 1)
                    # A record would follow the confirmation at once, were one sent.
                    await quiet_for(0.5)
                    assert slow.stats.activations == 0
                    assert published == [aid]
                    assert await other.activation_ids() == [aid]
            watching.cancel()


async def test_a_camera_cut_off_while_it_commits_still_records_and_its_answer_is_written(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    # Seen in the fault drill's "cameras drop out": a camera lost its link after its
    # ``received`` answer and before its commit; the engine, having heard ``received``,
    # never commanded it again, and the camera never recorded.
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=3.0)
        cew = m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        assert m.engine is not None
        engine = m.engine
        bwc.commit_delay_s = 1.0  # slow storage: the cut lands between the two answers
        event = await cew.raise_event("taser_draw")
        aid = activation_id("cew", event.eid)

        def heard_received() -> bool:
            delivery = engine.deliveries.get(aid, "bwc")
            return delivery is not None and delivery.received

        await eventually(heard_received, timeout=5, every=0.01)
        bwc.disconnect_for(2.0)
        await eventually(lambda: bwc.received and bwc.received[0].command.aid == aid, timeout=10)
        assert bwc.received[0].result.status is AckStatus.RECORDING

        async def recording_written() -> bool:
            return any(a.status == "recording" for a in await engine.ledger.acks(aid))

        await eventually(recording_written, timeout=10)
