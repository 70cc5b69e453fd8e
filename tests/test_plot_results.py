"""The results plot script reads both trainers' TensorBoard logs and draws every run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from plot_results import mean_curve, plot_groups, plot_published_results, read_curve  # noqa: E402


def _write_run(path: Path, returns: list[float], seconds_per_frame: float) -> None:
    writer = SummaryWriter(str(path))
    for i, value in enumerate(returns):
        frames = (i + 1) * 1000
        writer.add_scalar("episode/return", value, frames)
        writer.add_scalar("time/elapsed_s", frames * seconds_per_frame, frames)
    writer.close()


def test_curve_pairs_returns_with_wall_seconds(tmp_path):
    _write_run(tmp_path / "a", [1.0, 2.0, 3.0], seconds_per_frame=0.01)
    curve = read_curve(tmp_path / "a")
    np.testing.assert_allclose(curve.frames, [1000, 2000, 3000])
    np.testing.assert_allclose(curve.seconds, [10, 20, 30])
    np.testing.assert_allclose(curve.returns, [1, 2, 3])


def test_mean_curve_covers_only_the_shared_range():
    grid, mean = mean_curve(
        [np.array([0.0, 10.0]), np.array([5.0, 20.0])],
        [np.array([0.0, 10.0]), np.array([0.0, 0.0])],
        points=6,
    )
    np.testing.assert_allclose(grid, [5, 6, 7, 8, 9, 10])
    np.testing.assert_allclose(mean, grid / 2)


def test_plot_groups_writes_a_png_and_rejects_foreign_logs(tmp_path):
    _write_run(tmp_path / "d0", [0.0, 1.0, 2.0], 0.01)
    _write_run(tmp_path / "d1", [0.5, 1.5, 2.5], 0.02)
    _write_run(tmp_path / "ppo", [1.0, 3.0, 4.0], 0.001)
    out = tmp_path / "fig.png"
    plot_groups(
        {"Dreamer": [tmp_path / "d0", tmp_path / "d1"], "PPO": [tmp_path / "ppo"]}, out, "t", 3.0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SummaryWriter(str(tmp_path / "other")).add_scalar("loss", 1.0, 0)
    with pytest.raises(ValueError, match="episode/return"):
        read_curve(tmp_path / "other")


def test_published_plots_regenerate_from_the_stored_runs(tmp_path):
    written = plot_published_results(out_dir=tmp_path)
    assert sorted(p.name for p in written) == ["ant.png", "cartpole.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
