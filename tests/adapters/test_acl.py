"""What the broker lets the OwnTracks app and the adapters' account do, on the real
secured Mosquitto: a phone logged in as a device moves that device only, and
``svc-adapter`` may publish telemetry and dead letters and nothing else."""

from __future__ import annotations

from actimesh.adapters.owntracks import OWNTRACKS_FILTER, owntracks_topic
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.security import SERVICE_ADAPTER, SERVICE_DISPATCH, SERVICE_ENGINE
from tests.conftest import SecureBroker
from tests.security.test_acl_broker import MARKER, _client


async def test_a_phone_publishes_locations_for_its_own_device_only(
    secure_mosquitto: SecureBroker,
) -> None:
    secure = secure_mosquitto
    phone = secure.add_device("bwc-a")
    secure.add_device("bwc-b")
    engine = secure.services[SERVICE_ENGINE]
    async with (
        _client(secure, engine, OWNTRACKS_FILTER) as eng,
        _client(secure, phone.mqtt) as app,
    ):
        assert eng.refused() == []
        for topic in (
            owntracks_topic("bwc-b", "pixel"),  # another officer's device
            "owntracks/bwc-a/pixel/event",  # not a location topic
            "owntracks/bwc-a",
        ):
            await app.client.publish(topic, b"x", qos=1)
        # The app's own topic, under any phone name: allowed.
        await app.client.publish(owntracks_topic("bwc-a", "pixel"), MARKER, qos=1)
        await eng.wait_for(owntracks_topic("bwc-a", "pixel"))
    assert eng.topics() == []


async def test_the_adapters_account_publishes_telemetry_and_dead_letters_only(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    secure = secure_mosquitto
    t = Topics(agency)
    secure.add_device("bwc-a")
    engine = secure.services[SERVICE_ENGINE]
    adapter = secure.services[SERVICE_ADAPTER]
    watched = [t.all_devices(DeviceChannel(c)) for c in ("telemetry", "event", "presence", "ack")]
    async with (
        _client(secure, engine, *watched, OWNTRACKS_FILTER) as eng,
        _client(secure, adapter) as svc,
    ):
        assert not await svc.subscribe(t.all_devices(DeviceChannel.TELEMETRY))
        for topic in (
            t.event("bwc-a"),
            t.presence("bwc-a"),
            t.ack("bwc-a"),
            t.command("bwc-a"),
            t.activations("taser_draw"),
            owntracks_topic("bwc-a"),
        ):
            await svc.client.publish(topic, b"x", qos=1)
        await svc.client.publish(t.telemetry("bwc-a"), MARKER, qos=1)
        await eng.wait_for(t.telemetry("bwc-a"))
    assert eng.topics() == []


async def test_the_dispatch_reads_locations_and_may_not_publish_one(
    secure_mosquitto: SecureBroker,
) -> None:
    secure = secure_mosquitto
    phone = secure.add_device("bwc-a")
    dispatch = secure.services[SERVICE_DISPATCH]
    engine = secure.services[SERVICE_ENGINE]
    async with (
        _client(secure, dispatch, OWNTRACKS_FILTER) as console,
        _client(secure, engine, OWNTRACKS_FILTER) as eng,
        _client(secure, phone.mqtt) as app,
    ):
        assert console.refused() == []
        # The dispatch's account reads the map's positions, it does not make them.
        await console.client.publish(owntracks_topic("bwc-a", "console"), b"x", qos=1)
        await app.client.publish(owntracks_topic("bwc-a", "pixel"), MARKER, qos=1)
        await console.wait_for(owntracks_topic("bwc-a", "pixel"))
        await eng.wait_for(owntracks_topic("bwc-a", "pixel"))
    assert console.topics() == []
    assert eng.topics() == []
