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

Every mistake is reported as one line naming the key and what it accepts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from actimesh.broker.topics import is_identifier
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import ConfigError
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.triggers.rules import DEFAULT_RULES, RuleTable, rules_from_toml
from actimesh.triggers.settings import EngineSettings

__all__ = ["DispatchSettings", "EngineSettings", "RetentionSettings", "Settings", "load_settings"]

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
class Settings:
    """Everything ``actimesh up`` needs."""

    agency: str = "demo"
    data_dir: Path = Path("actimesh-data")
    #: ``None`` runs a managed Mosquitto; otherwise ``mqtt://host:port``.
    broker_url: str | None = None
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    engine: EngineSettings = field(default_factory=EngineSettings)
    policy: InclusionPolicy = field(default_factory=InclusionPolicy)
    rules: RuleTable = DEFAULT_RULES
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    def __post_init__(self) -> None:
        if not is_identifier(self.agency):
            raise ConfigError(
                f"agency {self.agency!r} must be letters, digits, '.', '_' or '-' (max 64)"
            )
        if not 0 < self.broker_port < 65536:
            raise ConfigError(f"broker port {self.broker_port} must be between 1 and 65535")

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"


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
    f.name: _NUMBER for f in fields(DispatchSettings)
} | {
    "enabled": bool,
    "host": str,
    "console_id": str,
    "tile_url": str,
    "tile_attribution": str,
    "vendor_dir": str,
}
_DISPATCH_INTS = {
    "port", "max_activations", "max_devices", "client_queue", "max_clients",
    "session_expiry_s", "telemetry_queue", "webhook_max_attempts", "webhook_concurrency",
}  # fmt: skip


def _dispatch(raw: dict[str, Any]) -> DispatchSettings:
    for key in _DISPATCH_INTS & raw.keys():
        if not isinstance(raw[key], int):
            raise ConfigError(f"dispatch.{key} must be a whole number, got {raw[key]!r}")
    if "vendor_dir" in raw:
        raw["vendor_dir"] = Path(raw["vendor_dir"])
    return DispatchSettings(**raw)


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
        "agency", "data_dir", "broker", "engine", "policy", "rules", "dispatch", "retention",
    }  # fmt: skip
    unknown = set(raw) - top_allowed
    if unknown:
        raise ConfigError(
            f"unknown setting {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(top_allowed))}"
        )
    engine_types = {f.name: _NUMBER for f in fields(EngineSettings)} | {
        "engine_id": str,
        "publish_json": bool,
        "share_group": str,
        "session_expiry_s": int,
    }
    engine = EngineSettings(**_section(raw, "engine", engine_types))
    policy_raw = _section(
        raw, "policy", {"max_fix_age_s": _NUMBER, "mode": str, "max_margin_m": _NUMBER}
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
    dispatch = _dispatch(_section(raw, "dispatch", _DISPATCH_TYPES))
    retention = RetentionSettings(**_section(raw, "retention", {"days": _NUMBER}))
    settings = Settings(
        agency=_typed("", "agency", raw.get("agency", "demo"), str),
        data_dir=Path(_typed("", "data_dir", raw.get("data_dir", "actimesh-data"), str)),
        broker_url=_section(raw, "broker", {"url": str}).get("url"),
        engine=engine,
        policy=policy,
        rules=rules_from_toml(rules_raw),
        dispatch=dispatch,
        retention=retention,
    )
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(settings, **clean) if clean else settings
