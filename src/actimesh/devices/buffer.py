"""The pre-event buffer: the rolling seconds of media a camera keeps while not recording.

A command reaches a camera after the event that caused it, and the pre-roll is counted
back from the *event*. So the buffer must hold the pre-roll, plus how late a command may
arrive and still be owed the full pre-roll, plus one segment: the segment that holds the
horizon ``event_ts - pre_roll`` starts before it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

from actimesh.devices.media import Segment

__all__ = ["MAX_PRE_ROLL_S", "PreEventBuffer"]

#: Longest pre-roll a camera may be configured with (Axon allows 0 to 120 s).
MAX_PRE_ROLL_S = 120.0


class PreEventBuffer:
    """Segments covering at least :attr:`capacity_s` seconds behind the newest one.

    ``capacity_s = pre_roll_s + late_allowance_s + segment_seconds``. Appending drops
    segments from the left only while what remains still reaches back ``capacity_s``
    from the newest segment's end, so the buffer never holds less than its capacity
    once that much has been appended, and never more than one segment beyond it.
    """

    def __init__(
        self, pre_roll_s: float, segment_seconds: float, *, late_allowance_s: float = 0.0
    ) -> None:
        if not (math.isfinite(pre_roll_s) and 0.0 <= pre_roll_s <= MAX_PRE_ROLL_S):
            raise ValueError(f"pre_roll_s must be 0 to {MAX_PRE_ROLL_S:g} s, got {pre_roll_s!r}")
        if not (math.isfinite(segment_seconds) and segment_seconds > 0):
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds!r}")
        if not (math.isfinite(late_allowance_s) and late_allowance_s >= 0):
            raise ValueError(f"late_allowance_s must be >= 0, got {late_allowance_s!r}")
        self.pre_roll_s = float(pre_roll_s)
        self.capacity_s = pre_roll_s + late_allowance_s + segment_seconds
        self._segments: deque[Segment] = deque()

    def append(self, seg: Segment) -> None:
        """Add the newest segment and drop what is no longer needed.

        Segments must arrive in order (increasing ``seq``, not starting before the
        previous one ends): coverage is measured from the ends of the deque.
        """
        if self._segments:
            last = self._segments[-1]
            if seg.seq <= last.seq or seg.start < last.end:
                raise ValueError(
                    f"segment {seg.seq} ({seg.start}..{seg.end}) does not follow "
                    f"segment {last.seq} ({last.start}..{last.end})"
                )
        self._segments.append(seg)
        segs = self._segments
        while len(segs) > 1 and seg.end - segs[1].start >= self.capacity_s:
            segs.popleft()

    def since(self, t: float) -> list[Segment]:
        """Segments that end after ``t`` (so hold some media after ``t``), oldest first."""
        return [s for s in self._segments if s.end > t]

    def earliest_start(self) -> float | None:
        """Start of the oldest segment held, or None when empty."""
        return self._segments[0].start if self._segments else None

    def latest_end(self) -> float | None:
        """End of the newest segment held, or None when empty."""
        return self._segments[-1].end if self._segments else None

    @property
    def covered_s(self) -> float:
        """Seconds from the oldest segment's start to the newest one's end."""
        if not self._segments:
            return 0.0
        return self._segments[-1].end - self._segments[0].start

    def clear(self) -> None:
        """Forget everything (the camera was powered off)."""
        self._segments.clear()

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)
