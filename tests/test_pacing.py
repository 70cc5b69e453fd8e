"""The training thread waits for the GPU asleep, with a bounded number of updates queued."""

from __future__ import annotations

import time

import pytest
import torch

from dreamer.training.pacing import UpdatePacer

SECOND_OF_GPU = int(2e9)  # cycles of torch.cuda._sleep: about a second of GPU time


def test_off_cuda_the_pacer_never_waits():
    pacer = UpdatePacer(torch.device("cpu"))
    for _ in range(5):
        pacer.launched()
    assert not pacer.queued


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_pacer_waits_for_the_older_update_without_spinning_a_core():
    pacer = UpdatePacer(torch.device("cuda"), depth=2)
    torch.cuda.synchronize()
    torch.cuda._sleep(SECOND_OF_GPU)  # update 1
    started = time.perf_counter()
    pacer.launched()  # one update queued: no wait
    assert time.perf_counter() - started < 0.2, "the first update should not be waited for"
    torch.cuda._sleep(SECOND_OF_GPU)  # update 2
    wall, cpu = time.perf_counter(), time.process_time()
    pacer.launched()  # two queued: waits for update 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall > 0.2, "update 1 should still have been running"
    assert cpu < 0.5 * wall, f"the host used {cpu:.2f} s of CPU in a {wall:.2f} s wait"
    assert len(pacer.queued) == 1 and not torch.cuda.current_stream().query()
