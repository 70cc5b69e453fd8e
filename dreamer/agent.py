"""Assemble the DreamerV3 agent from the config: networks, losses, acting policy, optimizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import (
    DreamerV3ActorLoss,
    DreamerV3Loss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
    LossModule,
    SoftUpdate,
    ValueEstimators,
)
from torchrl.trainers.algorithms import DreamerV3Optimizer

from dreamer.actor_critic.actor import make_actor
from dreamer.actor_critic.critic import make_critic, make_value_mlp
from dreamer.actor_critic.losses import DreamerActorLoss, DreamerValueLoss
from dreamer.imagination.model_env import FeatureHead, make_imagination_env
from dreamer.policy.acting import make_acting_policy
from dreamer.training.flat_optimizer import flatten_parameters
from dreamer.world_model.model import WorldModel
from dreamer.world_model.networks import (
    ModelSize,
    make_continue_head,
    make_reward_head,
    make_rssm_cells,
    make_two_hot,
    model_size_from_config,
)
from dreamer.world_model.observations import (
    HEADS,
    make_obs_decoder,
    make_obs_encoder,
    obs_keys_from_config,
)

# Card fix 4: these MLPs, and only these, go through torch.compile. The RSSM's Python loop
# and TorchRL's loss modules (TensorDict internals) stay eager: compiling them crashed dynamo.
COMPILED_MLPS = ("encoder", "decoder", "reward_head", "value_mlp")


@dataclass
class Agent:
    """Every trainable piece of DreamerV3 plus the objects that use them."""

    size: ModelSize
    encoder: nn.Module
    prior: nn.Module
    posterior: nn.Module
    decoder: nn.Module
    reward_head: nn.Module
    continue_head: nn.Module
    value_mlp: nn.Module
    world_model: WorldModel
    actor: nn.Module
    critic: nn.Module
    model_env: EnvBase
    loss: DreamerV3Loss
    policy: nn.Module
    optimizer: torch.optim.Optimizer
    target_updater: SoftUpdate
    # What the encoder reads, in its argument order; with several keys ``encoder(*obs)`` and
    # ``decoder(feature)`` returns one reconstruction per key (dreamer.world_model.observations).
    obs_keys: tuple[str, ...] = ("policy",)


def build_agent(cfg, env: EnvBase) -> Agent:
    """Build the agent for ``env`` (batched, with the acting-state primer) from ``cfg``."""
    size = model_size_from_config(cfg.model)
    obs_keys = obs_keys_from_config(cfg.model)
    action_dim = env.action_spec.shape[-1]
    device = torch.device(cfg.device)

    encoder, embed_dim = make_obs_encoder(obs_keys, env.observation_spec, size)
    prior, posterior = make_rssm_cells(action_dim, size, embed_dim)
    decoder = make_obs_decoder(obs_keys, env.observation_spec, size)
    reward_head = make_reward_head(size)
    continue_head = make_continue_head(size)
    two_hot = make_two_hot(size)
    value_mlp = make_value_mlp(size)
    for module in (
        encoder,
        prior,
        posterior,
        decoder,
        reward_head,
        continue_head,
        two_hot,
        value_mlp,
    ):
        module.to(device)

    if cfg.compile.enabled:
        encoder, decoder, reward_head, value_mlp = (
            torch.compile(module, backend=cfg.compile.backend, dynamic=False)
            for module in (encoder, decoder, reward_head, value_mlp)
        )

    world_model = WorldModel(
        encoder, prior, posterior, decoder, reward_head, continue_head, two_hot, size, obs_keys
    )
    actor = make_actor(size, action_dim, device)
    critic = make_critic(value_mlp, size).to(device)
    model_env = make_imagination_env(
        prior, reward_head, two_hot, env, size.stoch, size.deter, device=device
    )

    loss_cfg = cfg.loss
    model_loss = DreamerV3ModelLoss(
        world_model,
        lambda_continue=1.0,
        kl_mode="separate",
        lambda_dynamic=loss_cfg.dynamic_scale,
        lambda_representation=loss_cfg.representation_scale,
        unimix=size.unimix,
        free_bits=loss_cfg.free_bits,
        # Targets are already symlog (policy) or scaled by the loss itself (uint8 pixels / 255).
        reco_symlog=False,
        num_reward_bins=size.num_bins,
        global_average=False,
        detach_output=loss_cfg.replay_value_weight == 0,
    )
    heads = [HEADS[key] for key in obs_keys]
    if len(heads) == 1:
        model_loss.set_keys(pixels=heads[0].target_key, reco_pixels=heads[0].reco_key)
    else:  # list keys: one reconstruction term per observation, summed by the loss
        model_loss.set_keys(
            pixels=[h.target_key for h in heads], reco_pixels=[h.reco_key for h in heads]
        )
    loss, optimizer, target_updater = make_objective(
        cfg,
        size,
        model_loss,
        actor,
        critic,
        model_env,
        continue_head,
        (encoder, prior, posterior, decoder, reward_head, continue_head),
        device,
    )
    policy = make_acting_policy(encoder, prior, posterior, actor, obs_keys)
    return Agent(
        size,
        encoder,
        prior,
        posterior,
        decoder,
        reward_head,
        continue_head,
        value_mlp,
        world_model,
        actor,
        critic,
        model_env,
        loss,
        policy,
        optimizer,
        target_updater,
        obs_keys,
    )


def make_objective(
    cfg,
    size: ModelSize,
    model_loss: DreamerV3ModelLoss,
    actor: nn.Module,
    critic: nn.Module,
    model_env: EnvBase,
    continue_head: nn.Module,
    world_modules: tuple[nn.Module, ...],
    device: torch.device,
    loss_classes: tuple[type[DreamerV3ActorLoss], type[DreamerV3ValueLoss]] = (
        DreamerActorLoss,
        DreamerValueLoss,
    ),
) -> tuple[DreamerV3Loss, DreamerV3Optimizer, SoftUpdate]:
    """From ``cfg``: actor and critic losses on imagination, the composed DreamerV3 objective on
    ``device``, its optimizer (world-model, actor and critic groups) and the slow-critic EMA.

    ``loss_classes``: the actor and critic loss classes; ours compute their lambda-returns in one
    kernel (:mod:`dreamer.actor_critic.losses`), TorchRL's own are the stock baseline's."""
    actor_loss_class, value_loss_class = loss_classes
    loss_cfg = cfg.loss
    continuation = TensorDictModule(
        FeatureHead(continue_head, nn.Sigmoid()),
        in_keys=["state", "belief"],
        out_keys=["continuation"],
    )
    actor_loss = actor_loss_class(
        actor,
        critic,
        model_env,
        continuation_model=continuation,
        imagination_horizon=cfg.imagination_horizon,
        entropy_bonus=loss_cfg.entropy_bonus,
        use_reinforce=loss_cfg.actor_grad == "reinforce",
    )
    actor_loss.make_value_estimator(
        ValueEstimators.TDLambda, gamma=loss_cfg.gamma, lmbda=loss_cfg.lmbda
    )
    value_loss = value_loss_class(
        critic,
        value_loss="two_hot",
        num_value_bins=size.num_bins,
        actor_loss=actor_loss,
        slow_critic_regularization=loss_cfg.slow_critic_regularization,
    )
    if not loss_cfg.get("replay_value_grad", True):
        if not hasattr(value_loss, "replay_grad"):
            raise ValueError(
                f"loss.replay_value_grad=false needs {DreamerValueLoss.__name__}; "
                f"{value_loss_class.__name__} always trains the world model on replay values."
            )
        value_loss.replay_grad = False
    loss = DreamerV3Loss(
        model_loss,
        actor_loss,
        value_loss,
        replay_value_loss_weight=loss_cfg.replay_value_weight,
        continuation_horizon=1.0 / (1.0 - loss_cfg.gamma),
        lmbda=loss_cfg.lmbda,
    )
    sample_at_random_in_every_thread(loss, model_loss, actor_loss, value_loss)
    # The losses' own buffers (two-hot bins, return-normalisation quantiles) are made on the CPU;
    # left there they cost a host-to-device copy per use and cannot be captured in a CUDA graph.
    loss.to(device)
    target_updater = SoftUpdate(value_loss, tau=loss_cfg.slow_critic_tau)

    opt = cfg.optim
    world_params = [p for m in world_modules for p in m.parameters()]
    optimizer = DreamerV3Optimizer(
        [
            {"params": world_params, "lr": opt.world_model_lr},
            {"params": list(actor.parameters()), "lr": opt.actor_lr},
            {"params": list(value_loss.value_model_params.values(True, True)), "lr": opt.critic_lr},
        ],
        agc=opt.agc,
        warmup_steps=opt.warmup_steps,
        eps=opt.eps,
    )
    # Before anything records a parameter's address (the acting policy's CUDA graph): the
    # learner's optimizer step then runs as three kernels over the one buffer.
    flatten_parameters(optimizer)
    return loss, optimizer, target_updater


def sample_at_random_in_every_thread(*losses: LossModule) -> None:
    """Make each loss's forward set the interaction type to RANDOM, not TorchRL's DETERMINISTIC.

    Why: tensordict keeps the interaction type in one variable for the whole process, not one per
    thread, and a TorchRL loss's forward sets it to the loss's ``deterministic_sampling_mode`` for
    the call. With ``pipeline.mode=async`` the collection thread acts while the training thread is
    inside a loss: it read DETERMINISTIC there and acted without exploration, and the two threads'
    interleaved enters and exits could leave the variable at DETERMINISTIC after both had left.
    Nothing in these losses reads the type but the actor's dream, which sets RANDOM itself, so
    they compute the same either way (``tests/test_background_collector.py`` checks both).
    """
    for loss in losses:
        loss.deterministic_sampling_mode = ExplorationType.RANDOM
