"""Differential privacy for federated LM training: DP-SGD on HF causal LMs, accounting, update clipping, noise.

    make_private(...) -> DPTrainer              DP-SGD via Opacus (privacy.dpsgd; torch/Opacus loaded lazily)
    epsilon(σ, q, steps, δ, relation=...)       PRV (default) or RDP accountant, add/remove or replace-one
    PrivacyLedger(ε_budget, δ)                  in-memory budget; refuses overspending before it happens
    ClientLedger(path, client=..., data=...)    the client's durable, write-ahead ledger on its own disk
    distributed_epsilon(..., colluders=c)       central ε of distributed DP (noise shares, dropouts, coalition)
    clip_update(x, C) -> (clipped, norm)        L2 clipping of a flat update
    gaussian_share / discrete_gaussian_share    per-client CSPRNG noise shares, added before encoding

Never imports ``secagg`` or ``training``. Errors: :mod:`privacy.errors`.
"""

from __future__ import annotations

from typing import Any

from privacy.clipping import clip_update, validate_update
from privacy.errors import (BudgetExceededError, ConfigurationError, InsecureRNGWarning, InvalidUpdateError,
                            LedgerFormatError, LedgerMismatchError, PlanExceededError, PrivacyError,
                            UnsupportedModelError)
from privacy.events import PrivacyEvent
from privacy.noise import (CSPRNG, DiscreteGaussian, discrete_gaussian, discrete_gaussian_share, discrete_share_sigma,
                           gaussian, gaussian_share, quantization_inflation, share_std)

__all__ = [
    # DP-SGD (lazy: importing them loads torch, transformers and Opacus)
    "make_private", "DPTrainer", "LoraSettings", "sequence_loss", "load_causal_lm",
    # accounting (lazy: dp-accounting loads scipy, ~1 s; a process that only clips and noises never pays it)
    "PrivacyEvent", "epsilon", "epsilon_of_events", "noise_multiplier_for_epsilon", "PrivacyLedger",
    "ClientLedger", "read_ledgers", "central_noise_multiplier", "distributed_epsilon", "discrete_gaussian_rho",
    # update clipping and noise
    "clip_update", "validate_update", "CSPRNG", "gaussian", "DiscreteGaussian", "discrete_gaussian", "share_std",
    "gaussian_share", "discrete_share_sigma", "discrete_gaussian_share", "quantization_inflation",
    # errors
    "PrivacyError", "ConfigurationError", "BudgetExceededError", "InvalidUpdateError", "LedgerFormatError",
    "LedgerMismatchError", "PlanExceededError",
    "UnsupportedModelError", "InsecureRNGWarning",
]

_LAZY = {"make_private": "privacy.dpsgd", "DPTrainer": "privacy.dpsgd", "LoraSettings": "privacy.hf",
         "sequence_loss": "privacy.hf", "load_causal_lm": "privacy.hf",
         "PrivacyLedger": "privacy.ledger", "ClientLedger": "privacy.durable", "read_ledgers": "privacy.durable",
         **{n: "privacy.distributed" for n in ("central_noise_multiplier", "distributed_epsilon",
                                               "discrete_gaussian_rho")},
         **{n: "privacy.accounting" for n in ("epsilon", "epsilon_of_events", "noise_multiplier_for_epsilon")}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'privacy' has no attribute {name!r}")
