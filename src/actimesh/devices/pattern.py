"""Pictures for a camera without a sensor, and the caption burned into every frame.

:class:`TestPattern` draws colour bars, a bar that sweeps once a second (so a frozen
picture shows), and a caption with the device id and the frame's wall-clock time in UTC
to the millisecond. The caption is the same one burned into frames from a real sensor,
so a viewer reads on the picture itself which camera filmed it and when.

Frames are planar YUV 4:2:0 built from plain bytes with a 5x7 bitmap font: no imaging
library is needed, and a frame costs a few slice copies.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import av

__all__ = ["TestPattern", "caption_time"]

# 5x7 glyphs, one 5-bit row per entry, most significant bit on the left.
_GLYPHS: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "a": (0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F),
    "b": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E),
    "c": (0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E),
    "d": (0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F),
    "e": (0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E),
    "f": (0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08),
    "g": (0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "h": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11),
    "i": (0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E),
    "j": (0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C),
    "k": (0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12),
    "l": (0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "m": (0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11),
    "n": (0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11),
    "o": (0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E),
    "p": (0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10),
    "q": (0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01),
    "r": (0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10),
    "s": (0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E),
    "t": (0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06),
    "u": (0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D),
    "v": (0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "w": (0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A),
    "x": (0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11),
    "y": (0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "z": (0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F),
    "-": (0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00),
    "_": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F),
    ".": (0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C),
    ":": (0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00),
    "/": (0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10),
    " ": (0x00,) * 7,
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04),
}
_GLYPH_W, _GLYPH_H = 5, 7
_CELL_W, _CELL_H = 6, 9  # one column and two rows of spacing
_INK, _PAPER = 235, 16  # video-range white and black

# 75% colour bars as BT.601 video-range (Y, U, V): white, yellow, cyan, green, magenta,
# red, blue, black.
_BARS = (
    (180, 128, 128),
    (168, 44, 136),
    (145, 147, 44),
    (133, 63, 52),
    (63, 193, 204),
    (51, 109, 212),
    (28, 212, 120),
    (16, 128, 128),
)


def caption_time(t: float) -> str:
    """How a wall-clock time is burned into frames: UTC, ISO 8601, milliseconds."""
    ms = math.floor(t * 1000 + 0.5)
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


class TestPattern:
    """Colour bars with a caption naming the device and the time of each frame.

    The picture is a pure function of its time, so any second can be drawn again later,
    faster than real time (for a fake clock) or in step with it (live). The caption sits
    in a black box in the top-left corner: the device id on the first line, the time on
    the second. :meth:`burn` puts the same caption on a frame from a real sensor.
    """

    __test__ = False  # a picture, not a pytest test class

    def __init__(self, device_id: str, width: int, height: int) -> None:
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError(f"frame size must be even and at least 16x16, got {width}x{height}")
        self.device_id = device_id
        self.width, self.height = width, height
        # Captions stay legible at any size: 5x7 dots at 160x90, doubled at 640x360.
        self.scale = max(1, min(width // 320, height // 180) or 1)
        probe = av.VideoFrame(width, height, "yuv420p")
        self._strides = tuple(p.line_size for p in probe.planes)
        self._sizes = tuple(p.buffer_size for p in probe.planes)
        self._margin = 2 * self.scale
        self._max_chars = max(1, (width - 2 * self._margin) // (_CELL_W * self.scale))
        self._glyph_rows: dict[str, tuple[bytes, ...]] = {}
        self._id_rows = self._text_rows(device_id)
        box_w = (self._max_chars * _CELL_W + 1) * self.scale
        self._box_bytes = bytes([_PAPER]) * min(box_w, width - self._margin)
        self._box_h = (2 * _CELL_H + 1) * self.scale
        y, u, v = self._draw_base()
        self._base = (y, self._grey_box(u, 1), self._grey_box(v, 2))

    # ------------------------------------------------------------------ geometry
    @property
    def caption_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the caption's second line (the time), in luma pixels."""
        x0 = self._margin + self.scale
        y0 = self._margin + (self.scale + _CELL_H * self.scale)
        x1 = x0 + len(caption_time(0.0)) * _CELL_W * self.scale
        return x0, y0, min(x1, self.width), y0 + _GLYPH_H * self.scale

    # ------------------------------------------------------------------ drawing
    def frame(self, t: float) -> av.VideoFrame:
        """The test pattern at wall-clock time ``t``."""
        y = bytearray(self._base[0])
        self._sweep(y, t)
        self._caption(y, t)
        return self._frame(y, self._base[1], self._base[2])

    def no_signal(self, t: float) -> av.VideoFrame:
        """A black frame saying NO SIGNAL, for seconds a real sensor did not deliver."""
        stride = self._strides[0]
        y = bytearray([_PAPER]) * self._sizes[0]
        rows = self._text_rows("NO SIGNAL")
        top = self.height // 2
        self._blit(y, stride, rows, self._margin + self.scale, top)
        self._caption(y, t)
        grey = [bytes([128]) * self._sizes[i] for i in (1, 2)]
        return self._frame(y, grey[0], grey[1])

    def burn(self, frame: av.VideoFrame, t: float) -> av.VideoFrame:
        """``frame`` (any size or format) scaled to this pattern's size, with the caption."""
        src = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        planes = [
            _plane_bytes(p, self._strides[i], self._sizes[i]) for i, p in enumerate(src.planes)
        ]
        y = bytearray(planes[0])
        self._caption(y, t)
        return self._frame(y, self._grey_box(planes[1], 1), self._grey_box(planes[2], 2))

    # ------------------------------------------------------------------ inside
    def _frame(self, y: bytes | bytearray, u: bytes, v: bytes) -> av.VideoFrame:
        out = av.VideoFrame(self.width, self.height, "yuv420p")
        out.planes[0].update(bytes(y))
        out.planes[1].update(u)
        out.planes[2].update(v)
        return out

    def _draw_base(self) -> tuple[bytes, bytes, bytes]:
        w, h = self.width, self.height
        bar_w = -(-w // len(_BARS))
        planes = []
        for i, (pw, ph) in enumerate(((w, h), (w // 2, h // 2), (w // 2, h // 2))):
            stride, size = self._strides[i], self._sizes[i]
            step = bar_w if i == 0 else -(-bar_w // 2)
            row = bytes(_BARS[min(x // step, len(_BARS) - 1)][i] for x in range(pw))
            row = row.ljust(stride, b"\0")
            planes.append((row * ph).ljust(size, b"\0"))
        return planes[0], planes[1], planes[2]

    def _grey_box(self, plane: bytes, index: int) -> bytes:
        """A chroma plane with no colour under the caption box (white text stays white)."""
        out = bytearray(plane)
        stride = self._strides[index]
        x0, width = self._margin // 2, -(-len(self._box_bytes) // 2)
        grey = bytes([128]) * width
        bottom = min(-(-(self._margin + self._box_h) // 2), self.height // 2)
        for row in range(self._margin // 2, bottom):
            start = row * stride + x0
            out[start : start + width] = grey
        return bytes(out)

    def _sweep(self, y: bytearray, t: float) -> None:
        # A white block crossing the bottom band once a second: motion the encoder must
        # code, and a frozen or repeated frame is visible at a glance.
        stride = self._strides[0]
        block = max(4, self.width // 16)
        x = int((t % 1.0) * (self.width - block))
        band = max(2, self.height // 12)
        run = bytes([_INK]) * block
        for row in range(self.height - band, self.height):
            start = row * stride + x
            y[start : start + block] = run

    def _caption(self, y: bytearray, t: float) -> None:
        stride = self._strides[0]
        m, s = self._margin, self.scale
        for row in range(m, min(m + self._box_h, self.height)):
            start = row * stride + m
            y[start : start + len(self._box_bytes)] = self._box_bytes
        self._blit(y, stride, self._id_rows, m + s, m + s)
        self._blit(y, stride, self._text_rows(caption_time(t)), m + s, m + s + _CELL_H * s)

    def _blit(self, y: bytearray, stride: int, rows: tuple[bytes, ...], x: int, top: int) -> None:
        for r, line in enumerate(rows):
            row = top + r
            if row >= self.height:
                break
            clipped = line[: self.width - x]
            start = row * stride + x
            y[start : start + len(clipped)] = clipped

    def _text_rows(self, text: str) -> tuple[bytes, ...]:
        """The scaled luma rows of one line of ``text`` (clipped to the frame width)."""
        text = text[: self._max_chars]
        glyphs = [self._glyph(c) for c in text]
        rows = []
        for r in range(_GLYPH_H):
            line = b"".join(g[r] for g in glyphs)
            rows.extend([line] * self.scale)
        return tuple(rows)

    def _glyph(self, char: str) -> tuple[bytes, ...]:
        cached = self._glyph_rows.get(char)
        if cached is None:
            bits = _GLYPHS.get(char, _GLYPHS["?"])
            s = self.scale
            cached = tuple(
                b"".join(
                    bytes([_INK if bits[r] >> (_GLYPH_W - 1 - c) & 1 else _PAPER]) * s
                    for c in range(_GLYPH_W)
                )
                + bytes([_PAPER]) * ((_CELL_W - _GLYPH_W) * s)
                for r in range(_GLYPH_H)
            )
            self._glyph_rows[char] = cached
        return cached


def _plane_bytes(plane: av.video.plane.VideoPlane, stride: int, size: int) -> bytes:
    """A plane's bytes laid out with ``stride`` (libav may align rows differently)."""
    data = bytes(plane)
    if plane.line_size == stride:
        return data[:size].ljust(size, b"\0")
    rows = len(data) // plane.line_size
    out = b"".join(
        data[r * plane.line_size : r * plane.line_size + plane.width].ljust(stride, b"\0")
        for r in range(rows)
    )
    return out[:size].ljust(size, b"\0")
