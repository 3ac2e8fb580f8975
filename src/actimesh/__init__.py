"""actimesh: an event-driven camera activation mesh for police fleets over MQTT.

The packages are layers, each importing only those before it:

* foundations: ``errors``, ``private`` (files only their owner reads), ``lifeline``
  (children die with their parent), ``stats``;
* the mesh: ``broker`` (the wire) → ``security`` → ``geofence`` → ``triggers`` (the
  engine and its ledger) → ``devices``;
* HTTP serving, ``listener``, under the web parts: ``evidence`` → ``audit`` → ``dispatch``;
* ``runtime``, the composition root: reads the settings and builds a running mesh;
* the programs that use it as an operator would: ``drills``, ``bench``, ``fuzz``, and
  ``cli`` on top (also ``python -m actimesh``).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
