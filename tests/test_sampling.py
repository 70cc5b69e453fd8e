"""Gumbel-max samples the distribution TorchRL's RSSM cells sample, with the same gradient."""

from __future__ import annotations

import torch
from torchrl.modules import RSSMPosteriorV3

from dreamer.world_model.sampling import race_noise, straight_through_sample

CATEGORICALS, CLASSES, UNIMIX, DRAWS = 4, 16, 0.01, 40_000
# Upper 0.1% point of the chi-square distribution with 4 * (16 - 1) = 60 degrees of freedom.
CHI2_60_P001 = 99.607


def _unimix(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """The class probabilities both samplers must draw from: softmax mixed with a uniform."""
    return (1 - unimix) * torch.softmax(logits, -1) + unimix / logits.shape[-1]


def _chi_square(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of one-hot ``samples`` ``[N, C, K]`` against ``probs`` ``[C, K]``."""
    expected = probs * samples.shape[0]
    return float(((samples.sum(0) - expected) ** 2 / expected).sum())


def _posterior() -> RSSMPosteriorV3:
    return RSSMPosteriorV3(
        hidden_dim=8,
        rnn_hidden_dim=6,
        obs_embed_dim=5,
        num_categoricals=CATEGORICALS,
        num_classes=CLASSES,
        use_rms_norm=True,
        unimix=UNIMIX,
    )


def _spread_logits() -> torch.Tensor:
    """Logits from near-uniform to peaked, so rare classes carry the uniform mix."""
    torch.manual_seed(0)
    return torch.randn(CATEGORICALS, CLASSES) * torch.tensor([0.3, 1.0, 3.0, 6.0]).unsqueeze(-1)


def test_gumbel_max_draws_from_the_unimix_distribution():
    logits = _spread_logits()
    probs = _unimix(logits, UNIMIX)
    torch.manual_seed(1)
    batch = logits.expand(DRAWS, -1, -1)
    samples = straight_through_sample(batch, UNIMIX, race_noise(batch.shape, batch)).detach()
    assert torch.equal(samples.sum(-1), torch.ones(DRAWS, CATEGORICALS))
    assert _chi_square(samples, probs) < CHI2_60_P001
    # The test has the power to see a sampler that forgets the uniform mix.
    assert _chi_square(samples, torch.softmax(logits, -1)) > 10 * CHI2_60_P001


def test_torchrl_cells_draw_from_the_same_distribution():
    """Pins what the Gumbel-max sampler replaces: TorchRL's cells sample unimix(softmax)."""
    posterior = _posterior()
    torch.manual_seed(2)
    belief, embed = torch.randn(1, 6).expand(DRAWS, -1), torch.randn(1, 5).expand(DRAWS, -1)
    with torch.no_grad():
        logits, state = posterior(belief, embed)
    samples = state.reshape(DRAWS, CATEGORICALS, CLASSES)
    assert _chi_square(samples, _unimix(logits[0], UNIMIX)) < CHI2_60_P001


def test_straight_through_values_and_gradient_match_torchrl():
    posterior = _posterior()
    torch.manual_seed(3)
    belief = torch.randn(32, 6, requires_grad=True)
    embed = torch.randn(32, 5)
    weights = torch.randn(32, CATEGORICALS * CLASSES)
    logits, torchrl_state = posterior(belief, embed)
    ours = straight_through_sample(logits, UNIMIX, race_noise(logits.shape, logits)).flatten(-2)
    (expected,) = torch.autograd.grad((weights * torchrl_state).sum(), belief, retain_graph=True)
    (got,) = torch.autograd.grad((weights * ours).sum(), belief)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # Same value formula: one-hot up to the rounding of probs + (one_hot - probs).
    one_hot = ours.detach().round()
    probs = _unimix(logits, UNIMIX).flatten(-2).detach()
    torch.testing.assert_close(ours.detach(), probs + (one_hot - probs), rtol=0, atol=0)


def test_the_noise_is_positive_and_shaped():
    noise = race_noise((3, 2, 5), torch.zeros(1))
    assert noise.shape == (3, 2, 5) and noise.dtype == torch.float32 and bool((noise > 0).all())
