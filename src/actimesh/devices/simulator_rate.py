"""How many telemetry messages a simulated shift sends, at 1 Hz and motion-scaled.

Runs the fleet simulator's world (crews patrol, respond, stand and walk at scenes, dock)
on a clock of its own, no broker, and asks every device each GPS epoch whether a report
is due, once per reporting mode, over the same seed, so both modes see the very same
shift::

    python -m actimesh.devices.simulator_rate --units 24 --hours 1

Without a broker no camera is commanded, so no camera changes state during the run; a
motion-scaled camera reports each state change at once. The count therefore adds, as an
upper bound, two reports (recording, then stopped) per camera of every crew at every
incident (``state_bound``), and :attr:`RateReport.ratio` uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.reporting import ReportingSettings, TelemetryMode
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.devices.simulator_world import Mode, Unit

__all__ = ["RateReport", "measure_rates", "telemetry_count"]

#: Crews at one incident, at most (simulator_world: two or three cruisers).
_CREWS_PER_INCIDENT = 3


#: What a crew's devices are doing in each of the world's modes.
_ACTIVITY = {
    Mode.PATROL: "driving",
    Mode.RESPONDING: "driving",
    Mode.TO_DOCK: "driving",
    Mode.DOCKED: "standing",
    Mode.ON_SCENE: "at a scene",
    Mode.LEAVING: "at a scene",
}


def _devices_of(unit: Unit) -> list[DeviceAgent]:
    found = [*unit.cameras, *unit.cews]
    if unit.gateway is not None:
        found.append(unit.gateway)
    return found


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Quiet:
    """The world's actions, noted rather than carried out: this run measures telemetry."""

    def __init__(self) -> None:
        self.noted: Counter[str] = Counter()

    async def fire(self, agent: DeviceAgent, event_type: str) -> None:
        self.noted[f"fire {event_type} {agent.kind}"] += 1

    async def stop(self, agent: DeviceAgent) -> None:
        self.noted[f"stop {agent.kind}"] += 1

    async def outage(self, agent: DeviceAgent, seconds: float) -> None:
        self.noted[f"outage {agent.kind}"] += 1
        self.noted["outage seconds"] += round(seconds)

    def dock(self, unit: Unit) -> None:
        self.noted[f"dock {len(unit.cameras)} cameras"] += 1


@dataclass(frozen=True, slots=True)
class _Count:
    devices: int
    seconds: float
    messages: int
    incidents: int
    cameras_per_crew: float
    reasons: dict[str, int]
    #: Messages per device per second while the crew drives, stands or walks.
    by_activity: dict[str, float]
    #: The share of device-seconds spent at each.
    share: dict[str, float]


