"""One time constant for every wait in the tests (scaled by CHUCKY_TEST_TIME_SCALE)."""

from __future__ import annotations

import os

SCALE = float(os.environ.get("CHUCKY_TEST_TIME_SCALE", "1"))
TICK = 0.05 * SCALE
"""A short wait: long enough for a loopback round trip on a loaded machine."""


def ticks(n: float) -> float:
    return n * TICK
