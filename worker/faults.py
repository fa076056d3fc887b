"""What an exception that escapes a job means for its request: retry it, move it, or fail it.

- TRANSIENT: the world, not the request, failed for a moment: the database unreachable or
  restarting, a lock timeout or deadlock, SQLite "database is locked", CUDA or host memory
  exhausted, a full disk. The request goes back to the queue with a backoff (possibly to another
  worker) and the attempt is not held against it.
- DEVICE: the accelerator itself is broken (a CUDA error that poisons the process's context).
  The request goes back to the queue for another worker, and this worker stops taking work rather
  than fail every request that reaches it. The attempt counts, so a request that breaks every
  device it meets still ends, after `max_attempts`.
- INTERNAL: anything else is a defect; retrying would repeat it, so the request fails with
  `internal_error` (the worker log has the traceback).

Client errors (a bad method, a checkpoint that does not load) never reach here: they are
`ltu_core.errors.LTUError`s, failed with their own code by the job.
"""

from __future__ import annotations

import errno
from enum import StrEnum

from sqlalchemy import exc as sa_exc


class Fault(StrEnum):
    TRANSIENT = "transient"
    DEVICE = "device"
    INTERNAL = "internal"


# Errors of a full or unavailable disk: the next try (or another worker's disk) may have room.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY}
# Messages of torch RuntimeErrors whose cause is memory pressure, not the request.
_OUT_OF_MEMORY = ("CUDA out of memory", "out of memory", "DefaultCPUAllocator: can't allocate memory")
# CUDA/driver failures that leave the process's device context unusable.
_DEVICE_BROKEN = (
    "CUDA error",
    "CUDA driver",
    "cuDNN error",
    "CUBLAS_STATUS",
    "CUDNN_STATUS",
    "illegal memory access",
    "device-side assert",
    "ECC error",
    "no CUDA-capable device",
)


def classify(exc: BaseException) -> Fault:
    """The Fault class of `exc` (see the module docstring)."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return Fault.TRANSIENT  # connection lost or refused, deadlock, lock timeout, "database is locked"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return Fault.TRANSIENT
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return Fault.TRANSIENT
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return Fault.TRANSIENT
    if isinstance(exc, RuntimeError):
        message = str(exc)
        if any(m in message for m in _OUT_OF_MEMORY):
            return Fault.TRANSIENT
        if type(exc).__name__ == "AcceleratorError" or any(m in message for m in _DEVICE_BROKEN):
            return Fault.DEVICE
    return Fault.INTERNAL
