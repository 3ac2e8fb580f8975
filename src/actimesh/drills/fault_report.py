"""How a fault drill counts, whatever the shape of the mesh: from the cameras and the
ledger, never from the engine's own counters.

For one scenario: triggers sent, activations in the ledger, camera activations expected
and recorded, the cameras' ``recording`` answers in the ledger, the shortest pre-roll,
duplicates (a second activation for one trigger, or a camera attaching one activation
twice), whether the ledger's chain verifies, and the time from the fault to the first
activation served after it (the first camera to start recording for a trigger raised
after the fault struck). Any loss or duplicate fails; answers missing from the ledger are
reported, not failed on yet (docs/SCALING.md).

A camera commanded in a follow-up activation (triggers/followup.py: its fix was stale
when the trigger was judged, its next one put it within) records for the follow-up's id,
not the trigger's: it counts as recording the trigger, since its command names the
trigger's source and event, and the follow-up's ledger row (``follows`` in its rule
document) is neither a duplicate nor a lost activation. Such cameras are counted apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from actimesh.audit import verify_ledger
from actimesh.broker.messages import AckStatus, activation_id
from actimesh.devices.camera_part import ReceivedCommand
from actimesh.drills.fault_fleet import PRE_ROLL_S, Burst, Fleet
from actimesh.errors import LedgerError
from actimesh.ledger import Ledger, open_ledger

__all__ = ["FaultReport", "FaultResult", "measure", "publish", "settle", "wait_for_answers"]

_SETTLE_TIMEOUT_S = 45.0
#: What an engine logs of an answer it did not write (triggers/answers.py).
_NOT_WRITTEN = " not written: "
_ANSWERS_TIMEOUT_S = 30.0


@dataclass(slots=True)
class FaultResult:
    name: str
    triggers: int = 0
    activations: int = 0
    expected: int = 0
    recorded: int = 0
    #: Expected cameras whose ``recording`` answer is in the ledger (the evidence of it).
    #: Reported, with :attr:`notes` for those missing, but not yet a failure: both
    #: shapes still lose some after a broker or node kill (docs/SCALING.md).
    answered: int = 0
    pre_roll_min: float = PRE_ROLL_S
    duplicates: int = 0
    ledger_ok: bool = False
    #: Cameras commanded on their fixes either side of a late trigger (``proximity_between``):
    #: how often the fault delayed a trigger past the cameras' telemetry.
    judged_between: int = 0
    #: Cameras commanded in follow-up activations, and how many follow-ups there were.
    follow_up_cameras: int = 0
    follow_ups: int = 0
    #: Seconds from the fault to the first camera recording for a trigger raised after it.
    recovery_s: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return (self.triggers - self.activations) + (self.expected - self.recorded)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.ledger_ok
            and self.pre_roll_min >= PRE_ROLL_S - 1e-6
            and not self.problems
        )


@dataclass(slots=True)
class FaultReport:
    results: list[FaultResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def _for(r: ReceivedCommand, aid: str) -> bool:
    """Whether command ``r`` serves the trigger of activation ``aid``: its own command,
    or a follow-up's (which names the trigger's source and event)."""
    return r.command.aid == aid or activation_id(r.command.src, r.command.eid) == aid


def _recording(fleet: Fleet, camera: str, aid: str) -> list[float]:
    """When ``camera`` answered ``recording`` to activation ``aid`` or one of its
    follow-ups (wall clock)."""
    return [
        r.received_at
        for r in fleet.cameras[camera].received
        if _for(r, aid) and r.result.status is AckStatus.RECORDING
    ]


async def settle(fleet: Fleet, burst: Burst, timeout_s: float = _SETTLE_TIMEOUT_S) -> None:
    """Until every trigger is confirmed and every expected camera is recording it (or
    ``timeout_s``: what is missing then is counted as lost)."""

    def done() -> bool:
        if any(cew.unconfirmed for cew in fleet.cews):
            return False
        return all(
            _recording(fleet, cam, aid)
            for aid, cew_id in burst.aids.items()
            for cam in fleet.expected[cew_id]
        )

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.1)


def _not_written(logs: Sequence[Path]) -> list[str]:
    """The engines' log lines saying an answer was not written (triggers/answers.py
    logs each, with why), each prefixed with its log's name."""
    found = []
    for path in logs:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace")
            found += [f"{path.stem}: {line}" for line in text.splitlines() if _NOT_WRITTEN in line]
    return found


