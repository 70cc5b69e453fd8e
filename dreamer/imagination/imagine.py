"""The imagination rollout the actor loss asks for, as one lean loop over the prior.

TorchRL's ``EnvBase.rollout`` steps the imagination env through its generic machinery: at every
step it writes done/terminated/truncated flags, moves ``next`` entries with ``step_mdp`` and runs
the reward head on that step's state. For a fixed-horizon dream nothing of that depends on the
step, so :func:`imagine` runs only what does: the actor, the block GRU and the prior sample. The
reward head runs once on all imagined states after the loop, and the weight gradients of the
layers that want one (the actor's MLP and, outside TorchRL's actor loss, which holds the world
model out, the GRU and prior head) are computed once per layer after the loop's backward pass
(:mod:`dreamer.world_model.deferred_grads`). On a GPU, where the update's time is set by its
number of kernels, this removes a few hundred of them per update. Where the fused kernels run,
the actor's TanhNormal sample is one kernel instead of TorchRL's distribution module
(:func:`~dreamer.actor_critic.actor.fused_action_sampler`), and the loop is
:func:`~dreamer.imagination.fused_dream.fused_dream`, whose kernels write each reader its own
tensor.

It returns what ``rollout(..., auto_reset=False, break_when_any_done=False)`` returns, with the
same random draws in the same order (actor sample, then prior sample, at every step), so values
match TorchRL's rollout (``tests/test_imagine.py``).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from dreamer.actor_critic.actor import ActionSampler, fused_action_sampler
from dreamer.imagination.fused_dream import fused_dream
from dreamer.world_model.deferred_grads import DeferredLayers, compute_dtype, worth_deferring
from dreamer.world_model.fast_layers import linear_layers, norm_scales
from dreamer.world_model.held_out_casts import cast_once
from dreamer.world_model.rssm_parts import PriorParts
from dreamer.world_model.rssm_step import gru_layers, gru_norms, imagine_step

DONE_KEYS = ("done", "terminated", "truncated")


def imagine(
    parts: PriorParts,
    reward: nn.Module,
    policy: TensorDictModuleBase,
    start: TensorDictBase,
    steps: int,
) -> TensorDictBase:
    """Dream ``steps`` steps from ``start`` (``state``/``belief`` ``[N, ...]``) with ``policy``.

    Args:
        parts: the prior's sub-networks (:func:`~dreamer.world_model.rssm_parts.rssm_parts`).
        reward: ``reward(state, belief) -> [..., 1]`` in reward units.
        policy: the actor; reads ``state``/``belief``, writes at least ``action``.

    Returns:
        ``[N, steps]``: the policy's entries and ``state``/``belief`` at each step, done flags
        (all False), and under ``next`` the next ``state``/``belief``, ``reward`` and done flags.
    """
    state, belief = start.get("state"), start.get("belief")
    # Modules of the policy that can run their layers with the loop's deferred gradients.
    heads = [module for module in policy.modules() if hasattr(module, "loop_layers")]
    head_layers = [module.loop_layers for module in heads]
    layers = gru_layers(parts) + linear_layers(parts.head)
    layers += [pair for stack in head_layers for pair in linear_layers(stack)]
    deferred = None
    if worth_deferring(state.shape[:-1].numel(), layers):
        norms = gru_norms(parts) + norm_scales(parts.head)
        norms += [w for stack in head_layers for w in norm_scales(stack)]
        deferred = DeferredLayers(layers, compute_dtype(state), norms)
        state, belief = deferred.anchor(state, belief)
    sampler = fused_action_sampler(policy, state)
    try:
        for head in heads:
            head.deferred = deferred
        with cast_once():  # the held-out prior's weights cast once, not at every step
            if sampler is not None and start.batch_dims == 1 and steps > 0:
                rollout = fused_dream(parts, sampler, state, belief, steps, deferred)
            else:
                rollout = _stepwise_dream(parts, policy, sampler, state, belief, steps, deferred)
    finally:
        for head in heads:
            head.deferred = None
    following = rollout.get("next")
    following.set("reward", reward(following.get("state"), following.get("belief")))
    done = torch.zeros(*rollout.batch_size, 1, dtype=torch.bool, device=state.device)
    for key in DONE_KEYS:
        rollout.set(key, done)
        following.set(key, done)
    return rollout


def _stepwise_dream(
    parts: PriorParts,
    policy: TensorDictModuleBase,
    sampler: ActionSampler | None,
    state: torch.Tensor,
    belief: torch.Tensor,
    steps: int,
    deferred: DeferredLayers | None,
) -> TensorDictBase:
    """The dream one step at a time, stacked after the loop (what :func:`imagine` completes)."""
    batch = state.shape[:-1]
    scaled = sampler is not None  # the sampler also gives the action as the world model scales it
    visited = []
    for _ in range(steps):
        if sampler is None:
            step = policy(TensorDict({"state": state, "belief": belief}, batch))
            action = step.get("action")
        else:
            entries, action = sampler((state, belief))
            step = TensorDict({"state": state, "belief": belief, **entries}, batch)
        state, belief = imagine_step(parts, state, belief, action, deferred, scaled)
        visited.append(step.set(("next", "state"), state).set(("next", "belief"), belief))
    return torch.stack(visited, len(batch))
