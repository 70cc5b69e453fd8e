"""Streams on CUDA green contexts (SM partitions) made through the driver API.

torch's ``GreenContext`` (beta) splits SMs with the driver's default flags and gives no way to
set a stream's priority. This module calls the driver itself (``ctypes``, ``libcuda``) so a
benchmark can choose the split flags -- ``CU_DEV_SM_RESOURCE_SPLIT_MAX_POTENTIAL_CLUSTER_SIZE``
keeps partitions whole enough for kernels launched in thread-block clusters (cuBLASLt's Hopper
GEMMs) -- and the stream's priority. Each stream is handed to torch as an ``ExternalStream``;
its green context lives as long as the process.
"""

from __future__ import annotations

import ctypes

import torch

SM_RESOURCE = 1  # CU_DEV_RESOURCE_TYPE_SM
IGNORE_SM_COSCHEDULING = 0x1
MAX_POTENTIAL_CLUSTER_SIZE = 0x2
_GREEN_CTX_DEFAULT_STREAM = 0x1  # the only flag cuGreenCtxCreate accepts
_STREAM_NON_BLOCKING = 0x1  # the only flag cuGreenCtxStreamCreate accepts
# Bigger than every ABI of CUdevResource so far (144 bytes in CUDA 12.4, a little more later);
# only one resource is ever read or written per buffer, so the true size need not be known.
_RESOURCE_BYTES = 1024
_SM_FIELDS_OFFSET = 96  # type (4 bytes) + internal padding (92): the union with the SM fields
_alive: list = []  # green contexts must outlive their streams and any graph captured on them


def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check(result: int, call: str) -> None:
    if result != 0:
        text = ctypes.c_char_p()
        _driver().cuGetErrorString(result, ctypes.byref(text))
        raise RuntimeError(f"{call} failed with CUDA error {result}: {text.value!r}")


def sm_fields(resource: ctypes.Array) -> dict:
    """``smCount``, ``minSmPartitionSize`` and ``smCoscheduledAlignment`` of an SM resource
    (the last two read 0 on drivers older than CUDA 13)."""
    values = (ctypes.c_uint * 3).from_buffer(resource, _SM_FIELDS_OFFSET)
    return {"sm_count": values[0], "min_partition": values[1], "coscheduled_alignment": values[2]}


def split_streams(
    num_sms: int,
    flags: int = MAX_POTENTIAL_CLUSTER_SIZE,
    priorities: tuple[int, int] = (0, 0),
    device: int | None = None,
) -> tuple[torch.cuda.ExternalStream, torch.cuda.ExternalStream, dict]:
    """Two streams on disjoint SM sets: one on a group of at least ``num_sms`` SMs (rounded up
    to the driver's granularity), one on the rest. Returns them and the SM counts."""
    torch.cuda.init()
    index = torch.cuda.current_device() if device is None else device
    torch.cuda.synchronize(index)  # the primary context exists and is current
    cuda = _driver()
    handle = ctypes.c_int()
    _check(cuda.cuDeviceGet(ctypes.byref(handle), index), "cuDeviceGet")
    whole = ctypes.create_string_buffer(_RESOURCE_BYTES)
    _check(cuda.cuDeviceGetDevResource(handle, whole, SM_RESOURCE), "cuDeviceGetDevResource")
    group = ctypes.create_string_buffer(_RESOURCE_BYTES)
    rest = ctypes.create_string_buffer(_RESOURCE_BYTES)
    groups = ctypes.c_uint(1)
    _check(
        cuda.cuDevSmResourceSplitByCount(
            group, ctypes.byref(groups), whole, rest, ctypes.c_uint(flags), ctypes.c_uint(num_sms)
        ),
        "cuDevSmResourceSplitByCount",
    )
    streams = []
    for resource, priority in zip((group, rest), priorities, strict=True):
        desc = ctypes.c_void_p()
        _check(cuda.cuDevResourceGenerateDesc(ctypes.byref(desc), resource, 1), "GenerateDesc")
        context = ctypes.c_void_p()
        _check(
            cuda.cuGreenCtxCreate(ctypes.byref(context), desc, handle, _GREEN_CTX_DEFAULT_STREAM),
            "cuGreenCtxCreate",
        )
        stream = ctypes.c_void_p()
        _check(
            cuda.cuGreenCtxStreamCreate(
                ctypes.byref(stream), context, _STREAM_NON_BLOCKING, ctypes.c_int(priority)
            ),
            "cuGreenCtxStreamCreate",
        )
        _alive.append(context)
        streams.append(torch.cuda.ExternalStream(stream.value, device=torch.device("cuda", index)))
    info = {
        "device": sm_fields(whole),
        "group": sm_fields(group),
        "rest": sm_fields(rest),
        "flags": flags,
    }
    return streams[0], streams[1], info
