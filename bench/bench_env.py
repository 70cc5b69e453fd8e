"""Control steps per second of the embedded MuJoCo envs, through TorchRL and raw.

Three figures per task and batch size N, all counting one control step = ``decimation`` physics
steps of one env:

* ``torchrl``: ``env.step_and_maybe_reset`` of :class:`MujocoBatchedEnv` with random actions,
  exactly what a TorchRL collector calls, so it includes every overhead of ours (action
  conversion, observation / reward maths, TensorDict building, partial resets);
* ``in-env physics``: the same run counted over the time spent inside ``mujoco.rollout`` only,
  i.e. the rate with our overhead removed on exactly the states the env visited;
* ``raw``: ``mujoco.rollout`` stepping the same model on the same number of threads, feeding each
  final state back in, with nothing else (no resets, so its envs may visit other states).

It also prints the mean time per control step of all N envs in each phase of the TorchRL run:
``physics`` (``mujoco.rollout``), ``task`` (the task's observation / reward / termination maths,
``on_step``), ``output`` (the output TensorDict, copies to ``--device`` included) and ``other``
(the rest: action conversion, resets, TorchRL's ``step_and_maybe_reset``).

Usage::

    python bench/bench_env.py [--num-envs 1 64 256 1024] [--seconds 3] [--device cpu] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamer.env.mujoco_env import EMBEDDED_TASKS, MujocoBatchedEnv  # noqa: E402


def time_calls(owner, name: str, seconds: dict[str, float], phase: str) -> None:
    """Replace ``owner.<name>`` by a wrapper adding its wall time to ``seconds[phase]``."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - t

    setattr(owner, name, timed)


def bench_torchrl(
    task: str, n: int, seconds: float, threads: int | None, device: str = "cpu"
) -> tuple[float, float, int, dict[str, float]]:
    """Control steps/s through ``step_and_maybe_reset`` (random actions in [-1, 1]).

    Also returns the rate the physics alone would reach on exactly the states the env visited
    (its rollout calls timed inside the same run), which isolates our overhead, the size of
    the env's thread pool (0 = calling thread) and the mean ms per control step in each phase
    (see the module docstring).
    """
    env = MujocoBatchedEnv(task, n, device=device, seed=0, num_threads=threads)
    phases = {"physics": 0.0, "task": 0.0, "output": 0.0}
    time_calls(env._pool, "rollout", phases, "physics")
    time_calls(env.task, "on_step", phases, "task")
    time_calls(env, "_output", phases, "output")
    gen = torch.Generator().manual_seed(0)
    actions = (torch.rand(64, n, env.task_spec.act_dim, generator=gen) * 2 - 1).to(device)
    td = env.reset()
    for k in range(10):  # warm-up
        td["action"] = actions[k % 64]
        _, td = env.step_and_maybe_reset(td)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    sync()
    phases.update(dict.fromkeys(phases, 0.0))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        td["action"] = actions[steps % 64]
        _, td = env.step_and_maybe_reset(td)
        steps += 1
    sync()
    wall = time.perf_counter() - start
    rate = steps * n / wall
    nthread = env._nthread
    env.close()
    ms = {phase: 1e3 * spent / steps for phase, spent in phases.items()}
    ms["other"] = 1e3 * wall / steps - sum(ms.values())
    return rate, steps * n / phases["physics"], nthread, ms


def bench_raw(task: str, n: int, seconds: float, nthread: int) -> float:
    """Control steps/s of bare ``mujoco.rollout`` on the same model and thread pool size."""
    spec = EMBEDDED_TASKS[task]
    model = mujoco.MjModel.from_xml_path(str(spec.xml_path))
    pool = mj_rollout.Rollout(nthread=nthread)
    datas = [mujoco.MjData(model) for _ in range(max(1, nthread))]
    # Same start states as the env: one seeded reset of the task.
    task_logic = spec.task_cls(model, n)
    qpos, qvel = task_logic.sample_reset(np.random.default_rng(0), n)
    nstate = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS.value)
    state = np.zeros((n, nstate))
    state[:, 1 : 1 + model.nq] = qpos
    state[:, 1 + model.nq : 1 + model.nq + model.nv] = qvel
    dec = spec.decimation
    rng = np.random.default_rng(0)
    controls = [np.repeat(rng.uniform(-1, 1, (n, 1, model.nu)), dec, axis=1) for _ in range(64)]
    state_out = np.zeros((n, dec, nstate))
    sens_out = np.zeros((n, dec, model.nsensordata))
    models = [model] * n

    def one(k: int) -> None:
        pool.rollout(
            models,
            datas,
            state,
            controls[k % 64],
            skip_checks=True,
            nstep=dec,
            state=state_out,
            sensordata=sens_out,
            chunk_size=None,
        )
        state[:] = state_out[:, -1]

    for k in range(10):
        one(k)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one(steps)
        steps += 1
    rate = steps * n / (time.perf_counter() - start)
    pool.close()
    return rate


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=sorted(EMBEDDED_TASKS))
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per figure")
    parser.add_argument(
        "--threads", type=int, default=None, help="num_threads of the env (default: its own choice)"
    )
    parser.add_argument("--device", default="cpu", help="where the env's outputs live (cpu, cuda)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # the env's own torch work is tiny; keep the cores for physics
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "mujoco": mujoco.__version__,
            "torch": torch.__version__,
        },
        "threads_arg": args.threads,
        "device": args.device,
        "unit": "control steps per second (one env, one control step = decimation physics steps)",
        "rows": [],
    }
    header = (
        f"{'task':<18} {'N':>5} {'pool':>4} {'torchrl':>9} {'in-env physics':>15} {'raw':>9}"
        f" {'torchrl/raw':>12} | ms per step: {'physics':>7} {'task':>6} {'output':>6} {'other':>6}"
    )
    print(header)
    for task in args.tasks:
        for n in args.num_envs:
            env_rate, physics_rate, nthread, ms = bench_torchrl(
                task, n, args.seconds, args.threads, args.device
            )
            raw_rate = bench_raw(task, n, args.seconds, nthread)
            row = {
                "task": task,
                "num_envs": n,
                "pool_threads": nthread,
                "torchrl": env_rate,
                "in_env_physics": physics_rate,
                "raw": raw_rate,
                "ms_per_step": ms,
            }
            results["rows"].append(row)
            print(
                f"{task:<18} {n:>5} {nthread:>4} {env_rate:>9,.0f} {physics_rate:>15,.0f} {raw_rate:>9,.0f}"
                f" {env_rate / raw_rate:>12.2f} | {'':>13} {ms['physics']:>7.2f} {ms['task']:>6.2f}"
                f" {ms['output']:>6.2f} {ms['other']:>6.2f}"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
