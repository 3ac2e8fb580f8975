"""Settings, read once at start-up and passed down.

Defaults are embedded so ``actimesh up`` runs with no file at all. An operator may give a
TOML file (``--config actimesh.toml``)::

    agency = "calgary"
    data_dir = "/var/lib/actimesh"

    [engine]
    command_expiry_s = 300

    [policy]
    max_fix_age_s = 10
    mode = "inclusive"      # or "centre"
    max_margin_m = 6

    [rules.holster_draw]    # a new trigger type is a table, not code
    camera_kinds = ["body_cam"]
    radius_m = 9.144

    [retention]
    days = 396              # records and recordings not linked to a case go after this

    [media]                 # how cameras film (see actimesh.devices.settings)
    source = "synthetic"    # or "h264": real video, one encoder thread per camera
    pre_roll_s = 30
    buffer_audio = false
    stealth = "officer"     # or "always" / "never"

    [telemetry]             # when simulated devices report (see actimesh.devices.reporting)
    mode = "1hz"            # or "motion": on moves, state changes and a heartbeat
    heartbeat_s = 10

    [broker]                # the managed broker's listeners, an external broker's login
    port = 1883             # the managed Mosquitto's plain listener (with host)
    tls_port = 8883
    mqtt_protocol = "5"     # or "3.1.1": what devices, dispatch and the monitor speak
    username = "svc-engine"
    password_file = "/etc/actimesh/svc-engine.password"

    [evidence]              # the camera upload listener
    port = 8471

    [dispatch]              # the map and API
    port = 8080

    [ledger]                # without it: {data_dir}/ledger.sqlite3
    url = "postgresql://actimesh@db.example.org:5432/actimesh"

    [adapters.osmand]       # device protocols besides actimesh's own (docs/DEVICES.md)
    enabled = true
    port = 5055

Every mistake is reported as one line naming the key and what it accepts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from actimesh.adapters import AdapterSettings, NmeaSettings, OsmAndSettings, OwnTracksSettings
from actimesh.broker.client import MqttProtocol
from actimesh.broker.topics import is_identifier
from actimesh.devices.reporting import ReportingSettings, TelemetryMode
from actimesh.devices.settings import MediaKind, MediaSettings, StealthPolicy
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import ConfigError
from actimesh.evidence.settings import EvidenceSettings
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.ledger import shown_location
from actimesh.security.acl import AclPolicy
from actimesh.triggers.rules import DEFAULT_RULES, DISPATCH_SENDER, RuleTable, rules_from_toml
from actimesh.triggers.settings import EngineSettings

__all__ = [
    "MQTT_PROTOCOLS",
    "BrokerSettings",
    "DispatchSettings",
    "EngineSettings",
    "MediaSettings",
    "RetentionSettings",
    "Settings",
    "load_settings",
]

_LEDGER_SCHEMES = ("postgresql", "postgres")
#: The MQTT versions ``[broker] mqtt_protocol`` (and ``--mqtt-protocol``) accept.
MQTT_PROTOCOLS: tuple[MqttProtocol, ...] = ("5", "3.1.1")
#: PostgreSQL names are at most 63 bytes, and the agency's schema is ``am_<agency>``.
_MAX_PG_AGENCY = 60


def _check_ledger_url(url: str) -> None:
    """A libpq URL: one host, or several separated by commas (``HOST1:PORT1,HOST2:PORT2``,
    a primary and its standby: with ``target_session_attrs=read-write`` libpq connects to
    whichever accepts writes; docs/SCALING.md, "PostgreSQL high availability")."""
    shown = shown_location(url)
    try:
        parts = urlsplit(url)
        hosts = [urlsplit(f"//{h}") for h in parts.netloc.rpartition("@")[2].split(",")]
        ports = [h.port for h in hosts]
    except ValueError as exc:
        raise ConfigError(
            f"ledger.url {shown!r} is not a valid URL ({exc}); write "
            "postgresql://USER@HOST:PORT/DATABASE"
        ) from None
    if parts.scheme not in _LEDGER_SCHEMES:
        raise ConfigError(
            f"ledger.url {shown!r} must start with postgresql:// (or postgres://); remove "
            "[ledger] url (or --ledger-url) to keep the SQLite ledger in data_dir"
        )
    in_query = any(k == "host" for k, _v in parse_qsl(parts.query))
    has_host = all(h.hostname for h in hosts) or (in_query and len(hosts) == 1)
    if not has_host or not parts.path.strip("/"):
        raise ConfigError(
            f"ledger.url {shown!r} must name a host and a database: "
            "postgresql://USER@HOST:PORT/DATABASE"
        )
    for port in ports:
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"ledger.url {shown!r} has port {port}; use one between 1 and 65535")


#: CJIS 5.4 keeps audit records (transaction logs) for at least a year.
_MIN_RETENTION_DAYS = 365


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """How long ledger records and recordings not linked to a case are kept."""

    #: 13 months by default.
    days: float = 396.0

    def __post_init__(self) -> None:
        if not self.days >= _MIN_RETENTION_DAYS:  # also catches NaN
            raise ConfigError(
                f"retention.days must be at least {_MIN_RETENTION_DAYS} (CJIS 5.4 keeps audit "
                f"records a year), got {self.days!r}"
            )


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """``[broker]``: how actimesh logs in to a broker, and the managed broker's TLS.

    Against an external broker (``--broker URL``) the engine, dispatch and the monitor log
    in as ``username`` with the password read from ``password_file`` (never the config
    itself, which is often world-readable); ``mqtts://`` URLs check the broker's
    certificate against ``ca_file`` and present ``cert_file``/``key_file`` if given. The
    managed broker provisions its own accounts and ignores those three; it opens a TLS
    listener on ``tls_port`` when ``tls`` is true, or (``tls`` unset) when
    ``{data_dir}/certs`` holds a CA and server certificate (``actimesh certs init``);
    ``server_cert``/``server_key``/``ca_file`` point at an operator's own instead.

    ``mqtt_protocol`` is the MQTT version the simulated devices, the dispatch and the
    monitor speak (``"5"``, or ``"3.1.1"`` for a broker that speaks nothing newer, such
    as a NATS server's MQTT listener); the engine on an MQTT broker always speaks 5 (its
    shared subscription and its will need it).
    """

    mqtt_protocol: MqttProtocol = "5"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls: bool | None = None
    tls_port: int = 8883
    tls_host: str = "0.0.0.0"  # noqa: S104 - the TLS listener is the one for the network
    server_cert: Path | None = None
    server_key: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.mqtt_protocol not in MQTT_PROTOCOLS:
            raise ConfigError(
                f"broker.mqtt_protocol {self.mqtt_protocol!r} must be "
                f"{' or '.join(repr(p) for p in MQTT_PROTOCOLS)}"
            )
        if (self.username is None) != (self.password_file is None):
            raise ConfigError(
                "[broker] username and password_file go together: give both (the password "
                "itself stays in its own file, mode 0600) or neither"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("[broker] cert_file and key_file go together: give both or neither")
        if (self.server_cert is None) != (self.server_key is None):
            raise ConfigError(
                "[broker] server_cert and server_key go together: give both or neither"
            )
        if not 0 < self.tls_port < 65536:
            raise ConfigError(f"broker.tls_port {self.tls_port} must be between 1 and 65535")

    def password(self) -> str | None:
        """The password from ``password_file`` (None without one): one-line errors when
        it is missing, empty, or readable by other users."""
        path = self.password_file
        if path is None:
            return None
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"broker.password_file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read broker.password_file {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise ConfigError(
                f"broker.password_file {path} is readable by other users: chmod 600 {path}"
            )
        if not text or "\n" in text:
            raise ConfigError(f"broker.password_file {path} must hold the password on one line")
        return text


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``actimesh up`` needs."""

    agency: str = "demo"
    data_dir: Path = Path("actimesh-data")
    #: ``None`` runs a managed Mosquitto; otherwise ``mqtt://host:port`` (``[broker] url``).
    broker_url: str | None = None
    #: The managed Mosquitto's plain listener: ``[broker] host`` and ``port``
    #: (``--broker-port`` overrides the port).
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    engine: EngineSettings = field(default_factory=EngineSettings)
    policy: InclusionPolicy = field(default_factory=InclusionPolicy)
    rules: RuleTable = DEFAULT_RULES
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    #: ``[telemetry]``: when the simulated devices report (1 Hz or motion-scaled).
    telemetry: ReportingSettings = field(default_factory=ReportingSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)
    #: ``[ledger] url``: a PostgreSQL database holding the agency's ledger (its password,
    #: if any, is never shown); None keeps the SQLite file in ``data_dir``.
    ledger_url: str | None = field(default=None, repr=False)
    #: ``[adapters]``: OwnTracks, OsmAnd and NMEA 0183 (all off by default).
    adapters: AdapterSettings = field(default_factory=AdapterSettings)

    def __post_init__(self) -> None:
        if not is_identifier(self.agency):
            raise ConfigError(
                f"agency {self.agency!r} must be letters, digits, '.', '_' or '-' (max 64)"
            )
        if not 0 < self.broker_port < 65536:
            raise ConfigError(
                f"broker port {self.broker_port} must be between 1 and 65535 "
                "([broker] port or --broker-port)"
            )
        if not self.broker_host:
            raise ConfigError('broker.host must name an address, e.g. "127.0.0.1"')
        if self.ledger_url is not None:
            _check_ledger_url(self.ledger_url)
            if len(self.agency) > _MAX_PG_AGENCY:
                raise ConfigError(
                    f"agency {self.agency!r} is too long for a PostgreSQL ledger (its schema "
                    f"am_<agency> holds at most {_MAX_PG_AGENCY} characters); use a shorter agency"
                )

    @property
    def ledger_location(self) -> Path | str:
        """Where the agency's ledger is, for :func:`actimesh.ledger.open_ledger` (with
        ``agency=self.agency``): the ``[ledger] url``, else the SQLite file in ``data_dir``."""
        return self.data_dir / "ledger.sqlite3" if self.ledger_url is None else self.ledger_url

    @property
    def ledger_shown(self) -> str:
        """The ledger's location as logs and banners show it: never with a password."""
        return shown_location(self.ledger_location)

    def acl_policy(self) -> AclPolicy:
        """Who the broker lets do what for these settings: the agency, the dispatch's
        zone device, and the device kinds the rules let raise triggers."""
        kinds = frozenset(k for r in self.rules for k in r.senders if k != DISPATCH_SENDER)
        return AclPolicy(self.agency, self.dispatch.source_device, kinds)


