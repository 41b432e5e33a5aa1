"""The scaling chart: measured intake throughput against ledger processes, from the
partitions benchmark's results, with the raw figures beside it.

    .venv/bin/python -m bench.scaling_chart [--results bench/results/partitions.json]
                                            [--out docs/scaling-throughput.png]

Each bar is one case of `python -m bench.partitions` (events/s with 1 and 2 ledger processes
on this machine); the table under the bars gives CPU per event (all our processes, and the
ledger processes alone) and how many of the machine's cores other work took during the case,
so a reader can tell a rate bound by the machine from one bound by the code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def draw(results: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = [f"{r['processes']} proc.\n{r['case'].split(', ', 1)[1]}" for r in results]
    rates = [r["events_per_s"] for r in results]
    figure, axes = plt.subplots(figsize=(9, 5.4))
    bars = axes.bar(range(len(results)), rates, color=["#4c72b0", "#dd8452", "#55a868"][
        :len(results)])
    axes.bar_label(bars, labels=[f"{rate:,}/s" for rate in rates], padding=3)
    axes.set_xticks([])  # the table's column labels name the cases
    axes.set_ylabel("usage events applied per second")
    axes.set_title(title, fontsize=10)
    rows = [[f"{r['cpu_us_per_event']:.0f}" for r in results],
            [f"{r['ledger_cpu_us_per_event']:.0f}" for r in results],
            [f"{r['cpu']['cores_other']:.2f}" for r in results]]
    table = axes.table(cellText=rows, rowLabels=["CPU us/event, all ours",
                                                 "CPU us/event, ledger",
                                                 "cores taken by others"],
                       colLabels=[label.replace("\n", ", ") for label in labels],
                       loc="bottom", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 1.6)
    figure.subplots_adjust(left=0.22, bottom=0.3)
    figure.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling_chart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/partitions.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/scaling-throughput.png")
    parser.add_argument("--title", default="Usage intake, 1 and 2 ledger processes, "
                        "2-core machine (bench/partitions.py)")
    args = parser.parse_args(argv)
    draw(json.loads(args.results.read_text()), args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
