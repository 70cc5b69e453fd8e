"""``bench/trace_phases.py`` finds an update's phases in a kernel trace by their kernels."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from trace_phases import load_trace, phase_kernels, report, update_phases  # noqa: E402


class _Trace:
    """A made-up update trace: kernels of 10 us with 1 us between them, per stream."""

    def __init__(self) -> None:
        self.kernels: list[dict] = []

    def run(self, stream: int, start: float, names: list[str]) -> float:
        """Kernels ``names`` on ``stream`` from ``start`` us; returns the end of the last."""
        for name in names:
            self.kernels.append({"name": name, "stream": stream, "start_us": start, "us": 10.0})
            start += 11.0
        return start - 1.0


def _update(wait_us: float) -> list[dict]:
    """Streams 1 (filter forward, optimizer), 2 (imagination), 3 (replay critic, then the
    filter's backward and the work after it), 4 (imagination's backward), as a captured update
    replays them; 8 filter steps, 3 imagined steps; the filter's backward starts ``wait_us`` after
    the replay critic's last kernel."""
    trace = _Trace()
    end = trace.run(1, 0.0, ["encoder"] + ["_gru_forward_kernel", "matmul"] * 8)
    dream = trace.run(2, end + 5, ["actor"] + ["_gru_forward_kernel", "prior"] * 3)
    returns = trace.run(2, dream + 1, ["_dream_forward_kernel", "heads"])
    replay_end = trace.run(3, returns + 1, ["_replay_kernel", "critic", "critic_backward"])
    backward = trace.run(3, replay_end + wait_us, ["_gru_backward_kernel", "matmul"] * 8)
    trace.run(4, replay_end + 2, ["loss_backward"] + ["_gru_backward_kernel", "matmul"] * 3)
    tail = trace.run(3, backward + 1, ["deferred_weights", "encoder_backward"])
    trace.run(1, tail + 1, ["_partial_norms", "_apply_update"])
    # A stray launch of the filter's GRU kernel long after its loop must not count as a step.
    trace.run(1, tail + 400, ["_gru_forward_kernel"])
    return sorted(trace.kernels, key=lambda k: k["start_us"])


def test_phases_and_the_replay_critics_wait():
    kernels = _update(wait_us=300.0)
    phases = update_phases(kernels)
    # Up to the last step's GRU kernel: the 16th of 17 kernels of 10 us, 1 us apart.
    assert phases["encoder and filter forward"] == pytest.approx((0.0, 0.175))
    replay_end = phases["replay critic"][1]
    assert phases["filter backward"][0] - replay_end == pytest.approx(0.300)
    assert phases["imagination backward, its steps"][0] > replay_end
    assert phases["optimizer step"][1] == pytest.approx(
        max(k["start_us"] + 10 for k in kernels) / 1e3
    )
    text = report(kernels)
    assert "filter backward starts 0.30 ms after the replay critic ends" in text
    assert "filter backward: 8 steps" in text


def test_a_shorter_wait_reads_shorter():
    assert "starts 0.01 ms after" in report(_update(wait_us=10.0))


def test_reads_gzipped_traces(tmp_path):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as file:
        json.dump(list(reversed(_update(wait_us=50.0))), file)
    kernels = load_trace(path)
    assert [k["start_us"] for k in kernels] == sorted(k["start_us"] for k in kernels)


def test_a_one_stream_trace_is_refused():
    kernels = [k | {"stream": 1} for k in _update(wait_us=50.0)]
    with pytest.raises(ValueError, match="two-branch"):
        update_phases(kernels)


def test_each_phases_kernels_per_stream():
    text = phase_kernels(_update(wait_us=50.0), top=3)
    tail = text[text.index("after the filter backward") : text.index("optimizer step")]
    # The tail: the last step's matmul, the deferred weights and the encoder's backward.
    assert tail.splitlines()[1] == "  stream 3: 3 kernels, 30.0 us"
    assert {line.split()[-1] for line in tail.splitlines()[2:]} == {
        "matmul",
        "deferred_weights",
        "encoder_backward",
    }
    forward = text[: text.index("imagination forward")].splitlines()
    # The filter's forward, up to its last GRU kernel: the encoder and 15 kernels of 8 steps,
    # the GRU's first by time.
    assert forward[1] == "  stream 1: 16 kernels, 160.0 us"
    assert forward[2].split()[-2:] == ["8x", "_gru_forward_kernel"]
