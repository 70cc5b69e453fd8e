"""The hoisted sequence filter computes what the step-by-step filter on TorchRL's cells computes.

The reference is the filter as it was before hoisting: every step calls ``prior(...)`` and
``posterior(...)`` (TorchRL's ``forward``) on the concatenated inputs. Both sample with the same
Gumbel-max noise, so outputs and gradients must agree to float rounding.
"""

from __future__ import annotations

import torch

from dreamer.world_model.networks import ModelSize, make_rssm_cells
from dreamer.world_model.rssm import observe_sequence
from dreamer.world_model.sampling import race_noise, straight_through_sample

SIZE = ModelSize(
    deter=24, hidden=12, units=10, depth=1, num_categoricals=4, num_classes=5, num_blocks=3
)
ACTION_DIM, BATCH, STEPS = 3, 5, 9


def reference_filter(prior, posterior, embed_root, embed_next, action, is_init, noise):
    """The un-hoisted filter: TorchRL's cell ``forward`` at every step; samples from ``noise``."""
    batch, steps = action.shape[:2]
    reset = is_init.reshape(batch, steps, 1).clone()
    reset[:, 0] = True
    zeros = embed_next.new_zeros
    _, _, h0 = prior(zeros(1, SIZE.stoch), zeros(1, SIZE.deter), zeros(1, ACTION_DIM))
    z0_logits, _ = posterior(h0.reshape(1, 1, -1).expand(batch, steps, -1), embed_root)
    z0 = straight_through_sample(z0_logits, posterior.unimix, noise[0]).flatten(-2)
    state, belief = z0[:, 0], h0.expand(batch, -1)
    outputs = {"prior_logits": [], "posterior_logits": [], "state": [], "belief": []}
    for t in range(steps):
        state = torch.where(reset[:, t], z0[:, t], state)
        belief = torch.where(reset[:, t], h0, belief)
        logits_prior, _, belief = prior(state, belief, action[:, t])
        logits_post, _ = posterior(belief, embed_next[:, t])
        state = straight_through_sample(logits_post, posterior.unimix, noise[1][:, t]).flatten(-2)
        for key, value in zip(outputs, (logits_prior, logits_post, state, belief), strict=True):
            outputs[key].append(value)
    return {key: torch.stack(values, 1) for key, values in outputs.items()}


def _case():
    torch.manual_seed(0)
    prior, posterior = make_rssm_cells(ACTION_DIM, SIZE)
    embed_root = torch.randn(BATCH, STEPS, SIZE.units, requires_grad=True)
    embed_next = torch.randn(BATCH, STEPS, SIZE.units, requires_grad=True)
    action = (torch.rand(BATCH, STEPS, ACTION_DIM) * 4 - 2).requires_grad_()
    is_init = torch.rand(BATCH, STEPS, 1) < 0.2
    noise = race_noise((2, BATCH, STEPS, SIZE.num_categoricals, SIZE.num_classes), action)
    return prior, posterior, (embed_root, embed_next, action, is_init), noise


def _objective(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A scalar reading every output with fixed random weights."""
    generator = torch.Generator().manual_seed(5)
    return sum(
        (torch.randn(value.shape, generator=generator) * value).sum()
        for _, value in sorted(outputs.items())
    )


def test_hoisted_filter_matches_the_step_by_step_filter():
    prior, posterior, inputs, noise = _case()
    expected = reference_filter(prior, posterior, *inputs, noise)
    got = observe_sequence(prior, posterior, *inputs, noise=noise)
    assert got.keys() == expected.keys()
    assert bool(inputs[3][:, 1:].any()), "the case must restart some segments mid-sequence"
    for key in expected:
        # The hoisted filter splits two layers' sums by input (the posterior's first layer and
        # the GRU's hidden layer), which reassociates them: float32 rounding, relative to scale.
        scale = float(expected[key].abs().max())
        atol = 1e-6 * (1 + scale)
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=atol, msg=key)


def test_hoisted_filter_has_the_step_by_step_gradients():
    prior, posterior, inputs, noise = _case()
    leaves = [*prior.parameters(), *posterior.parameters(), *inputs[:3]]
    expected = torch.autograd.grad(
        _objective(reference_filter(prior, posterior, *inputs, noise)), leaves
    )
    got = torch.autograd.grad(
        _objective(observe_sequence(prior, posterior, *inputs, noise=noise)), leaves
    )
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        # Relative to each gradient's scale: the biases before an RMS norm get large gradients
        # (up to ~4e4 here) that nearly cancel, so their rounding is large in absolute terms.
        scale = float(e.abs().max())
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5 * scale + 1e-6, msg=f"leaf {index}")
