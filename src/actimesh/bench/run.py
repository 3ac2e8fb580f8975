"""One benchmark run, and the sweep: the orchestration of broker, engine and load.

A run, all on loopback, every part in its own process:

1. a managed Mosquitto (the production configuration, persistence off): secured, with
   the engine logged in as ``svc-engine`` under its ACL, and the load generator, probe,
   echo client and plain subscriber as ``svc-loadgen``, the one account whose ACL may
   write every device's topics (it plays the whole fleet over a few connections);
2. the engine (:mod:`.engine_proc`), the echo client (:mod:`.echo`), the plain subscriber
   (:mod:`.plain`), the probe (:mod:`.probe`) and the load generator (:mod:`.loadgen`);
3. *presence*: every device announces itself, in chunks the engine's control link keeps
   up with, until the engine knows the whole fleet;
4. *steady*: every device reports at ``rate_hz`` for the warm-up and the measured phase;
   during the phase the probe fires ``triggers_per_s`` triggers and as many echo
   requests, interleaved, and times what the scene cameras receive. Engine and broker
   CPU and the engine's memory are read from /proc around the phase;
5. *floods*: the same prepared telemetry frames flat out, first to the plain subscriber
   (the broker's delivery rate), then to the engine (its ingest), with every message
   accounted for; with ``search`` also the highest paced rate each takes without loss;
6. *naive*: the geopy linear scan timed against the grid index on the same positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from actimesh.bench.procs import BenchError, Worker, WorkerPool, proc_sample
from actimesh.bench.report import bench_report, latency_figures, ratio
from actimesh.bench.settings import BenchSettings
from actimesh.bench.trace import paths
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.dispatch.settings import DispatchSettings
from actimesh.private import write_private
from actimesh.security.acl import LOADGEN_ACCOUNT, SERVICE_ENGINE, AclPolicy
from actimesh.security.provision import prepare_broker
from actimesh.security.registry import SECRETS_DIR
from actimesh.stats import percentile

__all__ = [
    "Phases",
    "make_progress",
    "poll_until",
    "probe_figures",
    "run_bench",
    "stream_sent",
    "until_steady",
]

AGENCY = "bench"
ECHO_AGENCY = "echo1"  # same length as AGENCY: same topic sizes on both paths
PLAIN_AGENCY = "plain"
_PRESENCE_CHUNK = 1_000
_POLL_S = 0.05
_PACED_STEPS = 5
_T = TypeVar("_T")


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


class Phases:
    """Progress bars for the phases of one run."""

    def __init__(self, progress: Progress, devices: int) -> None:
        self.progress = progress
        self.devices = devices
        self.current: TaskID | None = None

    @contextlib.contextmanager
    def phase(self, name: str, total: float) -> Iterator[Callable[[float, str], None]]:
        task = self.progress.add_task(f"{self.devices:>7,} · {name}", total=total, note="")

        def update(done: float, note: str = "") -> None:
            self.progress.update(task, completed=min(done, total), note=note)

        try:
            yield update
            self.progress.update(task, completed=total)
        finally:
            self.progress.stop_task(task)


async def poll_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = _POLL_S
) -> None:
    """Await ``check()`` (a coroutine returning truthy when done) until true or timeout."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - other processes' counters, over RPC
                await asyncio.sleep(interval)
    except TimeoutError as exc:
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}") from exc


async def stream_sent(loadgen: Worker, stream_s: float) -> int:
    """Wait for the load generator's telemetry stream to end; how many it sent."""

    async def stream_done() -> bool:
        return not (await loadgen.call("status"))["streaming"]

    await poll_until(stream_done, timeout=stream_s + 30, what="the telemetry stream to end")
    return int((await loadgen.call("status"))["sent"])


