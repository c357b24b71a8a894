"""Summarise a ``py-spy record -f raw`` profile: the top functions by own and by total time.

Usage::

    py-spy record -r 500 -f raw -o stream.raw -- python bench/profile_client.py stream --no-profile
    python bench/flame_summary.py stream.raw [--top 25] [--within chucky/client/connection.py]

``--within`` keeps only the samples whose stack passes through a frame whose name contains that
text (e.g. the reader task), so the set-up phase of the profiled script does not count.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from _harness import table

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``: aggregate over line numbers."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match['func']} ({match['file']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--within", default=None)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in args.raw.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        frames = match["stack"].split(";")
        if args.within and not any(args.within in f for f in frames):
            continue
        count = int(match["count"])
        samples += count
        names = [frame_name(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            total[name] += count
    print(f"{samples} samples" + (f" within {args.within!r}" if args.within else ""))
    for title, counter in (("own", own), ("total (inclusive)", total)):
        rows = [
            [f"{100 * count / samples:.1f}", name] for name, count in counter.most_common(args.top)
        ]
        print()
        print(table(["% of samples", f"top by {title}"], rows))


if __name__ == "__main__":
    main()
