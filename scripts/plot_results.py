"""Plot episode return against env steps and against wall clock from TensorBoard run directories.

Each curve group is one method (several seeds): thin lines per seed, a thick line for their mean
on a common grid (up to the shortest seed). Works on the Dreamer trainer's and
``bench/ppo_rsl_rl.py``'s logs alike: both write ``episode/return`` and ``time/elapsed_s`` with
env frames as the step.

    python scripts/plot_results.py                  # regenerate docs/results/*.png from docs/results/runs
    python scripts/plot_results.py --out ant.png --title Ant --target 100 \\
        --group "Dreamer=runs/a-s0,runs/a-s1" --group "PPO=runs/ppo-s0"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from export_scalars import read_scalars  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
RETURN_TAG, ELAPSED_TAG = "episode/return", "time/elapsed_s"


@dataclass
class Curve:
    """One run's episode returns at the env frames (and wall seconds) they were logged."""

    frames: np.ndarray
    seconds: np.ndarray
    returns: np.ndarray


def read_curve(run_dir: Path) -> Curve:
    """Episode returns of one run; wall seconds come from ``time/elapsed_s`` at the same frames."""
    scalars = read_scalars(run_dir, [RETURN_TAG, ELAPSED_TAG])
    if RETURN_TAG not in scalars or ELAPSED_TAG not in scalars:
        raise ValueError(
            f"{run_dir} lacks {RETURN_TAG!r} or {ELAPSED_TAG!r}: point --group at a run directory "
            "written by train_dreamer.py or bench/ppo_rsl_rl.py (the folder with the event file)."
        )
    frames, returns = np.array(scalars[RETURN_TAG], dtype=np.float64).T
    clock_frames, clock_seconds = np.array(scalars[ELAPSED_TAG], dtype=np.float64).T
    seconds = np.interp(frames, clock_frames, clock_seconds)
    return Curve(frames=frames, seconds=seconds, returns=returns)


def mean_curve(xs: list[np.ndarray], ys: list[np.ndarray], points: int = 200):
    """Mean of several curves on a shared grid from the largest start to the smallest end."""
    start, end = max(x[0] for x in xs), min(x[-1] for x in xs)
    if end <= start:
        return np.array([]), np.array([])
    grid = np.linspace(start, end, points)
    return grid, np.mean([np.interp(grid, x, y) for x, y in zip(xs, ys, strict=True)], axis=0)


def plot_groups(
    groups: dict[str, list[Path]], out: Path, title: str, target: float | None = None
) -> None:
    """One PNG, two panels: return vs env steps (millions) and return vs wall-clock minutes."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for color, (label, runs) in zip(plt.cm.tab10.colors, groups.items(), strict=False):
        curves = [read_curve(run) for run in runs]
        for axis, x_of in ((axes[0], "frames"), (axes[1], "seconds")):
            scale = 1e6 if x_of == "frames" else 60.0
            xs = [getattr(curve, x_of) / scale for curve in curves]
            ys = [curve.returns for curve in curves]
            for x, y in zip(xs, ys, strict=True):
                axis.plot(x, y, color=color, alpha=0.35, linewidth=0.8)
            grid, mean = mean_curve(xs, ys)
            axis.plot(grid, mean, color=color, linewidth=2.0, label=f"{label} (n={len(runs)})")
    axes[0].set_xlabel("env steps (millions)")
    axes[1].set_xlabel("wall clock (minutes of training)")
    axes[0].set_ylabel("episode return (env units)")
    for axis in axes:
        if target is not None:
            axis.axhline(target, color="grey", linestyle="--", linewidth=1.0, label="target")
        axis.grid(alpha=0.3)
    axes[1].legend(loc="best", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def plot_published_results(runs: Path = RESULTS / "runs", out_dir: Path = RESULTS) -> list[Path]:
    """Regenerate the plots of docs/results.md from the run directories stored beside it."""
    figures = {
        "ant.png": (
            "Isaac-Ant-v0 (embedded), 4096 envs, one H100",
            100.0,
            {
                "Dreamer (7c3da88)": "ant-dreamer-s*",
                "Dreamer (258e8e5, fast learner)": "ant-dreamer-fast-s*",
                "Dreamer (258e8e5 / 5f30388, train ratio 6)": "ant-dreamer-tr6-s*",
                "PPO (rsl_rl)": "ant-ppo-s*",
            },
        ),
        "cartpole.png": (
            "Isaac-Cartpole-v0 (embedded), 4096 envs, one H100",
            None,
            {
                "Dreamer (7c3da88)": "cartpole-dreamer-s*",
                "Dreamer (5f30388, train ratio 3)": "cartpole-dreamer-fast-tr3-s*",
                "Dreamer (5f30388, train ratio 6)": "cartpole-dreamer-fast-tr6-s*",
                "PPO (rsl_rl)": "cartpole-ppo-s*",
            },
        ),
    }
    written = []
    for name, (title, target, patterns) in figures.items():
        groups = {label: sorted(runs.glob(pattern)) for label, pattern in patterns.items()}
        missing = [label for label, found in groups.items() if not found]
        if missing:
            raise FileNotFoundError(f"no runs for {missing} under {runs}")
        plot_groups(groups, out_dir / name, title, target)
        written.append(out_dir / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        help="LABEL=RUN_DIR[,RUN_DIR...] (repeat per method); none: the published results",
    )
    parser.add_argument("--out", type=Path, default=Path("results.png"))
    parser.add_argument("--title", default="")
    parser.add_argument("--target", type=float, default=None)
    args = parser.parse_args()
    if not args.group:
        for path in plot_published_results():
            print(path)
        return
    groups = {}
    for spec in args.group:
        label, _, dirs = spec.partition("=")
        if not dirs:
            parser.error(f"--group {spec!r}: expected LABEL=RUN_DIR[,RUN_DIR...]")
        groups[label] = [Path(d) for d in dirs.split(",")]
    plot_groups(groups, args.out, args.title, args.target)
    print(args.out)


if __name__ == "__main__":
    main()
