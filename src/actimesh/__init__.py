"""actimesh: an event-driven camera activation mesh for police fleets over MQTT."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
