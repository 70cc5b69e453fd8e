"""DreamerV3's losses with the actor-critic branch on its own CUDA stream.

Why not ``DreamerV3Loss.forward`` as it is: it runs the world-model loss, then the actor and
critic losses on imagination from the *detached* posterior states, all on one stream. The two
branches share nothing but those starts, so their backward passes never meet: the 64-step
filter's backward (hundreds of kernels of 16 rows each) and the 15-step imagination's backward
(likewise small kernels) are two independent chains. On a GPU the update is bound by the length
of its kernel chain, not by arithmetic (docs/benchmarks.md), so putting the second chain on
another stream lets the two run side by side. Autograd runs every backward op on the stream of its
forward op and syncs the streams where gradients cross, so one ``backward()`` keeps both chains
apart; CUDA-graph capture records the two streams as two parallel branches of the graph.

:func:`dreamer_losses` computes what ``DreamerV3Loss.forward`` computes, from the same
sub-losses, in the same order (so the random draws are the same), with the ``actor_loss`` and
``value_loss`` calls on ``side_stream``. The replay value loss stays on the main stream: its
gradient reaches the posterior features, so the world model's backward waits for it either way,
and it is cheap. The streams meet only where they must: imagination waits for the posterior
states (not for the world model's heads), and the replay critic's loss waits for the imagined
returns (not for the actor's and critic's passes after them), while its passes over the replayed
states, which need no return, run before them. With ``backward=True`` the backward pass
is run in pieces placed by the same rule (:mod:`dreamer.world_model.filter_cut`).
``tests/test_concurrent_loss.py`` checks the result against ``DreamerV3Loss.forward`` (CPU,
bitwise) and the graphed update with and without the side stream (CUDA);
``tests/test_filter_cut.py`` checks the pieces' gradients against one ``backward()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import DreamerV3Loss

from dreamer.actor_critic.losses import ReplayPredictions
from dreamer.replay.prefetch import keep_until_used
from dreamer.world_model.filter_cut import cut_filter_outputs

# CUDA runs ready kernels of a higher-priority stream (lower number) first, and a CUDA graph keeps
# each kernel's capture-time priority (PyTorch instantiates graphs with node priorities). The
# filter's backward is a chain of small latency-bound kernels; the imagination's backward is
# fewer, larger, bandwidth-bound ones that fill the GPU. With equal priorities the large ones
# crowd the chain out and it finishes long after them (docs/benchmarks.md), so the world model's
# branch runs above the actor-critic one (default 0). Async collection's acting stream stays above
# both (dreamer/collector/background.py).
WORLD_MODEL_PRIORITY = -1


def branch_stream(device: torch.device, enabled: bool = True) -> torch.cuda.Stream | None:
    """A new stream for the actor-critic branch on ``device`` (default priority, below
    :data:`WORLD_MODEL_PRIORITY`); ``None`` off CUDA or when off. Turns off autograd's
    (process-wide) warning about gradients accumulated across streams."""
    if not enabled or device.type != "cuda":
        return None
    # The critic runs on both streams (imagination on this one, the replay value loss on the
    # main one), so its parameters' gradients arrive from a stream other than their
    # accumulation node's. Autograd syncs the two, as it must; its warning about the mismatch
    # (printed at every run's first update) flags nothing to fix here.
    torch.autograd.graph.set_warn_on_accumulate_grad_stream_mismatch(False)
    return torch.cuda.Stream(device)


def _actor_input(loss: DreamerV3Loss, posterior: TensorDictBase, batch: int) -> TensorDict:
    """The detached posterior states, flattened to ``[B * T]``: where imagination starts."""
    keys = loss.actor_loss.tensor_keys
    state = posterior.get(("next", loss.tensor_keys.state)).detach()
    belief = posterior.get(("next", loss.tensor_keys.belief)).detach()
    return TensorDict(
        {
            keys.state: state.reshape(-1, state.shape[-1]),
            keys.belief: belief.reshape(-1, belief.shape[-1]),
        },
        [batch],
    )


class ReplayCriticParameters:
    """The critic's parameters as leaves of their own for the replay critic's loss, made on the
    world model's stream; :meth:`add_gradients` adds what they gathered to the parameters.

    Why: a parameter's gradient accumulates on the stream where autograd first saw it used, the
    actor-critic stream for the critic (imagination reads it there), and a ``backward()`` ends
    by making the calling stream wait for every stream it accumulated on (so that ``.grad`` is
    safe to read there; ``autograd.grad`` waits the same way for the streams of what it
    captures). Backpropagating the replay critic's loss into the critic itself would so make
    the world model's stream wait for everything queued on the branch by then -- the actor's
    and critic's losses after the imagined returns -- and the filter's backward, which needs
    only the returns, would start after them. These leaves share the parameters' storage and
    accumulate on the world model's stream.
    """

    def __init__(self, loss: DreamerV3Loss) -> None:
        self.params = loss.value_loss.value_model_params
        self.leaves = self.params.data.apply(lambda p: p.detach().requires_grad_(True))

    def add_gradients(self) -> None:
        """Adds each leaf's gradient to its parameter's ``.grad`` (or sets it), as accumulation
        would have."""
        with torch.no_grad():
            for key, leaf in self.leaves.items(True, True):
                param = self.params.get(key)
                if leaf.grad is not None and param.requires_grad:
                    param.grad = leaf.grad if param.grad is None else param.grad.add_(leaf.grad)


def _replay_critic_passes(
    loss: DreamerV3Loss,
    sample: TensorDictBase,
    posterior: TensorDictBase,
    params: TensorDictBase | None = None,
) -> ReplayPredictions:
    """The critic's passes over the replayed posterior features (with ``params`` for the
    critic's, if given): the part of its replay loss that needs no imagined return."""
    value_loss = loss.value_loss
    features = posterior.get("next").select(*value_loss.value_model.in_keys)
    keys = value_loss.tensor_keys
    features.set("next", sample.get("next").select(keys.reward, keys.done, keys.terminated))
    return value_loss.replay_value_predictions(features, params=params)