async def telemetry_count(settings: SimSettings, hours: float, data_dir: Path) -> _Count:
    """Run ``hours`` of a shift with 1 s epochs; count the telemetry messages sent."""
    clock = _Clock(1_800_000_000.0)
    sim = FleetSimulator(
        topics=Topics("rate"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=data_dir,
        settings=settings,
        clock=clock,
    )
    actions = _Quiet()
    epochs = round(hours * 3600 / settings.telemetry_interval_s)
    dt = settings.telemetry_interval_s
    sent = 0
    by_mode: Counter[str] = Counter()
    epochs_by_mode: Counter[str] = Counter()
    crews = [(unit, _devices_of(unit)) for unit in sim.units]
    for _ in range(epochs):
        clock.now += dt
        await sim.world.step(clock.now, dt, actions)
        for unit, devices in crews:
            mode = _ACTIVITY[unit.mode]
            epochs_by_mode[mode] += len(devices)
            for agent in devices:
                if agent.due_telemetry() is not None:
                    sent += 1
                    by_mode[mode] += 1
    reasons: Counter[str] = Counter()
    for agent in sim.agents:
        reasons.update(agent.reporter.reasons)
    cameras = sum(len(unit.cameras) for unit in sim.units) / max(1, len(sim.units))
    return _Count(
        devices=len(sim.agents),
        seconds=epochs * dt,
        messages=sent,
        incidents=sim.world.incidents,
        cameras_per_crew=cameras,
        reasons=dict(reasons),
        by_activity={m: by_mode[m] / n for m, n in sorted(epochs_by_mode.items())},
        share={m: n / epochs_by_mode.total() for m, n in sorted(epochs_by_mode.items())},
    )


@dataclass(frozen=True, slots=True)
class RateReport:
    """Messages per device per second over the same shift, in each mode."""

    devices: int
    seconds: float
    fixed_per_device_s: float
    motion_per_device_s: float
    #: Reports a motion-scaled fleet would add for state changes (module docstring).
    state_bound: int
    motion_reasons: dict[str, int]
    #: Messages per device per second by what the crew was doing, in each mode.
    fixed_by_activity: dict[str, float]
    motion_by_activity: dict[str, float]
    #: The share of device-seconds the crews spent at each (the same in both modes).
    activity_share: dict[str, float]

    @property
    def ratio(self) -> float:
        """1 Hz messages over motion-scaled ones (with ``state_bound``)."""
        return self.fixed_per_device_s / self.motion_per_device_s

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.motion_reasons.items()))
        return [
            f"{self.devices} devices, {self.seconds / 3600:g} h simulated",
            f"1 Hz:           {self.fixed_per_device_s:.4f} messages per device per second",
            f"motion-scaled:  {self.motion_per_device_s:.4f} messages per device per second "
            f"(incl. up to {self.state_bound} state changes)",
            f"ratio:          {self.ratio:.1f}x fewer",
            f"motion-scaled reports by reason: {reasons}",
            *(
                f"  {activity:<11} {self.activity_share.get(activity, 0.0):4.0%} of the time: "
                f"1 Hz {rate:.3f}, motion-scaled "
                f"{self.motion_by_activity.get(activity, 0.0):.3f} per device per second"
                for activity, rate in self.fixed_by_activity.items()
            ),
        ]


async def measure_rates(
    settings: SimSettings, hours: float, data_dir: Path, *, reporting: ReportingSettings
) -> RateReport:
    """The same shift at 1 Hz and with ``reporting`` (motion-scaled)."""
    fixed = await telemetry_count(
        replace(settings, reporting=ReportingSettings(mode=TelemetryMode.FIXED)),
        hours,
        data_dir / "fixed",
    )
    motion_settings = replace(reporting, mode=TelemetryMode.MOTION)
    motion = await telemetry_count(
        replace(settings, reporting=motion_settings), hours, data_dir / "motion"
    )
    bound = round(2 * motion.incidents * _CREWS_PER_INCIDENT * motion.cameras_per_crew)
    device_s = motion.devices * motion.seconds
    return RateReport(
        devices=motion.devices,
        seconds=motion.seconds,
        fixed_per_device_s=fixed.messages / (fixed.devices * fixed.seconds),
        motion_per_device_s=(motion.messages + bound) / device_s,
        state_bound=bound,
        motion_reasons=motion.reasons,
        fixed_by_activity=fixed.by_activity,
        motion_by_activity=motion.by_activity,
        activity_share=motion.share,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m actimesh.devices.simulator_rate",
        description="Telemetry messages per device per second, 1 Hz against motion-scaled, "
        "over the same simulated shift.",
    )
    parser.add_argument("--units", type=int, default=24, help="crews (default 24)")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours (default 1)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="the shift's seed")
    args = parser.parse_args(argv)
    if not args.hours > 0:
        parser.error("--hours must be above 0")
    try:
        settings = SimSettings(units=args.units)
        if args.seed is not None:
            settings = replace(settings, seed=args.seed)
        reporting = ReportingSettings(mode=TelemetryMode.MOTION, heartbeat_s=args.heartbeat)
    except ValueError as exc:
        parser.error(str(exc))
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(measure_rates(settings, args.hours, Path(tmp), reporting=reporting))
    sys.stdout.write("\n".join(report.lines()) + "\n")


if __name__ == "__main__":
    main()
