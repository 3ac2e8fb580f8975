"""Hostile-input fuzzing of the codec and the trigger engine's intake (``actimesh fuzz``).

Seeded, reproducible payloads are held to the contract of docs/FUZZING.md by three targets:

* **codec**: every payload is decoded as each inbound model (Telemetry, Presence, Event,
  Ack, and Command for the devices) and by ``decode_telemetry``. Each decode returns a
  model or raises a :class:`PayloadError` whose reason is one of ``codec.REASONS`` and
  whose text is one printable line of bounded length; ``decode_telemetry`` agrees with
  ``decode(Telemetry, …)``; an accepted model re-encodes to itself.
* **intake**: the same payloads, on device topics of every channel and on bad topics, go
  through a real :class:`~actimesh.triggers.engine.Engine` (real rules, index, storm
  control and a ledger on a temporary SQLite file; a recording stand-in for its MQTT
  link) the way its links hand them over. No exception may escape; each input is
  accepted, ignored or rejected as an oracle built from the codec and the topic scheme
  says (the engine may also refuse valid input by policy: sender, rate, storm); every
  rejection is counted in ``engine.stats.rejected`` and dead-lettered once; every control
  message is acknowledged once; what the engine publishes decodes; its state stays
  bounded; memory stops growing after warm-up; and afterwards a taser draw still
  activates every camera around it.
* **protocols**: the device-protocol parsers (adapters/: OwnTracks JSON, NMEA sentences,
  OsmAnd queries and Traccar Client JSON) on published samples broken every which way
  (:mod:`._protocols`): each returns or raises a PayloadError with a known reason and
  one bounded line, and every fix it accepts is finite, in range and a valid telemetry.

Case ``i`` of seed ``s`` has a ``Random`` of its own, so a finding is replayed with
``actimesh fuzz --seed s --replay i`` whatever the count of the run that found it.

Hypothesis drives the codec checks in the test suite (tests/test_fuzz.py) but not this
run: its recursive strategies made about 130 payloads a second on the project's 2-core
machine, the generators below about 30,000.
"""

from __future__ import annotations

from actimesh.fuzz._cases import Case
from actimesh.fuzz._codec import check_codec
from actimesh.fuzz._findings import Finding
from actimesh.fuzz._generators import GENERATORS, CaseGenerator
from actimesh.fuzz._intake import ENGINE_REASONS
from actimesh.fuzz._intake import _Outputs as _Outputs  # the tests wrap what it records
from actimesh.fuzz._protocols import PARSERS, PROTOCOL_REASONS, ProtocolChecker, protocol_case
from actimesh.fuzz._run import FuzzReport, FuzzSettings, run_fuzz
from actimesh.fuzz._scenario import INBOUND
from actimesh.fuzz._scenario import POOL as POOL  # the tests size the fleet by it

__all__ = [
    "ENGINE_REASONS",
    "GENERATORS",
    "INBOUND",
    "PARSERS",
    "PROTOCOL_REASONS",
    "Case",
    "CaseGenerator",
    "Finding",
    "FuzzReport",
    "FuzzSettings",
    "ProtocolChecker",
    "check_codec",
    "protocol_case",
    "run_fuzz",
]
