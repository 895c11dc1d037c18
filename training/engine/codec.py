"""Field and model codecs every driver shares (gRPC envelopes, Flower records): checked header fields, the global
model as little-endian float32 (what clients train in; the aggregator keeps it in float64), and the audit proofs
that come with a model (:mod:`training.engine.audit`), whose releases travel as bytes in the body, before the
model, never in the JSON header (a release is 8 bytes per model value)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from secagg import errors as E

__all__ = ["field", "model_bytes", "model_from", "proofs_out", "proofs_in"]


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


def proofs_out(proofs: Sequence[dict]) -> tuple[list[dict], tuple[bytes, ...]]:
    """A model's proofs for the wire: (their JSON heads, their releases in order). A head is the proof less its
    release, plus ``release_bytes`` (None for a step without a release)."""
    heads, releases = [], []
    for p in proofs:
        release = p.get("release")
        heads.append({k: v for k, v in p.items() if k != "release"} |
                     {"release_bytes": None if release is None else len(release)})
        if release is not None:
            releases.append(bytes(release))
    return heads, tuple(releases)


def proofs_in(heads: object, body: bytes | memoryview) -> tuple[list[dict], memoryview]:
    """Inverse of :func:`proofs_out` on a body that starts with the releases: (the proofs, each with its release
    as bytes, and a view of the rest of the body: the model). MalformedMessageError when a head is malformed or
    the heads claim more bytes than the body holds."""
    if not isinstance(heads, list):
        raise E.MalformedMessageError("the proofs are not a list")
    view, pos, proofs = memoryview(body).cast("B"), 0, []
    for h in heads:
        if not isinstance(h, dict):
            raise E.MalformedMessageError("a proof is not an object")
        n = h.get("release_bytes")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0 or pos + n > len(view)):
            raise E.MalformedMessageError("a proof's release is malformed or longer than the body")
        release = None if n is None else bytes(view[pos:pos + n])
        pos += 0 if n is None else n
        proofs.append({k: v for k, v in h.items() if k != "release_bytes"} | {"release": release})
    return proofs, view[pos:]
