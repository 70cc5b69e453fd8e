"""The eval worker process: its own env, the latest policy weights, deterministic episodes.

Runs in a spawned interpreter (see :mod:`dreamer.evaluation.launch`). It reads messages from
``inbox``: ``{"policy": state_dict, "updates": u, "frames": f}`` or ``None`` (stop), always
jumping to the newest weights waiting, and answers on ``outbox`` with one ``ready`` message and
then one result (or error) per evaluation.
"""

from __future__ import annotations

import queue
import traceback

import torch
from omegaconf import OmegaConf
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from dreamer.evaluation.launch import exec_environment
from dreamer.evaluation.settings import WORKER_ENV_KEYS
from dreamer.evaluation.video import FrameRecorder
from dreamer.world_model.observations import PIXELS_KEY


def run_episodes(env: EnvBase, policy, max_steps: int, video_frames: int = 0) -> dict:
    """One episode per env, actions from the actor's deterministic mode; mean return/length.

    Envs that finish early are reset by the env and their later steps are ignored; an episode
    still running after ``max_steps`` counts with its return so far. When the env has a camera
    and ``video_frames > 0``, ``"video"`` holds env 0's episode frames (uint8 ``[T, H, W, 3]``,
    from the reset frame on, at most ``video_frames``).
    """
    n = env.batch_size[0]
    finished = torch.zeros(n, dtype=torch.bool)
    returns = torch.zeros(n)
    lengths = torch.zeros(n)
    td = env.reset()
    recorder = FrameRecorder(video_frames) if PIXELS_KEY in td.keys() else None
    if recorder is not None:
        recorder.add(td.get(PIXELS_KEY), done=False)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(max_steps):
            td = policy(td)
            td, root = env.step_and_maybe_reset(td)
            episode_return = td.get(("next", "episode_reward")).reshape(n).float().cpu()
            episode_length = td.get(("next", "step_count")).reshape(n).float().cpu()
            done = td.get(("next", "done")).reshape(n).cpu()
            if recorder is not None:
                recorder.add(td.get(("next", PIXELS_KEY)), done=bool(done[0]))
            running = ~finished
            returns[running] = episode_return[running]
            lengths[running] = episode_length[running]
            finished |= done
            if bool(finished.all()):
                break
            td = root
    stats = {
        "eval/return": float(returns.mean()),
        "eval/length": float(lengths.mean()),
        "eval/episodes": float(n),
    }
    video = recorder.video() if recorder is not None else None
    if video is not None:
        stats["video"] = video
    return stats


def newest(inbox, first) -> tuple[dict | None, bool]:
    """The newest message waiting after ``first``; ``stop`` is True if a stop was among them."""
    latest, stop = first, first is None
    while True:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return latest, stop
        if item is None:
            stop = True
        else:
            latest = item


def build_eval_policy(cfg) -> tuple[EnvBase, TensorDictBase]:
    """The worker's env (``eval.episodes`` envs, its own seed) and an acting policy for it."""
    from dreamer.agent import build_agent
    from dreamer.training.distributed import derive_seed
    from dreamer.training.loop import make_training_env

    cfg.device = str(cfg.eval.worker_device)
    cfg.env.device = cfg.device
    cfg.env.num_envs = int(cfg.eval.episodes)
    cfg.seed = derive_seed(int(cfg.seed), 0x5EED)
    env = make_training_env(cfg)
    agent = build_agent(cfg, env)
    return env, agent.policy


def run_worker(cfg_container: dict, inbox, outbox) -> None:
    """Worker entry point: build env and policy, then evaluate each newest weights message."""
    try:
        # The learner owns this machine's cores; evaluation of one batch of envs needs one.
        torch.set_num_threads(1)
        cfg = OmegaConf.create(cfg_container)
        env, policy = build_eval_policy(cfg)
        outbox.put(
            {"kind": "ready", "device": cfg.device, "environ": exec_environment(WORKER_ENV_KEYS)}
        )
        stop = False
        while not stop:
            message, stop = newest(inbox, inbox.get())
            if message is None:
                continue
            policy.load_state_dict(message["policy"])
            stats = run_episodes(
                env, policy, int(cfg.eval.max_steps), int(cfg.eval.video_max_frames)
            )
            outbox.put(
                {
                    "kind": "result",
                    "updates": message["updates"],
                    "frames": message["frames"],
                    **stats,
                }
            )
        env.close()
    except Exception:
        outbox.put({"kind": "error", "traceback": traceback.format_exc()})
