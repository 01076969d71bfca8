"""Training data: the train/val split of a stack, and batches streamed from its memory-mapped files (only the
particles of one batch are ever read)."""

import numpy as np
import torch

from emgroup.data.ctf import stack_ctf_parameters
from emgroup.data.preprocess import SPLIT_COLUMN, split_labels
from emgroup.errors import InputError

#: validation fraction used when neither --val-fraction nor a split column is given
DEFAULT_VAL_FRACTION = 0.1


def split_indices(stack, val_fraction: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) particle indices: the ``rlnEmgroupSplit`` column written by `emgroup preprocess` when the
    stack has one and ``val_fraction`` is None, else a seeded random split (``DEFAULT_VAL_FRACTION`` if None)."""
    if val_fraction is None and SPLIT_COLUMN in stack.meta:
        labels = stack.meta[SPLIT_COLUMN].astype(str).to_numpy()
        unknown = sorted(set(labels) - {"train", "val"})
        if unknown:
            raise InputError(f"{SPLIT_COLUMN} holds {unknown[0]!r} (expected 'train' or 'val')", stack.path)
    else:
        labels = split_labels(len(stack), DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction, seed)
    train, val = np.flatnonzero(labels == "train"), np.flatnonzero(labels == "val")
    if len(train) == 0:
        raise InputError("no particle left for training after the train/val split", stack.path)
    return train, val


class StackBatches(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: ``dataset[indices]`` reads those particles in one go.

    Returns ``{"images": (n, D, D) or (n, D, D, D) float32, "index": (n,) int64}`` plus ``"ctf_parameters"``
    (n, 9) float64 (:data:`emgroup.ctf.CTF_PARAMETERS`) when ``with_ctf``: a model computes the CTFs from them on
    its device. Used with :class:`EpochBatches` and ``batch_size=None``.
    """

    def __init__(self, stack, with_ctf: bool = False):
        self.stack, self.with_ctf = stack, with_ctf

    def __len__(self):
        return len(self.stack)

    def __getitem__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        batch = {"images": torch.from_numpy(self.stack.images(indices)), "index": torch.from_numpy(indices)}
        if self.with_ctf:
            batch["ctf_parameters"] = torch.from_numpy(stack_ctf_parameters(self.stack, indices))
        return batch



class EpochBatches(torch.utils.data.Sampler):
    """Batches of ``indices`` in an order fixed by (seed, epoch), so a resumed run sees the very same batches; with
    ``epoch_size``, each epoch takes only the first ``epoch_size`` particles of its (shuffled) order.

    Each *global* batch of ``batch_size`` particles is split over ``world_size`` processes (rank ``r`` takes
    ``batch[r::world_size]``); a last global batch smaller than ``world_size`` is dropped so every rank has
    particles in every step. :meth:`global_sizes` gives the global batch sizes of an epoch, in order.
    """

    def __init__(self, indices, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, epoch_size: int | None = None):
        self.indices, self.batch_size, self.seed, self.shuffle = np.asarray(indices), batch_size, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.count = len(self.indices) if epoch_size is None else min(epoch_size, len(self.indices))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_sizes(self) -> list[int]:
        sizes = [min(self.batch_size, self.count - start) for start in range(0, self.count, self.batch_size)]
        return [size for size in sizes if size >= self.world_size]

    def __len__(self):
        return len(self.global_sizes())

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        for step, size in enumerate(self.global_sizes()):
            start = step * self.batch_size
            yield order[start:start + size][self.rank::self.world_size].tolist()


def batch_loader(stack, indices, batch_size: int, seed: int, shuffle: bool, with_ctf: bool, num_workers: int = 0,
                 pin_memory: bool = False, rank: int = 0, world_size: int = 1, epoch_size: int | None = None):
    """(sampler, DataLoader) streaming this rank's share of ``indices`` in batches (see :class:`EpochBatches`)."""
    sampler = EpochBatches(indices, batch_size, seed, shuffle, rank, world_size, epoch_size)
    loader = torch.utils.data.DataLoader(StackBatches(stack, with_ctf), sampler=sampler, batch_size=None,
                                         num_workers=num_workers, pin_memory=pin_memory,
                                         persistent_workers=num_workers > 0)
    return sampler, loader
