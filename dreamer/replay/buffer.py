"""Replay: TorchRL buffer over ``[num_envs, time]`` storage with slice sampling.

Card fix 3 lives in :func:`to_sequences` (one ``replay.sample``) and in :func:`sample_sequences`
(the training batches, which applies it to the sampler's indices):
``SliceSampler(strict_length=False)`` returns fewer elements than asked whenever a slice meets an
episode end, so the flat sample is truncated to a multiple of ``batch_length`` before the
reshape. Rows may then hold pieces of several slices; the sampler marks every slice start with
``is_init`` (OR-ed with the stored episode starts), and the RSSM filter restarts at each one, so
no state leaks across a join.

The sampler pads short slices (``pad_output=True``) and both functions drop the padding again,
which gives the very steps TorchRL's ragged output holds, in the same order, for less host work:
a ragged sample that meets a trajectory shorter than ``batch_length`` (there is always one:
episode ends, the write cursor) builds its index slice by slice, with a host-device sync per
slice (``torch.arange`` of a device scalar), while the padded index is built in one vectorised
pass and dropping the padding costs one ``nonzero`` (one sync).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

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
REWARD_KEY = ("next", "reward")
# Where SliceSampler(pad_output=True) marks real (True) vs padding (False) steps.
PADDING_MASK = ("collector", "mask")
# False where ("next", "policy") is not the episode's true final observation (an Isaac Lab version
# without compute_final_obs): the world model skips those reconstruction targets. Envs that always
# return the true final observation (the embedded MuJoCo backend) do not emit it.
FINAL_OBS_VALID = ("next", "final_obs_valid")
# Slices drawn per training batch, as a multiple of its rows (see sample_sequences).
SAMPLE_MARGIN = 1.5
# sample_sequences asks for more steps than the buffer's own batch size on purpose; TorchRL warns
# about that on every such call.
warnings.filterwarnings("ignore", message="Got conflicting batch_sizes in constructor")


def make_replay_buffer(
    capacity: int, batch_size: int, batch_length: int, device: str
) -> TensorDictReplayBuffer:
    """Buffer of ``capacity`` transitions; each sample is ``batch_size * batch_length`` steps."""
    sampler = SliceSampler(
        slice_len=batch_length,
        # Episode boundaries are found by scanning the whole storage; keep them until the next
        # extend (TorchRL drops the cache when the storage changes) instead of rescanning on every
        # sample: a learner draws tens of samples between two collections at Isaac scale.
        cache_values=True,
        end_key=("next", "done"),
        strict_length=False,
        pad_output=True,  # see the module docstring: dropped again in to_sequences
        truncated_key=("next", "truncated"),
    )
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity, device=torch.device(device), ndim=2),
        sampler=sampler,
        batch_size=batch_size * batch_length,
    )


def select_for_storage(
    batch: TensorDictBase, obs_keys: Sequence[str] = (), reward_scale: float = 1.0
) -> TensorDictBase:
    """Keep only :data:`STORED_KEYS` of a collector batch ``[N, T]``, plus the model's ``obs_keys``.

    Camera frames are stored only when the world model reads them (``model.obs_keys``).
    ``("next", "final_obs_valid")`` is filled with ``True`` for envs that do not emit it.
    The stored ``("next", "reward")`` is multiplied by ``reward_scale``; ``batch`` is unchanged.
    """
    if FINAL_OBS_VALID not in batch.keys(True):
        done = batch.get(("next", "done"))
        batch = batch.clone(False).set(FINAL_OBS_VALID, torch.ones_like(done, dtype=torch.bool))
    extra = [key for key in obs_keys if key not in STORED_KEYS]
    stored = batch.select(*STORED_KEYS, *extra, *(("next", key) for key in extra))
    if reward_scale != 1.0:
        stored.set(REWARD_KEY, stored.get(REWARD_KEY) * reward_scale)
    return stored


def drop_padding(sample: TensorDictBase) -> TensorDictBase:
    """The real steps of a padded slice sample, in order: TorchRL's ragged sample."""
    mask = sample.get(PADDING_MASK, None)
    if mask is None:  # no slice met a short trajectory
        return sample
    sample = sample.exclude(PADDING_MASK)
    if sample.get(PADDING_MASK[0]).is_empty():
        sample = sample.exclude(PADDING_MASK[0])
    # One nonzero for all entries (a boolean index would cost one sync per entry).
    return sample[mask.nonzero().squeeze(-1)]


