"""``[adapters]``: which device protocols actimesh takes besides its own, and where.

All are off by default; each is a table of its own::

    [adapters]
    rate_per_s = 2           # fixes a device may send a second (burst: 10)

    [adapters.owntracks]     # the engine reads owntracks/<device id>/<phone>
    enabled = true

    [adapters.osmand]        # OsmAnd / Traccar Client over HTTP(S)
    enabled = true
    port = 5055

    [adapters.nmea]          # NMEA 0183 over TCP and UDP, one port per device
    enabled = true
    ports = { "car-12" = 10110, "car-13" = 10111 }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from actimesh.adapters.nmea import HDOP_FACTOR_M
from actimesh.broker.topics import is_identifier
from actimesh.errors import ConfigError

__all__ = ["AdapterSettings", "NmeaSettings", "OsmAndSettings", "OwnTracksSettings"]


def _check_port(what: str, port: int) -> None:
    if not 0 <= port < 65536:
        raise ConfigError(f"{what} {port} must be between 1 and 65535")


@dataclass(frozen=True, slots=True)
class OwnTracksSettings:
    """``[adapters.owntracks]``: the engine subscribes to ``owntracks/+/+``."""

    enabled: bool = False


@dataclass(frozen=True, slots=True)
class OsmAndSettings:
    """``[adapters.osmand]``: the OsmAnd HTTP listener (Traccar's port 5055 by default).
    ``tls_certfile``/``tls_keyfile`` make it HTTPS, as the passwords it receives ask."""

    enabled: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - devices reach it from the network
    port: int = 5055
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    max_clients: int = 256
    client_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check_port("adapters.osmand.port", self.port)
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ConfigError(
                "[adapters.osmand] tls_certfile and tls_keyfile go together: give both or neither"
            )


@dataclass(frozen=True, slots=True)
class NmeaSettings:
    """``[adapters.nmea]``: a TCP and a UDP port per device (``ports``)."""

    enabled: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - modems reach it from the network
    ports: dict[str, int] = field(default_factory=dict)
    hdop_factor_m: float = HDOP_FACTOR_M
    idle_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for device_id, port in self.ports.items():
            if not is_identifier(device_id):
                raise ConfigError(f"[adapters.nmea] ports: {device_id!r} is not a device id")
            _check_port(f"adapters.nmea.ports.{device_id}", port)
            if port and port in seen:
                raise ConfigError(
                    f"[adapters.nmea] ports: {device_id} and {seen[port]} both have port {port}; "
                    "give each device a port of its own"
                )
            seen[port] = device_id
        if not 0 < self.hdop_factor_m <= 100:
            raise ConfigError(
                f"adapters.nmea.hdop_factor_m {self.hdop_factor_m!r} must be in (0, 100] metres"
            )
        if self.enabled and not self.ports:
            raise ConfigError(
                '[adapters.nmea] is enabled with no ports: add ports = { "DEVICE" = PORT }'
            )


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    """``[adapters]``: the protocols and the limits the listening ones share."""

    owntracks: OwnTracksSettings = field(default_factory=OwnTracksSettings)
    osmand: OsmAndSettings = field(default_factory=OsmAndSettings)
    nmea: NmeaSettings = field(default_factory=NmeaSettings)
    #: Fixes a second per device, and the burst beyond it (OsmAnd and NMEA).
    rate_per_s: float = 2.0
    burst: float = 10.0
    #: Fixes waiting for the broker at most; beyond it the newest are dropped.
    queue: int = 10_000
    deadletters_per_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("rate_per_s", "burst", "deadletters_per_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"adapters.{name} must be above 0, got {getattr(self, name)!r}")
        if self.queue < 1:
            raise ConfigError(f"adapters.queue must be at least 1, got {self.queue!r}")

    @property
    def listening(self) -> bool:
        """Whether any adapter with a listener of its own is on (the adapters process)."""
        return self.osmand.enabled or self.nmea.enabled