async def until_steady(read: Callable[[], Awaitable[_T]], *, what: str) -> _T:
    """Read a counter of another process until four reads in a row agree; the last."""
    seen: list[_T] = []

    async def steady() -> bool:
        seen.append(await read())
        return len(seen) > 3 and seen[-1] == seen[-4]

    await poll_until(steady, timeout=30, what=what)
    return seen[-1]


def probe_figures(r: dict[str, Any]) -> dict[str, Any]:
    """The probe's result as report figures: both paths' latencies and their ratios,
    and what was missing."""
    out: dict[str, Any] = {}
    trig, echo = r["trigger_ms"], r["echo_ms"]
    out.update(latency_figures("trigger_to_command", trig))
    out.update(latency_figures("broker_two_hop", echo))
    out["p99_ratio_vs_broker"] = ratio(
        out["trigger_to_command_p99_ms"], out["broker_two_hop_p99_ms"]
    )
    out["p50_ratio_vs_broker"] = ratio(
        out["trigger_to_command_p50_ms"], out["broker_two_hop_p50_ms"]
    )
    out["triggers"] = r["triggers"]
    out["commands_expected"] = r["triggers"] * r["expected_per_trigger"]
    out["commands_received"] = len(trig)
    out["commands_missing"] = r["commands_missing"]
    out["echo_missing"] = r["echo_missing"]
    out["late_trigger_sends"] = r["late_sends"]
    out["event_payload_bytes"] = r["event_bytes"]
    out["command_payload_bytes"] = r["command_bytes"]
    out["samples"] = {
        "trigger_to_command_ms": [round(x, 4) for x in trig],
        "broker_two_hop_ms": [round(x, 4) for x in echo],
    }
    return out


