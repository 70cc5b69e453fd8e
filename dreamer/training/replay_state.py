"""Replay contents in checkpoints (``checkpoint.replay=true``), through TorchRL's state_dict.

``TensorDictReplayBuffer.state_dict()`` holds the storage, the writer's cursor and the sampler;
it goes into the same checkpoint file as the weights, so one atomic write covers both. What it
does not hold is the storage's record of the last written step, which ``SliceSampler`` treats as
a trajectory end; and the resumed envs restart their episodes anyway. So on load the last stored
step of every env is marked ``("next", "truncated")`` and ``("next", "done")``: no slice joins
the pre-crash data to the first steps after the resume.
"""

from __future__ import annotations

from typing import Any

from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer

from dreamer.training.checkpoint import CheckpointError


def replay_state(replay: TensorDictReplayBuffer) -> dict[str, Any]:
    """The buffer's TorchRL state (references to its tensors, no copy)."""
    return replay.state_dict()


def load_replay_state(replay: TensorDictReplayBuffer, state: dict[str, Any], num_envs: int) -> int:
    """Fill ``replay`` (for ``num_envs`` envs) from :func:`replay_state`; returns its length.

    ``state`` is modified (it is a freshly loaded checkpoint's entry).
    """
    storage = state["_storage"]
    if not storage["initialized"] or not storage["_len"]:
        return 0
    data = TensorDict().load_state_dict(storage["_storage"], strict=False)
    capacity = replay.storage.max_size
    time_size, saved_envs = data.batch_size
    if time_size * saved_envs != capacity or saved_envs != num_envs:
        raise CheckpointError(
            f"The checkpoint's replay holds {time_size} steps x {saved_envs} envs but this run has "
            f"replay.capacity={capacity} and env.num_envs={num_envs}; resume with the same values, or "
            "with checkpoint.replay=false (the replay is then re-filled)."
        )
    last = (int(state["_writer"]["_cursor"]) - 1) % time_size
    for key in (("next", "truncated"), ("next", "done")):
        data.get(key)[last] = True
    storage["_storage"] = data.to(replay.storage.device).state_dict()
    replay.load_state_dict(state)
    return len(replay)
