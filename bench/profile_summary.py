"""Where the time goes, from py-spy's collapsed stacks (``python -m bench --profile`` writes
them to bench/results/<name>.txt): ``python -m bench.profile_summary FILE [--top N]``.

Prints, as a share of all samples: each thread, then the functions with the most inclusive
time (the function or anything it calls) and the most self time (the function itself).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")


def frames_of(stack: str) -> list[str]:
    # "fn (path/file.py:123)" -> "fn (path/file.py)": lines of one function count together.
    return [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]


def summarize(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = frames_of(stack)
        total += count
        threads[frames[0] if frames[0].startswith(("thread", "process")) else "(all)"] += count
        for frame in set(frames):
            inclusive[frame] += count
        self_time[frames[-1]] += count
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("threads", threads), ("inclusive", inclusive), ("self", self_time)):
        lines.append(f"-- {title}")
        lines.extend(f"{100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(summarize(args.file, args.top))


if __name__ == "__main__":
    main()