class _Run:
    def __init__(
        self,
        s: BenchSettings,
        broker: ManagedMosquitto,
        workers: dict[str, Worker],
        phases: Phases,
    ) -> None:
        self.s = s
        self.broker = broker
        self.w = workers
        self.phases = phases
        self.out: dict[str, Any] = {}

    async def engine_stats(self) -> dict[str, Any]:
        return await self.w["engine"].call("stats")

    # ------------------------------------------------------------------ phases
    async def presence(self) -> None:
        s, loadgen = self.s, self.w["loadgen"]
        sent = 0
        with self.phases.phase("presence", s.devices) as update:
            for start in range(0, s.devices, _PRESENCE_CHUNK):
                reply = await loadgen.call(
                    "presence", agency=AGENCY, start=start, count=_PRESENCE_CHUNK
                )
                sent += int(reply["sent"])
                # Pace to the engine's control link (bounded queue): wait for it to catch up.
                target = sent - _PRESENCE_CHUNK // 2

                async def caught_up(target: int = target) -> bool:
                    presence = int((await self.engine_stats())["presence"])
                    update(min(presence, s.devices), f"{presence:,} known")
                    return presence >= target

                await poll_until(caught_up, timeout=60, what="the engine to take presence")

            async def all_known() -> bool:
                return int((await self.engine_stats())["presence"]) >= sent

            await poll_until(all_known, timeout=60, what="the engine to know every device")
        self.out["presence_sent"] = sent

    async def steady(self) -> None:
        s, engine, loadgen = self.s, self.w["engine"], self.w["loadgen"]
        rate = s.telemetry_rate
        stream_s = s.warmup_s + s.duration_s + 1.0
        await self._prepare_motion(stream_s)
        await loadgen.call(
            "stream", agency=AGENCY, rate=rate, duration_s=stream_s, nice=s.loadgen_nice
        )
        await self._warm_up()
        await engine.call("queries")  # discard warm-up samples
        if s.trace:
            await engine.call("trace")  # and the loop lag of presence and warm-up
        # Memory per tracked device: every device known and indexed, no trigger yet (the
        # activations' own state, ledger cache and delivery tracking are not per device).
        tracked_rss = proc_sample(engine.pid)[1]
        self.out["engine_rss_tracked_bytes"] = tracked_rss
        self.out["rss_bytes_per_device"] = (
            tracked_rss - self.out["engine_rss_base_bytes"]
        ) / s.devices
        pids = {"engine": engine.pid, "loadgen": loadgen.pid}
        if self.broker.pid is not None:
            pids["broker"] = self.broker.pid
        before = {k: proc_sample(p) for k, p in pids.items()}
        t0 = time.monotonic()
        probe = asyncio.create_task(
            self.w["probe"].call(
                "run", rate=s.triggers_per_s, duration_s=s.duration_s, timeout=s.duration_s + 30
            )
        )
        try:
            with self.phases.phase("steady: triggers under load", s.duration_s) as update:
                while not probe.done():
                    await asyncio.wait({probe}, timeout=0.5)
                    st = await self.engine_stats()
                    note = f"{st['activations']:,} activations · {st['telemetry']:,} telemetry"
                    update(time.monotonic() - t0, note)
        finally:
            if not probe.done():  # cancelled (Ctrl-C) or failed: take the call down with us
                probe.cancel()
                # Waited, not awaited: its CancelledError or BenchError is not ours, and
                # suppressing CancelledError here would swallow our own cancel too.
                await asyncio.wait([probe])
        result = probe.result()
        after = {k: proc_sample(p) for k, p in pids.items()}
        wall = time.monotonic() - t0
        for key in pids:
            self.out[f"{key}_cpu_percent"] = 100.0 * (after[key][0] - before[key][0]) / wall
        self.out["engine_rss_bytes"] = after["engine"][1]
        self.out["engine_rss_mb"] = after["engine"][1] / 1e6
        queries = (await engine.call("queries"))["query_us"]
        self.out["query_p50_us"] = percentile(queries, 50)
        self.out["query_p99_us"] = percentile(queries, 99)
        self.out["queries_timed"] = len(queries)
        self._latencies(result)
        if s.trace:
            await self._trace(result)
        await self._stream_accounting(stream_s)

    async def _warm_up(self) -> None:
        """Until the warm-up has passed and the engine has indexed every device."""
        s = self.s
        with self.phases.phase("warm-up", s.warmup_s) as update:
            began = time.monotonic()
            seen: dict[str, Any] = {}

            async def warm() -> bool:
                elapsed = time.monotonic() - began
                seen.update(await self.engine_stats())
                indexed = int(seen["indexed"])
                update(elapsed, f"{indexed:,} indexed")
                return elapsed >= s.warmup_s and indexed >= s.devices

            try:
                await poll_until(
                    warm,
                    timeout=s.warmup_s + 2 / s.rate_hz + 60,
                    what="every device to be indexed",
                )
            except BenchError as exc:
                # Say why: on a loaded machine the engine sheds telemetry, and a standing
                # motion-scaled device sends again only at its heartbeat.
                raise BenchError(
                    f"{exc} ({seen.get('indexed', 0):,} of {s.devices:,} indexed; the "
                    f"engine shed {seen.get('telemetry_dropped', 0):,} telemetry messages)"
                ) from exc

    async def _prepare_motion(self, stream_s: float) -> None:
        """Motion-scaled telemetry: each device's reports decided ahead (bench/motion.py)."""
        if self.s.telemetry != "motion":
            return
        with self.phases.phase("motion-scaled reports, decided ahead", 1):
            reply = await self.w["loadgen"].call(
                "prepare_motion", rate=self.s.telemetry_rate, duration_s=stream_s, timeout=900
            )
        self.out["motion"] = {k: v for k, v in reply.items() if k not in ("id", "ok")}

    async def _trace(self, probe: dict[str, Any]) -> None:
        """The trigger and echo paths split hop by hop (:mod:`.trace`)."""
        reply = await self.w["engine"].call("trace")
        echo = (await self.w["echo"].call("trace"))["stamps"]
        self.out["trace"] = paths(
            probe, reply["stamps"], echo, reply["loop_lag_ms"], reply.get("gc", [])
        )

    async def _stream_accounting(self, stream_s: float) -> None:
        """Once the stream has ended: was every telemetry message sent also indexed?"""
        sent = await stream_sent(self.w["loadgen"], stream_s)
        status = await self.w["loadgen"].call("status")

        async def engine_telemetry() -> int:
            return int((await self.engine_stats())["telemetry"])

        await until_steady(engine_telemetry, what="the engine to finish the stream")
        st = await self.engine_stats()
        self.out["telemetry_sent"] = sent
        self.out["telemetry_sent_msgs_per_s"] = sent / stream_s
        self.out["telemetry_skipped_by_loadgen"] = int(status.get("skipped", 0))
        self.out["telemetry_stream_lag_s"] = float(status.get("lag_s", 0.0))
        # The load generator's priority during the stream (bench/priority.py): a figure
        # of the run, so a report says whether it competed with the measured parts.
        priority = status.get("priority") or {"nice": 0, "how": "none", "restored": True}
        self.out["loadgen_priority"] = priority
        self.out["loadgen_nice"] = int(priority["nice"])
        self.out["telemetry_ingested"] = int(st["telemetry"])
        self.out["telemetry_ingested_msgs_per_s"] = int(st["telemetry"]) / stream_s
        self.out["telemetry_dropped"] = sent - int(st["telemetry"])
        self.out["telemetry_rejected"] = st["rejected"]
        # Where the dropped ones went (bench --overload reports the same, hop by hop):
        # never written (the broker's TCP back-pressure held the load generator), not
        # delivered by the broker, or dropped oldest-first in the engine's backlog.
        skipped = int((await self.w["loadgen"].call("status"))["skipped"])
        self.out["telemetry_shed"] = {
            "load_generator_behind": skipped,
            "broker_not_delivered": sent - int(st["telemetry_received"]),
            "engine_backlog_oldest": int(st["telemetry_dropped"]),
            "engine_superseded": int(st["telemetry_superseded"]),
        }
        self.out["cameras_left_out"] = st["left_out"]
        self.out["events_without_position"] = st["events_without_position"]
        self.out["fleet_known"] = st["fleet"]

    def _latencies(self, r: dict[str, Any]) -> None:
        self.out.update(probe_figures(r))

    async def _flood(self, target: str, count: int, rate: float | None) -> dict[str, Any]:
        """One flood to ``plain`` or ``engine``; receiver rate and loss, CPU of each part."""
        loadgen = self.w["loadgen"]
        receiver = self.w[target]
        agency = PLAIN_AGENCY if target == "plain" else AGENCY
        await loadgen.call("prepare", agency=agency, count=count, timeout=120)
        await receiver.call("arm", expected=count, idle_s=1.0, timeout_s=600.0)
        pids = {"receiver": receiver.pid, "loadgen": loadgen.pid}
        if self.broker.pid is not None:
            pids["broker"] = self.broker.pid
        before = {k: proc_sample(p)[0] for k, p in pids.items()}
        t0 = time.monotonic()
        sent = await loadgen.call("flood", agency=agency, count=count, rate=rate, timeout=600)
        got = await receiver.call("collect", idle_s=1.0, timeout_s=600.0, timeout=620)
        wall = time.monotonic() - t0
        after = {k: proc_sample(p)[0] for k, p in pids.items()}
        span = float(got["last"]) - float(got["first"])
        received = int(got["count"])
        return {
            "sent": int(sent["sent"]),
            "send_s": float(sent["seconds"]),
            "received": received,
            "lost": int(sent["sent"]) - received,
            "dropped_in_engine": int(got.get("dropped", 0)),
            "msgs_per_s": (received - 1) / span if span > 0 else float("nan"),
            "cpu_percent": {k: 100.0 * (after[k] - before[k]) / wall for k in pids},
        }

    async def floods(self) -> None:
        """Broker alone, flat out; then the engine, paced at that rate (stepping down 10 %
        at a time while anything is lost): what it sustains with nothing dropped."""
        s = self.s
        plain_runs: list[dict[str, Any]] = []
        engine_runs: list[dict[str, Any]] = []
        with self.phases.phase("floods: broker alone, engine", 3 * s.flood_rounds) as update:
            for k in range(s.flood_rounds):
                plain_runs.append(await self._flood("plain", s.flood_messages, None))
                update(3 * k + 1, f"broker {plain_runs[-1]['msgs_per_s']:,.0f}/s")
            broker_rate = statistics.median(r["msgs_per_s"] for r in plain_runs)
            flat = await self._flood("engine", s.flood_messages, None)
            update(3 * s.flood_rounds - 1, f"engine flat out {flat['msgs_per_s']:,.0f}/s")
            for step in range(_PACED_STEPS):
                offered = broker_rate * (1.0 - 0.1 * step)
                paced = await self._flood("engine", s.flood_messages, offered)
                engine_runs.append({"offered": offered, **paced})
                update(
                    3 * s.flood_rounds,
                    f"engine {paced['msgs_per_s']:,.0f}/s, lost {paced['lost']:,}",
                )
                if paced["lost"] == 0:
                    break
        best = engine_runs[-1]
        self.out["flood_messages"] = s.flood_messages
        self.out["broker_delivery_msgs_per_s"] = broker_rate
        self.out["broker_delivery_lost"] = sum(r["lost"] for r in plain_runs)
        self.out["ingest_msgs_per_s"] = best["msgs_per_s"]
        self.out["ingest_offered_msgs_per_s"] = best["offered"]
        self.out["ingest_dropped"] = best["lost"]
        self.out["ingest_ratio_vs_broker"] = ratio(best["msgs_per_s"], broker_rate)
        self.out["ingest_flat_out_msgs_per_s"] = flat["msgs_per_s"]
        self.out["ingest_flat_out_lost"] = flat["lost"]
        self.out["floods"] = {
            "plain": plain_runs,
            "engine_flat_out": flat,
            "engine_paced": engine_runs,
        }

    async def search(self) -> None:
        """Binary search of the highest paced rate taken with nothing lost, per receiver."""
        s = self.s
        for target, key in (
            ("plain", "broker_max_msgs_per_s"),
            ("engine", "ingest_max_msgs_per_s"),
        ):
            flat_out = self.out["broker_delivery_msgs_per_s"]
            lo, hi = 0.0, 1.3 * max(flat_out, self.out["ingest_msgs_per_s"])
            steps: list[dict[str, Any]] = []
            with self.phases.phase(f"search: {target}", 6) as update:
                for step in range(6):
                    mid = (lo + hi) / 2
                    count = max(1000, int(mid * s.search_step_s))
                    r = await self._flood(target, count, mid)
                    # Sustained: nothing lost, and the receiver kept pace with the sender.
                    ok = r["lost"] == 0 and r["msgs_per_s"] >= 0.97 * mid
                    steps.append({"offered": mid, **r, "sustained": ok})
                    lo, hi = (mid, hi) if ok else (lo, mid)
                    update(step + 1, f"{lo:,.0f} ok")
            self.out[key] = lo
            self.out[f"{key.removesuffix('_msgs_per_s')}_steps"] = steps
        self.out["ingest_max_ratio_vs_broker"] = ratio(
            self.out["ingest_max_msgs_per_s"], self.out["broker_max_msgs_per_s"]
        )

    async def naive(self, pool: WorkerPool, base: dict[str, Any]) -> None:
        s = self.s
        with self.phases.phase("naive geopy scan vs grid", 1) as update:
            worker = await pool.spawn("naive", base)
            await worker.call("ping", timeout=120)
            r = await worker.call(
                "run", naive_queries=s.naive_queries, grid_queries=s.grid_queries, timeout=900
            )
            update(1, f"{r['naive_scan_ratio']:,.0f}x")
            await worker.stop()
        self.out["index_query_p50_us"] = percentile(r["grid_us"], 50)
        self.out["index_query_p99_us"] = percentile(r["grid_us"], 99)
        self.out["naive_scan_median_ms"] = r["naive_median_us"] / 1000.0
        self.out["naive_scan_ratio"] = r["naive_scan_ratio"]
        self.out["naive_mismatches"] = r["mismatches"]
        self.out["search_radius_m"] = r["search_radius_m"]


def _provision(root: Path) -> dict[str, list[str]]:
    """Accounts on the benchmark's broker; ``[username, password file]`` per worker kind."""
    provisioned = prepare_broker(
        root, AclPolicy(AGENCY, DispatchSettings().source_device), loadgen=True
    )
    secrets = root / SECRETS_DIR
    loadgen = secrets / f"{LOADGEN_ACCOUNT}.password"
    write_private(loadgen, provisioned.loadgen_login().password + "\n")
    return {
        "engine": [SERVICE_ENGINE, str(secrets / f"{SERVICE_ENGINE}.password")],
        "helpers": [LOADGEN_ACCOUNT, str(loadgen)],
    }


async def run_bench(s: BenchSettings, progress: Progress) -> dict[str, Any]:
    """One run; the figures as a JSON-ready dict (see :mod:`.report`)."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="actimesh-bench-") as tmp:
        root = Path(tmp)
        logins = await asyncio.to_thread(_provision, root)
        broker = ManagedMosquitto(
            MosquittoConfig(data_dir=root / "broker", port=free_port(), persistence=False)
        )
        lifetime = 3 * (s.duration_s + s.warmup_s) + s.devices / 500 + 1800
        base = {
            "host": broker.host,
            "port": broker.port,
            "devices": s.devices,
            "seed": s.seed,
            "agency": AGENCY,
            "echo_agency": ECHO_AGENCY,
            "plain_agency": PLAIN_AGENCY,
            "lifetime_s": lifetime,
            "logins": logins,
            "trace": s.trace,
        }
        async with broker, WorkerPool(root / "logs") as pool:
            spawned = await asyncio.gather(
                pool.spawn("engine", {**base, "run_dir": str(root / "engine")}),
                pool.spawn("echo", base),
                pool.spawn("plain", base),
                pool.spawn("probe", {**base, "acks": s.acks}),
                pool.spawn("loadgen", {**base, "publisher": s.publisher}),
            )
            workers = {w.role: w for w in spawned}
            await asyncio.gather(*(w.call("ping", timeout=120) for w in spawned))
            run = _Run(s, broker, workers, Phases(progress, s.devices))
            await asyncio.sleep(0.5)  # let the idle engine settle before its baseline
            run.out["engine_rss_base_bytes"] = proc_sample(workers["engine"].pid)[1]
            await run.presence()
            await run.steady()
            await run.floods()
            if s.search:
                await run.search()
            await run.naive(pool, base)
    return bench_report(s, run.out, started, publisher=s.publisher)


async def side_by_side_growth(
    s: BenchSettings, sizes: Sequence[int], progress: Progress
) -> dict[str, Any]:
    """Index query latency of every sweep size, timed side by side in one fresh process
    (:mod:`.scaling`): the growth target's figure."""
    phases = Phases(progress, max(sizes))
    with tempfile.TemporaryDirectory(prefix="actimesh-bench-") as tmp:
        async with WorkerPool(Path(tmp) / "logs") as pool:
            with phases.phase("index queries, every size side by side", 1) as update:
                worker = await pool.spawn("scaling", {"seed": s.seed, "lifetime_s": 1800})
                await worker.call("ping", timeout=120)
                reply = await worker.call(
                    "run", sizes=list(sizes), queries=s.growth_queries, timeout=900
                )
                side = {k: v for k, v in reply.items() if k not in ("id", "ok")}
                update(1, f"p99 {side['p99_growth']:.2f}x")
                await worker.stop()
    return side
