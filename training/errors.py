"""Errors raised by :mod:`training`.

    TrainingError
    ├── ConfigError        an impossible or unsafe option (unknown scheme, bad partition shares, bad TOML)
    ├── DataError          a corpus that is missing, empty or in an unknown layout
    └── SessionError       the context manager used out of order (report twice, round of an unknown client)

Errors from the layers below (``secagg.errors.SecAggError``, privacy budget refusals) propagate unchanged.
"""

from __future__ import annotations

__all__ = ["TrainingError", "ConfigError", "DataError", "SessionError"]


class TrainingError(Exception):
    """Base class of every error raised by training."""


class ConfigError(TrainingError, ValueError):
    """An option that cannot work: unknown name, wrong type, out-of-range value."""


class DataError(TrainingError):
    """A corpus that cannot be loaded: missing files, unknown layout, nothing to train on."""


class SessionError(TrainingError):
    """The federated-round context manager was used out of protocol order."""
