"""The torch device a command runs on, chosen one way for `emgroup train` and `emgroup analyze`."""

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
