"""The trigger engine: trigger events in, every camera within the radius commanded.

:mod:`.engine` wires the parts: :mod:`.intake` (routing, validation, budgets),
:mod:`.planning` (the trigger path: sender, dedupe, storm, plan), :mod:`.fanout` (who
is commanded and why, a pure function of the event, the rule and the fleet),
:mod:`.commands` (signed commands, confirmations, re-sends), :mod:`.persistence` (the
ledger writes and the activation record), :mod:`.refusals` and :mod:`.alerts`. The
rules are data (:mod:`.rules`, one table for every trigger type).
"""

from actimesh.triggers.engine import Engine
from actimesh.triggers.fanout import Plan, plan_activation
from actimesh.triggers.fleet import DeviceDirectory, DirectoryEntry, StaticDirectory
from actimesh.triggers.persistence import left_out_of
from actimesh.triggers.planning import TriggerTracer
from actimesh.triggers.quarantine import Quarantine
from actimesh.triggers.rules import (
    DEFAULT_RULES,
    DISPATCH_SENDER,
    THIRTY_FEET_M,
    Rule,
    RuleTable,
    rules_from_toml,
)
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats
from actimesh.triggers.storm import StormLimits

__all__ = [
    "DEFAULT_RULES",
    "DISPATCH_SENDER",
    "THIRTY_FEET_M",
    "DeviceDirectory",
    "DirectoryEntry",
    "Engine",
    "EngineSettings",
    "EngineStats",
    "Plan",
    "Quarantine",
    "Rule",
    "RuleTable",
    "StaticDirectory",
    "StormLimits",
    "TriggerTracer",
    "left_out_of",
    "plan_activation",
    "rules_from_toml",
]
