"""Embedded replicas of Isaac Lab tasks, one module per task, registered by Isaac task id."""

from __future__ import annotations

from dreamer.env.tasks.ant import ANT_SPEC
from dreamer.env.tasks.base import BatchedTask, TaskSpec
from dreamer.env.tasks.cartpole import CARTPOLE_SPEC

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (ANT_SPEC, CARTPOLE_SPEC)}

__all__ = ["TASKS", "TaskSpec", "BatchedTask", "ANT_SPEC", "CARTPOLE_SPEC"]
