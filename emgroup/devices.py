"""The torch device a command runs on, chosen one way for `emgroup train` and `emgroup analyze`, and the cap on
the CPU memory a training process may take."""

import contextlib
import re
from pathlib import Path

import torch

from emgroup.errors import InputError


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device named by a ``--device`` value: ``auto`` -> the GPU when there is one, else the CPU; ``cuda`` ->
    GPU ``local_rank`` (under torchrun, process r of ``world_size`` takes GPU r); ``cpu``, ``cuda:N``.
    :class:`InputError` for any other name, a GPU this machine lacks, or ``cuda:N`` with several processes."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    except RuntimeError:
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available() or device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: no such CUDA device on this machine")
        if world_size > 1 and name != "cuda":
            raise InputError(f"--device {name}: under torchrun use --device cuda or auto (process r takes GPU r)")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return device


#: share of the memory the system has available (MemAvailable) that training on the CPU may take by default
MEMORY_SHARE = 0.9


@contextlib.contextmanager
def cpu_memory_cap(gib: float | None = None, processes: int = 1):
    """Within the block, allocations beyond ``gib`` GiB more than this process holds on entering fail with the error
    torch raises for an allocation that fails (which training answers with micro-batches) instead of the kernel's
    OOM killer ending the process without a word. ``None``: :data:`MEMORY_SHARE` of the memory the system has
    available, shared by ``processes`` processes. Yields the cap in bytes of the process's data segment
    (RLIMIT_DATA), or None where Linux's /proc is absent (nothing capped); a lower limit already set is kept."""
    status, meminfo = Path("/proc/self/status"), Path("/proc/meminfo")
    if not (status.is_file() and meminfo.is_file()):
        yield None
        return
    import resource  # Unix only

    held = _kib(status.read_text(), "VmData")
    extra = gib * 2**30 if gib is not None else MEMORY_SHARE * _kib(meminfo.read_text(), "MemAvailable") / processes
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = min([int(held + extra), *(limit for limit in (soft, hard) if limit != resource.RLIM_INFINITY)])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _kib(text: str, key: str) -> int:
    """Bytes of the ``key:  N kB`` line of a /proc file."""
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024
