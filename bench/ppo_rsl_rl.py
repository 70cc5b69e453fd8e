"""PPO baseline: rsl_rl's ``OnPolicyRunner`` on our embedded env, with Isaac Lab's settings.

The PPO that Isaac Lab users train with (rsl-rl-lib, the ``baselines`` extra), with the runner and
algorithm settings Isaac Lab 3.0 publishes for the task, on the same embedded MuJoCo env the
Dreamer trainer uses. Curves go to ``<logdir>/tensorboard`` under the Dreamer trainer's tags
(``episode/return``, ``episode/length``, ``perf/env_steps_per_s``, ``time/elapsed_s``, steps =
env frames), so one plot script draws both against frames and against wall clock.

Usage::

    python bench/ppo_rsl_rl.py --task Isaac-Ant-v0 --num-envs 4096 --device cuda \\
        --env-device cuda --seed 0 --time-limit-s 540 --max-frames 50000000 --logdir runs/ppo-ant-s0

Training stops at the first of ``--time-limit-s`` (wall clock from the first iteration, checked
between iterations) and ``--max-frames``; the last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

# rsl_rl imports GitPython, which refuses to import where no git executable exists (the GPU
# machines); rsl_rl only needs git to store a diff, which this script never asks for.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rsl_rl.runners import OnPolicyRunner  # noqa: E402
from rsl_rl_env import RslRlVecEnv  # noqa: E402

from dreamer.env.factory import make_base_env  # noqa: E402
from dreamer.training.metrics import TensorBoardLogger  # noqa: E402

# Per-task numbers of Isaac Lab 3.0's rsl_rl configs (isaaclab_tasks/core/locomotion/ant/agents/
# and core/cartpole/agents/rsl_rl_ppo_cfg.py: AntPPORunnerCfg, CartpolePPORunnerCfg).
TASK_SETTINGS: dict[str, dict] = {
    "Isaac-Ant-v0": {
        "num_steps_per_env": 32,
        "max_iterations": 1000,
        "hidden_dims": [400, 200, 100],
        "learning_rate": 5.0e-4,
        "entropy_coef": 0.0,
    },
    "Isaac-Cartpole-v0": {
        "num_steps_per_env": 16,
        "max_iterations": 150,
        "hidden_dims": [32, 32],
        "learning_rate": 1.0e-3,
        "entropy_coef": 0.005,
    },
}


def check_ppo_task(task: str) -> dict:
    """The task's settings; an unknown task is rejected before anything is built."""
    if task not in TASK_SETTINGS:
        raise ValueError(
            f"No Isaac Lab rsl_rl PPO settings for task {task!r}; "
            f"--task must be one of {', '.join(TASK_SETTINGS)}."
        )
    return TASK_SETTINGS[task]


