"""Opacus extensions DP-SGD needs: exact per-example gradient samplers for Hugging Face layers, and DP optimizers
whose Gaussian noise comes from a CSPRNG.

Written here because Opacus provides neither: it has no sampler for GPT-2's ``Conv1D`` or Llama-style
``*RMSNorm``, and its ``secure_mode`` noise needs ``torchcsprng``, which is not built for current torch.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleHooks
from opacus.grad_sample.linear import compute_linear_norm_sample
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn
from transformers.pytorch_utils import Conv1D

from privacy.hf import conv1d_grad_sample, rmsnorm_grad_sample
from privacy.noise import CSPRNG, gaussian

__all__ = ["register_model_layers", "CsprngDPOptimizer", "CsprngGhostDPOptimizer"]

# -- per-example gradient samplers for HF layers -----------------------------------------------------------------
register_grad_sampler(Conv1D)(conv1d_grad_sample)
register_norm_sampler(Conv1D)(compute_linear_norm_sample)  # ‖Wᵀ‖ = ‖W‖: the ghost norm of nn.Linear applies


def register_model_layers(model: nn.Module) -> None:
    """Register the RMSNorm sampler for every ``*RMSNorm`` class in ``model`` (Conv1D is registered on import)."""
    for m in model.modules():
        kind = type(m)
        if (kind.__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")
                and kind not in GradSampleHooks.GRAD_SAMPLERS):
            register_grad_sampler(kind)(rmsnorm_grad_sample)


# -- noise -------------------------------------------------------------------------------------------------------
class _CsprngNoise:
    """Mixin replacing Opacus' torch.normal noise by CSPRNG (AES-CTR Box–Muller) noise of the same std.

    ``sum_bound`` (set by :func:`privacy.dpsgd.make_private` under distributed placement): the sum of clipped
    per-example gradients, all parameters together, is first projected to L2 norm <= ``sum_bound`` (1-Lipschitz:
    one example still moves it by <= C)."""

    _rng: CSPRNG
    sum_bound: float | None = None

    def add_noise(self) -> None:
        params = self.params
        for p in params:
            _check_processed_flag(p.summed_grad)
        if self.sum_bound is not None:
            norm = float(torch.sqrt(sum(p.summed_grad.double().pow(2).sum() for p in params)))
            if norm > self.sum_bound:
                for p in params:
                    p.summed_grad.mul_(self.sum_bound / norm)
        sizes = [p.summed_grad.numel() for p in params]
        noise = torch.from_numpy(gaussian(sum(sizes), self.noise_multiplier * self.max_grad_norm, rng=self._rng))
        for p, chunk in zip(params, noise.split(sizes)):
            p.grad = (p.summed_grad + chunk.view_as(p.summed_grad).to(p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)


class CsprngDPOptimizer(_CsprngNoise, DPOptimizer):
    pass


class CsprngGhostDPOptimizer(_CsprngNoise, DPOptimizerFastGradientClipping):
    pass
