"""What slows collection down while the learner runs: the shared GPU or the shared CPU?

Collection alone (``pipeline.mode=process``) reaches ~144k env steps/s on the H100 machine but
drops to ~100-110k once the learner is busy. This script steps the embedded env with the acting
policy in this process, timing each phase, while another process loads the machine:

* ``none``: nothing else runs;
* ``spin:K``: K processes each spinning one CPU core in Python (what a busy host thread costs);
* ``learner``: the 16x64 graphed update back to back, waiting for each update as training does
  (a CUDA sync, which spins a core while it waits);
* ``learner_blocking``: the same, waiting on a blocking CUDA event (the core sleeps);
* ``learner_thread``: the same in a thread of this process, as ``pipeline.mode=async`` runs it:
  one CUDA context, so the two interleave kernels by stream priority instead of taking turns.

With ``--graph-policy`` the policy is captured once per ``--graph-priorities`` entry (the
priority its kernels keep) and acts on a stream of the async collector's priority.

Phases per control step of all envs: ``policy`` (the acting policy's forward until its action is
ready), ``physics`` (``mujoco.rollout`` stepping every env ``decimation`` times) and ``env_rest``
(the env step's remaining work: task maths, copies to the device, TorchRL's transforms and
``step_mdp``). Usage::

    python bench/bench_contention.py --device cuda --num-envs 4096 --steps 150 \
        --loads none spin:1 spin:2 learner learner_blocking --json contention.json
    python bench/bench_contention.py --device cuda --num-envs 4096 --steps 150 --graph-policy \
        --graph-priorities 0 -2 --loads none learner_thread
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def spin_load(ready, stop, count) -> None:
    """Keep one core busy in Python until told to stop."""
    ready.set()
    n = 0
    while not stop.is_set():
        for _ in range(10_000):
            n += 1
        count.value += 1


def learner_load(ready, stop, count, model: str, blocking: bool) -> None:
    """Run the 16x64 graphed update back to back until told to stop."""
    from bench_learner import make_cfg, random_sequences

    from dreamer.agent import build_agent
    from dreamer.training.graphed_update import GraphedUpdate
    from dreamer.training.loop import make_training_env, use_tf32

    use_tf32(True)
    cfg = make_cfg(model, "cuda", False, 15)
    env = make_training_env(cfg)
    obs_dim, action_dim = env.observation_spec["policy"].shape[-1], env.action_spec.shape[-1]
    inputs = [random_sequences(16, 64, obs_dim, action_dim, "cuda") for _ in range(4)]
    update = GraphedUpdate(build_agent(cfg, env), inputs[0])
    for batch in inputs:
        update(batch)
    torch.cuda.synchronize()
    ready.set()
    i = 0
    while not stop.is_set():
        update(inputs[i % len(inputs)])
        done = torch.cuda.Event(blocking=blocking)
        done.record()
        done.synchronize()
        i += 1
        count.value = i


def start_load(load: str, model: str):
    """Start the load processes; return (processes, stop event, counters)."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs, counts = [], []
    if load == "none":
        return procs, stop, counts
    if load.startswith("spin:"):
        targets = [(spin_load, ()) for _ in range(int(load.split(":")[1]))]
    elif load in ("learner", "learner_blocking"):
        targets = [(learner_load, (model, load == "learner_blocking"))]
    elif load == "learner_thread":
        ready, stop, count = threading.Event(), threading.Event(), SimpleNamespace(value=0)
        thread = threading.Thread(
            target=learner_load, args=(ready, stop, count, model, True), daemon=True
        )
        thread.start()
        if not ready.wait(600):
            raise RuntimeError("the learner thread did not start")
        return [thread], stop, [count]
    else:
        raise SystemExit(
            f"unknown load {load!r}: use none, spin:K, learner, learner_blocking or learner_thread"
        )
    for target, extra in targets:
        ready, count = ctx.Event(), ctx.Value("l", 0)
        proc = ctx.Process(target=target, args=(ready, stop, count, *extra), daemon=True)
        proc.start()
        if not ready.wait(600):
            raise RuntimeError(f"load {load} did not start")
        procs.append(proc)
        counts.append(count)
    return procs, stop, counts


