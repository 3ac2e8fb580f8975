"""The composition root: what ``actimesh up``, ``engine`` and ``sim`` run.

Every package below this one is a part that takes its settings as arguments; this is
the one place that reads the configuration (:mod:`~actimesh.runtime.config`), builds
the parts from it and wires them together (:mod:`~actimesh.runtime.compose`; the
cluster shape in :mod:`~actimesh.runtime.cluster` with a managed PostgreSQL,
:mod:`~actimesh.runtime.postgres`; one service per process in
:mod:`~actimesh.runtime.services`), watches the web listeners and cluster engines in
processes of their own (:mod:`~actimesh.runtime.supervisor`,
:mod:`~actimesh.runtime.web`) and prints what reaches the wire
(:mod:`~actimesh.runtime.monitor`).

It is called the runtime because it is what runs: the packages below are the library,
this is the program. Nothing below it may import it; only the command line, the drills,
the benchmark and the fuzzer, which start a mesh as an operator would, sit above it.
"""

from actimesh.runtime.compose import (
    BrokerAddress,
    Login,
    broker_for,
    policy_line,
    run_engine,
    run_sim,
    run_up,
)
from actimesh.runtime.config import BrokerSettings, RetentionSettings, Settings, load_settings
from actimesh.runtime.monitor import Monitor
from actimesh.runtime.supervisor import ChildError, Report, Supervisor
from actimesh.runtime.web import DispatchJob

__all__ = [
    "BrokerAddress",
    "BrokerSettings",
    "ChildError",
    "DispatchJob",
    "Login",
    "Monitor",
    "Report",
    "RetentionSettings",
    "Settings",
    "Supervisor",
    "broker_for",
    "load_settings",
    "policy_line",
    "run_engine",
    "run_sim",
    "run_up",
]