def _typed(section: str, key: str, value: Any, expected: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{section}{key} must be a number, not true/false")
    if not isinstance(value, expected):
        names = expected.__name__ if isinstance(expected, type) else "number"
        raise ConfigError(f"{section}{key} must be a {names}, got {value!r}")
    return value


def _section(raw: Mapping[str, Any], name: str, allowed: Mapping[str, Any]) -> dict[str, Any]:
    body = raw.get(name, {})
    if not isinstance(body, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in allowed:
            raise ConfigError(
                f"[{name}] has unknown key {key!r}; allowed: {', '.join(sorted(allowed))}"
            )
        out[key] = _typed(f"{name}.", key, value, allowed[key])
    return out


_NUMBER = (int, float)
_DISPATCH_TYPES: Mapping[str, type | tuple[type, ...]] = {
    f.name: _NUMBER for f in fields(DispatchSettings) if f.init
} | {
    "enabled": bool,
    "host": str,
    "console_id": str,
    "basemap": str,
    "basemap_attribution": str,
    "vendor_dir": str,
    "cors_origins": list,
    "allowed_hosts": list,
    "public_url": str,
    "tls_certfile": str,
    "tls_keyfile": str,
}
_DISPATCH_INTS = {
    "port",
    "max_activations",
    "max_devices",
    "client_queue",
    "max_clients",
    "session_expiry_s",
    "telemetry_queue",
    "webhook_max_attempts",
    "webhook_concurrency",
    "login_max_failures",
    "login_max_failures_per_client",
    "max_body_bytes",
}


#: Keys that were renamed, and what they are called now.
_DISPATCH_RENAMED = {"tile_url": "basemap", "tile_attribution": "basemap_attribution"}


def _dispatch(raw: dict[str, Any]) -> DispatchSettings:
    for key in _DISPATCH_INTS & raw.keys():
        if not isinstance(raw[key], int):
            raise ConfigError(f"dispatch.{key} must be a whole number, got {raw[key]!r}")
    for key in ("vendor_dir", "tls_certfile", "tls_keyfile"):
        if key in raw:
            raw[key] = Path(raw[key])
    for key in ("cors_origins", "allowed_hosts"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return DispatchSettings(**raw)


_BROKER_PATHS = ("password_file", "ca_file", "cert_file", "key_file", "server_cert", "server_key")
_BROKER_TYPES: Mapping[str, type | tuple[type, ...]] = dict.fromkeys(_BROKER_PATHS, str) | {
    "url": str,
    "host": str,
    "port": int,
    "mqtt_protocol": str,
    "username": str,
    "tls": bool,
    "tls_port": int,
    "tls_host": str,
    "require_client_cert": bool,
}


def _broker(raw: dict[str, Any]) -> tuple[dict[str, Any], BrokerSettings]:
    """``[broker]``: the keys of :class:`Settings` (``url``, and ``host``/``port`` of the
    managed broker's plain listener), and the rest as :class:`BrokerSettings`."""
    top = {
        name: raw.pop(key)
        for key, name in (("url", "broker_url"), ("host", "broker_host"), ("port", "broker_port"))
        if key in raw
    }
    for key in _BROKER_PATHS:
        if key in raw:
            raw[key] = Path(raw[key])
    return top, BrokerSettings(**raw)


_MEDIA_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "source": str,
    "device": str,
    "width": int,
    "height": int,
    "fps": int,
    "segment_s": _NUMBER,
    "crf": int,
    "max_kbps": int,
    "pre_roll_s": _NUMBER,
    "buffer_audio": bool,
    "stealth": str,
    "cancel_window_s": _NUMBER,
}


_EVIDENCE_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "dir": str,
    "retention_days": _NUMBER,
    "max_upload_bytes": int,
    "max_chunk_bytes": int,
    "max_manifest_bytes": int,
    "upload_expiry_s": _NUMBER,
    "max_open_uploads": int,
    "min_free_bytes": int,
    "auth_max_failures": int,
    "auth_max_failures_per_client": int,
    "auth_window_s": _NUMBER,
    "client_timeout_s": _NUMBER,
    "max_clients": int,
    "host": str,
    "port": int,
}


_ADAPTER_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "rate_per_s": _NUMBER,
    "burst": _NUMBER,
    "queue": int,
    "deadletters_per_s": _NUMBER,
    "owntracks": dict,
    "osmand": dict,
    "nmea": dict,
}
_OSMAND_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "enabled": bool,
    "host": str,
    "port": int,
    "tls_certfile": str,
    "tls_keyfile": str,
    "max_clients": int,
    "client_timeout_s": _NUMBER,
}
_NMEA_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "enabled": bool,
    "host": str,
    "ports": dict,
    "hdop_factor_m": _NUMBER,
    "idle_timeout_s": _NUMBER,
}


