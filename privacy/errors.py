"""Every error and warning the privacy package raises. Nothing returns a bool or a sentinel for failure.

    PrivacyError
    ├── ConfigurationError          impossible or unsafe parameters (σ <= 0, q outside (0, 1], δ outside (0, 1), ...)
    ├── BudgetExceededError         a DP run that would push a ledger past its ε budget; raised BEFORE anything is
    │                               recorded or trained, so the ledger is unchanged
    ├── InvalidUpdateError          a bad update vector: wrong shape/dtype, empty, NaN/Inf
    ├── LedgerFormatError           a persisted ledger that does not decode (bad JSON, wrong version, bad fields,
    │                               truncated, checksum mismatch)
    ├── LedgerMismatchError         a ledger of another client or data set, or written with another δ, budget,
    │                               accountant or neighbouring relation: never reset silently
    ├── PlanExceededError           a step or release beyond what the open round reserved on the ledger
    └── UnsupportedModelError       a model that cannot be made private in the requested mode (e.g. tied
                                    embeddings under ghost clipping, LoRA without ``peft``)

    InsecureRNGWarning (UserWarning)  DP noise drawn from a non-cryptographic generator; emitted once per process
"""

from __future__ import annotations

__all__ = [
    "PrivacyError",
    "ConfigurationError",
    "BudgetExceededError",
    "InvalidUpdateError",
    "LedgerFormatError",
    "LedgerMismatchError",
    "PlanExceededError",
    "UnsupportedModelError",
    "InsecureRNGWarning",
]


class PrivacyError(Exception):
    """Base class of every error raised by the privacy package."""


class ConfigurationError(PrivacyError, ValueError):
    """Parameters that are out of range or cannot give the stated guarantee."""


class BudgetExceededError(PrivacyError):
    """A DP run would exceed the ledger's ε budget. Raised before the run; the ledger is left unchanged."""

    def __init__(self, message: str, *, epsilon_after: float, budget: float) -> None:
        super().__init__(message)
        self.epsilon_after = epsilon_after
        self.budget = budget


class InvalidUpdateError(PrivacyError, ValueError):
    """An update vector is malformed: not 1-D, empty, non-numeric, or holding NaN/Inf."""


class LedgerFormatError(PrivacyError, ValueError):
    """A serialized ledger is malformed or of an unknown version."""


class LedgerMismatchError(PrivacyError):
    """A durable ledger belongs to another client or data set, or to other accounting terms; the message says
    what differs and what to do. The ledger is left as it is."""


class PlanExceededError(PrivacyError):
    """A DP step or release beyond what the open round reserved (write-ahead) on the ledger; nothing ran."""


class UnsupportedModelError(PrivacyError):
    """The model cannot be trained privately in the requested mode."""


class InsecureRNGWarning(UserWarning):
    """DP noise comes from a non-cryptographic PRNG (torch's Philox/Mersenne); fine for experiments only."""
