"""The camera side of the mesh: media, the pre-event buffer, recordings, the camera core.

Everything here is free of networking and asyncio, and takes time as an argument; the
MQTT device agent wraps a :class:`Camera`.
"""

from __future__ import annotations

from actimesh.devices.buffer import MAX_PRE_ROLL_S, PreEventBuffer
from actimesh.devices.camera import ActivationResult, Camera
from actimesh.devices.media import (
    MediaSource,
    Segment,
    SyntheticHeader,
    SyntheticSource,
    parse_synthetic,
)
from actimesh.devices.recorder import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ActivationRecord,
    Recording,
    RecordingStore,
    StopCause,
    segment_file_name,
)

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_PRE_ROLL_S",
    "ActivationRecord",
    "ActivationResult",
    "Camera",
    "MediaSource",
    "PreEventBuffer",
    "Recording",
    "RecordingStore",
    "Segment",
    "StopCause",
    "SyntheticHeader",
    "SyntheticSource",
    "parse_synthetic",
    "segment_file_name",
]