def _adapters(raw: Mapping[str, Any]) -> AdapterSettings:
    top = _section(raw, "adapters", _ADAPTER_TYPES)
    tables = {
        name: _section({f"adapters.{name}": top.get(name, {})}, f"adapters.{name}", allowed)
        for name, allowed in (
            ("owntracks", {"enabled": bool}),
            ("osmand", _OSMAND_TYPES),
            ("nmea", _NMEA_TYPES),
        )
    }
    for key in ("tls_certfile", "tls_keyfile"):
        if key in tables["osmand"]:
            tables["osmand"][key] = Path(tables["osmand"][key])
    ports = tables["nmea"].get("ports", {})
    for device_id, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int):
            raise ConfigError(
                f"adapters.nmea.ports.{device_id} must be a port number, got {port!r}"
            )
    for name in ("owntracks", "osmand", "nmea"):
        top.pop(name, None)
    return AdapterSettings(
        owntracks=OwnTracksSettings(**tables["owntracks"]),
        osmand=OsmAndSettings(**tables["osmand"]),
        nmea=NmeaSettings(**tables["nmea"]),
        **top,
    )


def _media(raw: dict[str, Any]) -> MediaSettings:
    for key, kind in (("source", MediaKind), ("stealth", StealthPolicy)):
        if key in raw:
            try:
                raw[key] = kind(raw[key])
            except ValueError:
                allowed = " or ".join(repr(v.value) for v in kind)
                raise ConfigError(f"media.{key} must be {allowed}, got {raw[key]!r}") from None
    return MediaSettings(**raw)