def measure(env, policy, spent: dict[str, float], steps: int, device: torch.device) -> dict:
    """Step ``env`` with ``policy`` and time each phase (medians over steps, in ms)."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    def sync():  # this stream only: a learner thread's streams are not the env step's
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()

    td = env.reset()
    policy_ms, physics_ms, rest_ms = [], [], []
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for _ in range(10):  # warm-up
            td = env.step_and_maybe_reset(policy(td))[1]
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            td = policy(td)
            sync()
            t1 = time.perf_counter()
            before = spent["physics"]
            td = env.step_and_maybe_reset(td)[1]
            sync()
            t2 = time.perf_counter()
            physics = spent["physics"] - before
            policy_ms.append((t1 - t0) * 1e3)
            physics_ms.append(physics * 1e3)
            rest_ms.append((t2 - t1 - physics) * 1e3)
        wall = time.perf_counter() - started
    return {
        "env_steps_per_s": env.batch_size.numel() * steps / wall,
        "policy_ms": statistics.median(policy_ms),
        "physics_ms": statistics.median(physics_ms),
        "env_rest_ms": statistics.median(rest_ms),
        "step_ms": wall / steps * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--task", default="Isaac-Ant-v0")
    parser.add_argument("--model", default="small12m")
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--physics-threads", type=int, default=None)
    parser.add_argument("--loads", nargs="+", default=["none", "spin:1", "learner"])
    parser.add_argument("--graph-policy", action="store_true", help="act through GraphedPolicy")
    parser.add_argument(
        "--graph-priorities",
        nargs="+",
        type=int,
        default=None,
        help="with --graph-policy: capture priorities to compare (default: the async collector's)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from bench_env import time_calls
    from machine import describe_machine

    from dreamer.agent import build_agent
    from dreamer.config import load_config
    from dreamer.training.loop import make_training_env, use_tf32

    use_tf32(True)
    overrides = [f"task={args.task}", f"model={args.model}", f"device={args.device}"]
    overrides += [f"env.device={args.device}", "env.backend=mujoco"]
    overrides += [f"env.num_envs={args.num_envs}", "compile.enabled=false"]
    if args.physics_threads is not None:
        overrides.append(f"env.physics_threads={args.physics_threads}")
    cfg = load_config(*overrides)
    env = make_training_env(cfg)
    policy = build_agent(cfg, env).policy.requires_grad_(False)
    spent = {"physics": 0.0}  # wall time inside the base env's mujoco.rollout calls
    time_calls(env.base_env._pool, "rollout", spent, "physics")
    device = torch.device(args.device)

    from dreamer.collector.background import ACTING_PRIORITY

    policies: dict[str, torch.nn.Module] = {"eager": policy}
    if args.graph_policy:
        from tensordict.nn import InteractionType

        from dreamer.policy.graphed_acting import GraphedPolicy

        policies = {}
        for priority in args.graph_priorities or [ACTING_PRIORITY]:
            graphed = GraphedPolicy(policy, priority=priority)
            # Captured before any load starts, as the async collector does.
            graphed.capture(env.fake_tensordict().to(device), InteractionType.RANDOM)
            policies[f"graph@{priority}"] = graphed
    acting_stream = None
    if device.type == "cuda":  # the async collector's stream
        acting_stream = torch.cuda.Stream(device, priority=ACTING_PRIORITY)

    rows = []
    print(
        f"{'policy':>9} {'load':>18} {'steps/s':>10} {'step ms':>8} {'policy':>7} "
        f"{'physics':>8} {'env rest':>8} {'load rate/s':>11}"
    )
    for load in args.loads:
        for name, acting in policies.items():
            procs, stop, counts = start_load(load, args.model)
            before = [c.value for c in counts]
            t0 = time.perf_counter()
            with torch.cuda.stream(acting_stream):  # a no-op for None
                row = {"policy": name, "load": load}
                row.update(measure(env, acting, spent, args.steps, device))
            elapsed = time.perf_counter() - t0
            row["load_rate_per_s"] = (
                sum(c.value - b for c, b in zip(counts, before, strict=True)) / elapsed
            )
            stop.set()
            for proc in procs:
                proc.join(60)
            rows.append(row)
            print(
                f"{name:>9} {load:>18} {row['env_steps_per_s']:>10,.0f} {row['step_ms']:>8.2f} "
                f"{row['policy_ms']:>7.2f} {row['physics_ms']:>8.2f} "
                f"{row['env_rest_ms']:>8.2f} {row['load_rate_per_s']:>11.1f}",
                flush=True,
            )
    if args.json:
        meta = {
            **describe_machine(device),
            "physics_threads": env.base_env.physics_threads,
            "args": vars(args),
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
