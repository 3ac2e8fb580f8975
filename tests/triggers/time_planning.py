"""What a decision row for every camera in the band costs the trigger path.

Run from the repository root (a few seconds)::

    PYTHONPATH=src .venv/bin/python -m tests.triggers.time_planning

It times :func:`~actimesh.triggers.fanout.plan_activation` in ``centre`` mode on a city
fleet with a busy scene, searching the index to the rule's radius only (how centre mode
planned before every camera just outside got a row) and to radius + ``max_margin_m``
(now), and separately the record's left-out list, which the persister builds after
the commands have left. Not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from actimesh.broker.messages import DeviceKind, Event, Presence
from actimesh.geofence import GridIndex, InclusionMode, InclusionPolicy, destination
from actimesh.triggers import DEFAULT_RULES, Plan, left_out_of, plan_activation
from actimesh.triggers.fleet import Fleet

T0 = 1_800_000_000.0
CENTER = (51.0447, -114.0719)
#: Cameras spread over the city (10 km square) and crowded into the scene (within 20 m).
CITY, SCENE = 10_000, 40
ROUNDS, REPEAT = 15, 400


@dataclass(frozen=True, slots=True)
class _RadiusOnly(InclusionPolicy):
    """Centre mode as it searched before: to the rule's radius and no farther."""

    def search_radius_m(self, radius_m: float) -> float:
        return radius_m


def _fleet() -> tuple[Fleet, GridIndex]:
    rng = random.Random(7)
    fleet, index = Fleet(), GridIndex()
    fleet.presence("cew", Presence(online=True, device_kind=DeviceKind.CEW), T0)
    for n in range(CITY + SCENE):
        device_id = f"bwc-{n}"
        far = n < CITY
        dist = rng.uniform(20.0, 5_000.0) if far else rng.uniform(0.0, 20.0)
        lat, lon = destination(*CENTER, rng.uniform(0.0, 360.0), dist)
        fleet.presence(device_id, Presence(online=True, device_kind=DeviceKind.BODY_CAM), T0)
        index.upsert(device_id, lat, lon, rng.uniform(0.0, 8.0), T0 - rng.uniform(0.0, 12.0))
    return fleet, index


def _per_call_us(fn: Callable[[], object]) -> float:
    """Median over ``ROUNDS`` of the mean of ``REPEAT`` calls, in microseconds."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(REPEAT):
            fn()
        samples.append((time.perf_counter() - start) / REPEAT * 1e6)
    return statistics.median(samples)


def main() -> None:
    fleet, index = _fleet()
    rule = DEFAULT_RULES.get("taser_draw")
    assert rule is not None
    event = Event(eid="e", type="taser_draw", ts=T0, lat=CENTER[0], lon=CENTER[1], acc=3.0)

    def planner(policy: InclusionPolicy) -> Callable[[], Plan]:
        return lambda: plan_activation(
            event=event, source="cew", rule=rule, fleet=fleet, index=index, policy=policy
        )

    before_policy = _RadiusOnly(mode=InclusionMode.CENTRE)
    now_policy = InclusionPolicy(mode=InclusionMode.CENTRE)
    plan_before, plan_now = planner(before_policy)(), planner(now_policy)()
    before, now = _per_call_us(planner(before_policy)), _per_call_us(planner(now_policy))
    inclusive = _per_call_us(planner(InclusionPolicy()))
    decisions = plan_now.decisions
    record = _per_call_us(lambda: left_out_of(decisions))
    rows_before = len(plan_before.decisions)
    lines = (
        f"fleet {CITY + SCENE} cameras, {SCENE} within 20 m of the event",
        f"centre, search to radius only    {before:8.1f} us/plan  {rows_before} rows",
        f"centre, search radius + margin   {now:8.1f} us/plan  {len(decisions)} rows",
        f"inclusive, radius + margin       {inclusive:8.1f} us/plan",
        f"ratio centre now/before          {now / before:8.2f}",
        f"record left-out list (persister) {record:8.1f} us, after the commands left",
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
