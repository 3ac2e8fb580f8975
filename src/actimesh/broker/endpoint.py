"""Where a broker is: the ``mqtt://`` and ``mqtts://`` URLs operators pass on the command
line and in the config, checked once so every client is given a host, a port and TLS
or not, never a string to parse again."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from actimesh.errors import ConfigError

__all__ = [
    "DEFAULT_MQTTS_PORT",
    "DEFAULT_MQTT_PORT",
    "BrokerEndpoint",
    "is_loopback",
    "parse_broker_endpoint",
    "parse_broker_url",
]

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """Where a broker is, and whether to speak TLS to it (``mqtts://``)."""

    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        if ":" in self.host:  # an IPv6 address
            return f"{scheme}://[{self.host}]:{self.port}"
        return f"{scheme}://{self.host}:{self.port}"


def parse_broker_endpoint(url: str) -> BrokerEndpoint:
    """Parse ``mqtt://HOST[:PORT]`` (default 1883) or ``mqtts://HOST[:PORT]`` (TLS,
    default 8883)."""
    example = "use mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtt://127.0.0.1:1883"
    if "://" not in url:
        raise ConfigError(f"broker URL {url!r} has no scheme: {example}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} is not valid ({exc}): {example}") from exc
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker URL {url!r} has scheme {parts.scheme!r}: {example}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"broker URL {url!r}: credentials in the URL are not supported: {example}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r} has a path, query or fragment: {example}")
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host: {example}")
    if port == 0:
        raise ConfigError(f"broker URL {url!r} has port 0: {example}")
    tls = parts.scheme == "mqtts"
    default = DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT
    return BrokerEndpoint(parts.hostname, default if port is None else port, tls)


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://HOST[:PORT]`` into host and port (default 1883), for the clients
    that do not speak TLS."""
    endpoint = parse_broker_endpoint(url)
    if endpoint.tls:
        raise ConfigError(
            f"broker URL {url!r}: this command connects without TLS: use mqtt://HOST:PORT "
            "(a loopback or private listener)"
        )
    return endpoint.host, endpoint.port
