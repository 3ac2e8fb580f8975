"""The MQTT version a link speaks: 5 by default, 3.1.1 for brokers that know no other."""

from __future__ import annotations

import pytest
from paho.mqtt.client import MQTTv5, MQTTv311

from actimesh.broker.client import LinkSettings, MqttLink, _publish_properties
from actimesh.errors import BrokerError, ConfigError


def _link(**kwargs: object) -> MqttLink:
    return MqttLink(LinkSettings(host="127.0.0.1", port=1, client_id="proto", **kwargs))  # type: ignore[arg-type]


async def test_a_3_1_1_persistent_session_is_clean_session_false_without_properties() -> None:
    client = _link(protocol="3.1.1", session_expiry_s=3600)._make_client()
    assert client._client._protocol == MQTTv311
    assert client._client._clean_session is False
    assert client._properties is None


async def test_a_3_1_1_link_without_session_expiry_is_a_clean_session() -> None:
    client = _link(protocol="3.1.1")._make_client()
    assert client._client._protocol == MQTTv311
    assert client._client._clean_session is True


async def test_mqtt_5_stays_the_default_with_session_expiry_as_a_property() -> None:
    assert LinkSettings(host="h", port=1, client_id="c").protocol == "5"
    client = _link(session_expiry_s=3600)._make_client()
    assert client._client._protocol == MQTTv5
    assert client._clean_start is False
    assert client._properties is not None
    assert getattr(client._properties, "SessionExpiryInterval") == 3600  # noqa: B009
    clean = _link()._make_client()
    assert clean._clean_start is True
    assert clean._properties is None


async def test_a_3_1_1_publish_carries_no_properties() -> None:
    link = _link(protocol="3.1.1")
    assert link._publish_properties(30.0, ()) is None
    assert link._publish_properties(None, ()) is None


async def test_a_3_1_1_publish_refuses_user_properties_it_cannot_carry() -> None:
    link = _link(protocol="3.1.1")
    with pytest.raises(BrokerError, match=r"3\.1\.1.*user properties"):
        link._publish_properties(None, [("k", "v")])
    with pytest.raises(BrokerError, match="user properties"):
        await link.publish("t", b"x", user_properties=[("k", "v")], timeout=0.01)


async def test_an_mqtt_5_publish_keeps_its_properties() -> None:
    link = _link()
    assert link._publish_properties(None, ()) is None
    # The same (cached, packed-once) expiry properties as before.
    assert link._publish_properties(30.0, ()) is _publish_properties(30.0, ())
    props = link._publish_properties(30.0, [("k", "v")])
    assert props is not None
    assert getattr(props, "MessageExpiryInterval") == 30  # noqa: B009
    assert getattr(props, "UserProperty") == [("k", "v")]  # noqa: B009


def test_an_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'4'"):
        LinkSettings(host="h", port=1, client_id="c", protocol="4")  # type: ignore[arg-type]
