"""``actimesh bench --cluster``: the activation path through a 3-node NATS cluster,
against what the same cluster does without actimesh, in the same run.

The same processes as :mod:`.run` (load generator, probe, echo client, plain
subscriber, engines: :mod:`.worker`), on the cluster ``actimesh cluster up`` runs
(:class:`~actimesh.broker.nats.NatsCluster`, secured, with its auth callouts):

* node 1 (A): the devices. The load generator and the probe's trigger device speak
  MQTT 3.1.1 to its listener, as devices do, logged in as ``svc-loadgen``. Telemetry
  goes at QoS 0 (a core NATS message on the topic's subject), presence and events at
  QoS 1 (stored in the listener's JetStream stream, 3 replicas).
* node 2 (B): the probe's cameras (MQTT 3.1.1, QoS 1 subscriptions), and engine 2.
* node 3 (C): engine 1, the echo client, the plain subscriber.

**Latency.** A trigger goes device (A) → engine → camera (B); its baseline, an echo
request of the same size from the same connection, goes device (A) → echo client (C,
an MQTT 3.1.1 QoS 1 subscriber that answers one command-sized QoS 1 reply per scene
camera) → camera (B). Both cross the cluster twice, through JetStream at both hops
(the listener stores every QoS 1 message), with the same sizes, fan-out and
acknowledgements; only the engine differs. Trigger events are shared by the two
engines through one durable consumer, so each engine handles about half.

**Ingest.** Without geographic partitions every engine holds the whole fleet, so each
engine receives *all* telemetry: the figure is each engine's lossless rate while both
receive the same flood (the mesh keeps up at the lower of the two), beside a plain
native NATS subscriber's rate (:mod:`.natsplain`) for the same frames from the same
publisher.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from actimesh.bench.procs import Worker, WorkerPool, proc_sample
from actimesh.bench.report import bench_report, ratio
from actimesh.bench.run import (
    AGENCY,
    ECHO_AGENCY,
    PLAIN_AGENCY,
    Phases,
    poll_until,
    probe_figures,
    stream_sent,
    until_steady,
)
from actimesh.bench.settings import BenchSettings
from actimesh.bench.trace import paths
from actimesh.broker.nats import NatsAccess, NatsCluster, NatsNode, NatsUser, topic_to_subject
from actimesh.broker.nats.auth import ConnectionType, bcrypt_hash
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.dispatch.settings import DispatchSettings
from actimesh.private import write_private
from actimesh.security.acl import LOADGEN_ACCOUNT, SERVICE_ENGINE, AclPolicy
from actimesh.security.nats_access import registry_nats_access
from actimesh.security.provision import prepare_broker
from actimesh.security.registry import SECRETS_DIR, Registry

__all__ = ["PLAIN_ACCOUNT", "run_cluster_bench"]

#: The plain subscriber's native login: it may only subscribe to the plain agency's
#: telemetry (bench-only, like ``svc-loadgen``, in a throw-away registry).
PLAIN_ACCOUNT = "svc-bench-plain"
_DEVICES, _CAMERAS, _ENGINE = 0, 1, 2
#: Engine process name -> the node it connects to.
_ENGINES = {"engine-1": _ENGINE, "engine-2": _CAMERAS}
_PRESENCE_CHUNK = 1_000
_PACED_STEPS = 5


def _provision(root: Path) -> tuple[NatsAccess, dict[str, list[str]]]:
    """The registry's accounts as cluster users, plus the plain subscriber's."""
    policy = AclPolicy(AGENCY, DispatchSettings().source_device)
    provisioned = prepare_broker(root, policy, loadgen=True)
    secret_dir = root / SECRETS_DIR
    loadgen = secret_dir / f"{LOADGEN_ACCOUNT}.password"
    write_private(loadgen, provisioned.loadgen_login().password + "\n")
    plain_password = secrets.token_urlsafe(18)
    plain = secret_dir / f"{PLAIN_ACCOUNT}.password"
    write_private(plain, plain_password + "\n")
    with Registry.open(root) as registry:
        access = registry_nats_access(registry, policy)
    subject = topic_to_subject(Topics(PLAIN_AGENCY).all_devices(DeviceChannel.TELEMETRY))
    user = NatsUser(
        PLAIN_ACCOUNT, bcrypt_hash(plain_password), (), (subject,), (ConnectionType.STANDARD,)
    )
    logins = {
        "engine": [SERVICE_ENGINE, str(secret_dir / f"{SERVICE_ENGINE}.password")],
        "helpers": [LOADGEN_ACCOUNT, str(loadgen)],
        "plain": [PLAIN_ACCOUNT, str(plain)],
    }
    return access.with_users([user]), logins


def _node_pid(node: NatsNode) -> int:
    return int(node.pid_path.read_text(encoding="utf-8").strip())


class _ClusterRun:
    def __init__(
        self, s: BenchSettings, cluster: NatsCluster, workers: dict[str, Worker], phases: Phases
    ) -> None:
        self.s = s
        self.cluster = cluster
        self.w = workers
        self.engines = [workers[name] for name in _ENGINES]
        self.phases = phases
        self.out: dict[str, Any] = {}

    async def stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(e.call("stats") for e in self.engines)))

    async def _all_engines(self, key: str, target: int) -> bool:
        return all(int(st[key]) >= target for st in await self.stats())

    def _pids(self) -> dict[str, int]:
        pids = {e.role: e.pid for e in self.engines}
        pids |= {node.name: _node_pid(node) for node in self.cluster.nodes}
        pids["loadgen"] = self.w["loadgen"].pid
        return pids

    async def presence(self) -> None:
        s, loadgen = self.s, self.w["loadgen"]
        sent = 0
        with self.phases.phase("presence (QoS 1)", s.devices) as update:
            for start in range(0, s.devices, _PRESENCE_CHUNK):
                reply = await loadgen.call(
                    "presence", agency=AGENCY, start=start, count=_PRESENCE_CHUNK, timeout=120
                )
                sent += int(reply["sent"])
                update(min(sent, s.devices), f"{sent:,} sent")
            await poll_until(
                lambda: self._all_engines("presence", sent),
                timeout=120,
                what="both engines to know every device",
            )
        self.out["presence_sent"] = sent

    async def steady(self) -> None:
        s, loadgen = self.s, self.w["loadgen"]
        stream_s = s.warmup_s + s.duration_s + 1.0
        await loadgen.call("stream", agency=AGENCY, rate=s.telemetry_rate, duration_s=stream_s)
        with self.phases.phase("warm-up", s.warmup_s) as update:
            began = time.monotonic()

            async def warm() -> bool:
                elapsed = time.monotonic() - began
                indexed = min(int(st["indexed"]) for st in await self.stats())
                update(elapsed, f"{indexed:,} indexed by both")
                return elapsed >= s.warmup_s and indexed >= s.devices

            await poll_until(
                warm, timeout=s.warmup_s + 2 / s.rate_hz + 60, what="every device to be indexed"
            )
        per_device = []
        for engine in self.engines:
            await engine.call("queries")  # discard warm-up samples
            if s.trace:
                await engine.call("trace")  # and the loop lag of presence and warm-up
            tracked = proc_sample(engine.pid)[1]
            base = self.out[f"{engine.role}_rss_base_bytes"]
            per_device.append((tracked - base) / s.devices)
            self.out[f"{engine.role}_rss_tracked_bytes"] = tracked
        self.out["rss_bytes_per_device_per_engine"] = per_device
        self.out["rss_bytes_per_device"] = max(per_device)
        pids = self._pids()
        before = {k: proc_sample(p) for k, p in pids.items()}
        t0 = time.monotonic()
        with self.phases.phase("steady: triggers under load", s.duration_s) as update:
            probe = asyncio.create_task(
                self.w["probe"].call(
                    "run",
                    rate=s.triggers_per_s,
                    duration_s=s.duration_s,
                    timeout=s.duration_s + 30,
                )
            )
            try:
                while not probe.done():
                    await asyncio.wait({probe}, timeout=0.5)
                    acts = sum(int(st["activations"]) for st in await self.stats())
                    update(time.monotonic() - t0, f"{acts:,} activations")
            finally:
                if not probe.done():  # cancelled or failed: take the call down with us
                    probe.cancel()
                    await asyncio.wait([probe])
        result = probe.result()
        after = {k: proc_sample(p) for k, p in pids.items()}
        wall = time.monotonic() - t0
        cpu = {k: 100.0 * (after[k][0] - before[k][0]) / wall for k in pids}
        self.out["cpu_percent"] = cpu
        self.out["engine_cpu_percent"] = max(cpu[e.role] for e in self.engines)
        self.out["broker_cpu_percent"] = sum(cpu[n.name] for n in self.cluster.nodes)
        self.out["engine_rss_mb"] = max(after[e.role][1] for e in self.engines) / 1e6
        self.out.update(probe_figures(result))
        if s.trace:
            await self._trace(result)
        stats = await self.stats()
        self.out["activations_per_engine"] = [int(st["activations"]) for st in stats]
        await self._stream_accounting(stream_s)

    async def _trace(self, probe: dict[str, Any]) -> None:
        """Both paths split hop by hop (:mod:`.trace`); each trigger was handled by one
        engine, so their stamps merge without overlap."""
        engine: dict[str, list[float]] = {}
        lag: list[float] = []
        for worker in self.engines:
            reply = await worker.call("trace")
            engine |= reply["stamps"]
            lag += reply["loop_lag_ms"]
        echo = (await self.w["echo"].call("trace"))["stamps"]
        self.out["trace"] = paths(probe, engine, echo, lag)

    async def _stream_accounting(self, stream_s: float) -> None:
        sent = await stream_sent(self.w["loadgen"], stream_s)

        async def engines_telemetry() -> list[int]:
            return [int(st["telemetry"]) for st in await self.stats()]

        ingested = await until_steady(engines_telemetry, what="the engines to finish the stream")
        self.out["telemetry_sent"] = sent
        self.out["telemetry_ingested_per_engine"] = ingested
        self.out["telemetry_ingested"] = min(ingested)
        self.out["telemetry_dropped"] = sent - min(ingested)

    async def _flood(
        self, receivers: list[Worker], agency: str, count: int, rate: float | None
    ) -> list[dict[str, Any]]:
        """One flood of ``count`` prepared frames; each receiver's rate and loss."""
        loadgen = self.w["loadgen"]
        await loadgen.call("prepare", agency=agency, count=count, timeout=120)
        for receiver in receivers:
            await receiver.call("arm", expected=count, idle_s=1.0, timeout_s=600.0)
        sent = await loadgen.call("flood", agency=agency, count=count, rate=rate, timeout=600)
        got = await asyncio.gather(
            *(r.call("collect", idle_s=1.0, timeout_s=600.0, timeout=620) for r in receivers)
        )
        out = []
        for receiver, g in zip(receivers, got, strict=True):
            span = float(g["last"]) - float(g["first"])
            received = int(g["count"])
            out.append(
                {
                    "receiver": receiver.role,
                    "sent": int(sent["sent"]),
                    "send_s": float(sent["seconds"]),
                    "received": received,
                    "lost": int(sent["sent"]) - received,
                    "msgs_per_s": (received - 1) / span if span > 0 else float("nan"),
                }
            )
        return out

    async def floods(self) -> None:
        """The plain subscriber flat out; then both engines together, paced at that rate,
        and while either loses anything again at 90 % of the lower of the offered rate
        and the slowest engine's measured one (the cluster delivers far faster than an
        engine takes on this machine: 10 % steps from its rate would never get there)."""
        s = self.s
        plain_runs: list[dict[str, Any]] = []
        paced_runs: list[dict[str, Any]] = []
        with self.phases.phase("floods: cluster alone, engines", 2 * s.flood_rounds) as update:
            for k in range(s.flood_rounds):
                plain_runs += await self._flood(
                    [self.w["plain"]], PLAIN_AGENCY, s.flood_messages, None
                )
                update(k + 1, f"cluster {plain_runs[-1]['msgs_per_s']:,.0f}/s")
            cluster_rate = statistics.median(r["msgs_per_s"] for r in plain_runs)
            offered = cluster_rate
            for _ in range(_PACED_STEPS):
                engines = await self._flood(self.engines, AGENCY, s.flood_messages, offered)
                paced_runs.append({"offered": offered, "engines": engines})
                slowest = min(e["msgs_per_s"] for e in engines)
                lost = max(e["lost"] for e in engines)
                update(2 * s.flood_rounds, f"engines {slowest:,.0f}/s, lost {lost:,}")
                if lost == 0:
                    break
                offered = 0.9 * min(offered, slowest)
        best = paced_runs[-1]
        rates = [e["msgs_per_s"] for e in best["engines"]]
        total = sum(e["received"] for e in best["engines"])
        self.out["flood_messages"] = s.flood_messages
        self.out["broker_delivery_msgs_per_s"] = cluster_rate
        self.out["broker_delivery_lost"] = sum(r["lost"] for r in plain_runs)
        self.out["ingest_per_engine_msgs_per_s"] = rates
        self.out["ingest_msgs_per_s"] = min(rates)
        self.out["ingest_total_msgs_per_s"] = sum(rates)
        self.out["ingest_share_per_engine"] = [e["received"] / total for e in best["engines"]]
        self.out["ingest_offered_msgs_per_s"] = best["offered"]
        self.out["ingest_dropped"] = max(e["lost"] for e in best["engines"])
        self.out["ingest_ratio_vs_broker"] = ratio(min(rates), cluster_rate)
        self.out["floods"] = {"plain": plain_runs, "engines_paced": paced_runs}


