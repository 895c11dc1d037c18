"""Sealed snapshots of a party's own protocol state, for runtimes that keep no process alive between messages.

Flower's SuperNode starts a fresh ClientApp process for every message, so a masking client's X25519 keys and
shares, or a key holder's secret context and pad seeds, must leave the process between two messages and come
back intact. :func:`seal` turns a role (any object graph of secagg types, numpy arrays, builtins and the types a
caller allows) into one AES-256-GCM blob under a key only that party holds; :func:`unseal` restores it.

Invariants:

* confidentiality and integrity: the blob is AES-GCM under the caller's 32-byte key with ``aad`` bound (the run
  and the party); a blob that was altered, truncated, or sealed for another run, party or key raises
  :class:`SnapshotError` and nothing is restored;
* keys never pickle as objects: X25519/Ed25519 keys are reduced to their raw bytes and TenSEAL contexts to their
  serialization (secret key included: the snapshot is the party's own state, sealed);
* the unpickler resolves only an allow-list of modules (secagg, numpy's array reconstruction, a few builtins and
  the caller's prefixes), as defence in depth behind the authentication tag;
* size: a blob over ``max_bytes`` is refused before it is decrypted.

Written by hand because no maintained library serializes these roles; the crypto is ``cryptography``'s.
"""

from __future__ import annotations

import io
import os
import pickle
import types
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from secagg.errors import AuthenticationError, ConfigurationError

__all__ = ["seal", "unseal", "SnapshotError", "MAX_SNAPSHOT_BYTES"]

MAX_SNAPSHOT_BYTES = 1 << 31
_MAGIC = b"secagg-snapshot/v1"
_NONCE = 12
_BUILTINS = frozenset({"set", "frozenset", "dict", "list", "tuple", "bytearray", "complex", "range", "slice"})
_NUMPY = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                    ("numpy._core.numeric", "_frombuffer")})


class SnapshotError(AuthenticationError):
    """A sealed snapshot does not open: altered, truncated, too large, or sealed for another run, party or key."""


def _raw_private(key) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _raw_public(key) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _x25519_private(raw: bytes) -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def _x25519_public(raw: bytes) -> x25519.X25519PublicKey:
    return x25519.X25519PublicKey.from_public_bytes(raw)


def _ed25519_private(raw: bytes) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def _ed25519_public(raw: bytes) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _tenseal_context(raw: bytes):
    import tenseal as ts

    return ts.context_from(raw)


_KEYS = ((x25519.X25519PrivateKey, _x25519_private, _raw_private), (x25519.X25519PublicKey, _x25519_public, _raw_public),
         (ed25519.Ed25519PrivateKey, _ed25519_private, _raw_private),
         (ed25519.Ed25519PublicKey, _ed25519_public, _raw_public))
_RESTORERS = frozenset(f.__name__ for _, f, _ in _KEYS) | {"_tenseal_context"}


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        for kind, restore, raw in _KEYS:
            if isinstance(obj, kind):
                return restore, (raw(obj),)
        if type(obj).__module__.startswith("tenseal") and type(obj).__name__ == "Context":
            return _tenseal_context, (obj.serialize(save_public_key=True, save_secret_key=True,
                                                    save_galois_keys=True, save_relin_keys=True),)
        if isinstance(obj, types.MethodType):
            raise ConfigurationError(f"a snapshot cannot hold the bound method {obj!r}")
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allow: tuple[str, ...]) -> None:
        super().__init__(io.BytesIO(data))
        self._allow = ("secagg.", *allow)

    def find_class(self, module: str, name: str):
        ok = (module == "builtins" and name in _BUILTINS) or (module, name) in _NUMPY or \
            (module == __name__ and name in _RESTORERS) or \
            (module.startswith(self._allow) and module != __name__ and not name.startswith("__"))
        if not ok:
            raise SnapshotError(f"a snapshot may not name {module}.{name}")
        return super().find_class(module, name)


def _check_key(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != 32:
        raise ConfigurationError("a snapshot key is 32 bytes")
    return AESGCM(key)


def seal(obj: object, key: bytes, aad: bytes) -> bytes:
    """``obj`` as one AES-256-GCM blob under ``key``, bound to ``aad`` (say, run id and party)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(obj)
    nonce = os.urandom(_NONCE)
    return _MAGIC + nonce + _check_key(key).encrypt(nonce, buf.getvalue(), _MAGIC + aad)


def unseal(blob: bytes, key: bytes, aad: bytes, *, allow: Iterable[str] = (),
           max_bytes: int = MAX_SNAPSHOT_BYTES) -> object:
    """The object :func:`seal` sealed with the same ``key`` and ``aad``; ``allow``: extra module prefixes
    (e.g. ``"training."``) whose classes the snapshot may hold. Raises SnapshotError for anything else."""
    aes = _check_key(key)
    if not isinstance(blob, bytes) or len(blob) > max_bytes:
        raise SnapshotError("a snapshot must be bytes within the size limit")
    if len(blob) < len(_MAGIC) + _NONCE + 16 or not blob.startswith(_MAGIC):
        raise SnapshotError("not a secagg snapshot (or truncated)")
    nonce = blob[len(_MAGIC):len(_MAGIC) + _NONCE]
    try:
        data = aes.decrypt(nonce, blob[len(_MAGIC) + _NONCE:], _MAGIC + aad)
    except InvalidTag as exc:
        raise SnapshotError("the snapshot does not authenticate under this key for this run and party") from exc
    try:
        return _Unpickler(data, tuple(allow)).load()
    except SnapshotError:
        raise
    except Exception as exc:  # authentic but unreadable: a snapshot of another software version
        raise SnapshotError(f"the snapshot does not load: {exc!r}") from exc