def _what_engines_said(refusals: list[str], aid: str, camera: str) -> str:
    """What the engines logged of ``camera``'s answers to ``aid``."""
    said = []
    for line in refusals:
        at = line.find(f"{camera}'s ")
        if at >= 0 and aid in line:
            said.append(f"{line.split(':', 1)[0]}: {line[at:]}")
    return "; ".join(said[:2]) or "no engine logged refusing it"


async def _answers_in(
    store: Ledger,
    fleet: Fleet,
    burst: Burst,
    follow_ups: dict[str, list[str]],
    *,
    logs: Sequence[Path] = (),
    timeout_s: float = _ANSWERS_TIMEOUT_S,
) -> tuple[int, list[str]]:
    """How many expected cameras' ``recording`` answers the ledger holds, once all are
    there or after ``timeout_s`` (the engines write them after the cameras sent them),
    and, for the first few missing, what the ledger holds instead, what the camera
    sent and what the engines (their ``logs``) did with it."""
    wanted = {(aid, cam) for aid, cew in burst.aids.items() for cam in fleet.expected[cew]}
    found: set[tuple[str, str]] = set()
    held: dict[tuple[str, str], list[str]] = {}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:  # looked at once at least, however short the time
        held.clear()
        for aid in {aid for aid, _ in wanted - found}:
            rows = await store.acks(aid)
            for follow_up in follow_ups.get(aid, ()):
                rows += await store.acks(follow_up)
            for row in rows:
                held.setdefault((aid, row.device_id), []).append(row.status)
                if row.status == AckStatus.RECORDING.value:
                    found.add((aid, row.device_id))
        if wanted <= found or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.5)
    refusals = _not_written(logs) if wanted - found else []
    missing = [
        f"{cam}'s recording answer to {aid} is not in the ledger "
        f"(it holds: {', '.join(held.get((aid, cam), [])) or 'none'}; the camera "
        f"{_camera_says(fleet, cam)}; {_what_engines_said(refusals, aid, cam)})"
        for aid, cam in sorted(wanted - found)
    ]
    return len(wanted & found), missing[:5]


def _camera_says(fleet: Fleet, camera: str) -> str:
    """Whether ``camera`` still holds final answers the broker did not take."""
    agent = fleet.cameras[camera]
    waiting = agent.unsent_answers
    if waiting:
        return f"holds {waiting} answer(s) the broker has not taken"
    return "holds no unsent answer"


async def wait_for_answers(
    fleet: Fleet,
    burst: Burst,
    ledger: Path | str,
    agency: str,
    timeout_s: float = _ANSWERS_TIMEOUT_S,
) -> None:
    """Until the ledger at ``ledger`` holds every expected camera's ``recording`` answer
    (or ``timeout_s``). Called while the devices still run: a camera re-sends an answer
    its broker did not take, and answers again a command the engine re-sends for an
    answer that never arrived, only while it runs. Counting the answers after the
    devices had stopped missed every answer that needed either. A ledger that does not
    answer ends the wait: :func:`measure` then counts, and reports, what it holds."""
    with contextlib.suppress(LedgerError):
        async with open_ledger(ledger, agency=agency, create=False) as store:
            in_ledger = set(await store.activation_ids(limit=1_000_000))
            aids = set(burst.aids)
            unused = FaultResult("answers")  # measure() counts the follow-ups
            follow_ups = await _follow_ups(store, in_ledger - aids, aids, unused)
            await _answers_in(store, fleet, burst, follow_ups, timeout_s=timeout_s)


async def _follow_ups(
    store: Ledger, others: set[str], aids: set[str], result: FaultResult
) -> dict[str, list[str]]:
    """The follow-up activations among ``others`` (ledger rows that are not one of the
    triggers), by the trigger's activation; every other row is counted a duplicate."""
    follow_ups: dict[str, list[str]] = {}
    for other in sorted(others):
        found = await store.activation(other)
        follows = None if found is None else found[0].rule.get("follows")
        if found is not None and isinstance(follows, str) and follows in aids:
            follow_ups.setdefault(follows, []).append(other)
            result.follow_ups += 1
            result.follow_up_cameras += sum(1 for d in found[1] if d.commanded)
        else:
            result.duplicates += 1
    return follow_ups


