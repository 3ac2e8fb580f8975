"""``actimesh drill``: which self-check runs, and the exit code it earns.

The drills themselves live in :mod:`actimesh.drills`; they are imported only when one
runs, and the media drill (which loads PyAV) only for ``--media real``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from actimesh.cli._common import EXIT_FAILED, EXIT_OK, Parser, positive_int, run_async
from actimesh.errors import ConfigError
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.runtime.config import MQTT_PROTOCOLS

if TYPE_CHECKING:
    from actimesh.broker.client import MqttProtocol

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """``drill``."""
    drill = sub.add_parser("drill", help="self-check: fire triggers at known geometry, verify")
    drill.add_argument("--rounds", type=positive_int, default=5, help="rounds (default 5)")
    drill.add_argument(
        "--data-dir",
        type=Path,
        help="keep recordings and ledger here (default: a temporary folder)",
    )
    drill.add_argument(
        "--faults",
        action="store_true",
        help="run the fault drill instead: "
        "broker restarts and kills, engine kills, replicas, outages",
    )
    drill.add_argument(
        "--cluster",
        action="store_true",
        help="on the cluster shape: 3 NATS nodes, PostgreSQL, devices on MQTT 3.1.1 "
        "(with --faults: 2 engine processes, the nodes and PostgreSQL failing)",
    )
    drill.add_argument("--short", action="store_true", help="with --faults: fewer triggers (CI)")
    drill.add_argument("--only", metavar="SCENARIO", help="with --faults: one scenario by name")
    drill.add_argument(
        "--policy",
        choices=[m.value for m in InclusionMode],
        default=InclusionMode.INCLUSIVE.value,
        help="accuracy inclusion policy (default inclusive)",
    )
    drill.add_argument(
        "--media",
        choices=("synthetic", "real"),
        default="synthetic",
        help="real: live H.264 cameras through offload, verification "
        "and retention (about 40 s; evidence kept in --data-dir)",
    )
    drill.add_argument(
        "--mqtt-protocol",
        choices=MQTT_PROTOCOLS,
        help="MQTT version the drill's devices speak (default 5; 3.1.1 with --cluster)",
    )


def _faults(args: argparse.Namespace, console: Console) -> int:
    """``actimesh drill --faults [--cluster]``."""
    from actimesh.drills import (  # noqa: PLC0415
        CLUSTER_SCENARIOS,
        SCENARIOS,
        run_cluster_fault_drill,
        run_fault_drill,
        scratch_dir,
    )

    names = [s[0] for s in (CLUSTER_SCENARIOS if args.cluster else SCENARIOS)]
    if args.only is not None and args.only not in names:
        raise ConfigError(f"--only {args.only!r}: choose one of {', '.join(map(repr, names))}")
    drill = run_cluster_fault_drill if args.cluster else run_fault_drill
    with scratch_dir(args.data_dir) as root:
        report = run_async(drill(console, root=root, short=args.short, only=args.only))
    return EXIT_OK if report.ok else EXIT_FAILED


def run(args: argparse.Namespace, console: Console) -> int:
    """``actimesh drill [--cluster]``: the exit code says whether the mesh passed."""
    from actimesh.drills import (  # noqa: PLC0415 - keep `--help` fast
        cluster_mesh,
        mosquitto_mesh,
        run_drill,
        scratch_dir,
    )

    if args.mqtt_protocol is not None and (args.faults or args.media == "real"):
        raise ConfigError(
            "--mqtt-protocol applies to the activation drill only: drop --faults / --media real"
        )
    if args.faults and args.media == "real":
        raise ConfigError("--faults and --media real are separate drills: run one at a time")
    if args.cluster and args.media == "real":
        raise ConfigError("--media real runs on a managed Mosquitto: drop --cluster")
    if args.cluster and args.mqtt_protocol not in (None, "3.1.1"):
        raise ConfigError("--cluster: the NATS nodes' MQTT listeners speak 3.1.1 only")
    if args.faults:
        return _faults(args, console)
    if args.media == "real":
        from actimesh.drills.media import run_media_drill  # noqa: PLC0415 - loads PyAV

        with scratch_dir(args.data_dir) as root:
            media = run_async(run_media_drill(console, root=root))
        if args.data_dir is not None and media.evidence_dir is not None:
            ledger = args.data_dir / "ledger.sqlite3"
            console.print(f"evidence kept under {media.evidence_dir} (ledger {ledger})")
        return EXIT_OK if media.ok else EXIT_FAILED
    policy = InclusionPolicy(mode=InclusionMode(args.policy))
    mesh = cluster_mesh if args.cluster else mosquitto_mesh
    protocol: MqttProtocol = args.mqtt_protocol or ("3.1.1" if args.cluster else "5")
    report = run_async(
        run_drill(
            console,
            rounds=args.rounds,
            data_dir=args.data_dir,
            policy=policy,
            mqtt_protocol=protocol,
            mesh=mesh,
        )
    )
    return EXIT_OK if report.ok else EXIT_FAILED
