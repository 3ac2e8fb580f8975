"""The camera side of the mesh: media, the pre-event buffer, recordings, the camera core.

Everything here is free of networking and asyncio, and takes time as an argument; the
MQTT device agent wraps a :class:`Camera`. Real H.264 video lives in
:mod:`actimesh.devices.h264` (the encoder), :mod:`actimesh.devices.capture` (where live
frames come from) and :mod:`actimesh.devices.h264_live` (the capture thread), imported
on their own so that processes that never encode (the engine, dispatch) do not load
PyAV.
"""

from __future__ import annotations

from actimesh.devices.buffer import MAX_PRE_ROLL_S, PreEventBuffer
from actimesh.devices.camera import ActivationResult, Camera, CancelResult, StealthPolicy
from actimesh.devices.manifest import ManifestCheck, verify_manifest
from actimesh.devices.media import (
    SYNTHETIC_FORMAT,
    MediaFormat,
    MediaSource,
    Segment,
    Switchable,
    SyntheticHeader,
    SyntheticSource,
    VideoFormat,
    parse_synthetic,
)
from actimesh.devices.recorder import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ActivationRecord,
    CancelRecord,
    Recording,
    RecordingOptions,
    RecordingStore,
    SegmentInfo,
    StealthChange,
    StopCause,
    media_file_name,
    segment_file_name,
)
from actimesh.devices.reporting import MotionReporter, ReportingSettings, TelemetryMode
from actimesh.devices.settings import MediaKind, MediaSettings, open_media_source

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_PRE_ROLL_S",
    "SYNTHETIC_FORMAT",
    "ActivationRecord",
    "ActivationResult",
    "Camera",
    "CancelRecord",
    "CancelResult",
    "ManifestCheck",
    "MediaFormat",
    "MediaKind",
    "MediaSettings",
    "MediaSource",
    "MotionReporter",
    "PreEventBuffer",
    "Recording",
    "RecordingOptions",
    "RecordingStore",
    "ReportingSettings",
    "Segment",
    "SegmentInfo",
    "StealthChange",
    "StealthPolicy",
    "StopCause",
    "Switchable",
    "SyntheticHeader",
    "SyntheticSource",
    "TelemetryMode",
    "VideoFormat",
    "media_file_name",
    "open_media_source",
    "parse_synthetic",
    "segment_file_name",
    "verify_manifest",
]