async def measure(
    fleet: Fleet,
    burst: Burst,
    name: str,
    ledger: Path | str,
    agency: str,
    *,
    logs: Sequence[Path] = (),
) -> FaultResult:
    """Count scenario ``name`` from the cameras and the ledger at ``ledger`` (a SQLite
    file or a PostgreSQL URL holding ``agency``'s chain); ``logs``: the engines' logs,
    quoted for answers missing from the ledger."""
    aids = burst.aids
    result = FaultResult(name, triggers=len(aids))
    async with open_ledger(ledger, agency=agency, create=False) as store:
        in_ledger = set(await store.activation_ids(limit=1_000_000))
        result.activations = len(in_ledger & set(aids))
        # Every row must be one of our triggers or a follow-up of one: anything else is a
        # duplicate activation.
        follow_ups = await _follow_ups(store, in_ledger - set(aids), set(aids), result)
        # Waited for while the devices ran (wait_for_answers): what is missing now is.
        result.answered, result.notes = await _answers_in(
            store, fleet, burst, follow_ups, logs=logs, timeout_s=0.0
        )
        # Why the engine left a camera out, for any camera that did not record.
        decided: dict[tuple[str, str], str] = {}
        for aid in aids:
            found = await store.activation(aid)
            if found is None:
                continue
            row, decisions = found
            late = row.received_ts - row.event_ts
            result.judged_between += sum(1 for d in decisions if d.reason == "proximity_between")
            for d in decisions:
                # fix_age_s is event time minus fix time: negative, a fix after the event.
                age = "" if d.fix_age_s is None else f", fix age {d.fix_age_s:.1f} s"
                dist = "" if d.distance_m is None else f", {d.distance_m:.1f} m away"
                decided[aid, d.device_id] = (
                    f"{d.reason}{age}{dist}, event received {late:.1f} s after"
                )
    report = await asyncio.to_thread(verify_ledger, ledger, agency=agency)
    result.ledger_ok = report.ok
    if not report.ok:
        result.problems.append(report.summary())
    first_after: float | None = None
    for aid, cew_id in aids.items():
        for cam in sorted(fleet.expected[cew_id]):
            result.expected += 1
            got = [
                r
                for r in fleet.cameras[cam].received
                if _for(r, aid) and r.result.status is AckStatus.RECORDING
            ]
            if got:
                result.recorded += 1
                result.pre_roll_min = min(result.pre_roll_min, got[0].result.pre_roll_covered_s)
                fault_at = burst.fault_at
                if fault_at is not None and burst.raised_at[aid] >= fault_at:
                    at = got[0].received_at
                    first_after = at if first_after is None else min(first_after, at)
            elif len(result.problems) < 10:
                seen = [r.result.status.value for r in fleet.cameras[cam].received if _for(r, aid)]
                result.problems.append(
                    f"{cam} did not record {aid} (answers: {seen or 'none'}; engine's "
                    f"decision: {decided.get((aid, cam), 'none')})"
                )
    if first_after is not None and burst.fault_at is not None:
        result.recovery_s = first_after - burst.fault_at
    for agent in fleet.cameras.values():
        assert agent.camera is not None
        recording = agent.camera.recording
        if recording is not None:
            attached = [a.aid for a in recording.activations]
            result.duplicates += len(attached) - len(set(attached))
    return result


def _table(report: FaultReport, title: str) -> Table:
    table = Table(title=title)
    for col in (
        "scenario",
        "triggers",
        "activations",
        "cameras expected",
        "cameras recorded",
        "answers in ledger",
        "pre-roll min",
        "lost",
        "duplicated",
        "ledger",
        "fault → first activation",
        "result",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in report.results:
        table.add_row(
            r.name,
            str(r.triggers),
            str(r.activations),
            str(r.expected),
            str(r.recorded),
            str(r.answered),
            f"{r.pre_roll_min:.1f} s",
            str(r.lost),
            str(r.duplicates),
            "verified" if r.ledger_ok else "[red]FAILED[/red]",
            "-" if r.recovery_s is None else f"{r.recovery_s:.1f} s",
            "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]",
        )
    return table


def publish(console: Console, results: list[FaultResult], root: Path, title: str) -> FaultReport:
    """Print the table and every problem, write ``fault-drill.json`` under ``root``."""
    report = FaultReport(results)
    console.print(_table(report, title))
    for r in report.results:
        for problem in r.problems:
            console.print(f"[red]{r.name}: {problem}[/red]")
        if r.judged_between:
            console.print(
                f"[dim]{r.name}: {r.judged_between} cameras commanded on their fixes "
                "either side of a late trigger[/dim]"
            )
        if r.follow_ups:
            console.print(
                f"[dim]{r.name}: {r.follow_up_cameras} cameras commanded in {r.follow_ups} "
                "follow-up activations (stale at the trigger, within by their next fix)[/dim]"
            )
        for note in r.notes:
            console.print(f"[yellow]{r.name}: {note}[/yellow]")
    (root / "fault-drill.json").write_text(
        json.dumps([{**asdict(r), "lost": r.lost, "ok": r.ok} for r in results], indent=2)
    )
    console.print("[bold green]fault drill passed" if report.ok else "[bold red]fault drill FAILED")
    return report
