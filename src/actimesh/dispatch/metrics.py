"""Prometheus metrics at ``/metrics``, from a registry the service owns (no globals).

Counters that the components already keep (links, live state, hub, webhooks) are read
at scrape time by one collector rather than mirrored on every message, so the hot paths
pay nothing for metrics. The two latency histograms are observed as records arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actimesh.broker.client import LinkStats
from actimesh.dispatch.audit import AuditStats
from actimesh.dispatch.auth import AuthStats
from actimesh.dispatch.hub import HubStats
from actimesh.dispatch.state import LiveState
from actimesh.dispatch.webhooks import WebhookStats

__all__ = ["CONTENT_TYPE", "DispatchMetrics", "MetricSources"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class MetricSources:
    """Where the collector reads from at scrape time."""

    state: LiveState
    links: Callable[[], dict[str, LinkStats]]
    hubs: dict[str, tuple[HubStats, Callable[[], int]]]
    webhooks: WebhookStats
    auth: AuthStats
    audit: AuditStats


class _Collector(Collector):
    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def _live(self) -> Iterator[Metric]:
        """What the live map holds besides devices: activations and engines."""
        yield GaugeMetricFamily(
            "actimesh_dispatch_live_activations",
            "Activations on the live map",
            value=len(self.sources.state.activations),
        )
        engines = self.sources.state.engines.values()
        yield GaugeMetricFamily(
            "actimesh_dispatch_engines_online",
            "Engines whose last status says online and is not stale",
            value=sum(1 for e in engines if e["online"]),
        )
        yield CounterMetricFamily(
            "actimesh_dispatch_engines_stale",
            "Engine statuses not renewed within their ttl (engine killed or cut off)",
            value=self.sources.state.stats.engines_stale,
        )
        yield CounterMetricFamily(
            "actimesh_dispatch_activations_caught_up",
            "Activations the bus did not bring, put on the map from the ledger",
            value=self.sources.state.stats.activations_caught_up,
        )
        yield CounterMetricFamily(
            "actimesh_dispatch_catch_up_errors",
            "Catch-ups from the ledger that failed (the ledger not readable)",
            value=self.sources.state.stats.catch_up_errors,
        )

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        st = src.state.stats
        devices = GaugeMetricFamily(
            "actimesh_dispatch_devices", "Devices on the live map by status", labels=["status"]
        )
        for status, n in src.state.counts().items():
            devices.add_metric([status], n)
        yield devices
        yield from self._live()
        messages = CounterMetricFamily(
            "actimesh_dispatch_messages", "MQTT messages applied to the live state", labels=["kind"]
        )
        for kind, n in (
            ("presence", st.presence),
            ("telemetry", st.telemetry),
            ("owntracks", st.tracker_fixes),
            ("activation", st.activations),
            ("ack", st.acks),
        ):
            messages.add_metric([kind], n)
        yield messages
        outcomes = CounterMetricFamily(
            "actimesh_dispatch_camera_outcomes",
            "Commanded cameras by outcome (no_ack: silent past the timeout)",
            labels=["outcome"],
        )
        for outcome, n in st.outcomes.items():
            if outcome != "commanded":
                outcomes.add_metric([outcome], n)
        yield outcomes
        yield CounterMetricFamily(
            "actimesh_dispatch_owntracks_unregistered",
            "OwnTracks locations skipped: the device is not in this dispatch's registry",
            value=st.tracker_unregistered,
        )
        yield CounterMetricFamily(
            "actimesh_dispatch_late_acks", "Acknowledgements after the timeout", value=st.late_acks
        )
        dropped = CounterMetricFamily(
            "actimesh_dispatch_dropped", "Things dropped for lack of room", labels=["what"]
        )
        for what, n in (
            ("early_ack", st.early_acks_dropped),
            ("device", st.devices_refused),
            ("track_fix", src.state.tracks.dropped),
        ):
            dropped.add_metric([what], n)
        links = src.links()
        for name, ls in links.items():
            dropped.add_metric([f"mqtt_{name}"], ls.dropped_incoming)
        yield dropped
        connected = GaugeMetricFamily(
            "actimesh_dispatch_mqtt_connected", "1 while the MQTT link is up", labels=["link"]
        )
        reconnects = CounterMetricFamily(
            "actimesh_dispatch_mqtt_connects", "MQTT connections made", labels=["link"]
        )
        handler_errors = CounterMetricFamily(
            "actimesh_dispatch_handler_errors", "Messages whose handling failed", labels=["link"]
        )
        for name, ls in links.items():
            connected.add_metric([name], 1 if ls.connects > ls.disconnects else 0)
            reconnects.add_metric([name], ls.connects)
            handler_errors.add_metric([name], ls.handler_errors)
        yield connected
        yield reconnects
        yield handler_errors
        clients = GaugeMetricFamily(
            "actimesh_dispatch_clients", "Connected live clients", labels=["channel"]
        )
        frames = CounterMetricFamily(
            "actimesh_dispatch_frames", "Frames broadcast", labels=["channel"]
        )
        cut = CounterMetricFamily(
            "actimesh_dispatch_clients_dropped", "Clients cut off as too slow", labels=["channel"]
        )
        for channel, (hs, count) in src.hubs.items():
            clients.add_metric([channel], count())
            frames.add_metric([channel], hs.frames)
            cut.add_metric([channel], hs.clients_dropped)
        yield clients
        yield frames
        yield cut
        w = src.webhooks
        attempts = CounterMetricFamily(
            "actimesh_webhook_attempts", "Webhook delivery attempts by result", labels=["result"]
        )
        attempts.add_metric(["delivered"], w.delivered)
        attempts.add_metric(["retry"], w.retries)
        attempts.add_metric(["gave_up"], w.gave_up)
        yield attempts
        outbox = GaugeMetricFamily(
            "actimesh_webhook_outbox", "Deliveries in the outbox by status", labels=["status"]
        )
        outbox.add_metric(["pending"], w.pending)
        outbox.add_metric(["failed"], w.failed)
        yield outbox
        yield CounterMetricFamily(
            "actimesh_webhook_reconciled",
            "Deliveries enqueued from the ledger (missed on the broker)",
            value=w.reconciled,
        )
        yield from self._tracks_and_security()

    def _tracks_and_security(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "actimesh_dispatch_track_fixes",
            "Recent fixes kept for lines, tracks and replays (all devices)",
            value=len(self.sources.state.tracks),
        )
        yield from self._security()

    def _security(self) -> Iterator[Metric]:
        src = self.sources
        refused = CounterMetricFamily(
            "actimesh_dispatch_requests_refused",
            "Requests refused by authentication or authorisation, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(src.auth.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        logins = CounterMetricFamily(
            "actimesh_dispatch_logins", "Login attempts by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(src.auth.logins.items()):
            logins.add_metric([outcome], n)
        yield logins
        yield CounterMetricFamily(
            "actimesh_dispatch_audit_records", "Audit records written", value=src.audit.written
        )
        yield CounterMetricFamily(
            "actimesh_dispatch_audit_failures",
            "Audit records that could not be written (alert on any)",
            value=src.audit.failures,
        )


class DispatchMetrics:
    """The service's registry and the histograms observed as records arrive."""

    def __init__(self, sources: MetricSources) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(sources))
        self.decision_seconds = Histogram(
            "actimesh_activation_decision_seconds",
            "From the trigger's event time to the engine's decision",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "actimesh_camera_ack_seconds",
            "From the engine's decision to a camera's acknowledgement",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
