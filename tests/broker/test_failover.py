"""Which listener a link tries next and how long it waits first (broker/failover.py),
with the jitter drawn by a fake that records the bounds it was asked for; and how the
listeners reach a link from a transport, a cluster's links and the dispatch's flags."""

from __future__ import annotations

from dataclasses import replace

import pytest

from actimesh.broker.client import LinkSettings, MqttLink
from actimesh.broker.failover import Listener, Rotation
from actimesh.broker.transport import MqttTransport
from actimesh.errors import ConfigError
from actimesh.runtime.cluster import ClusterLinks
from actimesh.runtime.compose import external_address
from actimesh.runtime.config import Settings

A, B, C = Listener("10.0.0.1", 1883), Listener("10.0.0.2", 1883), Listener("10.0.0.3", 1884)


class FakeJitter:
    """Stands in for ``random.uniform``: answers the upper bound, keeps every bound."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.asked.append((low, high))
        return high


def _rotation(*listeners: Listener, jitter: FakeJitter) -> Rotation:
    return Rotation(listeners, initial_s=0.1, max_s=1.0, uniform=jitter)


def test_each_failure_moves_to_the_next_listener_and_wraps_round() -> None:
    jitter = FakeJitter()
    rotation = _rotation(A, B, C, jitter=jitter)
    tried = [rotation.current]
    for _ in range(4):
        rotation.failed()
        tried.append(rotation.current)
    assert tried == [A, B, C, A, B]


def test_the_wait_doubles_per_failure_up_to_the_cap_with_jitter_over_its_upper_half() -> None:
    jitter = FakeJitter()
    rotation = _rotation(A, B, C, jitter=jitter)
    waits = [rotation.failed() for _ in range(7)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert jitter.asked == [(w / 2, w) for w in waits]


def test_a_good_connection_resets_the_wait_but_not_the_place() -> None:
    jitter = FakeJitter()
    rotation = _rotation(A, B, C, jitter=jitter)
    for _ in range(4):
        rotation.failed()
    assert rotation.current == B
    rotation.connected()
    assert rotation.failed() == pytest.approx(0.1)  # lost B: C next, at once
    assert rotation.current == C


def test_one_listener_is_the_same_address_with_the_same_backoff_as_ever() -> None:
    jitter = FakeJitter()
    rotation = _rotation(A, jitter=jitter)
    waits = [rotation.failed() for _ in range(5)]
    assert rotation.current == A
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])


def test_no_listener_or_a_repeated_one_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Rotation((), initial_s=0.1, max_s=1.0)
    with pytest.raises(ConfigError, match="repeated") as info:
        Rotation((A, B, A), initial_s=0.1, max_s=1.0)
    assert "\n" not in str(info.value)


async def test_a_link_starts_on_its_first_listener_with_the_others_in_order() -> None:
    transport = MqttTransport("10.0.0.1", 1883, protocol="3.1.1", fallbacks=(B, C))
    settings = transport.settings("ag-dispatch-console-1-ctl")
    assert settings.listeners == (A, B, C)
    link = MqttLink(settings)
    assert link.listener == A
    plain = MqttLink(LinkSettings("10.0.0.1", 1883, "plain"))
    assert plain.settings.listeners == (A,)


def test_a_link_placed_after_it_was_made_connects_where_it_was_placed() -> None:
    # The fault drills make devices before the cluster's ports exist, then place them.
    link = MqttLink(LinkSettings("127.0.0.1", 0, "cam-1"))
    link.settings = replace(link.settings, host="10.0.0.1", port=1883)
    assert link.listener == A
    link.settings = replace(link.settings, fallbacks=(B, C))
    assert link.listener == A
    assert link.settings.listeners == (A, B, C)
    link.reconfigure(username="cam-1", password="pw")
    assert link.listener == A


def test_a_cluster_hands_the_dispatch_every_node_starting_with_its_own() -> None:
    links = ClusterLinks("127.0.0.1", ("nats://127.0.0.1:4222",), (1883, 1884, 1885))
    alone = links.mqtt_address(1)
    assert alone.fallbacks == ()
    address = links.mqtt_address(1, failover=True)
    assert address.port == 1884
    assert [f.port for f in address.fallbacks] == [1885, 1883]
    assert address.urls == ("mqtt://127.0.0.1:1884, mqtt://127.0.0.1:1885, mqtt://127.0.0.1:1883")
    assert address.transport("svc-dispatch").fallbacks == address.fallbacks


def test_the_dispatch_flags_name_a_cluster_s_listeners_all_plain_or_all_tls() -> None:
    settings = Settings()
    address = external_address(
        settings, "mqtt://nats-1.internal:1883", ["mqtt://nats-2.internal", "mqtt://nats-3:1884"]
    )
    assert (address.host, address.port) == ("nats-1.internal", 1883)
    assert address.fallbacks == (Listener("nats-2.internal", 1883), Listener("nats-3", 1884))
    with pytest.raises(ConfigError, match="mix mqtt:// and mqtts://") as info:
        external_address(settings, "mqtt://nats-1:1883", ["mqtts://nats-2:8883"])
    assert "\n" not in str(info.value)