def runner_config(task: str, seed: int, device: str) -> dict:
    """The dict ``OnPolicyRunner`` takes, as Isaac Lab builds it for rsl-rl-lib 5.x.

    Isaac Lab's ``handle_deprecated_rsl_rl_cfg`` + ``to_dict`` of the task's runner config, less
    the logging and checkpoint-loading keys rsl_rl's runner does not read here; ``obs_groups`` is
    spelled out as the ``policy`` group rsl_rl falls back to for Isaac Lab's empty default.
    """
    s = check_ppo_task(task)
    model = {
        "class_name": "MLPModel",
        "hidden_dims": list(s["hidden_dims"]),
        "activation": "elu",
        "obs_normalization": False,
    }
    gaussian = {
        "class_name": "GaussianDistribution",
        "init_std": 1.0,
        "std_type": "scalar",
        "std_range": (1e-6, 1e6),
    }
    return {
        "class_name": "OnPolicyRunner",
        "seed": seed,
        "device": device,
        "num_steps_per_env": s["num_steps_per_env"],
        "max_iterations": s["max_iterations"],
        "save_interval": 50,
        "init_at_random_ep_len": True,
        "check_for_nan": True,
        "clip_actions": None,
        "torch_compile_mode": None,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "actor": {**model, "distribution_cfg": gaussian},
        "critic": {**model, "distribution_cfg": None},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": 5,
            "num_mini_batches": 4,
            "learning_rate": s["learning_rate"],
            "schedule": "adaptive",
            "gamma": 0.99,
            "lam": 0.95,
            "entropy_coef": s["entropy_coef"],
            "desired_kl": 0.01,
            "max_grad_norm": 1.0,
            "optimizer": "adam",
            "value_loss_coef": 1.0,
            "use_clipped_value_loss": True,
            "clip_param": 0.2,
            "normalize_advantage_per_mini_batch": False,
            "share_cnn_encoders": False,
            "use_mixed_precision": False,
            "rnd_cfg": None,
            "symmetry_cfg": None,
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="Isaac-Ant-v0", help=", ".join(TASK_SETTINGS))
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--device", default="cuda", help="where PPO's networks and updates run")
    p.add_argument("--env-device", default=None, help="env output device (default: --device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit-s", type=float, default=float("inf"))
    p.add_argument("--max-frames", type=int, default=50_000_000)
    p.add_argument("--logdir", default="runs/ppo")
    p.add_argument("--print-every", type=int, default=10, help="iterations between progress lines")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the env takes its own seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(args: argparse.Namespace) -> dict:
    """Train until the time or frame limit; returns the run's summary."""
    cfg = runner_config(args.task, args.seed, args.device)
    seed_everything(args.seed)
    env = make_base_env(
        args.task, args.num_envs, args.env_device or args.device, args.seed, "mujoco"
    )
    vec_env = RslRlVecEnv(env)
    # log_dir=None: rsl_rl writes and prints nothing; the curves below are ours.
    runner = OnPolicyRunner(vec_env, cfg, log_dir=None, device=args.device)
    initial = torch.nn.utils.parameters_to_vector(runner.alg.actor.parameters()).detach().clone()
    logger = TensorBoardLogger(args.logdir)
    frames_per_iteration = cfg["num_steps_per_env"] * vec_env.num_envs
    frames, iterations, last_return = 0, 0, float("nan")
    start = last = time.perf_counter()
    try:
        while frames < args.max_frames and last - start < args.time_limit_s:
            # One learn() call is one rsl_rl iteration (rollout, GAE, PPO epochs); episodes start
            # at random lengths once, as Isaac Lab's train script asks.
            runner.learn(1, init_at_random_ep_len=iterations == 0 and cfg["init_at_random_ep_len"])
            now = time.perf_counter()
            frames += frames_per_iteration
            iterations += 1
            values = vec_env.pop_episode_stats()
            last_return = values.get("episode/return", last_return)
            values["time/elapsed_s"] = now - start
            values["perf/env_steps_per_s"] = frames_per_iteration / (now - last)
            values["train/learning_rate"] = runner.alg.learning_rate
            values["train/action_std"] = float(runner.alg.get_policy().output_std.detach().mean())
            logger.log(values, frames)
            last = now
            if iterations % args.print_every == 0:
                print(
                    f"it {iterations} frames {frames} t {now - start:.1f}s "
                    f"return {last_return:.3f} env_steps/s {values['perf/env_steps_per_s']:.0f}",
                    flush=True,
                )
        runner.save(str(Path(args.logdir) / "model_final.pt"))
    finally:
        logger.close()
        vec_env.close()
    final = torch.nn.utils.parameters_to_vector(runner.alg.actor.parameters()).detach()
    elapsed = last - start
    return {
        "task": args.task,
        "num_envs": vec_env.num_envs,
        "frames": frames,
        "iterations": iterations,
        "elapsed_s": round(elapsed, 3),
        "env_steps_per_s": round(frames / elapsed, 1) if elapsed > 0 else None,
        # None, not NaN, when no episode finished: NaN is not JSON.
        "last_return": None if math.isnan(last_return) else last_return,
        "actor_param_change": float((final - initial).norm()),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run from the command line; prints the summary as one JSON line and returns it."""
    summary = train(parse_args(argv))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