def _watch_returns(actor_loss, enabled: bool) -> list | None:
    """The list that ``actor_loss`` appends an event to when its imagined returns exist
    (:class:`~dreamer.actor_critic.losses.DreamerActorLoss`); ``None`` when not ``enabled`` or
    for an actor loss that records none."""
    if not enabled or not hasattr(actor_loss, "target_events"):
        return None
    actor_loss.target_events = []
    return actor_loss.target_events


def loss_sum(losses: TensorDictBase) -> torch.Tensor:
    """The sum of ``losses``' ``loss_*`` entries (what the update backpropagates)."""
    return sum(value.sum() for key, value in losses.items() if key.startswith("loss_"))


def _backward(device_type: str, tensors, grads=None, retain_graph: bool = False) -> None:
    """``torch.autograd.backward`` outside autocast: backward ops keep their forward's dtypes,
    and the custom functions' own backward code (deferred weight gradients) must not be cast."""
    with torch.autocast(device_type, enabled=False):
        torch.autograd.backward(tensors, grads, retain_graph=retain_graph)


@contextmanager
def uncached_casts(device_type: str) -> Iterator[None]:
    """Autocast as it is, but with its cache of weight casts off for everything inside.

    Why: with the cache, each parameter is cast to bf16 once per autocast region, by whichever
    stream uses it first, and both streams' ops then read that one copy through one autograd
    node. With the backward pass in three calls (:mod:`dreamer.world_model.filter_cut`), the
    captured bf16 update's gradient norm was NaN from its third replay on (H100, 2026-12-07;
    ``tests/test_concurrent_loss.py`` has the case). The actor-critic stream waiting for the
    whole world-model forward pass did not stop it, nor did clearing the cache where the streams
    fork; each stream making its own casts did. The casts made per use cost about 0.1 ms of a
    16.8 ms bf16 update at 16x64 (docs/benchmarks.md, "A NaN in the captured bf16 update").
    Without autocast this is a no-op.
    """
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
        yield


