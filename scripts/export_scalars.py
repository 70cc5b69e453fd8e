"""Print (and optionally save as CSV) the scalars of a TensorBoard run directory.

Usage: python scripts/export_scalars.py RUN_DIR [--tags episode/return ...] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(
    run_dir: Path, tags: list[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` for every scalar tag (or the ones asked for)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    wanted = tags or accumulator.Tags()["scalars"]
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in wanted
        if tag in accumulator.Tags()["scalars"]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tags", nargs="*")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    scalars = read_scalars(args.run_dir, args.tags)
    for tag, points in scalars.items():
        last = points[-1] if points else (None, None)
        print(f"{tag:40s} n={len(points):5d} last step={last[0]} value={last[1]}")
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["tag", "step", "value"])
            for tag, points in scalars.items():
                writer.writerows((tag, step, value) for step, value in points)


if __name__ == "__main__":
    main()
