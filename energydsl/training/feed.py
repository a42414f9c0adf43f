"""What the loop trains on, batch by batch: the epoch's order, its batches, and each worker's samples.

Training samples are a tensor (an in-memory set, moved to the model's device once) or samples
that stay on disk (:class:`~energydsl.data.streamed.StreamedSamples`).  An in-memory epoch is a
permutation of every sample, kept whole; a streamed one is a :class:`StreamOrder`, a seed from
which its blocks and windows follow, and each worker reads its part of a batch while the one
before trains (:func:`~energydsl.data.streamed.read_ahead`).  Both draw from the loop's
generator, so a resumed run continues the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from energydsl.data.base import Samples
from energydsl.data.streamed import StreamedSamples, StreamOrder, read_ahead
from energydsl.training.distributed import Workers

Order = torch.Tensor | StreamOrder


def resident(x_train: torch.Tensor | Samples, device: torch.device) -> torch.Tensor | Samples:
    """The training samples where the loop reads them: an in-memory set on the model's device."""
    return x_train.to(device) if isinstance(x_train, torch.Tensor) else x_train


def epoch_order(x_train: torch.Tensor | Samples, generator: torch.Generator) -> Order:
    """A new epoch's order of the training samples, drawn from ``generator``."""
    if isinstance(x_train, StreamedSamples):
        return x_train.order(generator)
    return torch.randperm(x_train.shape[0], generator=generator)


def epoch_batches(order: Order, size: int, device: torch.device) -> Sequence[torch.Tensor]:
    """The epoch's batches of sample positions (the last one may be short)."""
    if isinstance(order, StreamOrder):
        return order.batches(size)
    return order.to(device).split(size)


Fed = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # a global batch, this worker's part, its samples


def worker_batches(x_train: torch.Tensor | Samples, batches: Sequence[torch.Tensor], start: int,
                   workers: Workers, device: torch.device) -> Iterator[Fed]:  # fmt: skip
    """From batch ``start`` on: each global batch, this worker's part of it, and that part's samples
    on ``device``.  Samples on disk are read ahead; an in-memory set is indexed as each batch comes."""
    if isinstance(x_train, torch.Tensor):
        for batch in batches[start:]:
            mine = workers.shard(batch)
            yield batch, mine, x_train[mine]
        return
    remaining = (batches[i] for i in range(start, len(batches)))  # computed as they come, not all at once
    parts = ((batch, workers.shard(batch)) for batch in remaining)
    for (batch, mine), x in read_ahead(x_train, parts, positions=lambda part: part[1]):
        yield batch, mine, x.to(device)
