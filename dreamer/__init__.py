"""DreamerV3 on TorchRL for Isaac Lab tasks (with an embedded MuJoCo replica)."""

__version__ = "0.1.0"
