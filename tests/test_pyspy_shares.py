"""The py-spy summary behind docs/benchmarks.md's pipeline profile tells GIL waits from Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from pyspy_shares import ending  # noqa: E402

RAW = """\
thread (1): MainThread;<module> (t.py:5);sample_sequences (buffer.py:160) 6
thread (1): MainThread;<module> (t.py:5);sample_sequences (buffer.py:160);pthread_cond_timedwait (libc.so.6) 2
thread (1): MainThread;<module> (t.py:5);Pacer.launched (pacing.py:9);cuEventSynchronize (libcuda.so) 2
thread (2): collector;run (t.py:9);Env._step (env.py:3);pthread_cond_timedwait (libc.so.6);0x7f00 (libc.so.6) 3
thread (2): collector;run (t.py:9);Queue.put (queue.py:149);PyThread_acquire_lock_timed (libpython) 1
thread (3);0x7f00 (libc.so.6);worker_loop (libmujoco.so) 50
"""


def test_a_stack_is_classed_by_what_follows_its_last_python_frame():
    assert ending(["f (a.py:1)"]) == "python"
    assert ending(["f (a.py:1)", "pthread_cond_timedwait (libc.so.6)", "0x1 (libc)"]) == "GIL wait"
    assert ending(["f (a.py:1)", "PyThread_acquire_lock_timed (x)"]) == "lock/queue wait"
    assert ending(["f (a.py:1)", "cuLaunchKernel (libcuda)"]) == "native: cuLaunchKernel"


def test_shares_per_thread_and_inside_a_function(tmp_path):
    raw = tmp_path / "spy.txt"
    raw.write_text(RAW)
    out = subprocess.run(
        [sys.executable, str(BENCH / "pyspy_shares.py"), str(raw), "--min-samples", "1"]
        + ["--functions", "sample_sequences", "_step"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("MainThread: 10 samples; python 60.0%, GIL wait 20.0%")
    assert "in sample_sequences: 80.0% of the thread (python 75%, GIL wait 25%)" in lines[1]
    collector = lines[lines.index(next(x for x in lines if x.startswith("collector")))]
    assert collector.startswith("collector: 4 samples; GIL wait 75.0%, lock/queue wait 25.0%")
    assert "in _step: 75.0% of the thread (GIL wait 100%)" in out
    assert "thread (3)" not in out and "unnamed" not in out  # no Python frame: not a thread here
