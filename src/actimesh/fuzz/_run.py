"""A fuzz run: its settings, the loop that feeds each case to the targets, and the report."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from actimesh.broker.topics import Topics
from actimesh.fuzz._cases import Case
from actimesh.fuzz._codec import check_codec
from actimesh.fuzz._findings import Finding, _describe
from actimesh.fuzz._generators import CaseGenerator
from actimesh.fuzz._intake import _Clock, _EngineDriver, _Intake, _IntakeCounts
from actimesh.fuzz._protocols import PARSERS, ProtocolChecker, protocol_case
from actimesh.fuzz._scenario import AGENCY, EPOCH, INBOUND
from actimesh.ledger import open_ledger

Target = Literal["codec", "intake", "protocols", "all"]


@dataclass(frozen=True, slots=True)
class FuzzSettings:
    """One fuzz run."""

    count: int = 1_000_000
    seed: int = 0
    target: Target = "all"
    #: Cases before memory counts as warmed up (None: a tenth of the run, at least 2,000).
    warmup: int | None = None
    #: How much higher memory may peak in the second half after warm-up than the first.
    growth_limit_bytes: int = 16 * 2**20
    #: Measure Python allocations (precise, ~5x slower) instead of the process RSS.
    tracemalloc: bool = False
    #: Where the ledger goes (default: a temporary folder, removed afterwards).
    workdir: Path | None = None
    #: Run only this case, to reproduce a finding.
    replay: int | None = None
    #: How long the engine may take to write and acknowledge what it was fed.
    settle_s: float = 60.0


@dataclass(slots=True)
class FuzzReport:
    """What a fuzz run did and found."""

    settings: FuzzSettings
    elapsed_s: float = 0.0
    cases: int = 0
    generation_s: float = 0.0
    generators: Counter[str] = field(default_factory=Counter)
    codec_cases: int = 0
    codec_s: float = 0.0
    codec_outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    codec_slowest_us: float = 0.0
    codec_slowest_index: int | None = None
    intake: _IntakeCounts | None = None
    #: The device-protocol parsers (adapters/): inputs, time, and outcomes by parser.
    protocol_cases: int = 0
    protocol_s: float = 0.0
    protocol_outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    engine_rejected: dict[str, int] = field(default_factory=dict)
    deadletters: dict[str, int] = field(default_factory=dict)
    structures: dict[str, int] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    memory_method: str = "rss"
    #: ``(cases done, bytes)``: RSS or traced Python memory.
    memory_samples: list[tuple[int, int]] = field(default_factory=list)
    memory_growth: int = 0
    replayed: Case | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def memory_peak(self) -> int:
        return max((b for _, b in self.memory_samples), default=0)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        s = self.settings
        step = max(1, len(self.memory_samples) // 50)
        out: dict[str, Any] = {
            "ok": self.ok,
            "seed": s.seed,
            "count": s.count,
            "target": s.target,
            "cases": self.cases,
            "elapsed_s": round(self.elapsed_s, 3),
            "cases_per_s": round(_rate(self.cases, self.elapsed_s), 1),
            "generated_per_s": round(_rate(self.cases, self.generation_s), 1),
            "generators": dict(sorted(self.generators.items())),
            "memory": {
                "method": self.memory_method,
                "peak_bytes": self.memory_peak,
                "growth_bytes": self.memory_growth,
                "limit_bytes": s.growth_limit_bytes,
                "samples": self.memory_samples[::step],
            },
            "findings_total": len(self.findings),
            "findings": [dataclasses.asdict(f) for f in self.findings[:100]],
        }
        if self.codec_cases:
            out["codec"] = {
                "payloads": self.codec_cases,
                "decodes": self.codec_cases * (len(INBOUND) + 1),
                "seconds": round(self.codec_s, 3),
                "payloads_per_s": round(_rate(self.codec_cases, self.codec_s), 1),
                "slowest_us": round(self.codec_slowest_us, 1),
                "slowest_case": self.codec_slowest_index,
                "outcomes": {k: dict(sorted(v.items())) for k, v in self.codec_outcomes.items()},
            }
        if self.protocol_cases:
            out["protocols"] = {
                "inputs": self.protocol_cases,
                "seconds": round(self.protocol_s, 3),
                "inputs_per_s": round(_rate(self.protocol_cases, self.protocol_s), 1),
                "outcomes": {k: dict(sorted(v.items())) for k, v in self.protocol_outcomes.items()},
            }
        if self.intake is not None:
            i = self.intake
            out["intake"] = {
                "inputs": i.cases,
                "control_messages": i.control,
                "seconds": round(i.seconds, 3),
                "inputs_per_s": round(_rate(i.cases, i.seconds), 1),
                "slowest_us": round(i.slowest_us, 1),
                "slowest_case": i.slowest_index,
                "expected": dict(sorted(i.expected.items())),
                "rejected": dict(sorted(i.rejected.items())),
                "policy_rejections": dict(sorted(i.policy.items())),
                "engine_stats_rejected": dict(sorted(self.engine_rejected.items())),
                "deadletters": dict(sorted(self.deadletters.items())),
                "accepted": dict(sorted(i.accepted.items())),
                "ignored": i.ignored,
                "engine_state": self.structures,
                "final_activation": self.final,
            }
        return out

    def lines(self) -> Iterator[str]:
        """The report as text, one line at a time."""
        s = self.settings
        yield (
            f"fuzz seed {s.seed}, target {s.target}: {self.cases:,} cases in "
            f"{self.elapsed_s:.1f} s ({_rate(self.cases, self.elapsed_s):,.0f}/s; "
            f"generated at {_rate(self.cases, self.generation_s):,.0f}/s)"
        )
        if self.replayed is not None:
            c = self.replayed
            yield f"case {c.index}: {c.generator} {c.model.kind} on {c.topic_text[:120]}"
            yield f"  payload ({len(c.payload)} bytes) {c.payload[:512].hex()}"
        if self.codec_cases:
            yield (
                f"codec: {self.codec_cases:,} payloads x {len(INBOUND) + 1} decoders, "
                f"{_rate(self.codec_cases, self.codec_s):,.0f} payloads/s, slowest "
                f"{self.codec_slowest_us:,.0f} µs (case {self.codec_slowest_index})"
            )
            for model, outcomes in self.codec_outcomes.items():
                yield f"  {model:<9} " + _counts(outcomes)
        if self.protocol_cases:
            yield (
                f"protocols: {self.protocol_cases:,} inputs to {len(PARSERS)} parsers, "
                f"{_rate(self.protocol_cases, self.protocol_s):,.0f}/s"
            )
            for parser, outcomes in self.protocol_outcomes.items():
                yield f"  {parser:<12} " + _counts(outcomes)
        if self.intake is not None:
            i = self.intake
            yield (
                f"intake: {i.cases:,} inputs ({i.control:,} control, "
                f"{i.cases - i.control:,} telemetry), {_rate(i.cases, i.seconds):,.0f}/s, "
                f"slowest {i.slowest_us:,.0f} µs (case {i.slowest_index})"
            )
            yield f"  accepted  {_counts(i.accepted)}; ignored {i.ignored:,}"
            yield f"  rejected  {_counts(i.rejected)}"
            if i.policy:
                yield f"  of which refused by policy: {_counts(i.policy)}"
            yield (
                f"  engine.stats.rejected {sum(self.engine_rejected.values()):,}, "
                f"dead letters {sum(self.deadletters.values()):,}"
            )
            yield f"  engine state after: {_counts(self.structures)}"
            verdict = "activated" if self.final.get("ok") else "FAILED"
            yield f"  final taser draw: {verdict} {', '.join(self.final.get('commanded', []))}"
        yield (
            f"memory ({self.memory_method}): peak {self.memory_peak / 2**20:.1f} MiB, "
            f"second half of the run vs first {self.memory_growth / 2**20:+.2f} MiB "
            f"(limit {s.growth_limit_bytes / 2**20:.0f} MiB)"
        )
        yield f"findings: {len(self.findings):,}" if self.findings else "findings: none"
        for finding in self.findings[:20]:
            yield f"  {finding.line(s.seed)}"
            if finding.payload_hex:
                yield f"    payload {finding.payload_hex[:160]}"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _counts(counts: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def _rss() -> int:
    try:
        with Path("/proc/self/statm").open("rb") as statm:
            return int(statm.read().split()[1]) * 4096
    except OSError:  # not Linux: the peak so far is all there is
        import resource  # noqa: PLC0415

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _growth(samples: list[tuple[int, int]], warmup: int) -> int:
    """How much higher memory peaked in the second half after warm-up than the first."""
    after = [b for n, b in samples if n >= warmup]
    if len(after) < 4:
        return 0
    half = len(after) // 2
    return max(after[half:]) - max(after[:half])


@contextlib.contextmanager
def _quiet_engine(findings: list[Finding]) -> Iterator[None]:
    """Each rejection logs a warning; a million of them would bury the report. Errors
    the engine logs (a failure it caught) are findings."""

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(findings) < 1000:
                detail = record.getMessage()
                if record.exc_info is not None and record.exc_info[1] is not None:
                    detail += f": {_describe(record.exc_info[1])}"
                findings.append(Finding("intake", "logged_error", detail[:300]))

    logger = logging.getLogger("actimesh")
    saved = logger.level, logger.propagate
    handler = Catch(logging.ERROR)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _scratch(stack: contextlib.ExitStack, workdir: Path | None) -> Path:
    if workdir is not None:
        return workdir
    # The ledger is scratch: in RAM when there is a tmpfs, so fsyncs do not set the pace.
    shm = Path("/dev/shm")  # noqa: S108
    where = str(shm) if shm.is_dir() else None
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-", dir=where)))


async def run_fuzz(
    settings: FuzzSettings, progress: Callable[[int, float], None] | None = None
) -> FuzzReport:
    """Run the fuzz ``settings`` describe; ``progress(cases_done, seconds)`` now and then."""
    method = "tracemalloc" if settings.tracemalloc else "rss"
    report = FuzzReport(settings, memory_method=method)
    with contextlib.ExitStack() as stack:
        workdir = _scratch(stack, settings.workdir)
        if settings.tracemalloc:
            tracemalloc.start()
            stack.callback(tracemalloc.stop)
        stack.enter_context(_quiet_engine(report.findings))
        await _run(settings, report, workdir, progress)
    return report


async def _run(
    settings: FuzzSettings,
    report: FuzzReport,
    workdir: Path,
    progress: Callable[[int, float], None] | None,
) -> None:
    topics = Topics(AGENCY)
    generator = CaseGenerator(settings.seed, topics)
    codec = settings.target in ("codec", "all")
    indexes = range(settings.count) if settings.replay is None else [settings.replay]
    warmup = settings.warmup if settings.warmup is not None else max(2000, len(indexes) // 10)
    sample_every = max(100, len(indexes) // 500)
    report.codec_outcomes = {m.kind: Counter() for m in INBOUND} if codec else {}
    protocols = _protocols(settings, report)

    def memory() -> int:
        return tracemalloc.get_traced_memory()[0] if settings.tracemalloc else _rss()

    clock = _Clock(EPOCH)
    async with open_ledger(workdir / "ledger.sqlite3") as ledger:
        driver = _EngineDriver.build(topics, ledger, clock)
        engine = driver.engine
        intake = None
        if settings.target in ("intake", "all"):
            intake = _Intake(driver, settings.seed, report.findings)
        started = time.perf_counter()
        async with driver.running():
            for n, index in enumerate(indexes):
                t0 = time.perf_counter()
                case = generator.case(index)
                report.generation_s += time.perf_counter() - t0
                report.generators[case.generator] += 1
                if codec:
                    _codec_case(case, report)
                if protocols is not None:
                    _protocol_case(protocols, settings.seed, index, report)
                if intake is not None:
                    await intake.feed(case)
                    if n % 64 == 0:  # let the persister, ack writer and tracker run
                        await driver.catch_up()
                if n % sample_every == 0:
                    report.memory_samples.append((n, memory()))
                    if progress is not None:
                        progress(n, time.perf_counter() - started)
                if settings.replay is not None:
                    report.replayed = case
            report.cases = len(indexes)
            report.memory_samples.append((report.cases, memory()))
            if intake is not None:
                await intake.settle(settings.settle_s)
                intake.check_totals()
                report.structures = intake.check_bounds(report.cases)
                report.final = await intake.final_activation(settings.settle_s)
                report.intake = intake.counts
                report.engine_rejected = dict(engine.stats.rejected)
                report.deadletters = dict(driver.outputs.deadletters)
        report.elapsed_s = time.perf_counter() - started
    report.memory_growth = _growth(report.memory_samples, warmup)
    if settings.replay is None and report.memory_growth > settings.growth_limit_bytes:
        report.findings.append(
            Finding(
                "memory",
                "growth",
                f"peak grew "
                f"{report.memory_growth / 2**20:.1f} MiB after warm-up (limit "
                f"{settings.growth_limit_bytes / 2**20:.0f} MiB)",
            )
        )


def _codec_case(case: Case, report: FuzzReport) -> None:
    started = time.perf_counter()
    outcomes, problems = check_codec(case.payload)
    spent = time.perf_counter() - started
    report.codec_s += spent
    report.codec_cases += 1
    if spent * 1e6 > report.codec_slowest_us:
        report.codec_slowest_us, report.codec_slowest_index = spent * 1e6, case.index
    for kind, outcome in outcomes.items():
        report.codec_outcomes[kind][outcome] += 1
    for problem, detail in problems:
        report.findings.append(Finding.of("codec", problem, detail, case))


def _protocols(settings: FuzzSettings, report: FuzzReport) -> ProtocolChecker | None:
    """The protocols target's checker, if the run has that target."""
    if settings.target not in ("protocols", "all"):
        return None
    report.protocol_outcomes = {p: Counter() for p in PARSERS}
    return ProtocolChecker()


def _protocol_case(checker: ProtocolChecker, seed: int, index: int, report: FuzzReport) -> None:
    parser, mutation, payload = protocol_case(seed, index)
    started = time.perf_counter()
    outcome, problems = checker.check(parser, payload)
    report.protocol_s += time.perf_counter() - started
    report.protocol_cases += 1
    report.protocol_outcomes[parser][outcome] += 1
    for problem, detail in problems:
        report.findings.append(
            Finding(
                "protocols",
                problem,
                detail,
                index,
                mutation,
                parser,
                f"a {parser} input",
                payload[:65_536].hex(),
            )
        )
