"""Replay: TorchRL buffer over ``[num_envs, time]`` storage with slice sampling.

Card fix 3 lives in :func:`to_sequences`: ``SliceSampler(strict_length=False)`` returns fewer
elements than asked whenever a slice meets an episode end, so the flat sample is truncated to a
multiple of ``batch_length`` before the reshape. Rows may then hold pieces of several slices;
the sampler marks every slice start with ``is_init`` (OR-ed with the stored episode starts), and
the RSSM filter restarts at each one, so no state leaks across a join.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer

# What the learner needs from a collected step; everything else (acting state, episode stats,
# distribution params) is dropped before storage.
STORED_KEYS = (
    "policy",
    "action",
    "is_init",
    ("next", "policy"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
    ("next", "final_obs_valid"),
)
# False where ("next", "policy") is not the episode's true final observation (an Isaac Lab version
# without compute_final_obs): the world model skips those reconstruction targets. Envs that always
# return the true final observation (the embedded MuJoCo backend) do not emit it.
FINAL_OBS_VALID = ("next", "final_obs_valid")


def make_replay_buffer(
    capacity: int, batch_size: int, batch_length: int, device: str
) -> TensorDictReplayBuffer:
    """Buffer of ``capacity`` transitions; each sample is ``batch_size * batch_length`` steps."""
    sampler = SliceSampler(
        slice_len=batch_length,
        end_key=("next", "done"),
        strict_length=False,
        truncated_key=("next", "truncated"),
    )
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity, device=torch.device(device), ndim=2),
        sampler=sampler,
        batch_size=batch_size * batch_length,
    )


def select_for_storage(batch: TensorDictBase) -> TensorDictBase:
    """Keep only :data:`STORED_KEYS` of a collector batch ``[N, T]``.

    ``("next", "final_obs_valid")`` is filled with ``True`` for envs that do not emit it.
    """
    if FINAL_OBS_VALID not in batch.keys(True):
        done = batch.get(("next", "done"))
        batch = batch.clone(False).set(FINAL_OBS_VALID, torch.ones_like(done, dtype=torch.bool))
    return batch.select(*STORED_KEYS)


def to_sequences(sample: TensorDictBase, batch_length: int) -> TensorDictBase:
    """Truncate a flat slice sample to a multiple of ``batch_length`` and reshape to ``[B, T]``.

    Every row's first step is marked ``is_init`` too: a row may begin in the middle of a slice.
    """
    usable = (sample.shape[0] // batch_length) * batch_length
    if usable == 0:
        raise RuntimeError(
            f"The replay sample has {sample.shape[0]} steps, fewer than batch_length={batch_length}: "
            "collect more frames before training (raise init_random_frames)."
        )
    sequences = sample[:usable].reshape(-1, batch_length)
    is_init = sequences.get("is_init").clone()
    is_init[:, 0] = True
    sequences.set("is_init", is_init)
    return sequences