def reporting_settings(
    mode: str | None,
    heartbeat_s: float | None,
    names: tuple[str, str],
    base: ReportingSettings | None = None,
) -> ReportingSettings:
    """``base`` with the telemetry ``mode`` and ``heartbeat_s`` given (None: kept); a bad
    value is one :class:`ConfigError` line naming the key or flag (``names``: the mode's,
    the heartbeat's) it came from."""
    base = base or ReportingSettings()
    try:
        chosen = base.mode if mode is None else TelemetryMode(mode)
    except ValueError:
        allowed = " or ".join(repr(m.value) for m in TelemetryMode)
        raise ConfigError(f"{names[0]} must be {allowed}, got {mode!r}") from None
    heartbeat = base.heartbeat_s if heartbeat_s is None else heartbeat_s
    if not (isinstance(heartbeat, int | float) and 0 < heartbeat <= _MAX_HEARTBEAT_S):
        raise ConfigError(
            f"{names[1]} must be seconds above 0 and at most {_MAX_HEARTBEAT_S:g}, "
            f"got {heartbeat!r}"
        )
    return replace(base, mode=chosen, heartbeat_s=float(heartbeat))


#: The slowest heartbeat a device may announce (Telemetry's ``hb`` bound).
_MAX_HEARTBEAT_S = 300.0


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the embedded defaults, then ``path`` (TOML), then ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist; check the path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    top_allowed = {
        "agency",
        "data_dir",
        "broker",
        "engine",
        "policy",
        "rules",
        "dispatch",
        "retention",
        "media",
        "telemetry",
        "evidence",
        "ledger",
        "adapters",
    }
    unknown = set(raw) - top_allowed
    if unknown:
        raise ConfigError(
            f"unknown setting {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(top_allowed))}"
        )
    engine_types = {f.name: _NUMBER for f in fields(EngineSettings)} | {
        "engine_id": str,
        "publish_json": bool,
        "slowdown": bool,
        "freeze_heap": bool,
        "share_group": str,
        "session_expiry_s": int,
        "partitions": int,
        "partition": (list, int),
    }
    engine = EngineSettings(**_section(raw, "engine", engine_types))
    policy_raw = _section(
        raw,
        "policy",
        {
            "max_fix_age_s": _NUMBER,
            "mode": str,
            "max_margin_m": _NUMBER,
            "max_bracket_s": _NUMBER,
            "max_still_bracket_s": _NUMBER,
        },
    )
    if "mode" in policy_raw:
        try:
            policy_raw["mode"] = InclusionMode(policy_raw["mode"])
        except ValueError as exc:
            raise ConfigError("policy.mode must be 'inclusive' or 'centre'") from exc
    try:
        policy = InclusionPolicy(**policy_raw)
    except ValueError as exc:
        raise ConfigError(f"[policy]: {exc}") from exc
    rules_raw = raw.get("rules", {})
    if not isinstance(rules_raw, Mapping):
        raise ConfigError("[rules] must be a table of [rules.<event_type>] tables")
    for old, new in _DISPATCH_RENAMED.items():
        if isinstance(raw.get("dispatch"), Mapping) and old in raw["dispatch"]:
            raise ConfigError(f"dispatch.{old} is now dispatch.{new} (same value): rename it")
    dispatch = _dispatch(_section(raw, "dispatch", _DISPATCH_TYPES))
    retention = RetentionSettings(**_section(raw, "retention", {"days": _NUMBER}))
    media = _media(_section(raw, "media", _MEDIA_TYPES))
    telemetry_raw = _section(raw, "telemetry", {"mode": str, "heartbeat_s": _NUMBER})
    telemetry = reporting_settings(
        telemetry_raw.get("mode"),
        telemetry_raw.get("heartbeat_s"),
        ("telemetry.mode", "telemetry.heartbeat_s"),
    )
    evidence_raw = _section(raw, "evidence", _EVIDENCE_TYPES)
    if "dir" in evidence_raw:
        evidence_raw["dir"] = Path(evidence_raw["dir"])
    evidence = EvidenceSettings(**evidence_raw)
    broker_keys, broker = _broker(_section(raw, "broker", _BROKER_TYPES))
    ledger_url = _section(raw, "ledger", {"url": str}).get("url")
    settings = Settings(
        agency=_typed("", "agency", raw.get("agency", "demo"), str),
        data_dir=Path(_typed("", "data_dir", raw.get("data_dir", "actimesh-data"), str)),
        broker=broker,
        engine=engine,
        policy=policy,
        rules=rules_from_toml(rules_raw),
        dispatch=dispatch,
        retention=retention,
        media=media,
        telemetry=telemetry,
        evidence=evidence,
        ledger_url=ledger_url,
        **broker_keys,
        adapters=_adapters(raw),
    )
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(settings, **clean) if clean else settings
