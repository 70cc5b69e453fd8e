"""Compile every Triton kernel that training launches, for a GPU that this machine does not have.

Why: a CPU runs the kernels only through Triton's interpreter, which executes their Python and
never calls Triton's compiler. A kernel can so pass every CPU test and still fail on a GPU user's
first update: a construct the code generator rejects, a type it will not cast, a demand for more
shared memory than the card has. Triton compiles for a named target without a driver, so this
script does what a GPU would do at each launch, on the CPU:

1. in a subprocess under ``TRITON_INTERPRET=1``, run what training runs with the kernels on (one
   learner update in float32 and one under bf16 autocast, each with its backward, and one acting
   step), recording every launch: kernel, argument types, constants, alignment; where a launch
   is made differently on a GPU (:func:`gpu_forms`), that form is recorded too. CPU autocast
   casts the matrix products to bf16 as CUDA's does, which is where the kernels' bf16 inputs
   come from (the rest are the model's own casts);
2. here, without the interpreter, compile each distinct launch the way the JIT would specialise
   it (pointer and integer arguments divisible by 16 marked so, integers equal to 1 made
   constants), through PTX to a cubin for ``--arch``, and check its shared memory fits the card.

    python bench/compile_kernels.py [--arch 90] [--model small12m] [--sizes 16x64:15 64x64:15]
        [--json out.json]

It prints one row per kernel and exits non-zero if any launch fails to compile.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The most dynamic shared memory one block may use, by compute capability (CUDA's guide, table
# "Technical Specifications per Compute Capability").
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

TENSOR_TYPES = {
    "torch.float32": "fp32",
    "torch.bfloat16": "bf16",
    "torch.float16": "fp16",
    "torch.float64": "fp64",
    "torch.int64": "i64",
    "torch.int32": "i32",
    "torch.int16": "i16",
    "torch.int8": "i8",
    "torch.uint8": "u8",
    "torch.bool": "i1",
}


def describe_argument(value) -> list:
    """One launch argument as JSON: ``["tensor", dtype, aligned]``, ``["int", v]``,
    ``["float", v]``, ``["bool", v]`` or ``["const", v]`` (None and strings)."""
    import torch

    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype), value.data_ptr() % 16 == 0]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", value]
    if value is None or isinstance(value, str):
        return ["const", value]
    raise TypeError(f"a launch argument of type {type(value).__name__} is not described")


def record_launches(run: Callable[[], None], execute: bool = False) -> list[dict]:
    """Run ``run`` with every interpreted launch recorded; return the distinct launches.

    Must run under ``TRITON_INTERPRET=1``: there ``kernel[grid](...)`` calls
    ``InterpretedFunction.run``, wrapped here for the duration. With ``execute=False`` the
    kernels are recorded, not run (their outputs keep whatever memory held): which kernels launch,
    and with what, follows from shapes, dtypes and flags, not from values. Checked 2026-12-07 on
    small12m at 2x4, H=3: the same 71 launches either way (alignment apart), recorded in 6 s
    instead of 320 s.
    """
    from triton.runtime.interpreter import InterpretedFunction

    seen: dict[str, dict] = {}
    original = InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        bound = dict(zip(names, args, strict=False))
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        bound.update(kwargs)
        launch = {
            "module": self.fn.__module__,
            "kernel": self.fn.__name__,
            "arguments": {name: describe_argument(bound[name]) for name in names if name in bound},
            "options": options,
        }
        seen.setdefault(json.dumps(launch, sort_keys=True), launch)
        if execute:
            original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    try:
        run()
    finally:
        InterpretedFunction.run = original
    return list(seen.values())


def training_launches(
    model: str, batch: int, steps: int, horizon: int, execute: bool = False
) -> list[dict]:
    """The launches of one float32 update, one bf16-autocast update (``batch x steps`` replayed
    steps, ``horizon`` imagined) and one acting step of ``model``'s agent on the embedded Ant,
    with the Triton kernels on. Some kernels' block sizes follow the number of rows, so the
    sizes should be those of the training to be checked."""
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_learner import make_cfg, random_sequences

    from dreamer.agent import build_agent
    from dreamer.training.graphed_update import GraphedUpdate
    from dreamer.training.loop import make_training_env
    from dreamer.world_model.fused_ops import set_fused_kernels

    torch.manual_seed(0)
    cfg = make_cfg(model, "cpu", False, horizon)
    env = make_training_env(cfg)
    obs_dim = env.observation_spec["policy"].shape[-1]
    action_dim = env.action_spec.shape[-1]
    set_fused_kernels(True)

    def run() -> None:
        for bf16 in (False, True):
            agent = build_agent(cfg, env)
            sample = random_sequences(batch, steps, obs_dim, action_dim, torch.device("cpu"))
            update = GraphedUpdate(agent, sample, cuda_graph=False)
            # The learner turns mixed precision off on a CPU; here it is wanted (CPU autocast
            # to bf16), for the kernels' bf16 forms.
            update.mixed_precision = bf16
            update(sample)
        state = env.reset()
        acting = TensorDict(
            {k: state[k] for k in ("policy", "state", "belief", "previous_action", "is_init")},
            state.batch_size,
        )
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            agent.policy(acting)

    return record_launches(run, execute)


def compile_launch(launch: dict, arch: int):
    """Compile one recorded launch for compute capability ``arch``; return Triton's compiled
    kernel (PTX and cubin in ``.asm``, resources in ``.metadata``)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    signature, constants, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        kind, *value = launch["arguments"][param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constants[param.name] = value[0]
        elif kind == "tensor":
            signature[param.name] = "*" + TENSOR_TYPES[value[0]]
            if value[1]:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif kind == "int" and value[0] == 1:  # the JIT makes an integer 1 a constant
            signature[param.name], constants[param.name] = "constexpr", 1
        elif kind == "int":
            signature[param.name] = "i32" if -(2**31) <= value[0] < 2**31 else "i64"
            if value[0] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif kind == "float":
            signature[param.name] = "fp32"
        elif kind == "bool":
            signature[param.name] = "i1"
        else:
            signature[param.name], constants[param.name] = "constexpr", value[0]
    source = ASTSource(kernel, signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=launch["options"])


def gpu_forms(launch: dict) -> list[dict]:
    """``launch`` as a GPU would make it: :func:`~dreamer.world_model.skinny_matmul.skinny_bmm`
    upcasts bf16 operands only in the interpreter (which has no bf16 product), and multiplies
    float32 ones in TF32 on CUDA when torch allows it (the learner's default), IEEE otherwise."""
    if launch["kernel"] != "_skinny_matmul":
        return [launch]
    dtype = launch["arguments"]["x_ptr"][1]
    gpu = copy.deepcopy(launch)
    if dtype == "torch.bfloat16":
        gpu["arguments"]["UPCAST"] = ["bool", False]
        return [gpu]
    gpu["arguments"]["PRECISION"] = ["const", "tf32"]
    return [launch, gpu]


def compile_all(launches: list[dict], arch: int) -> list[dict]:
    """Compile every launch; one result per launch: kernel, ``ok``, seconds and shared memory,
    or the error."""
    limit = SHARED_MEMORY_LIMIT.get(arch)
    results = []
    for launch in launches:
        name = f"{launch['module'].rsplit('.', 1)[-1]}.{launch['kernel']}"
        start = time.perf_counter()
        try:
            shared = compile_launch(launch, arch).metadata.shared
            result = {"kernel": name, "ok": True, "shared_bytes": shared}
            if limit is not None and shared > limit:
                result.update(
                    ok=False, error=f"needs {shared} B of shared memory; sm_{arch}: {limit}"
                )
        except Exception:
            result = {"kernel": name, "ok": False, "error": traceback.format_exc(limit=-4)}
        result["seconds"] = round(time.perf_counter() - start, 2)
        result["arguments"] = launch["arguments"]
        results.append(result)
    return results


def recorded_in_subprocess(sizes: list[str], model: str) -> list[dict]:
    """The distinct launches of :func:`training_launches` at each ``BxT:H`` size, recorded in a
    subprocess under Triton's interpreter (it must be set before triton is imported, and this
    process compiles with the real Triton)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, __file__, "--record", "--model", model, "--sizes", *sizes]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode:
        raise RuntimeError(f"recording the launches failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def parse_size(size: str) -> tuple[int, int, int]:
    """``"16x64:15"`` -> (batch 16, steps 64, horizon 15)."""
    rows, horizon = size.split(":")
    batch, steps = rows.split("x")
    return int(batch), int(steps), int(horizon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    parser.add_argument("--model", default="small12m")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["16x64:15", "64x64:15"],
        help="BxT:H replay batch and imagination horizon (DreamerV3's; the GPU profile's)",
    )
    parser.add_argument("--json", type=Path, help="write every launch's result here")
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:  # the subprocess: print the launches as the last line
        launches = {}
        for size in args.sizes:
            for recorded in training_launches(args.model, *parse_size(size)):
                for launch in gpu_forms(recorded):
                    launches.setdefault(json.dumps(launch, sort_keys=True), launch)
        print(json.dumps(list(launches.values())))
        return
    import triton

    start = time.perf_counter()
    launches = recorded_in_subprocess(args.sizes, args.model)
    recorded = time.perf_counter() - start
    results = compile_all(launches, args.arch)
    print(f"Triton {triton.__version__}, sm_{args.arch}, model {args.model} at {args.sizes}: "
          f"{len(results)} distinct launches, recorded in {recorded:.0f} s, compiled in "
          f"{sum(r['seconds'] for r in results):.0f} s")  # fmt: skip
    print(f"{'kernel':44s} {'':4s} {'s':>6s} {'shared B':>9s}")
    for r in results:
        print(f"{r['kernel']:44s} {'ok' if r['ok'] else 'FAIL':4s} {r['seconds']:6.2f} "
              f"{r.get('shared_bytes', '-')!s:>9s}")  # fmt: skip
    for r in results:
        if not r["ok"]:
            print(f"\n{r['kernel']} {json.dumps(r['arguments'])}\n{r['error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
