"""Broker URLs: what ``--broker`` and the config accept, and how a bad one is explained."""

from __future__ import annotations

import pytest

from actimesh.broker.endpoint import BrokerEndpoint, parse_broker_endpoint, parse_broker_url
from actimesh.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("mqtt://broker.example", ("broker.example", 1883)),
        ("mqtt://broker.example:2883/", ("broker.example", 2883)),
        ("mqtt://[::1]:1884", ("::1", 1884)),
    ],
)
def test_broker_url_gives_host_and_port(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("127.0.0.1:1883", "no scheme"),
        ("mqtts://broker:8883", "without TLS"),
        ("http://broker:1883", "scheme 'http'"),
        ("mqtt://user:pw@broker:1883", "credentials"),
        ("mqtt://broker:1883/topic", "path"),
        ("mqtt://broker:1883?x=1", "query"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:port", "not valid"),
        ("mqtt://broker:99999", "not valid"),
        ("mqtt://broker:0", "port 0"),
    ],
)
def test_bad_broker_urls_say_how_to_fix_them(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_broker_url(url)
    message = str(info.value)
    assert "\n" not in message
    assert "mqtt://HOST:PORT" in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://h", BrokerEndpoint("h", 1883, tls=False)),
        ("mqtts://h", BrokerEndpoint("h", 8883, tls=True)),
        ("mqtts://[::1]:9883", BrokerEndpoint("::1", 9883, tls=True)),
    ],
)
def test_broker_endpoint_knows_tls_and_its_default_port(url: str, expected: BrokerEndpoint) -> None:
    assert parse_broker_endpoint(url) == expected
