"""The rules table: for each trigger type, which cameras activate, how far, how far back.

Rules are data. Adding a trigger type (holster draw, gunshot …) is a row here or in the
operator's TOML file, never a new function. The defaults follow the seed documents:

* Hartford: a taser draw activates the officer's own body camera and every body camera
  within a 30-foot radius, and their cruisers' in-car cameras.
* Calgary: in-car cameras activate when the emergency lights go on or in a collision.
* Both: each recording includes the 30 seconds before activation.

So ``taser_draw``, ``emergency_lights`` and ``collision`` activate every body camera and
every in-car camera (dash and back seat) within 9.144 m (30 ft), plus the trigger's own
paired cameras whatever GPS says. ``dispatch_zone`` is a dispatcher-initiated activation
around a point; it takes its radius from the event, capped by the rule.

Each rule also says **who may raise it** (``senders``): device kinds, or ``"dispatch"``
for the dispatch console's source device. A taser draw comes from a CEW, lights and
collisions from a cruiser's gateway, a holster draw from a holster sensor, a zone only
from dispatch. An event from any other sender is refused (``sender_not_allowed``): a
body camera, or a stolen device credential, cannot start every camera around it by
claiming to be a light bar.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from actimesh.broker.messages import CAMERA_KINDS, EVENT_TYPE_PATTERN, DeviceKind
from actimesh.errors import ConfigError

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_SENDERS",
    "DISPATCH_SENDER",
    "THIRTY_FEET_M",
    "Rule",
    "RuleTable",
    "rules_from_toml",
]

#: 30 ft in metres.
THIRTY_FEET_M = 9.144
#: In ``Rule.senders``: the dispatch console's source device (not a device kind).
DISPATCH_SENDER = "dispatch"
#: Who may raise the trigger types actimesh knows, when a rule does not say.
DEFAULT_SENDERS: Mapping[str, frozenset[str]] = {
    "taser_draw": frozenset({DeviceKind.CEW.value}),
    "holster_draw": frozenset({DeviceKind.HOLSTER.value}),
    "emergency_lights": frozenset({DeviceKind.GATEWAY.value}),
    "collision": frozenset({DeviceKind.GATEWAY.value}),
    "dispatch_zone": frozenset({DISPATCH_SENDER}),
}
_SENDERS = frozenset({k.value for k in DeviceKind} | {DISPATCH_SENDER})
_MAX_RADIUS_M = 1_000.0
_MAX_PRE_ROLL_S = 120.0


@dataclass(frozen=True, slots=True)
class Rule:
    """What one trigger type activates."""

    event_type: str
    camera_kinds: frozenset[DeviceKind] = CAMERA_KINDS
    radius_m: float = THIRTY_FEET_M
    pre_roll_s: float = 30.0
    #: Activate the trigger device's paired cameras even without a usable position.
    include_paired: bool = True
    #: The event may carry its own radius (dispatcher zones), up to ``radius_m``.
    radius_from_event: bool = False
    description: str = ""
    #: Device kinds (values) that may raise it, and/or ``"dispatch"``. Empty: the
    #: built-in default for the type (:data:`DEFAULT_SENDERS`); nobody for a new type.
    senders: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        where = f"rule {self.event_type!r}"
        if not re.fullmatch(EVENT_TYPE_PATTERN, self.event_type):
            raise ConfigError(f"{where}: event type must match {EVENT_TYPE_PATTERN}")
        if not self.senders:
            default = DEFAULT_SENDERS.get(self.event_type, frozenset())
            object.__setattr__(self, "senders", default)  # frozen: set once, here
        if not self.senders <= _SENDERS:
            bad = ", ".join(sorted(self.senders - _SENDERS))
            raise ConfigError(
                f"{where}: unknown sender {bad}; senders are device kinds "
                f"({', '.join(k.value for k in DeviceKind)}) or {DISPATCH_SENDER!r}"
            )
        if not self.camera_kinds <= CAMERA_KINDS:
            extra = ", ".join(sorted(k.value for k in self.camera_kinds - CAMERA_KINDS))
            raise ConfigError(f"{where}: {extra} cannot record; use body_cam, dash_cam, rear_cam")
        if not (math.isfinite(self.radius_m) and 0 <= self.radius_m <= _MAX_RADIUS_M):
            raise ConfigError(f"{where}: radius_m must be between 0 and {_MAX_RADIUS_M:.0f}")
        if not (math.isfinite(self.pre_roll_s) and 0 <= self.pre_roll_s <= _MAX_PRE_ROLL_S):
            raise ConfigError(f"{where}: pre_roll_s must be between 0 and {_MAX_PRE_ROLL_S:.0f}")

    def allows(self, kind: DeviceKind | None, *, dispatch: bool = False) -> bool:
        """May a device of ``kind`` (or, with ``dispatch``, the dispatch source) raise it?"""
        if dispatch:
            return DISPATCH_SENDER in self.senders
        return kind is not None and kind.value in self.senders

    def radius_for(self, requested: float | None) -> float:
        """The radius to use for one event."""
        if self.radius_from_event and requested is not None:
            return min(requested, self.radius_m)
        return self.radius_m


@dataclass(frozen=True, slots=True)
class RuleTable:
    """The rules by event type."""

    rules: Mapping[str, Rule] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> RuleTable:
        table: dict[str, Rule] = {}
        for rule in rules:
            if rule.event_type in table:
                raise ConfigError(f"rule {rule.event_type!r} is defined twice; keep one")
            table[rule.event_type] = rule
        return cls(table)

    def get(self, event_type: str) -> Rule | None:
        return self.rules.get(event_type)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules.values())

    def __len__(self) -> int:
        return len(self.rules)

    def merged(self, overrides: Iterable[Rule]) -> RuleTable:
        """This table with rules replaced or added by ``overrides``."""
        table = dict(self.rules)
        for rule in overrides:
            table[rule.event_type] = rule
        return RuleTable(table)


DEFAULT_RULES = RuleTable.of(
    [
        Rule(
            "taser_draw",
            description="TASER/CEW drawn: the officer's body camera and every camera in 30 ft",
        ),
        Rule(
            "emergency_lights",
            description="Light bar on: the cruiser's in-car cameras and every camera in 30 ft",
        ),
        Rule(
            "collision",
            description="Crash sensor: the cruiser's in-car cameras and every camera in 30 ft",
        ),
        Rule(
            "dispatch_zone",
            radius_m=_MAX_RADIUS_M,
            include_paired=False,
            radius_from_event=True,
            description="Dispatcher-initiated zone: every camera within the chosen radius",
        ),
    ]
)


def _rule_from_mapping(event_type: str, raw: Mapping[str, Any]) -> Rule:
    known = {
        "camera_kinds",
        "radius_m",
        "pre_roll_s",
        "include_paired",
        "radius_from_event",
        "senders",
    }
    unknown = set(raw) - known - {"description"}
    if unknown:
        raise ConfigError(
            f"rule {event_type!r}: unknown setting {sorted(unknown)[0]!r}; "
            f"allowed: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {"event_type": event_type}
    try:
        if "camera_kinds" in raw:
            kwargs["camera_kinds"] = frozenset(DeviceKind(k) for k in raw["camera_kinds"])
        for key in ("radius_m", "pre_roll_s"):
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"rule {event_type!r}: {key} must be a number")
                kwargs[key] = float(value)
        for key in ("include_paired", "radius_from_event"):
            if key in raw:
                if not isinstance(raw[key], bool):
                    raise ConfigError(f"rule {event_type!r}: {key} must be true or false")
                kwargs[key] = raw[key]
        if "description" in raw:
            kwargs["description"] = str(raw["description"])
        kwargs["senders"] = _senders(event_type, raw.get("senders"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"rule {event_type!r}: camera_kinds must list body_cam, dash_cam or rear_cam"
        ) from exc
    return Rule(**kwargs)


def _senders(event_type: str, raw: Any) -> frozenset[str]:
    if raw is None:
        if event_type not in DEFAULT_SENDERS:
            raise ConfigError(
                f"rule {event_type!r}: say which devices may raise it, e.g. "
                f'senders = ["gateway"] (device kinds, or "{DISPATCH_SENDER}")'
            )
        return frozenset()
    if not isinstance(raw, list) or not raw or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f'rule {event_type!r}: senders must be a non-empty list such as ["cew"]')
    return frozenset(raw)


def rules_from_toml(section: Mapping[str, Any], base: RuleTable = DEFAULT_RULES) -> RuleTable:
    """Rules from a ``[rules.<event_type>]`` TOML section, merged over ``base``."""
    overrides = []
    for event_type, raw in section.items():
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[rules.{event_type}] must be a table of settings")
        overrides.append(_rule_from_mapping(event_type, raw))
    return base.merged(overrides)
