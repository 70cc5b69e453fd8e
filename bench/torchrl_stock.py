"""TorchRL's stock DreamerV3 learner at our sizes: the baseline the fast learner is measured against.

Wired the way TorchRL documents it (``DreamerV3Loss`` docstring): an encoder writing
``("next", "encoded")``, ``RSSMRolloutV3`` over the sequence, decoder / reward / continue heads as
``TensorDictModule``s, ``DreamerV3ActorLoss`` on a ``DreamerEnv``, ``DreamerV3ValueLoss``, and
``DreamerV3Optimizer`` stepping eagerly in float32. The networks are the same TorchRL classes and
sizes as ours (built by the same functions), so the two learners differ in how they run, not in
what they compute. That includes the heads' first layer split by input
(``dreamer.world_model.split_input``), which also spares this baseline the model-state copies:
the ratio to it is, if anything, understated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.modules import RSSMRolloutV3
from torchrl.objectives import (
    DreamerV3ActorLoss,
    DreamerV3Loss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
    SoftUpdate,
)

from dreamer.actor_critic.actor import make_actor
from dreamer.actor_critic.critic import make_critic, make_value_mlp
from dreamer.agent import make_objective
from dreamer.imagination.model_env import FeatureHead, make_imagination_env
from dreamer.world_model.networks import (
    ModelSize,
    make_continue_head,
    make_decoder,
    make_encoder,
    make_reward_head,
    make_rssm_cells,
    make_two_hot,
)


@dataclass
class StockLearner:
    """TorchRL's loss, optimizer and target updater."""

    loss: DreamerV3Loss
    optimizer: torch.optim.Optimizer
    target_updater: SoftUpdate

    def update(self, sequences: TensorDictBase) -> TensorDictBase:
        """One eager update, as TorchRL's examples run it."""
        losses = self.loss(sequences)
        total = sum(v for k, v in losses.items() if isinstance(k, str) and k.startswith("loss_"))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.target_updater.step()
        return losses.exclude("replay_context").detach()


def build_stock_learner(cfg, env, size: ModelSize) -> StockLearner:
    """The stock learner for ``env``'s observation and action sizes."""
    obs_dim = env.observation_spec["policy"].shape[-1]
    action_dim = env.action_spec.shape[-1]
    device = torch.device(cfg.device)
    encoder = make_encoder(obs_dim, size)
    prior, posterior = make_rssm_cells(action_dim, size)
    decoder, reward_head = make_decoder(obs_dim, size), make_reward_head(size)
    continue_head, two_hot = make_continue_head(size), make_two_hot(size)
    value_mlp = make_value_mlp(size)
    for module in (encoder, prior, posterior, decoder, reward_head, continue_head, two_hot):
        module.to(device)
    value_mlp.to(device)
    features = [("next", "state"), ("next", "belief")]
    world_model = TensorDictSequential(
        TensorDictModule(encoder, [("next", "policy")], [("next", "encoded")]),
        RSSMRolloutV3(
            TensorDictModule(
                prior,
                ["state", "belief", "action"],
                [("next", "prior_logits"), ("next", "state"), ("next", "belief")],
            ),
            TensorDictModule(
                posterior,
                [("next", "belief"), ("next", "encoded")],
                [("next", "posterior_logits"), ("next", "state")],
            ),
            reset_key="is_init",
        ),
        TensorDictModule(FeatureHead(decoder), features, [("next", "reco_policy")]),
        TensorDictModule(FeatureHead(reward_head), features, [("next", "reward_logits")]),
        TensorDictModule(FeatureHead(continue_head), features, [("next", "continue_pred")]),
    )
    loss_cfg = cfg.loss
    model_loss = DreamerV3ModelLoss(
        world_model,
        lambda_continue=1.0,
        kl_mode="separate",
        lambda_representation=loss_cfg.representation_scale,
        unimix=size.unimix,
        free_bits=loss_cfg.free_bits,
        reco_symlog=True,
        num_reward_bins=size.num_bins,
        detach_output=False,
    )
    model_loss.set_keys(pixels="policy", reco_pixels="reco_policy")
    actor = make_actor(size, action_dim, device)
    critic = make_critic(value_mlp, size).to(device)
    model_env = make_imagination_env(prior, reward_head, two_hot, env, size.stoch, size.deter)
    # Actor, critic, objective and optimizer as ours, with TorchRL's own loss classes (ours only
    # compute the lambda-returns faster): the learners differ in how the world model runs its
    # sequence (RSSMRolloutV3 here) and in how an update is executed.
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
        loss_classes=(DreamerV3ActorLoss, DreamerV3ValueLoss),
    )
    return StockLearner(loss, optimizer, target_updater)


def stock_sequences(sequences: TensorDictBase, size: ModelSize) -> TensorDictBase:
    """Our replay sample plus the zero root state/belief ``RSSMRolloutV3`` starts from."""
    batch = sequences.batch_size
    device = sequences.get("action").device
    extra = TensorDict(
        {
            "state": torch.zeros(*batch, size.stoch, device=device),
            "belief": torch.zeros(*batch, size.deter, device=device),
        },
        batch,
    )
    return sequences.clone().update(extra)
