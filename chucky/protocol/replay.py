"""The replay buffer of the ``seq`` extension (docs/protocol.md section 10), without I/O.

A session whose client announced ``seq`` numbers every frame it sends (``"seq": n``, 1, 2, ...)
and keeps the last ones here, bounded in frames and in bytes, oldest dropped first, so that a
client that comes back on a new socket with ``lastSeq`` gets exactly the frames after it. The
client's ``ack`` lets the buffer forget what it has.

The frames held are contiguous: ``frames[i]`` has ``seq`` ``first + i``, so finding where a
replay starts is arithmetic, not a search.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["DEFAULT_REPLAY_BYTES", "DEFAULT_REPLAY_FRAMES", "ReplayBuffer"]

DEFAULT_REPLAY_FRAMES: Final = 4096
DEFAULT_REPLAY_BYTES: Final = 4 * 1024 * 1024


class ReplayBuffer:
    """The last frames sent on a session, by ``seq`` (see the module docstring).

    Args:
        max_frames: Frames kept at most (at least 1).
        max_bytes: Characters of frames kept at most; the newest frame is always kept, whatever
            its size.
    """

    __slots__ = ("_frames", "_size", "first", "last", "max_bytes", "max_frames")

    def __init__(
        self, max_frames: int = DEFAULT_REPLAY_FRAMES, max_bytes: int = DEFAULT_REPLAY_BYTES
    ) -> None:
        self.max_frames = max(1, max_frames)
        self.max_bytes = max(0, max_bytes)
        self._frames: deque[str] = deque()
        self._size = 0
        self.first = 1
        """The ``seq`` of the oldest frame held (``last + 1`` when none is)."""
        self.last = 0
        """The ``seq`` of the newest frame ever added (0: none yet)."""

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def size(self) -> int:
        """Characters of the frames held."""
        return self._size

    def append(self, seq: int, text: str) -> None:
        """Keep the frame ``seq`` (the next one: ``last + 1``), dropping the oldest beyond the
        bounds."""
        assert seq == self.last + 1, "frames are appended in seq order"
        self.last = seq
        frames = self._frames
        frames.append(text)
        self._size += len(text)
        while len(frames) > self.max_frames or (self._size > self.max_bytes and len(frames) > 1):
            self._size -= len(frames.popleft())
            self.first += 1

    def since(self, last_seq: int) -> list[tuple[int, str]] | None:
        """The frames after ``last_seq``, oldest first; ``None`` when some of them are no
        longer held (or ``last_seq`` names a frame never sent)."""
        if last_seq > self.last or last_seq < 0:
            return None
        if last_seq + 1 < self.first:
            return None
        start = last_seq + 1 - self.first
        return [(self.first + i, self._frames[i]) for i in range(start, len(self._frames))]

    def ack(self, seq: int) -> None:
        """The client has every frame up to ``seq``: forget them."""
        frames = self._frames
        upto = min(seq, self.last)
        while frames and self.first <= upto:
            self._size -= len(frames.popleft())
            self.first += 1
