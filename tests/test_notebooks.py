"""The notebooks run top to bottom on a checkpoint produced here; a cell error fails CI."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import load_config
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


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
    notebook = nbformat.read(ROOT / "notebooks" / "imagination_rollouts.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit notebooks stripped"
    )
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(o.get("output_type") == "display_data" for o in outputs), "no figure was drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "open-loop RMSE" in text and "mean imagined return per start state" in text
