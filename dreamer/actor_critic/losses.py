"""TorchRL's DreamerV3 actor and critic losses, with their lambda-returns as one kernel each.

Why subclasses and not TorchRL's classes as they are: both compute their lambda-returns with a
loop over time, several kernels per step, which at 16x64 was about 950 kernels of every update
(:mod:`dreamer.actor_critic.lambda_return` says where). Each class here overrides the one public
method that holds its loop and computes the same returns with
:mod:`~dreamer.actor_critic.lambda_return` (one Triton kernel each way on CUDA, TorchRL's loop
elsewhere); everything else is TorchRL's. ``tests/test_lambda_return.py`` checks both against
TorchRL's classes on the same inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import DreamerV3ActorLoss, DreamerV3ValueLoss, symlog, two_hot_cross_entropy

from dreamer.actor_critic.lambda_return import dream_lambda_returns, replay_lambda_returns
from dreamer.world_model.fused_ops import use_fused


class DreamerActorLoss(DreamerV3ActorLoss):
    """``DreamerV3ActorLoss`` whose returns over the dream come from :func:`dream_lambda_returns`.

    ``target_events``: while the update sets it to a list, each call of :meth:`lambda_target` on
    CUDA appends an event recorded as soon as the returns exist. The replay critic needs only
    those returns, so its stream can wait for them rather than for the rest of the actor's and
    the critic's forward passes (:mod:`dreamer.training.concurrent_loss`).
    """

    target_events: list | None = None

    def lambda_target(
        self,
        reward: torch.Tensor,
        value: torch.Tensor,
        continuation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The lambda-returns ``[..., H, 1]`` of the dream, discounted by its continuations."""
        if continuation is None or not use_fused(reward, value, continuation):
            # TorchRL's loop (named, not super(): the tests call this on a stand-in holder).
            target = DreamerV3ActorLoss.lambda_target(self, reward, value, continuation)
        else:
            gamma = self.value_estimator.gamma.to(reward)
            lmbda = self.value_estimator.lmbda.to(reward)
            target = dream_lambda_returns(reward, value, continuation, gamma, lmbda)
        events = getattr(self, "target_events", None)
        if events is not None and target.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(target.device))
            events.append(event)
        return target


class ReplayPredictions(NamedTuple):
    """What the replay critic's loss needs besides the bootstrap (its imagined returns)."""

    next: TensorDictBase  # the replayed ``("next", ...)`` entries: reward, done, terminated
    prediction: torch.Tensor  # the critic's logits (or values) at every state but the last
    slow_term: torch.Tensor | None  # the weighted slow-critic term, when that is on


class DreamerValueLoss(DreamerV3ValueLoss):
    """``DreamerV3ValueLoss`` whose replay targets come from :func:`replay_lambda_returns`.

    ``replay_grad``: whether the loss on replayed states sends gradient into those states, and
    so into the world model (DreamerV3's ``repval_grad``, on by default; the config's
    ``loss.replay_value_grad``). Off, it trains the critic alone.
    """

    replay_grad: bool = True

    def replay_value_loss(
        self,
        tensordict: TensorDictBase,
        *,
        horizon: float = 333.0,
        lmbda: float = 0.95,
        params: TensorDictBase | None = None,
    ) -> TensorDictBase:
        """The critic's loss on a replayed ``[B, T]`` sequence, as TorchRL's method defines it:
        the critic at every replayed state but the last learns the lambda-return from the next
        rewards and bootstraps (step discount ``1 - 1 / horizon``), except where an episode ends;
        plus the slow-critic term when that regularisation is on. ``params`` replace the critic's
        own (:class:`~dreamer.training.concurrent_loss.ReplayCriticParameters`).

        It is :meth:`replay_value_predictions` then :meth:`replay_value_loss_from`; the update
        calls the two apart, so that the first runs before the imagined returns exist.

        Returns:
            ``loss_replay_value``, the scalar unweighted loss.
        """
        predictions = self.replay_value_predictions(tensordict, params=params)
        bootstrap = tensordict.get(self.tensor_keys.bootstrap)
        return self.replay_value_loss_from(predictions, bootstrap, horizon=horizon, lmbda=lmbda)

    def replay_value_predictions(
        self, tensordict: TensorDictBase, *, params: TensorDictBase | None = None
    ) -> ReplayPredictions:
        """The part of :meth:`replay_value_loss` that needs no bootstrap: the critic's (and the
        slow critic's) passes over the replayed states. ``tensordict`` as for
        :meth:`replay_value_loss`, without ``bootstrap``."""
        if not self.replay_grad:
            features = tensordict.select(*self.value_model.in_keys, strict=False).detach()
            tensordict = tensordict.clone(False).update(features)
        own = self.value_model_params if params is None else params
        prediction = self._replay_predictions(tensordict, own)
        slow_term = None
        if self.slow_critic_regularization:
            with torch.no_grad():
                slow = self._replay_predictions(tensordict, self.target_value_model_params, True)
            slow_term = self.slow_critic_regularization * self._critic_loss(prediction, slow)
        return ReplayPredictions(tensordict.get("next"), prediction, slow_term)

    def replay_value_loss_from(
        self,
        predictions: ReplayPredictions,
        bootstrap: torch.Tensor,
        *,
        horizon: float = 333.0,
        lmbda: float = 0.95,
    ) -> TensorDictBase:
        """:meth:`replay_value_loss` from its :meth:`replay_value_predictions` and the bootstrap
        ``[B, T]`` (the first imagined return of every replayed state)."""
        keys = self.tensor_keys
        done = predictions.next.get(keys.done)
        target = replay_lambda_returns(
            predictions.next.get(keys.reward),
            done,
            predictions.next.get(keys.terminated),
            bootstrap,
            1 - 1 / horizon,
            lmbda,
        )
        loss = self._critic_loss(predictions.prediction, target)
        if predictions.slow_term is not None:
            loss = loss + predictions.slow_term
        kept = (~done.squeeze(-1)[..., :-1]).to(loss.dtype)  # the episode's last step has no target
        return TensorDict(loss_replay_value=_reduced(kept * loss, self.reduction))

    def _replay_predictions(
        self, tensordict: TensorDictBase, params: TensorDictBase, decoded: bool = False
    ) -> torch.Tensor:
        """The critic's output (logits for a two-hot critic, or the decoded value when
        ``decoded``) at every replayed state but the last, with ``params``."""
        inputs = tensordict.select(*self.value_model.in_keys, strict=False)
        with params.to_module(self.value_model, preserve_module_state=False):
            self.value_model(inputs)
        if self.value_loss == "two_hot" and not decoded:
            return inputs.get(self.tensor_keys.value_logits)[..., :-1, :]
        return inputs.get(self.tensor_keys.value)[..., :-1, 0]

    def _critic_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.value_loss == "two_hot":
            return two_hot_cross_entropy(prediction, target, self.value_bins)
        return (symlog(prediction) - symlog(target)).square()


def _reduced(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss
