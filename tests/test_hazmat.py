"""Raw primitives: known-answer vectors (NIST SP 800-38A AES-CTR, RFC 5869 HKDF, RFC 7748 X25519), the
in-place mask sum against the reference expansion, and refusals (AES-GCM, Ed25519, low-order X25519 keys)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import AuthenticationError, DecryptionError, MalformedMessageError
from secagg.hazmat import aead, kex, prg, sign

# NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_CTR = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PT = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
                        "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
NIST_CT = bytes.fromhex("874d6191b620e3261bef6864990db6ce" "9806f66b7970fdff8617187bb9fffdff"
                        "5ae4df3edbd5d35e5b4f09020db03eab" "1e031dda2fbe03d1792170a0f3009cee")


def test_aes_ctr_keystream_nist_sp800_38a_f51() -> None:
    ks = prg.keystream(NIST_KEY, 64, nonce=NIST_CTR)
    assert bytes(a ^ b for a, b in zip(ks, NIST_PT)) == NIST_CT


def test_hkdf_rfc5869_case1() -> None:
    okm = kex.derive_key(bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_x25519_rfc7748_section_6_1() -> None:
    alice = kex.load_private(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = kex.load_private(bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert kex.public_bytes(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert kex.public_bytes(bob).hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert kex.exchange(alice, kex.public_bytes(bob)).hex() == shared
    assert kex.exchange(bob, kex.public_bytes(alice)).hex() == shared


@settings(max_examples=20, deadline=None)
@given(u=st.integers(0, 1000), v=st.integers(0, 1000), sid=st.binary(min_size=32, max_size=32))
def test_pair_seed_is_symmetric_and_bound_to_session_and_pair(u: int, v: int, sid: bytes) -> None:
    if u == v:
        v = u + 1
    a, b = kex.generate(), kex.generate()
    s_ab = kex.mask_seed(a, kex.public_bytes(b), session=sid, u=u, v=v)
    assert len(s_ab) == 16
    assert s_ab == kex.mask_seed(b, kex.public_bytes(a), session=sid, u=v, v=u)
    other = bytes([sid[0] ^ 1]) + sid[1:]
    assert s_ab != kex.mask_seed(a, kex.public_bytes(b), session=other, u=u, v=v)
    assert s_ab != kex.mask_seed(a, kex.public_bytes(b), session=sid, u=u, v=v + 1001)
    assert s_ab != kex.channel_key(a, kex.public_bytes(b), session=sid, u=u, v=v)


def test_low_order_and_malformed_peer_keys_raise() -> None:
    sk = kex.generate()
    with pytest.raises(MalformedMessageError):
        kex.exchange(sk, bytes(32))  # the identity point: all-zero shared secret
    with pytest.raises(MalformedMessageError):
        kex.exchange(sk, bytes(31))
    with pytest.raises(MalformedMessageError):
        kex.load_private(bytes(16))
    # every small-order encoding (RFC 7748 curve25519: 0, 1, the order-8 points, and their non-canonical forms)
    for hexkey in ("00" * 32, "01" + "00" * 31, "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
                   "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
                   "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                   "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                   "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"):
        with pytest.raises(MalformedMessageError):
            kex.check_public(bytes.fromhex(hexkey))
    kex.check_public(kex.public_bytes(kex.generate()))


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 70_000), plus=st.integers(0, 3), minus=st.integers(0, 3),
       dtype=st.sampled_from([np.uint16, np.uint32, np.uint64]))
def test_add_masks_equals_sum_of_expansions(size: int, plus: int, minus: int, dtype) -> None:
    seeds = [os.urandom(16) for _ in range(plus + minus)]
    start = np.frombuffer(os.urandom(size * np.dtype(dtype).itemsize), dtype=dtype).copy()
    ref = start.copy()
    for i, s in enumerate(seeds):
        ref = ref + prg.expand_mask(s, size, dtype) if i < plus else ref - prg.expand_mask(s, size, dtype)
    prg.add_masks(start, seeds[:plus], seeds[plus:])
    assert start.dtype == np.dtype(dtype) and np.array_equal(start, ref)


@settings(max_examples=30, deadline=None)
@given(pt=st.binary(max_size=200), ad=st.binary(max_size=40), where=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_aead_round_trip_and_every_tamper_refused(pt: bytes, ad: bytes, where: int, bit: int) -> None:
    key = os.urandom(16)
    ct = aead.encrypt(key, pt, ad)
    assert len(ct) == len(pt) + aead.OVERHEAD and aead.decrypt(key, ct, ad) == pt
    bad = bytearray(ct)
    bad[where % len(bad)] ^= 1 << bit
    for args in ((key, bytes(bad), ad), (key, ct, ad + b"x"), (os.urandom(16), ct, ad), (key, ct[:-1], ad),
                 (key, ct[:aead.OVERHEAD - 1], ad)):
        with pytest.raises(DecryptionError):
            aead.decrypt(*args)


@settings(max_examples=20, deadline=None)
@given(data=st.binary(max_size=100), where=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_signature_verifies_and_tampering_raises(data: bytes, where: int, bit: int) -> None:
    sk = sign.generate()
    sig = sign.sign(sk, data)
    sign.verify(sk.public_key(), sig, data)
    bad = bytearray(sig)
    bad[where % len(bad)] ^= 1 << bit
    for pk, s, d in ((sk.public_key(), bytes(bad), data), (sk.public_key(), sig, data + b"\0"),
                     (sign.generate().public_key(), sig, data), (sk.public_key(), sig[:-1], data)):
        with pytest.raises(AuthenticationError):
            sign.verify(pk, s, d)
