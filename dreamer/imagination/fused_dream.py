"""The dream's loop where the fused kernels run: every tensor a step makes has one reader.

In :func:`~dreamer.imagination.imagine.imagine`'s plain loop, a step's next belief is read by
six ops: the prior head, the next step's GRU (its gate update and two matmuls), the actor and
the rollout's stacks; its sampled state by four. Autograd sums the gradients of a tensor's
readers in an add kernel per extra reader and, where a bf16 matmul read a float32 tensor, casts
it forward and casts the gradient back: 5 casts forward, and 5 casts and 7 adds backward, at
every imagined step (ATen ops counted under Triton's interpreter, bf16 autocast, as TorchRL's
actor loss runs the dream; ``tests/test_fused_dream.py``). Here the GRU and sample kernels write one tensor per reader, each in its
reader's dtype, the rollout's entries straight into their trajectory buffers
(:class:`~dreamer.imagination.trajectory.Trajectory`, which also drops the stacks' copies), and
their backward kernels sum the readers' gradients themselves.

Same values and random draws as the plain loop (``tests/test_imagine.py``).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from dreamer.actor_critic.actor import ActionSampler
from dreamer.imagination.trajectory import Trajectory
from dreamer.world_model.belief_branch import belief_branch
from dreamer.world_model.deferred_grads import DeferredLayers, compute_dtype
from dreamer.world_model.filled_buffers import filled
from dreamer.world_model.fused_sample import fused_sample_into
from dreamer.world_model.gru_features import gru_features
from dreamer.world_model.rssm_parts import PriorParts
from dreamer.world_model.rssm_step import (
    FilterBelief,
    action_features,
    belief_products,
    dream_gru_step,
    prior_logits,
    with_projection_columns,
)
from dreamer.world_model.sampling import race_noise


def fused_dream(
    parts: PriorParts,
    sampler: ActionSampler,
    state: torch.Tensor,
    belief: torch.Tensor,
    steps: int,
    deferred: DeferredLayers | None,
) -> TensorDictBase:
    """``steps`` steps from ``[N, ...]`` ``state``/``belief`` with the actor's fused ``sampler``
    (:func:`~dreamer.actor_critic.actor.fused_action_sampler`).

    Returns ``[N, steps]``: the sampler's entries, ``state``/``belief`` and under ``next`` the
    next ``state``/``belief`` (what :func:`~dreamer.imagination.imagine.imagine` completes).
    """
    # The matmuls' dtype: a copy in it is what a bf16 matmul would have cast.
    matmul_dtype = compute_dtype(belief) or belief.dtype
    beliefs, next_beliefs = Trajectory(belief, steps, True), Trajectory(belief, steps, False)
    states, next_states = Trajectory(state, steps, True), Trajectory(state, steps, False)

    def copy(like: torch.Tensor, dtype: torch.dtype = matmul_dtype) -> torch.Tensor:
        return torch.empty(like.shape, dtype=dtype, device=like.device)

    widths = [state.shape[-1], belief.shape[-1]]
    gru_belief, gru_state = FilterBelief(belief, belief, belief), state
    actor_input = (state, belief)  # then the model state the kernels write for the actor
    # The GRU's features of every step in one buffer its projections write into (no
    # concatenation per step; None where they cannot, and the step concatenates them).
    all_features = gru_features(parts, state, (state.shape[0], steps))
    # The two products of each next belief, and then the belief and state projections, run on
    # a stream of their own beside the prior head, sample, actor and action projection
    # (dreamer/world_model/belief_branch.py); the first step's run in the GRU step.
    branch, products = belief_branch(belief, "dream"), None
    entries = []
    for step in range(steps):
        step_entries, action = sampler(actor_input)
        entries.append(step_entries)
        features = None if all_features is None else all_features.step(step)
        action_columns = None if features is None else features.columns(2)
        action_feature = action_features(parts, action, deferred, scaled=True, out=action_columns)
        more = step + 1 < steps
        if more:  # the next actor's input [state | belief], its columns written by the kernels
            model_state = state.new_empty(state.shape[0], sum(widths), dtype=matmul_dtype)
        # The next belief for: the next entries, the prior head, then (if a step follows) the
        # GRU's update, its two matmuls, the actor, and the rollout's belief entries.
        outputs = [next_beliefs.slot(step), copy(belief)]
        if more:
            outputs += [copy(belief, belief.dtype), copy(belief), copy(belief)]
            outputs += [model_state[:, widths[0] :], beliefs.slot(step)]
        branch.join()
        following = dream_gru_step(
            parts, gru_state, gru_belief, action_feature, deferred, outputs, features, products
        )
        if more:
            gru_belief = FilterBelief(*following[2:5])
            with branch.ahead(gru_belief.own, gru_belief.projection) as made:
                products = belief_products(parts, gru_belief, deferred)
                made.extend((products.projection, products.own))
        next_beliefs.record(following[0])
        logits = prior_logits(parts, following[1], deferred)
        noise = race_noise(logits.shape, logits)
        # The sampled state for: the next entries, then the GRU's projection, the actor and the
        # rollout's state entries.
        outputs = [next_states.slot(step)]
        if more:
            outputs += [copy(state), model_state[:, : widths[0]], states.slot(step)]
        sample = fused_sample_into(logits, parts.unimix, noise, outputs)
        next_states.record(sample[0])
        if more:
            gru_state = sample[1]
            if all_features is not None:  # the next step's projections, once the state exists
                with branch.ahead(gru_state) as made:
                    products = with_projection_columns(
                        parts,
                        gru_state,
                        gru_belief,
                        deferred,
                        all_features.step(step + 1),
                        products,
                    )
                    made.extend(products.columns)
            pieces = [sample[2], following[5]]
            actor_input = filled(model_state, pieces, lambda grad: grad.split(widths, -1))
            beliefs.record(following[6])
            states.record(sample[3])
    batch = state.shape[:1]
    rollout = torch.stack([TensorDict(e, batch) for e in entries], 1)
    rollout.set("state", states.assemble(state)).set("belief", beliefs.assemble(belief))
    rollout.set(("next", "state"), next_states.assemble())
    return rollout.set(("next", "belief"), next_beliefs.assemble())
