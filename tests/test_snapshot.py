"""Sealed role snapshots (secagg.snapshot): a role that leaves its process after every message still completes
its round exactly, and a snapshot that was altered, truncated, oversized, or sealed for another run, party or key
does not open."""

from __future__ import annotations

import os
import pickle
import secrets

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secagg.errors import ConfigurationError
from secagg.simulation import run_round
from secagg.snapshot import SnapshotError, seal, unseal

KEY = os.urandom(32)


class Sealed:
    """A role that exists only as a sealed blob between calls (what a Flower SuperNode's node state holds)."""

    def __init__(self, role, aad: bytes) -> None:
        self.aad, self.blob, self.client_id = aad, seal(role, KEY, aad), getattr(role, "client_id", None)

    def _call(self, name: str, *args):
        role = unseal(self.blob, KEY, self.aad)
        out = getattr(role, name)(*args)
        self.blob = seal(role, KEY, self.aad)
        return out

    def start(self, update, weight):
        return self._call("start", update, weight)

    def receive(self, *args):
        return self._call("receive", *args)

    @property
    def done(self) -> bool:
        return unseal(self.blob, KEY, self.aad).done

    @property
    def stage(self) -> str:
        return unseal(self.blob, KEY, self.aad).stage


def _setup(scheme: str, n: int, dim: int):
    if scheme == "masking":
        from secagg.masking.setup import build_round
        return build_round(range(n), dim=dim, weights={i: 1.0 for i in range(n)}, graph_seed=b"s" * 16,
                           rounding="deterministic")
    if scheme == "ckks":
        from secagg.ckks.setup import build_round
        return build_round(range(n), dim=dim, weights={i: 1.0 for i in range(n)}, graph_seed=b"")
    from secagg.packed.setup import build_round
    return build_round(range(n), dim=dim, weights={i: 1.0 for i in range(n)}, graph_seed=b"", rounding="deterministic")


@pytest.mark.parametrize("scheme", ["masking", "ckks", "packed"])
def test_roles_sealed_between_every_message_finish_their_round(scheme):
    n, dim = 4, 300
    rng = np.random.default_rng(1)
    xs = {i: rng.uniform(-0.5, 0.5, dim) for i in range(n)}
    plain = _setup(scheme, n, dim)
    ref = run_round(plain.clients, plain.aggregator, xs, {i: 1.0 for i in range(n)}, finalizer=plain.finalizer)
    rnd = _setup(scheme, n, dim)
    clients = {c: Sealed(r, b"run|client-%d" % c) for c, r in rnd.clients.items()}
    fin = None if rnd.finalizer is None else Sealed(rnd.finalizer, b"run|keyholder")
    res = run_round(clients, rnd.aggregator, xs, {i: 1.0 for i in range(n)}, finalizer=fin)
    assert res.contributors == ref.contributors == tuple(range(n))
    expected = np.mean(list(xs.values()), axis=0)
    tol = 1e-6 if scheme == "ckks" else 1e-7
    assert np.max(np.abs(res.mean - expected)) < max(tol, 2 * np.max(np.abs(ref.mean - expected)) + 1e-12)
    if scheme != "ckks":  # deterministic rounding: the sealed run computes exactly the plain run's sum
        np.testing.assert_array_equal(res.mean, ref.mean)


def test_masking_secrets_are_not_readable_in_the_blob():
    rnd = _setup("masking", 3, 8)
    role = rnd.clients[0]
    role.start(np.zeros(8), 1.0)
    raw = role._s_sk.private_bytes_raw()
    blob = seal(role, KEY, b"a")
    assert raw not in blob and unseal(blob, KEY, b"a")._s_sk.private_bytes_raw() == raw


@pytest.mark.parametrize("change", ["flip", "truncate", "aad", "key", "magic", "empty"])
def test_altered_or_foreign_snapshot_does_not_open(change):
    blob = seal({"seed": secrets.token_bytes(32)}, KEY, b"run-1|client-0")
    key, aad = KEY, b"run-1|client-0"
    if change == "flip":
        blob = blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:]
    elif change == "truncate":
        blob = blob[:len(blob) // 2]
    elif change == "aad":
        aad = b"run-1|client-1"  # another party's (or run's) snapshot handed to this one
    elif change == "key":
        key = os.urandom(32)
    elif change == "magic":
        blob = b"X" + blob[1:]
    else:
        blob = b""
    with pytest.raises(SnapshotError):
        unseal(blob, key, aad)


def test_oversized_snapshot_refused_before_decryption():
    blob = seal(b"x" * 1000, KEY, b"a")
    with pytest.raises(SnapshotError, match="size"):
        unseal(blob, KEY, b"a", max_bytes=100)


def test_unpickler_resolves_only_the_allow_list():
    """Even an authentic blob may not name a global outside the allow-list (defence in depth)."""
    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    blob = seal(Evil(), KEY, b"a")
    with pytest.raises(SnapshotError, match="may not name"):
        unseal(blob, KEY, b"a")
    blob = seal(pickle.loads, KEY, b"a")
    with pytest.raises(SnapshotError, match="may not name"):
        unseal(blob, KEY, b"a")


def test_bound_methods_and_bad_keys_are_refused_at_seal():
    with pytest.raises(ConfigurationError, match="bound method"):
        seal({"handler": Sealed(1, b"a")._call}, KEY, b"a")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        seal(1, b"short", b"a")


_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                  st.binary(max_size=32),
                  st.lists(st.integers(0, 2**63), max_size=6).map(lambda v: np.array(v, dtype=np.uint64)))


@settings(max_examples=60, deadline=None)
@given(st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4), st.tuples(kids, kids),
                                                     st.dictionaries(st.integers(), kids, max_size=4)),
                    max_leaves=12), st.binary(max_size=16))
def test_seal_round_trips_any_plain_state(obj, aad):
    back = unseal(seal(obj, KEY, aad), KEY, aad)
    assert pickle.dumps(back, protocol=5) == pickle.dumps(obj, protocol=5) or _equal(back, obj)


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)