def dreamer_losses(
    loss: DreamerV3Loss,
    sample: TensorDictBase,
    side_stream: torch.cuda.Stream | None = None,
    backward: bool = False,
) -> TensorDictBase:
    """``loss(sample)``, with the actor and critic losses queued on ``side_stream`` (if given).

    Returns the same entries as ``DreamerV3Loss.forward``: the scalar losses and metrics and the
    detached posterior under ``replay_context``.

    With ``backward``, it also backpropagates the sum of the ``loss_*`` entries (into the
    parameters' ``.grad``), in three calls that put each piece of the backward pass where it
    waits least (:mod:`dreamer.world_model.filter_cut`): the world model's heads down to the
    filter's outputs while the actor-critic stream imagines, the replay critic once imagination
    gives its bootstrap (into leaves of its own: :class:`ReplayCriticParameters`), then the
    filter beside the imagination's backward.
    """
    if backward and not torch.is_grad_enabled():
        raise RuntimeError("dreamer_losses(backward=True) needs gradients enabled.")
    device_type = sample.get("action").device.type
    with uncached_casts(device_type):
        return _dreamer_losses(loss, sample, side_stream, backward, device_type)


def _dreamer_losses(loss, sample, side_stream, backward: bool, device_type: str) -> TensorDictBase:
    with cut_filter_outputs(backward) as cut:
        model_losses, posterior = loss.model_loss(sample)
    starts = _actor_input(loss, posterior, sample.numel())
    main_stream = torch.cuda.current_stream(side_stream.device) if side_stream else None
    if side_stream is not None:
        if cut is not None and cut.ready is not None:  # the states exist; heads need not finish
            side_stream.wait_event(cut.ready)
        else:
            side_stream.wait_stream(main_stream)
        keep_until_used(starts, side_stream)
    returns_ready = _watch_returns(loss.actor_loss, side_stream is not None)
    with torch.cuda.stream(side_stream):  # a no-op for None
        actor_losses, imagined = loss.actor_loss(starts)
        value_losses, _ = loss.value_loss(imagined.detach())
        bootstrap = imagined.get("lambda_target")[..., 0, 0]
        if cut is not None:  # summed on the stream that made the branch's losses
            branch = loss_sum(actor_losses) + loss_sum(value_losses)
            branch_grad = torch.ones_like(branch)
    if returns_ready is not None:
        loss.actor_loss.target_events = None
    if cut is not None:
        # Kept: the replay critic reads the posterior states through the same ops after the
        # cut (where a row's next observation is invalid, a state sampled from the prior).
        _backward(device_type, loss_sum(model_losses), retain_graph=True)
    critic = replay = None
    if loss.replay_value_loss_weight:
        # Only where this function backpropagates can the leaves' gradients be added afterwards.
        critic = ReplayCriticParameters(loss) if cut is not None else None
        leaves = None if critic is None else critic.leaves
        # The critic's passes over the replayed states need no imagined return: queued before
        # the wait for them, they run while the branch imagines.
        replay = _replay_critic_passes(loss, sample, posterior, leaves)
    if side_stream is not None:
        # The rest of the replay critic needs the imagined returns only, not the actor's and
        # critic's forward passes that follow them on the branch.
        if returns_ready:
            main_stream.wait_event(returns_ready[-1])
        else:
            main_stream.wait_stream(side_stream)
        bootstrap.record_stream(main_stream)
    if replay is not None:
        replay_value = loss.value_loss.replay_value_loss_from(
            replay,
            bootstrap.reshape(sample.batch_size),
            horizon=loss.continuation_horizon,
            lmbda=loss.lmbda,
        )["loss_replay_value"]
    else:
        replay_value = bootstrap.new_zeros(())
    weighted_replay_value = loss.replay_value_loss_weight * replay_value
    if cut is not None:
        if weighted_replay_value.requires_grad:
            _backward(device_type, weighted_replay_value)
        outputs, grads = cut.backward_targets()
        _backward(device_type, [branch, *outputs], [branch_grad, *grads])
    if side_stream is not None:
        main_stream.wait_stream(side_stream)
        for entries in (actor_losses, value_losses):
            keep_until_used(entries, main_stream)
    if critic is not None:
        critic.add_gradients()
    result = model_losses.apply(torch.squeeze)
    result.update(actor_losses).update(value_losses)
    result.set("loss_replay_value", weighted_replay_value)
    result.set("replay_value", replay_value.detach())
    context = posterior.get("next").select(loss.tensor_keys.state, loss.tensor_keys.belief)
    result.set(loss.tensor_keys.replay_context, context.detach())
    return result
