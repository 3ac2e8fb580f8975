"""Real device protocols for telemetry: OwnTracks, OsmAnd (Traccar Client) and NMEA 0183.

Each protocol's parser turns its input into a :class:`Fix` and every fix becomes the
device's ordinary telemetry, so the engine's intake stays the one place that validates,
rate-limits and indexes positions (docs/DEVICES.md):

* :mod:`.owntracks`: the engine's intake reads ``owntracks/<device id>/<phone>`` itself.
* :mod:`.osmand` and :mod:`.nmea` (with :mod:`.nmea_server`): listeners of their own,
  run by ``actimesh up`` in a supervised process, that publish each fix through
  :class:`FixSink` as the device's telemetry on the broker.
"""

from actimesh.adapters.fix import MAX_ACCURACY_M, REASONS, Fix, check_position, telemetry_of
from actimesh.adapters.nmea import (
    HDOP_FACTOR_M,
    NMEA_MAX_LINE,
    TALKERS,
    Gga,
    NmeaAssembler,
    Rmc,
    nmea_checksum,
    parse_sentence,
)
from actimesh.adapters.nmea_server import NmeaServer
from actimesh.adapters.osmand import (
    OSMAND_MAX_BODY,
    DeviceAuth,
    basic_credentials,
    create_osmand_app,
    parse_osmand,
    parse_osmand_json,
)
from actimesh.adapters.owntracks import (
    OWNTRACKS_FILTER,
    OWNTRACKS_MAX_BYTES,
    OWNTRACKS_ROOT,
    owntracks_device,
    owntracks_topic,
    parse_owntracks,
)
from actimesh.adapters.settings import (
    AdapterSettings,
    NmeaSettings,
    OsmAndSettings,
    OwnTracksSettings,
)
from actimesh.adapters.sink import MAX_SOURCES, AdapterStats, FixSink

__all__ = [
    "HDOP_FACTOR_M",
    "MAX_ACCURACY_M",
    "MAX_SOURCES",
    "NMEA_MAX_LINE",
    "OSMAND_MAX_BODY",
    "OWNTRACKS_FILTER",
    "OWNTRACKS_MAX_BYTES",
    "OWNTRACKS_ROOT",
    "REASONS",
    "TALKERS",
    "AdapterSettings",
    "AdapterStats",
    "DeviceAuth",
    "Fix",
    "FixSink",
    "Gga",
    "NmeaAssembler",
    "NmeaServer",
    "NmeaSettings",
    "OsmAndSettings",
    "OwnTracksSettings",
    "Rmc",
    "basic_credentials",
    "check_position",
    "create_osmand_app",
    "nmea_checksum",
    "owntracks_device",
    "owntracks_topic",
    "parse_osmand",
    "parse_osmand_json",
    "parse_owntracks",
    "parse_sentence",
    "telemetry_of",
]
