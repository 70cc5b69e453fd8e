"""Learner speed: milliseconds per full DreamerV3 update and replayed transitions per second.

A full update is what training runs per step: world model over ``B x T`` replayed steps,
imagination of ``H`` steps from every posterior state, actor and critic losses, one backward
pass, the optimizer and the slow-critic EMA. Variants, each timed on the same random replay-like
batches (Ant's 60-dim observation, 8-dim action, episode starts at rate 1/200):

* ``stock``: TorchRL's learner as its docs wire it (``bench/torchrl_stock.py``), eager fp32;
* ``stock_torchrl_graph``: the same with TorchRL's ``DreamerV3OptimizationStepper`` capturing
  forward/backward in a CUDA graph (no whole-step compile);
* ``ours_eager``: our agent with :func:`dreamer.training.update.update_step`, eager fp32;
* ``ours_graph`` / ``ours_graph_bf16``: :class:`dreamer.training.graphed_update.GraphedUpdate`;
* ``..._compiled``: the same with the four MLPs compiled (card fix 4);
* ``..._unfused``: any ``ours_*`` variant with the Triton kernels of
  :mod:`dreamer.world_model.fused_ops` off (``learner.fused_kernels=false``), to time them
  against the torch code at the same sizes, e.g. ``16x64:ours_graph,ours_graph_unfused``;
* ``..._branch``: any ``ours_*`` variant with the filter's and the dream's products of the
  carried belief on a stream beside their chains (``learner.belief_branch=true``,
  :mod:`dreamer.world_model.belief_branch`); ``..._filterbranch`` / ``..._dreambranch``: in
  that loop only;
* ``..._serial``: any ``ours_*`` variant with the actor-critic losses on the world model's stream
  (``learner.concurrent_branches=false``, :mod:`dreamer.training.concurrent_loss`);
  ``..._flat``: the two branches on streams of equal priority; ``..._norepgrad``: the replay
  critic's loss kept out of the world model (``loss.replay_value_grad=false``, DreamerV3's
  ``repval_grad``); ``..._acsms<N>``: the actor-critic branch on a CUDA green context of ``N``
  SMs (rounded up by the driver), the world model's stream unrestricted; ``..._wmsms<N>``: the
  world model's stream (the capture stream) on a green context of ``N`` SMs and the actor-critic
  branch on the other SMs (``bench/green_streams.py``; experiments, not a training option).

Usage::

    python bench/bench_learner.py --device cuda --model small12m \
        --runs 16x64:stock,ours_eager,ours_graph,ours_graph_bf16 1024x64:ours_graph_bf16 \
        --json out.json

Prints one table row per run (the last update's total loss beside it, marked NOT FINITE when it is
NaN or infinite); ``--profile`` adds a CUDA kernel-time vs wall-time breakdown of the
first graphed run, and ``--trace FILE`` writes that run's kernels of one update in launch order
(name, stream, start and duration in microseconds) as JSON. ``--count-ops`` times nothing: it counts the ATen ops and the FLOPs of one
update of each ``ours_*`` run (the graph learner's step function run eagerly; a device-free proxy
for the kernels per update, and the replay rate the FLOPs allow at ``--peak-tflops``), e.g. ``python bench/bench_learner.py --device cpu --count-ops --runs
16x64:ours_graph``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe_machine  # noqa: E402
from op_count import count_ops, summary  # noqa: E402
from torchrl_stock import build_stock_learner, stock_sequences  # noqa: E402

from dreamer.agent import build_agent  # noqa: E402
from dreamer.config import load_config  # noqa: E402
from dreamer.training.concurrent_loss import branch_stream  # noqa: E402
from dreamer.training.config_check import resolve_compile  # noqa: E402
from dreamer.training.graphed_update import GraphedUpdate  # noqa: E402
from dreamer.training.loop import make_training_env, use_blas, use_tf32  # noqa: E402
from dreamer.training.update import update_step  # noqa: E402
from dreamer.world_model.belief_branch import LOOPS, set_belief_branch  # noqa: E402
from dreamer.world_model.fused_ops import set_fused_kernels  # noqa: E402
from dreamer.world_model.networks import model_size_from_config  # noqa: E402


def random_sequences(batch: int, steps: int, obs_dim: int, action_dim: int, device) -> TensorDict:
    """A replay-shaped batch with real-looking statistics (never zeros)."""
    is_init = torch.rand(batch, steps, 1, device=device) < 1 / 200
    is_init[:, 0] = True
    terminated = torch.roll(is_init, -1, dims=1)
    terminated[:, -1] = False
    return TensorDict(
        {
            "policy": torch.randn(batch, steps, obs_dim, device=device),
            "action": torch.rand(batch, steps, action_dim, device=device) * 2 - 1,
            "is_init": is_init,
            "next": {
                "policy": torch.randn(batch, steps, obs_dim, device=device),
                "reward": torch.randn(batch, steps, 1, device=device),
                "done": terminated.clone(),
                "terminated": terminated,
                "truncated": torch.zeros_like(terminated),
            },
        },
        [batch, steps],
    )


def make_cfg(model: str, device: str, compiled: bool, horizon: int):
    cfg = load_config(f"model={model}", f"device={device}", "env.num_envs=4", "env.backend=mujoco")
    cfg.compile.enabled = compiled
    cfg.imagination_horizon = horizon
    resolve_compile(cfg)
    return cfg


@contextlib.contextmanager
def green_branches(variant: str):
    """For ``_acsms<N>`` / ``_wmsms<N>`` variants: the streams on green contexts, patched in where
    the graphed update makes its streams; yields the capture stream (``None``: its own)."""
    ac_only, split = re.search(r"_acsms(\d+)", variant), re.search(r"_wmsms(\d+)", variant)
    if not (ac_only or split):
        yield None
        return
    from green_streams import split_streams

    import dreamer.training.graphed_update as graphed_update

    if ac_only:
        branch, _, info = split_streams(int(ac_only.group(1)))
        capture = None
    else:
        capture, branch, info = split_streams(int(split.group(1)), priorities=(-1, 0))
    print(f"{variant}: green contexts {info}", flush=True)
    original = graphed_update.branch_stream

    def green_branch(device, enabled=True):
        original(device, enabled)  # its process-wide setting
        return branch

    graphed_update.branch_stream = green_branch
    try:
        yield capture
    finally:
        graphed_update.branch_stream = original


class CaptureOn(GraphedUpdate):
    """A graphed update captured on a given stream (a green context's)."""

    capture_on: torch.cuda.Stream | None = None

    def _capture(self, warmup_updates: int) -> None:
        if self.capture_on is not None:
            self.capture_stream = self.capture_on
        super()._capture(warmup_updates)


def belief_branch_loops(variant: str) -> tuple[str, ...]:
    """The loops a ``_branch`` / ``_filterbranch`` / ``_dreambranch`` variant runs the belief
    branch in (none for other variants)."""
    found = re.search(r"_(filter|dream)?branch", variant)
    if found is None:
        return ()
    return (found.group(1),) if found.group(1) else LOOPS


def build_update(variant: str, cfg, env, example):
    """Return ``update(sequences)`` for ``variant`` and a function preparing its input."""
    size = model_size_from_config(cfg.model)
    if variant.startswith("stock"):
        learner = build_stock_learner(cfg, env, size)
        if variant == "stock_torchrl_graph":
            from torchrl.trainers.algorithms import DreamerV3OptimizationStepper

            stepper = DreamerV3OptimizationStepper(
                learner.loss,
                learner.optimizer,
                learner.target_updater,
                compile_train_step=False,
                cudagraph=True,
                warmup_steps=3,
            )
            stepper.warmup(stock_sequences(example, size))
            return (lambda s: stepper.step(None, s)), (lambda s: stock_sequences(s, size))
        return learner.update, (lambda s: stock_sequences(s, size))
    agent = build_agent(cfg, env)
    # Read when the update runs, so a graph keeps what was set at its capture (just below).
    set_fused_kernels("unfused" not in variant)
    set_belief_branch(belief_branch_loops(variant))
    concurrent = "serial" not in variant
    if variant.startswith("ours_eager"):
        stream = branch_stream(example.get("action").device, concurrent)
        return (lambda s: update_step(agent, s, side_stream=stream)), (lambda s: s)
    with green_branches(variant) as capture:
        CaptureOn.capture_on = capture
        graphed = CaptureOn(
            agent,
            example,
            mixed_precision="bf16" in variant,
            concurrent_branches=concurrent,
            prioritise_world_model="flat" not in variant,
        )
    return graphed, (lambda s: s)


def time_run(variant: str, batch: int, steps: int, args) -> dict:
    device = torch.device(args.device)
    cfg = make_cfg(args.model, args.device, "compiled" in variant, args.horizon)
    if "norepgrad" in variant:  # DreamerV3's repval_grad off (loss.replay_value_grad=false)
        cfg.loss.replay_value_grad = False
    env = make_training_env(cfg)
    obs_dim = env.observation_spec["policy"].shape[-1]
    action_dim = env.action_spec.shape[-1]
    pool = [random_sequences(batch, steps, obs_dim, action_dim, device) for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    update, prepare = build_update(variant, cfg, env, pool[0])
    inputs = [prepare(s) for s in pool]
    eager = "graph" not in variant
    warmup = 2 if eager else 5
    iters = args.eager_iters if eager else args.graph_iters
    for i in range(warmup):
        update(inputs[i % len(inputs)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - started
    times = []
    for i in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            metrics = update(inputs[i % len(inputs)])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            metrics = update(inputs[i % len(inputs)])
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    total = float(sum(v for k, v in metrics.items() if k.startswith("loss_")))
    row = {
        "variant": variant,
        "batch": batch,
        "length": steps,
        "ms_per_update": ms,
        "ms_min": min(times),
        "ms_max": max(times),
        "transitions_per_s": batch * steps / ms * 1e3,
        "iters": iters,
        "setup_s": setup_s,
        "final_total_loss": total,
        "finite": bool(torch.isfinite(torch.tensor(total))),
    }
    if device.type == "cuda":  # what the run held at most: model, batches, graph pools
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile and not eager and not args._profiled:
        args._profiled = True
        row["profile"] = profile_update(update, inputs, device, args.trace)
    return row


def write_trace(kernels: list, updates: int, path: Path) -> None:
    """The last of ``updates`` profiled updates' kernels, in start order, as JSON at ``path``."""
    kernels = sorted(kernels, key=lambda e: e.time_range.start)
    last = kernels[len(kernels) - len(kernels) // updates :]
    origin = last[0].time_range.start
    rows = [
        {
            "name": e.name[:120],
            "stream": getattr(e, "device_resource_id", None),
            "start_us": e.time_range.start - origin,
            "us": e.device_time,
        }
        for e in last
    ]
    path.write_text(json.dumps(rows))


def profile_update(update, inputs, device, trace: Path | None = None) -> dict:
    """Kernel time inside one update vs its wall time, and the most expensive kernels."""
    from torch.profiler import ProfilerActivity, profile

    n = 10
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            update(inputs[i % len(inputs)])
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / n
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    if trace is not None:
        write_trace(kernels, n, trace)
    kernel_ms = sum(e.device_time for e in kernels) / 1e3 / n
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    return {
        "wall_ms_per_update": wall_ms,
        "kernel_ms_per_update": kernel_ms,
        "kernels_per_update": len(kernels) / n,
        "gpu_busy_fraction": kernel_ms / wall_ms,
        "top_kernels": [
            {"name": k[:90], "ms_per_update": sum(v) / 1e3 / n, "count_per_update": len(v) / n}
            for k, v in top
        ],
    }


def count_update_ops(variant: str, batch: int, steps: int, args) -> str:
    """ATen ops and FLOPs of one update of ``variant`` (an ``ours_*`` one), after one uncounted
    update, and the replay rate that the FLOPs allow at ``args.peak_tflops``."""
    torch.manual_seed(0)
    cfg = make_cfg(args.model, args.device, False, args.horizon)
    env = make_training_env(cfg)
    obs_dim = env.observation_spec["policy"].shape[-1]
    action_dim = env.action_spec.shape[-1]
    sample = random_sequences(batch, steps, obs_dim, action_dim, torch.device(args.device))
    set_fused_kernels("unfused" not in variant)  # no change on a CPU: the kernels are CUDA-only
    update = GraphedUpdate(
        build_agent(cfg, env), sample, cuda_graph=False, mixed_precision="bf16" in variant
    )
    update(sample)  # creates the optimizer state, as the graph's warm-up does
    counter = count_ops(lambda: update(sample))
    per_transition = sum(counter.flops.values()) / (batch * steps)
    bound = args.peak_tflops * 1e12 / per_transition
    return (
        f"{summary(counter)}\n"
        f"FLOPs per replayed transition: {per_transition / 1e6:.1f} M; at {args.peak_tflops:g} "
        f"TFLOP/s the update can replay at most {bound:,.0f} transitions/s"
    )


def scan_host_syncs(args) -> list[str]:
    """Run one eager update of ours under CUDA sync-debug mode; list where the host waits.

    Every such place (a device-to-host read, a pageable host-to-device copy) stalls the eager
    learner and would break CUDA-graph capture, so this finds them all in one run.
    """
    import traceback
    import warnings

    cfg = make_cfg(args.model, args.device, False, args.horizon)
    env = make_training_env(cfg)
    sample = random_sequences(16, 64, 60, 8, torch.device(args.device))
    update = GraphedUpdate(build_agent(cfg, env), sample, cuda_graph=False)
    found: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [
            f"{Path(f.filename).name}:{f.lineno} {f.name}"
            for f in traceback.extract_stack()[:-1]
            if any(part in f.filename for part in ("torchrl", "tensordict", "dreamer"))
        ]
        key = " <- ".join(reversed(frames[-4:]))
        found[key] = found.get(key, 0) + 1

    previous = warnings.showwarning
    warnings.showwarning = record
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        update(sample)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = previous
    return [f"{count:4d}x {key}" for key, count in found.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="small12m")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["16x64:stock,ours_eager,ours_graph,ours_graph_bf16"],
        help="BxT:variant,variant ...",
    )
    parser.add_argument("--eager-iters", type=int, default=10)
    parser.add_argument("--graph-iters", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trace", type=Path, help="with --profile: one update's kernels (JSON)")
    parser.add_argument("--scan-syncs", action="store_true", help="list host syncs first")
    parser.add_argument(
        "--count-ops",
        action="store_true",
        help="count ATen ops and FLOPs per update instead of timing",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak for the --count-ops bound (default: H100 SXM dense bf16, NVIDIA's datasheet)",
    )
    args = parser.parse_args()
    args._profiled = False
    use_tf32(True)
    if args.device.startswith("cuda"):
        use_blas(str(load_config().learner.blas))  # as training sets it
    if args.scan_syncs:
        syncs = scan_host_syncs(args)
        print(f"host syncs in one eager update: {len(syncs)} places")
        print("\n".join(syncs), flush=True)
    if args.count_ops:
        for run in args.runs:
            shape, variants = run.split(":")
            batch, steps = (int(x) for x in shape.split("x"))
            for variant in (v for v in variants.split(",") if v.startswith("ours")):
                print(f"{variant} {shape} on {args.device}, model {args.model}:", flush=True)
                print(count_update_ops(variant, batch, steps, args), flush=True)
        return
    rows = []
    for run in args.runs:
        shape, variants = run.split(":")
        batch, steps = (int(x) for x in shape.split("x"))
        for variant in variants.split(","):
            try:
                row = time_run(variant, batch, steps, args)
            except Exception as error:  # one broken variant must not lose the others' numbers
                traceback.print_exc()
                row = {"variant": variant, "batch": batch, "length": steps, "error": repr(error)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            # A failed run's traceback can keep its tensors alive; free them before the next.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    meta = {
        **describe_machine(args.device),
        "model": args.model,
        "horizon": args.horizon,
        "command": " ".join(sys.argv),
    }
    import tensordict
    import torchrl

    meta["torchrl"], meta["tensordict"] = torchrl.__version__, tensordict.__version__
    print(f"\n{meta}")
    print(
        f"{'variant':28s} {'B x T':>9s} {'ms/update':>10s} {'transitions/s':>14s} {'peak GiB':>9s}"
        f" {'last loss':>10s}"
    )
    for row in rows:
        if "error" in row:
            print(
                f"{row['variant']:28s} {row['batch']:>4d}x{row['length']:<4d} failed: {row['error'][:60]}"
            )
        else:
            print(
                f"{row['variant']:28s} {row['batch']:>4d}x{row['length']:<4d} "
                f"{row['ms_per_update']:10.2f} {row['transitions_per_s']:14,.0f} "
                f"{row.get('peak_memory_gib', float('nan')):9.1f} "
                # A timing of an update whose losses went NaN is no timing of the learner.
                f"{row['final_total_loss']:10.2f}{'' if row['finite'] else '  NOT FINITE'}"
            )
    for row in rows:
        if "profile" in row:
            p = row["profile"]
            print(
                f"\nprofile {row['variant']} {row['batch']}x{row['length']}: wall {p['wall_ms_per_update']:.2f} ms, "
                f"kernels {p['kernel_ms_per_update']:.2f} ms ({p['gpu_busy_fraction']:.0%} busy), "
                f"{p['kernels_per_update']:.0f} kernels/update"
            )
            for k in p["top_kernels"][:8]:
                print(f"  {k['ms_per_update']:7.3f} ms  x{k['count_per_update']:<6.0f} {k['name']}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
