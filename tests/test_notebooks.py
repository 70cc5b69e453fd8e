"""The notebooks run top to bottom on a checkpoint produced here; a cell error fails CI."""

from __future__ import annotations

import pytest
from conftest import execute_notebook, load_config


@pytest.mark.slow
def test_imagination_notebook_runs_on_a_fresh_checkpoint(tmp_path, monkeypatch):
    from dreamer.training.loop import train

    cfg = load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        f"logdir={tmp_path}/run",
        "log.progress_bar=false",
    )
    cfg.compile.enabled = False
    train(cfg)
    monkeypatch.setenv("DREAMER_CHECKPOINT", str(tmp_path / "run" / "checkpoints" / "last.pt"))
    outputs = execute_notebook("imagination_rollouts.ipynb")
    assert any(o.get("output_type") == "display_data" for o in outputs), "no figure was drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "open-loop RMSE" in text and "mean imagined return per start state" in text
