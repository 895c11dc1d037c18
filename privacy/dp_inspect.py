"""Gradient inspection for a :class:`~privacy.dpsgd.DPTrainer`: per-example gradients, their norms and the
clipped sum, computed without an update, without noise and without recording a privacy cost (tests and
debugging only: nothing here may be released)."""

from __future__ import annotations

import torch

from privacy.batches import Batch, unpack_batch
from privacy.errors import ConfigurationError

__all__ = ["GradientInspection"]


class GradientInspection:
    """Mixin of :class:`~privacy.dpsgd.DPTrainer` (uses its ``mode``, ``model``, ``optimizer``, ``_hooks``,
    ``_backward`` and ``_named_trainable``)."""

    def per_sample_gradient_norms(self, batch: Batch) -> torch.Tensor:
        """L2 norm of each example's full gradient (all trainable parameters), shape (B,)."""
        if self.mode == "ghost":
            self._inspect(batch)
            norms = self._hooks.get_norm_sample().detach().clone()
        else:
            grads = self.per_sample_gradients(batch)
            norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads.values()], 1).norm(dim=1)
        self.optimizer.zero_grad()
        return norms

    def per_sample_gradients(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example gradients {param name: (B, *shape)} (hooks and lora modes)."""
        if self.mode == "ghost":
            raise ConfigurationError("ghost clipping never materialises per-example gradients; use hooks mode")
        self._inspect(batch)
        out = {n: p.grad_sample.detach().clone() for n, p in self._named_trainable()}
        self.optimizer.zero_grad()
        return out

    def clipped_gradient_sum(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Σ_i min(1, C/‖g_i‖)·g_i over the batch, without noise or update (what DP-SGD noises)."""
        self._inspect(batch)
        if self.mode == "ghost":
            out = {n: p.grad.detach().clone() for n, p in self._named_trainable()}
        else:
            self.optimizer.clip_and_accumulate()
            out = {n: p.summed_grad.detach().clone() for n, p in self._named_trainable()}
        for p in self.optimizer.params:
            p.summed_grad = None
        self.optimizer.zero_grad()
        return out

    def _inspect(self, batch: Batch) -> None:
        parts = unpack_batch(batch)
        if parts is None:
            raise ConfigurationError("cannot inspect an empty batch")
        self.model.train()
        self.optimizer.zero_grad()
        self._backward(parts)