def to_sequences(sample: TensorDictBase, batch_length: int) -> TensorDictBase:
    """Drop padding, truncate a flat slice sample to a multiple of ``batch_length`` and reshape
    to ``[B, T]``.

    Every row's first step is marked ``is_init`` too: a row may begin in the middle of a slice.
    """
    sample = drop_padding(sample)
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


def sample_sequences(
    replay: TensorDictReplayBuffer, batch_size: int, batch_length: int, device: str | torch.device
) -> TensorDictBase:
    """Exactly ``[batch_size, batch_length]`` sequences on ``device``, topping up short samples.

    A slice sample may yield fewer full rows than asked (see :func:`to_sequences`); a learner
    replayed as a CUDA graph needs the same shape every update, so further samples fill the
    missing rows. Each piece is truncated to whole rows on its own, so every join between
    pieces lies on a row boundary, and every row's first step is marked ``is_init``.

    The result is ``torch.cat`` of :func:`to_sequences` of each ``replay.sample``, cut to
    ``batch_size`` rows, less the ``index`` entry (where each step was read; nothing uses it),
    and ``tests/test_replay_sampling.py`` pins that. It is built from the sampler's indices
    instead: the real steps of every piece are picked from the index and the storage is read
    once, at the kept steps, where ``replay.sample`` reads it at every padded step, the real
    steps are then copied out of that, and the pieces concatenated. That halves the Python calls
    of a sample (2,537 to 1,216; ``bench/bench_sampling.py --device cpu --num-envs 64``), host
    time of the training thread, which the async pipeline shares with the collection thread.
    """
    # Slices that meet an episode end are short, and the sample loses their padding and its
    # truncation to whole rows: asked for exactly batch_size rows, nearly every batch needed a
    # second draw (2.0 draws per batch with episodes ending at rate 1/200, each ~1.8 ms of the
    # training thread's host time on the H100 machine; bench/bench_sampling.py). Drawing
    # SAMPLE_MARGIN times the slices makes one draw enough almost always; the surplus rows are
    # dropped (slices are drawn independently, so which ones are dropped biases nothing).
    steps = math.ceil(batch_size * SAMPLE_MARGIN) * batch_length
    indices, infos, rows = [], [], 0
    while rows < batch_size:
        index, info = replay.sampler.sample(replay.storage, steps)
        index = index if isinstance(index, tuple) else (index,)  # one tensor per storage dim
        mask = info.pop(PADDING_MASK, None)
        # One nonzero (one sync) for the real steps, as in drop_padding.
        kept = torch.arange(steps, device=index[0].device) if mask is None else mask.nonzero()
        kept = kept.reshape(-1)[: (kept.shape[0] // batch_length) * batch_length]
        if kept.numel() == 0:
            raise RuntimeError(
                f"The replay sample has fewer real steps than batch_length={batch_length}: "
                "collect more frames before training (raise init_random_frames)."
            )
        indices.append(tuple(part[kept] for part in index))
        infos.append({key: value[kept] for key, value in info.items()})
        rows += kept.shape[0] // batch_length
    wanted = batch_size * batch_length
    index = tuple(torch.cat(parts)[:wanted] for parts in zip(*indices, strict=True))
    batch = replay.storage[index].exclude("index")
    for key in infos[0]:
        batch.set(key, torch.cat([info[key] for info in infos])[:wanted])
    sequences = batch.reshape(batch_size, batch_length)
    is_init = sequences.get("is_init").clone()
    is_init[:, 0] = True
    sequences.set("is_init", is_init)
    return sequences.to(device)
