"""How the dispatch service behaves (the ``[dispatch]`` table of the config file)::

    [dispatch]
    host = "127.0.0.1"          # loopback by default: the API can command cameras
    port = 8080
    console_id = "console-1"    # dispatcher zones come from device "dispatch-console-1"
    ack_timeout_s = 5           # no acknowledgement after this raises an alert
    basemap = "/srv/actimesh/city.pmtiles"  # or an XYZ / WMTS URL template; default: none
    basemap_attribution = "© OpenStreetMap contributors"   # a PMTiles file's own if unset
    session_idle_s = 1800       # a browser session idle this long must log in again
    cors_origins = []           # other sites whose pages may call the API with a token
    public_url = "https://dispatch.agency.example"   # behind a TLS proxy: Secure cookies
    tls_certfile = "/etc/actimesh/certs/server.pem"  # serve https itself
    tls_keyfile = "/etc/actimesh/certs/server.key"

Every mistake is reported as one line naming the key and what it accepts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.dispatch.basemap import Basemap, parse_basemap
from actimesh.errors import ConfigError

__all__ = ["DispatchSettings"]

#: 0 means something for these: any free port; a clean MQTT session.
_MAY_BE_ZERO = frozenset({"port", "session_expiry_s"})
_ORIGIN_EXAMPLE = "https://cad.agency.example"
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
#: node_modules of a source checkout (src/actimesh/dispatch/settings.py → repo root).
_CHECKOUT_NODE_MODULES = Path(__file__).resolve().parents[3] / "node_modules"


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """The dispatch web app, its live map and the integrator API."""

    #: Start the web app with ``actimesh up``.
    enabled: bool = True
    host: str = "127.0.0.1"
    #: 0 picks a free port (tests); the address actually bound is printed.
    port: int = 8080
    #: Names the dispatch device (``dispatch-<console_id>``) and the MQTT client ids.
    console_id: str = "console-1"
    #: A commanded camera that has not acknowledged after this is shown as an alert.
    ack_timeout_s: float = 5.0
    #: Position updates reach the map at most this often (batched); activations,
    #: acknowledgements and alerts are sent at once.
    frame_interval_s: float = 0.25
    #: Activations kept on the live map (Axon Respond shows alerts for 4 h).
    activation_retention_s: float = 4 * 3600.0
    max_activations: int = 1000
    max_devices: int = 50_000
    #: Offline devices leave the live map after this long.
    offline_retention_s: float = 12 * 3600.0
    #: Frames a WebSocket or SSE client may fall behind before it is disconnected (it
    #: reconnects and gets a fresh snapshot, which is cheaper than a backlog).
    client_queue: int = 64
    max_clients: int = 256
    #: The map's streets (:mod:`.basemap`): an XYZ or WMTS URL template, or a PMTiles
    #: file the dispatch serves itself; None draws a plain grid with a scale bar.
    basemap: str | None = None
    #: The credit the tiles' licence requires; a PMTiles file's own when unset.
    basemap_attribution: str = ""
    #: Largest radius a dispatcher may choose (the engine's rule caps it too).
    zone_max_radius_m: float = 1000.0
    zone_default_radius_m: float = 50.0
    #: The broker keeps the dispatch's subscriptions (and queued activations) this long
    #: while it is down; 0 is a clean session (the ledger reconciler still catches up).
    session_expiry_s: int = 24 * 3600
    #: Telemetry waiting to be applied; overflow is dropped and counted.
    telemetry_queue: int = 20_000
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 25
    webhook_backoff_initial_s: float = 1.0
    webhook_backoff_max_s: float = 600.0
    webhook_concurrency: int = 8
    #: How often the outbox is compared with the ledger, and how far back.
    webhook_reconcile_s: float = 30.0
    webhook_reconcile_window_s: float = 2 * 3600.0
    #: Delivered and failed deliveries are deleted after this long.
    webhook_retention_s: float = 7 * 86_400.0
    #: Where ``npm ci`` put Leaflet and protomaps-leaflet; None: the checkout's
    #: ``node_modules``.
    vendor_dir: Path | None = None
    #: A browser session ends after this long without a request (an open live map
    #: counts as use), and after ``session_max_s`` whatever happens (a shift).
    session_idle_s: float = 30 * 60.0
    session_max_s: float = 12 * 3600.0
    #: Failed logins allowed per user name, and per client address, within the window;
    #: then 429 until the oldest failure leaves it.
    login_max_failures: int = 5
    login_max_failures_per_client: int = 20
    login_window_s: float = 15 * 60.0
    #: How often an open live map or stream re-checks its session or token (a logout, a
    #: disabled user or a revoked token closes it within this).
    live_recheck_s: float = 15.0
    #: Origins (``https://host[:port]``) of other sites whose pages may call the API with
    #: a token (CORS). Empty: none. Cookies are never sent cross-site either way.
    cors_origins: tuple[str, ...] = ()
    #: Host names (besides ``localhost``, ``public_url``'s and IP addresses) that
    #: browsers may reach this server by. A request naming any other host is refused:
    #: a page on another site whose name resolves here (DNS rebinding) would otherwise
    #: pass for this server's own.
    allowed_hosts: tuple[str, ...] = ()
    #: Request bodies over this are refused (413) before they are read: every API body
    #: (a login, a zone, a webhook) is a few hundred bytes.
    max_body_bytes: int = 1 << 20
    #: A client that has not sent its request head within this (after connecting, or
    #: after the last answer) is disconnected, and one whose body stalls this long gets
    #: 408: half-open requests (slowloris) must not hold the server's slots.
    client_timeout_s: float = 15.0
    #: The address people use when it is not this server's own (a TLS reverse proxy):
    #: ``https://`` here makes cookies Secure and turns on HSTS.
    public_url: str | None = None
    #: Serve https directly (PEM files, e.g. from ``actimesh certs``). Both or neither.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    #: ``basemap`` checked (and a PMTiles file's header read) when the settings are made.
    basemap_source: Basemap | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ConfigError(f"dispatch.host {self.host!r} is not valid: use e.g. 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"dispatch.port {self.port} must be between 0 and 65535")
        if not is_identifier(f"dispatch-{self.console_id}") or len(self.console_id) > 48:
            raise ConfigError(
                f"dispatch.console_id {self.console_id!r} must match {IDENTIFIER_PATTERN} "
                "(max 48 characters)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _MAY_BE_ZERO or isinstance(value, bool):
                continue
            if not isinstance(value, int | float):
                continue
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"dispatch.{f.name} must be a positive number, got {value!r}")
        if self.zone_default_radius_m > self.zone_max_radius_m:
            raise ConfigError("dispatch.zone_default_radius_m must not exceed zone_max_radius_m")
        if self.basemap is not None:
            source = parse_basemap(self.basemap, self.basemap_attribution)
            object.__setattr__(self, "basemap_source", source)
        self._check_web()

    def _check_web(self) -> None:
        for origin in self.cors_origins:
            parts = urlsplit(origin) if isinstance(origin, str) else None
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
                or parts.query
                or "*" in origin
            ):
                raise ConfigError(
                    f"dispatch.cors_origins: {origin!r} is not an origin; write scheme://host"
                    f"[:port] with no path and no wildcard, e.g. {_ORIGIN_EXAMPLE}"
                )
        for name in self.allowed_hosts:
            if not (isinstance(name, str) and _HOST_NAME.fullmatch(name)):
                raise ConfigError(
                    f"dispatch.allowed_hosts: {name!r} is not a host name; write the name "
                    "alone, without scheme or port, e.g. dispatch.agency.example"
                )
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"dispatch.public_url {self.public_url!r} must be an http(s) URL, e.g. "
                    "https://dispatch.agency.example"
                )
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ConfigError("dispatch.tls_certfile and dispatch.tls_keyfile go together")
        if self.session_idle_s > self.session_max_s:
            raise ConfigError("dispatch.session_idle_s must not exceed session_max_s")

    @property
    def source_device(self) -> str:
        """The device id dispatcher-initiated events are published under."""
        return f"dispatch-{self.console_id}"

    @property
    def leaflet_dir(self) -> Path:
        """Leaflet's ``dist`` folder (may not exist: ``make web-deps`` installs it)."""
        base = self.vendor_dir if self.vendor_dir is not None else _CHECKOUT_NODE_MODULES
        return base / "leaflet" / "dist"

    @property
    def markercluster_dir(self) -> Path:
        """Leaflet.markercluster's ``dist`` folder (installed beside Leaflet)."""
        base = self.vendor_dir if self.vendor_dir is not None else _CHECKOUT_NODE_MODULES
        return base / "leaflet.markercluster" / "dist"

    @property
    def protomaps_dir(self) -> Path:
        """protomaps-leaflet's ``dist`` folder, which draws a PMTiles basemap (may not
        exist: ``make web-deps`` installs it)."""
        base = self.vendor_dir if self.vendor_dir is not None else _CHECKOUT_NODE_MODULES
        return base / "protomaps-leaflet" / "dist"

    @property
    def pmtiles_dir(self) -> Path:
        """The ``pmtiles`` library's ``dist`` folder, which reads a raster PMTiles
        basemap (may not exist: ``make web-deps`` installs it)."""
        base = self.vendor_dir if self.vendor_dir is not None else _CHECKOUT_NODE_MODULES
        return base / "pmtiles" / "dist"

    @property
    def tls(self) -> bool:
        """The dispatch serves https itself."""
        return self.tls_certfile is not None

    @property
    def public_origin(self) -> str | None:
        """``scheme://host[:port]`` of ``public_url``, as browsers send it in ``Origin``."""
        if self.public_url is None:
            return None
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def public_url_https(self) -> bool:
        """People reach the dispatch over https (through a proxy if not directly)."""
        return self.tls or (self.public_url or "").startswith("https://")

    @property
    def tile_origin(self) -> str | None:
        """``scheme://host`` of a tile server, for the page's Content-Security-Policy
        (None for a PMTiles basemap: the dispatch serves it)."""
        return self.basemap_source.origin if self.basemap_source is not None else None
