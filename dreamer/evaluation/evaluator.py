"""The learner's side of evaluation: start the worker, hand it weights, log what comes back.

Results travel back to the learner and are written by its TensorBoard writer, at the env-frame
step of the weights evaluated, rather than by a second writer in the worker: two writers in one
run directory make two event files, and TensorBoard's directory loader can skip events appended
to the older one while both grow; one writer also keeps ``purge_step`` on resume covering the
eval curves.

Nothing here waits on the worker during training: weights go out with ``put_nowait`` into a
queue of two, a full queue has its stale message replaced, and results are read with
``get_nowait``. With a camera (``env.pixels=true``) a result also carries env 0's episode
frames, written as ``<logdir>/videos/eval_<frames>.gif`` and as the image ``eval/frames``.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dreamer.evaluation.launch import start_process
from dreamer.evaluation.settings import validate_eval_config, worker_environment
from dreamer.evaluation.video import frame_strip, write_gif
from dreamer.evaluation.worker import run_worker

log = logging.getLogger(__name__)


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``module``'s state, safe to pickle while training goes on."""
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def offer(inbox, message) -> int:
    """``put_nowait`` into a bounded queue; when full, discard its oldest message first.

    Returns how many messages were dropped (0 or 1). The worker always evaluates the newest
    message waiting, so a discarded one was stale anyway.
    """
    try:
        inbox.put_nowait(message)
        return 0
    except queue.Full:
        pass
    try:
        inbox.get_nowait()
    except queue.Empty:  # the worker took it in the meantime
        pass
    try:
        inbox.put_nowait(message)
        return 1
    except queue.Full:
        return 1


class Evaluator:
    """Owns the eval worker process and its two queues."""

    def __init__(self, cfg: DictConfig):
        validate_eval_config(cfg.eval)
        self.every = int(cfg.eval.every_updates)
        self.close_timeout = float(cfg.eval.close_timeout_s)
        self.video_dir = Path(cfg.logdir) / "videos"
        self.last_submitted = 0
        self.dropped = 0
        self.failed = False
        context = torch.multiprocessing.get_context("spawn")
        self.inbox = context.Queue(maxsize=2)
        self.outbox = context.Queue()
        env = worker_environment(cfg.eval)
        self.process = start_process(
            run_worker,
            (OmegaConf.to_container(cfg, resolve=True), self.inbox, self.outbox),
            env,
            name="dreamer-eval",
        )
        log.info("evaluator started (pid %d) with %s", self.process.pid, env)

    def submit(self, policy: torch.nn.Module, updates: int, frames: int) -> None:
        """Queue the policy's weights for evaluation; never blocks (replaces a stale message)."""
        message = {"policy": cpu_state_dict(policy), "updates": updates, "frames": frames}
        self.last_submitted = updates
        self.dropped += offer(self.inbox, message)

    def poll(self, logger) -> None:
        """Log every result that has arrived (never waits)."""
        while True:
            try:
                message = self.outbox.get_nowait()
            except queue.Empty:
                break
            self._handle(message, logger)
        if (
            not self.failed
            and not self.process.is_alive()
            and self.process.exitcode not in (0, None)
        ):
            self.failed = True
            log.error(
                "the eval worker died (exit code %s); training goes on without it",
                self.process.exitcode,
            )

    def step(self, policy: torch.nn.Module, updates: int, frames: int, logger) -> None:
        """Once per collector batch: submit when ``every_updates`` have passed, log results."""
        if not self.failed and updates - self.last_submitted >= self.every:
            self.submit(policy, updates, frames)
        self.poll(logger)

    def close(self, policy: torch.nn.Module, updates: int, frames: int, logger) -> None:
        """Evaluate the final weights, wait for the worker (``eval.close_timeout_s``), log all."""
        deadline = time.monotonic() + self.close_timeout
        if not self.failed and self.process.is_alive():
            if updates > self.last_submitted:
                self.submit(policy, updates, frames)
            try:
                self.inbox.put(None, timeout=self.close_timeout)
            except queue.Full:
                log.warning("the eval worker did not take the stop message; terminating it")
            while self.process.is_alive() and time.monotonic() < deadline:
                self.poll(logger)
                self.process.join(timeout=0.2)
        if self.process.is_alive():
            log.warning("the eval worker did not finish within eval.close_timeout_s; terminating")
        self.stop()
        self.poll(logger)
        if self.dropped:
            log.info("evaluator skipped %d stale weight sets (it was busy)", self.dropped)

    def stop(self) -> None:
        """End the worker now without waiting for an evaluation (also after :meth:`close`)."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)

    def _handle(self, message: dict, logger) -> None:
        kind = message["kind"]
        if kind == "ready":
            log.info("eval worker ready on %s with %s", message["device"], message["environ"])
        elif kind == "error":
            self.failed = True
            log.error(
                "the eval worker failed; training goes on without it:\n%s", message["traceback"]
            )
        else:
            scalars = {key: value for key, value in message.items() if key.startswith("eval/")}
            scalars["eval/updates"] = message["updates"]
            logger.log(scalars, message["frames"])
            video = message.get("video")
            if video is not None:
                write_gif(video, self.video_dir / f"eval_{message['frames']}.gif")
                logger.log_image("eval/frames", frame_strip(video), message["frames"])


def start_evaluator(cfg: DictConfig) -> Evaluator | None:
    """An :class:`Evaluator` when ``eval.enabled``; start it before the learner touches CUDA."""
    if not bool(cfg.eval.enabled):
        return None
    return Evaluator(cfg)