async def run_cluster_bench(s: BenchSettings, progress: Progress) -> dict[str, Any]:
    """One run on a 3-node cluster; the figures as a JSON-ready dict (:mod:`.report`)."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="actimesh-bench-") as tmp:
        root = Path(tmp)
        access, logins = await asyncio.to_thread(_provision, root)
        cluster = NatsCluster(root / "nats", access=access)
        nodes = cluster.nodes
        base = {
            "host": nodes[_DEVICES].ports.host,
            "port": nodes[_DEVICES].mqtt_port,
            "mqtt_version": 4,
            "devices": s.devices,
            "seed": s.seed,
            "agency": AGENCY,
            "echo_agency": ECHO_AGENCY,
            "plain_agency": PLAIN_AGENCY,
            "lifetime_s": 3 * (s.duration_s + s.warmup_s) + s.devices / 500 + 1800,
            "logins": logins,
            "trace": s.trace,
        }
        async with cluster, WorkerPool(root / "logs") as pool:
            spawned = await asyncio.gather(
                *(
                    pool.spawn(
                        "engine",
                        {
                            **base,
                            "run_dir": str(root / name),
                            "nats_urls": [nodes[node].nats_url],
                            "engine_id": f"bench-{name}",
                        },
                        name=name,
                    )
                    for name, node in _ENGINES.items()
                ),
                pool.spawn("echo", {**base, "port": nodes[_ENGINE].mqtt_port}),
                pool.spawn(
                    "plain", {**base, "port": nodes[_ENGINE].ports.client, "nats_plain": True}
                ),
                pool.spawn("probe", {**base, "acks": s.acks, "rx_port": nodes[_CAMERAS].mqtt_port}),
                pool.spawn("loadgen", {**base, "publisher": "raw"}),
            )
            workers = {w.role: w for w in spawned}
            await asyncio.gather(*(w.call("ping", timeout=120) for w in spawned))
            run = _ClusterRun(s, cluster, workers, Phases(progress, s.devices))
            await asyncio.sleep(0.5)  # let the idle engines settle before their baseline
            for name in _ENGINES:
                run.out[f"{name}_rss_base_bytes"] = proc_sample(workers[name].pid)[1]
            await run.presence()
            await run.steady()
            await run.floods()
    head = {
        "shape": "cluster",
        "cluster": {
            "nodes": len(nodes),
            "devices_node": "n1",
            "cameras_node": "n2",
            "engines": {name: nodes[node].name for name, node in _ENGINES.items()},
            "echo_node": nodes[_ENGINE].name,
            "mqtt": "3.1.1",
        },
    }
    return bench_report(s, run.out, started, publisher="raw", head=head)
