"""Field and model codecs every driver shares (gRPC envelopes, Flower records): checked header fields, and the
global model as little-endian float32 (what clients train in; the aggregator keeps it in float64)."""

from __future__ import annotations

from typing import Any

import numpy as np

from secagg import errors as E

__all__ = ["field", "model_bytes", "model_from"]


def field(header: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``header[key]`` checked to be of ``kind`` (a bool never passes as a number); MalformedMessageError else."""
    if key not in header:
        if default is ...:
            raise E.MalformedMessageError(f"envelope header lacks {key!r}")
        return default
    value = header[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise E.MalformedMessageError(f"envelope field {key!r} has the wrong type {type(value).__name__}")
    return value


def model_bytes(model: np.ndarray) -> bytes:
    """The global model as sent to clients (tasks, asynchronous model replies): little-endian float32, what they
    train in; the aggregator keeps and updates it in float64."""
    return np.ascontiguousarray(model, dtype="<f4").tobytes()


def model_from(body: bytes, dim: int | None = None) -> np.ndarray:
    """Inverse of :func:`model_bytes` as float64; MalformedMessageError unless ``body`` is a whole number of
    float32 values (``dim`` of them, when given)."""
    if not body or len(body) % 4 or (dim is not None and len(body) != 4 * dim):
        raise E.MalformedMessageError(f"a model of {len(body)} bytes is not "
                                      f"{'a vector' if dim is None else dim} of float32 values")
    return np.frombuffer(body, dtype="<f4").astype(np.float64)
