"""Stored H.264 recordings as fragmented MP4, so a browser's ``<video>`` can play them.

Cameras store MPEG-TS (see :mod:`actimesh.devices.h264`), which Chromium does not play.
:func:`remux_to_mp4` copies the H.264 packets into fragmented MP4 without decoding or
re-encoding them: the pictures are the camera's own bytes (no generation loss, nothing
for an examiner to question) and it costs milliseconds per minute of video. The
timestamps are rebased to start at 0, since the camera's wall-clock 90 kHz stamps would
otherwise show as a player position of decades.

The evidence itself is never changed: the MP4 is a view made for one playback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import av

from actimesh.errors import MediaError

__all__ = ["MP4_OPTIONS", "RemuxResult", "playable_file", "remux_to_mp4"]

#: A fragment per key frame (one a segment), the ``moov`` first and empty, so the file
#: is written front to back and a player can start before the end. ``frag_size`` bounds
#: the fragment the muxer holds in memory if a stream's key frames are far apart.
MP4_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_size": str(8 * 1024 * 1024),
}
#: MPEG-TS keeps the low 33 bits of its 90 kHz clock; a recording may span the wrap.
_WRAP = 1 << 33


@dataclass(frozen=True, slots=True)
class RemuxResult:
    """What one remux copied."""

    packets: int
    duration_s: float


def playable_file(manifest: Mapping[str, Any]) -> str | None:
    """The recording's one H.264 file, or None if it is not video a browser can be given
    (synthetic segments, one file a segment, another codec)."""
    media = manifest.get("media")
    if not isinstance(media, Mapping):
        return None
    video = media.get("video")
    name = media.get("file")
    if not isinstance(video, Mapping) or video.get("codec") != "h264" or not name:
        return None
    return str(name) if media.get("container") == "mpegts" else None


def _rebased(ts: int, base: int) -> int:
    # Signed distance modulo the wrap: a stamp just after the wrap counts forward.
    return (ts - base + _WRAP // 2) % _WRAP - _WRAP // 2


def remux_to_mp4(source: BinaryIO, sink: BinaryIO) -> RemuxResult:
    """Copy the first video stream of the MPEG-TS ``source`` into fragmented MP4 on
    ``sink``, timestamps starting at 0. Blocking: call it in a thread.

    Raises :class:`MediaError` if ``source`` is not an H.264 MPEG-TS libav can read.
    """
    packets = 0
    end = 0
    try:
        with (
            av.open(source, "r", format="mpegts") as inp,
            av.open(sink, "w", format="mp4", options=MP4_OPTIONS) as out,
        ):
            if not inp.streams.video or inp.streams.video[0].codec_context.name != "h264":
                raise MediaError("the recording holds no H.264 video stream")
            vin = inp.streams.video[0]
            vout = out.add_stream_from_template(vin)
            base: int | None = None
            for packet in inp.demux(vin):
                if packet.dts is None or packet.pts is None:
                    continue  # the demuxer's empty flush packet
                if base is None:
                    base = packet.pts
                packet.pts = _rebased(packet.pts, base)
                packet.dts = _rebased(packet.dts, base)
                end = max(end, packet.pts + (packet.duration or 0))
                packet.stream = vout
                out.mux(packet)
                packets += 1
            if packets == 0:
                raise MediaError("the recording holds no video frames")
            duration = float(end * vin.time_base) if vin.time_base is not None else 0.0
    except av.FFmpegError as exc:
        raise MediaError(f"the recording cannot be read as H.264 MPEG-TS: {exc}") from exc
    return RemuxResult(packets, duration)
