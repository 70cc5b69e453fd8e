"""Training's sequence filter and the acting filter compute the same beliefs on the same episode."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.modules import RSSMStateEstimatorV3

from dreamer.world_model.networks import ModelSize, make_rssm_cells
from dreamer.world_model.rssm import observe_sequence

# One class per categorical makes the latent sample deterministic, so beliefs can be compared
# exactly; they still depend on every action and on where the filter restarts.
SIZE = ModelSize(
    deter=16, hidden=8, units=6, depth=1, num_categoricals=4, num_classes=1, num_blocks=2
)


def test_sequence_filter_matches_acting_filter_step_by_step():
    torch.manual_seed(0)
    prior, posterior = make_rssm_cells(3, SIZE)
    steps = 7
    embeds = torch.randn(1, steps + 1, SIZE.units)  # enc(x_0) ... enc(x_T)
    actions = torch.randn(1, steps, 3)  # a_0 ... a_{T-1}
    is_init = torch.zeros(1, steps, dtype=torch.bool)
    is_init[0, 0] = True

    with torch.no_grad():
        train = observe_sequence(prior, posterior, embeds[:, :-1], embeds[:, 1:], actions, is_init)

        estimator = RSSMStateEstimatorV3(prior, posterior)
        td = TensorDict(
            {
                "state": torch.zeros(1, SIZE.stoch),
                "belief": torch.zeros(1, SIZE.deter),
                "previous_action": torch.zeros(1, 3),
            },
            [1],
        )
        acting_beliefs = []
        for t in range(steps + 1):
            td.set("encoded_latents", embeds[:, t])
            td.set("is_init", torch.tensor([[t == 0]]))
            estimator(td)
            acting_beliefs.append(td["belief"].clone())
            if t < steps:
                td.set("previous_action", actions[:, t])
    # training's belief for step t+1 is the acting filter's belief after seeing x_{t+1}
    for t in range(steps):
        torch.testing.assert_close(
            train["belief"][:, t], acting_beliefs[t + 1], rtol=1e-5, atol=1e-5
        )
