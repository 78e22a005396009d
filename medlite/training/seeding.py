"""Randomness that depends only on the config's seed and where it is used.

A fit is seeded from ``(config seed, fit key)`` (:func:`fit_seed`), and inside a fit every
source of randomness is derived from that seed and a position, never from a generator's
history: the order of the training samples of epoch ``e`` from ``(seed, e)``
(:class:`EpochShuffleSampler`), the augmentation of the ``i``-th sample of epoch ``e`` from
``(seed, e, i)`` (:class:`SeededItems`), dropout in batch ``b`` of epoch ``e`` from
``(seed, e, b)`` (the training module). So a fit gives the same weights whatever ran
before it in the process, however many DataLoader workers it has, and after an interruption
and ``--resume`` from its last checkpoint: the state needed to continue is the epoch
number, which the checkpoint holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_SEED_MODULUS = 2**31 - 1


def derive_seed(*parts: object) -> int:
    """A seed in ``[0, 2**31 - 1)`` from any printable parts, stable across processes and
    Python versions (unlike ``hash``)."""
    text = "/".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") % _SEED_MODULUS


def fit_seed(seed: int, key: str) -> int:
    """The seed of fit ``key`` of a run whose config seed is ``seed``."""
    return derive_seed("fit", seed, key)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochShuffleSampler(Sampler):
    """Shuffled (or, with ``weights``, drawn with replacement) training indices whose order
    depends only on ``(seed, epoch)``; Lightning calls :meth:`set_epoch` before each epoch.

    Yields ``(index, item_seed, epoch)`` keys for :class:`SeededItems`.

    Under DDP every rank draws the same order and takes its share of each global batch:
    rank ``r`` of ``R`` gets items ``[k*B + r*B/R, k*B + (r+1)*B/R)`` of global batch
    ``k`` (``B = global_batch``), and the last incomplete global batch is dropped, so the
    ranks' batches together are the batches of one process with batch size ``B``.

    Args:
        n_items: dataset length N.
        seed: the fit's seed.
        weights: ``(N,)`` non-negative sampling weights (a class-balanced sampler); None
            shuffles without replacement.
        rank, world_size: this process's place in a DDP fit (0 of 1 without DDP).
        global_batch: the batch size over all ranks; needed when ``world_size > 1``.
    """

    def __init__(self, n_items: int, seed: int, weights: np.ndarray | None = None, *,
                 rank: int = 0, world_size: int = 1, global_batch: int | None = None):
        self.n_items = int(n_items)
        self.seed = int(seed)
        self.weights = (None if weights is None
                        else torch.as_tensor(np.asarray(weights, dtype=np.float64)))
        if self.weights is not None and len(self.weights) != self.n_items:
            raise ValueError(f"{len(self.weights)} weights for {self.n_items} items")
        if world_size > 1 and (global_batch is None or global_batch % world_size):
            raise ValueError(f"global batch {global_batch} does not split over {world_size} "
                             "ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.global_batch = global_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n_items
        return self.n_items // self.global_batch * (self.global_batch // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed("order", self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.n_items, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n_items, replacement=True,
                                      generator=generator)
        item_seeds = torch.randint(0, _SEED_MODULUS, (self.n_items,), generator=generator)
        pairs = [(index, item_seed, self.epoch) for index, item_seed
                 in zip(order.tolist(), item_seeds.tolist(), strict=True)]
        if self.world_size == 1:
            yield from pairs
            return
        share = self.global_batch // self.world_size
        for start in range(0, len(pairs) - self.global_batch + 1, self.global_batch):
            first = start + self.rank * share
            yield from pairs[first:first + share]


class ShardSampler(Sampler):
    """Rank ``rank``'s share of ``n_items`` evaluation items (every ``world_size``-th one,
    no padding): the ranks together see each item exactly once, so metrics reduced over
    them are the metrics of the whole set."""

    def __init__(self, n_items: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, int(n_items), world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class SeededItems(Dataset):
    """``dataset[index]`` computed under torch's generator seeded with the item's seed, so
    random augmentation depends on ``(seed, epoch, position)`` only, not on the worker that
    loads it. Keys are ``(index, item_seed, epoch)`` (from :class:`EpochShuffleSampler`) or
    plain indices (no reseeding). A dataset with a ``set_epoch(epoch)`` method is told the
    epoch before each item, in whichever worker loads it (e.g. augmentation that stops
    after an epoch)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, item_seed, epoch = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return self.dataset[index]
