"""Batches for DP-SGD: CSPRNG Poisson sampling and the accepted batch formats (torch only, no Opacus).

A logical batch is one of: a dict with ``input_ids`` (B, T) and optional ``attention_mask``/``labels``; a
LongTensor (B, T); a ``(input_ids[, attention_mask])`` tuple (as ``TensorDataset`` yields); or ``None`` for an
empty Poisson batch. Missing labels are ``input_ids`` with padding ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from privacy.errors import ConfigurationError
from privacy.hf import labels_for
from privacy.noise import CSPRNG

__all__ = ["Batch", "PoissonBatchSampler", "collate_or_none", "unpack_batch"]

Batch = Any  # dict | LongTensor (B, T) | (ids[, mask]) tuple | None


class PoissonBatchSampler:
    """Each of ``steps`` batches holds every index independently with probability ``sample_rate`` (CSPRNG)."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, *, rng: CSPRNG | None = None) -> None:
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps
        self._rng = rng or CSPRNG()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(self._rng.uniform(self.num_samples) < self.sample_rate).tolist()


def collate_or_none(collate: Callable) -> Callable:
    """Wrap a collate function so that an empty index list (empty Poisson batch) collates to None."""
    return lambda items: collate(items) if items else None


def unpack_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None:
    """(input_ids, attention_mask, labels) of a batch, or None for an empty batch."""
    mask = labels = None
    if batch is None:
        return None
    if isinstance(batch, Mapping):
        ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
    elif isinstance(batch, torch.Tensor):
        ids = batch
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        ids, mask = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        raise ConfigurationError(f"unsupported batch type {type(batch).__name__}")
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ConfigurationError(f"input_ids must be an integer tensor of shape (B, T), got {tuple(ids.shape)}")
    if ids.shape[0] == 0:
        return None
    return ids, mask, labels if labels is not None else labels_for(ids, mask)
