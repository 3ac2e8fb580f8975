"""What one ``actimesh bench`` run does (flags of the command, in one frozen value)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from actimesh.errors import ConfigError

__all__ = ["SWEEP_DEVICES", "TELEMETRY_MODES", "BenchSettings"]

#: Fleet sizes of ``actimesh bench --sweep``.
SWEEP_DEVICES = (1_000, 10_000, 100_000)
#: How the bench's devices send telemetry (``--telemetry``).
TELEMETRY_MODES = ("1hz", "motion")


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """One benchmark run. The defaults are the issue's: 10,000 devices at 1 Hz, 20
    triggers/s."""

    devices: int = 10_000
    #: Telemetry reports per device per second.
    rate_hz: float = 1.0
    #: Trigger events per second (and as many echo requests, interleaved).
    triggers_per_s: float = 20.0
    #: Length of the measured steady phase, after the warm-up.
    duration_s: float = 20.0
    warmup_s: float = 3.0
    #: Messages per flood (broker-alone delivery, then engine ingest).
    flood_messages: int = 500_000
    flood_rounds: int = 1
    #: Also search the highest paced rate each receiver takes with nothing dropped.
    search: bool = False
    #: Seconds of paced telemetry per search step.
    search_step_s: float = 3.0
    #: ``raw`` (pre-built frames) or ``paho`` (one paho publish per message).
    publisher: str = "raw"
    #: The probe's cameras acknowledge commands (``received``, ``recording``).
    acks: bool = True
    #: Split each trigger's latency into its hops (``bench/trace.py``).
    trace: bool = False
    naive_queries: int = 5
    grid_queries: int = 5_000
    #: Index queries per fleet size in the sweep's side-by-side growth measurement.
    growth_queries: int = 100_000
    seed: int = 6
    #: On a 3-node NATS cluster (``--cluster``) instead of the managed Mosquitto.
    cluster: bool = False
    #: ``1hz`` (a message per device per epoch) or ``motion`` (the devices' motion-scaled
    #: reporting, bench/motion.py); ``rate_hz`` is the GPS epoch rate either way.
    telemetry: str = "1hz"
    #: The load generator's nice value while it streams the steady phase's telemetry
    #: (bench/priority.py): it stands in for devices that are not on the engine's
    #: machine, so it yields the cores to the measured parts. 0 leaves it alone.
    loadgen_nice: int = 10

    def __post_init__(self) -> None:
        if self.devices < 8:
            raise ConfigError("--devices must be at least 8 (two scenes of four cameras)")
        for name in ("rate_hz", "triggers_per_s", "duration_s", "search_step_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"bench {name} must be a positive number, got {value!r}")
        if self.warmup_s < 0 or self.flood_messages < 1000 or self.flood_rounds < 1:
            raise ConfigError("bench needs warmup_s >= 0, flood_messages >= 1000, rounds >= 1")
        if not 0 <= self.loadgen_nice <= 19:
            raise ConfigError(f"--loadgen-nice must be within 0 to 19, got {self.loadgen_nice}")
        if self.publisher not in ("raw", "paho"):
            raise ConfigError(f"--publisher must be raw or paho, got {self.publisher!r}")
        if self.telemetry not in TELEMETRY_MODES:
            raise ConfigError(f"--telemetry must be 1hz or motion, got {self.telemetry!r}")
        if self.cluster and self.telemetry != "1hz":
            raise ConfigError("--cluster runs at 1 Hz: drop --telemetry motion or --cluster")
        if self.cluster and (self.publisher != "raw" or self.search):
            raise ConfigError(
                "--cluster runs with the raw publisher and without --search: drop those options"
            )

    @property
    def telemetry_rate(self) -> float:
        """Offered telemetry, messages per second."""
        return self.devices * self.rate_hz

    @classmethod
    def smoke(cls) -> BenchSettings:
        """A few seconds: checks the benchmark works, not how fast anything is."""
        return cls(
            devices=200,
            triggers_per_s=10.0,
            duration_s=2.0,
            warmup_s=1.0,
            flood_messages=5_000,
            naive_queries=2,
            grid_queries=200,
            growth_queries=200,
        )

    @classmethod
    def overload(cls, *, smoke: bool = False) -> BenchSettings:
        """``--overload``: the issue's 100,000 devices (twice the broker's rate stays
        within each device's own telemetry rate); with ``smoke`` a few seconds of it."""
        if smoke:
            return cls(
                devices=20_000,
                triggers_per_s=10.0,
                duration_s=3.0,
                warmup_s=1.0,
                flood_messages=50_000,
            )
        return cls(devices=100_000, flood_messages=300_000)

    def for_devices(self, devices: int) -> BenchSettings:
        """The same run for another fleet size (the naive scan asks fewer questions of a
        100,000-device fleet: each takes seconds)."""
        naive = max(2, min(self.naive_queries, 500_000 // devices))
        return replace(self, devices=devices, naive_queries=naive)
