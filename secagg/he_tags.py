"""Linear tags that bind an HE aggregate to exactly the named contributions (what the pads alone cannot).

Why pads are not enough: a pad cancels only when its own contribution is in the sum, but a term the aggregator
*adds* (any ciphertext it makes itself, e.g. the trivial encryption ``(Δ·m, 0)`` of a value ``m`` with zero
guards) carries no pad, decrypts cleanly and passed every guard check. Tags close that: every contribution is
checked against a secret linear function of all its residues, and the aggregator cannot compute it.

The tag. A session *tag key* ``K`` (32 bytes, CSPRNG) is made by the key holder and handed to each client alone
(:class:`TagRequest` / :class:`TagGrant`: X25519 to the client's ephemeral key + HKDF + AES-GCM, so it may be
relayed; the grant opens only with the requesting client's key and only if the key holder made it). Per round
``r``, ``K`` expands (AES-CTR) into, per prime ``q_j`` and per tag ``l``, a secret ``γ_{j,l} ∈ [0, 2^g)^N`` and
``β_{j,l} ∈ [0, 2^b)^T`` (``T``: the contribution's polynomials, 2 per ciphertext), and the tag of residues ``R``
(shape ``(chunks, 2, L, N)``) is ``τ_{j,l}(R) = β_{j,l}ᵀ · R_j · γ_{j,l} mod q_j``. Each client seals the tags of
its padded contribution inside its pad seed (:mod:`secagg.he_pads`); the key holder checks
``τ(aggregate) = Σ τ(contribution)`` over the named contributors, mod every ``q_j``, for every tag, before it
decrypts. The tag is linear mod ``q_j``, so an honest sum always passes.

Soundness (the argument, per round): a forged aggregate differs from the honest sum by ``D ≠ 0`` (some prime
``q_j`` with ``D_j ≠ 0 mod q_j``). It passes tag ``l`` only if ``β_{j,l}ᵀ D_j γ_{j,l} ≡ 0``. Some row of ``D_j`` is
nonzero, so ``(D_j γ)_t`` is a nonzero linear form in ``γ``: zero with probability ≤ ``2^-g`` (fix every other
coordinate; at most one of the ``2^g < q_j`` values of the last works). If ``D_j γ ≠ 0``, ``βᵀ(D_j γ) ≡ 0`` with
probability ≤ ``2^-b`` likewise. Tags are independent, so a forgery passes with probability at most
``(2^-g + 2^-b)^tags ≤ 2^-128`` (:func:`soundness_bits`). ``D`` is fixed before the check: the tags are sealed to
the key holder (the aggregator never sees a tag), ``K`` never reaches the aggregator, and the key holder
processes one aggregate per round, so a refusal teaches nothing about another round's ``γ, β``.

What remains: a client that colludes with the aggregator knows ``K``; in a round it contributes to, it can seal
tags for its contribution plus any ``D`` (what it could add itself by encrypting ``D``); with ``K`` leaked, the
aggregator can also forge rounds that client is not in. Tags leak nothing to the key holder: each is a linear
function of a ciphertext's ``c1 = a·u + e``, a fresh RLWE sample the key holder never sees.

Exact integer arithmetic in uint64 (the loop is :func:`secagg.kernels.tag_columns`): residues are split into 20-bit
limbs; ``limb · γ`` summed over ``N`` stays below ``2^(20 + g + log2 N) ≤ 2^64`` and the ``β`` stage (16-bit limbs
of those sums) likewise, so no product or partial sum wraps; the limbs recombine in Python integers before the
reduction mod ``q_j``.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import AuthenticationError, ConfigurationError, MalformedMessageError
from secagg.hazmat import aead, kex, prg, sign
from secagg.hazmat.rlwe import RingLayout
from secagg.kernels import tag_columns
from secagg.messages import Message, message

__all__ = ["TagRequest", "TagGrant", "TAG_KEY_BYTES", "SOUNDNESS_BITS", "MAX_TAG_WORDS", "request_tag_key",
           "grant_tag_key", "open_grant", "tag_count", "soundness_bits", "compute_tags", "TagAccumulator",
           "fresh_tag_key"]

TAG_KEY_BYTES = 32
SOUNDNESS_BITS = 128  # every layout gets enough tags for a forgery probability below 2^-128
MAX_TAG_WORDS = 1024  # tag words a sealed seed may carry (primes x tags); larger is refused before decryption
_WORD = 64  # uint64 arithmetic: every product and partial sum stays below 2^64, so nothing wraps
_LIMB = 20  # bits of a residue limb (residues < 2^62 split into at most 4)
_SUB = 16  # bits of a limb of the first stage's sums
_REQUEST_LABEL = b"secagg/he/tag-request/v1"
_GRANT_LABEL = b"secagg/he/tag-grant/v1"
_ROUND_LABEL = b"secagg/he/tag-round/v1"


@message(0x41)
class TagRequest(Message):
    """Client -> key holder (may be relayed when signed): asks for the session's tag key, sealed to ``ephemeral``."""

    client_id: int
    session_id: bytes
    ephemeral: bytes
    signature: bytes

    def validate(self) -> None:
        if self.client_id < 0:
            raise MalformedMessageError("client_id must be >= 0")
        if len(self.session_id) != 32 or len(self.ephemeral) != kex.KEY_BYTES:
            raise MalformedMessageError("session id and ephemeral key must be 32 bytes")
        if len(self.signature) not in (0, sign.SIGNATURE_BYTES):
            raise MalformedMessageError("signature must be empty or 64 bytes")

    def signed_bytes(self) -> bytes:
        return _REQUEST_LABEL + self.session_id + struct.pack("<q", self.client_id) + self.ephemeral


@message(0x42)
class TagGrant(Message):
    """Key holder -> client (may be relayed): the tag key, AES-GCM-sealed under X25519(key holder, ephemeral)."""

    client_id: int
    session_id: bytes
    ephemeral: bytes
    sealed: bytes

    def validate(self) -> None:
        if self.client_id < 0 or len(self.session_id) != 32 or len(self.ephemeral) != kex.KEY_BYTES:
            raise MalformedMessageError("bad tag grant header")
        if len(self.sealed) != TAG_KEY_BYTES + aead.OVERHEAD:
            raise MalformedMessageError(f"sealed tag key must be {TAG_KEY_BYTES + aead.OVERHEAD} bytes")


def _grant_info(session_id: bytes, client_id: int, ephemeral: bytes) -> bytes:
    return _GRANT_LABEL + session_id + struct.pack("<q", client_id) + ephemeral


def fresh_tag_key() -> bytes:
    """A new session tag key from the OS CSPRNG."""
    return os.urandom(TAG_KEY_BYTES)


def request_tag_key(session_id: bytes, client_id: int,
                    identity: Ed25519PrivateKey | None) -> tuple[X25519PrivateKey, TagRequest]:
    """(the ephemeral secret to open the grant with, the request); ``identity`` signs it (needed when relayed)."""
    eph = kex.generate()
    req = TagRequest(client_id=client_id, session_id=session_id, ephemeral=kex.public_bytes(eph), signature=b"")
    if identity is not None:
        req = TagRequest(client_id=client_id, session_id=session_id, ephemeral=req.ephemeral,
                         signature=sign.sign(identity, req.signed_bytes()))
    return eph, req


def grant_tag_key(req: TagRequest, tag_key: bytes, seal: X25519PrivateKey, session_id: bytes,
                  identity: Ed25519PublicKey | None) -> TagGrant:
    """The key holder's grant for ``req`` (checked: this session; with ``identity``, the client's signature)."""
    if req.session_id != session_id:
        raise AuthenticationError("tag-key request for another session (another key holder)")
    if identity is not None:
        if not req.signature:
            raise AuthenticationError(f"tag-key request of client {req.client_id} is unsigned")
        sign.verify(identity, req.signature, req.signed_bytes())
    info = _grant_info(session_id, req.client_id, req.ephemeral)
    key = kex.derive_key(kex.exchange(seal, req.ephemeral), info=info, length=16)
    return TagGrant(client_id=req.client_id, session_id=session_id, ephemeral=req.ephemeral,
                    sealed=aead.encrypt(key, tag_key, info))


def open_grant(grant: TagGrant | bytes, eph: X25519PrivateKey, keyholder_seal_key: bytes, session_id: bytes,
               client_id: int) -> bytes:
    """The tag key inside ``grant``; a grant for another client, session or request, or one the key holder did
    not make (AES-GCM under X25519 with the key holder's sealing key), raises a named error."""
    if not isinstance(grant, TagGrant):
        grant = TagGrant.from_bytes(grant)
    if grant.client_id != client_id or grant.session_id != session_id or grant.ephemeral != kex.public_bytes(eph):
        raise AuthenticationError("the tag grant answers another client, session or request")
    info = _grant_info(session_id, client_id, grant.ephemeral)
    key = kex.derive_key(kex.exchange(eph, keyholder_seal_key), info=info, length=16)
    return aead.decrypt(key, grant.sealed, info)


def _widths(layout: RingLayout, rows: int) -> tuple[int, int]:
    """(γ bits, β bits): the largest that keep both integer stages below 2^64 for ``rows`` polynomials."""
    g = _WORD - _LIMB - int(math.log2(layout.degree))
    b = _WORD - _SUB - max(1, math.ceil(math.log2(max(rows, 2))))
    return min(g, 32), min(b, 32)


def _per_tag_bits(layout: RingLayout, rows: int) -> float:
    g, b = _widths(layout, rows)
    return -math.log2(2.0 ** -g + 2.0 ** -b)


def tag_count(layout: RingLayout, rows: int) -> int:
    """Tags per prime for a contribution of ``rows`` polynomials: enough for ``SOUNDNESS_BITS``."""
    g, b = _widths(layout, rows)
    if g < 8 or b < 8:
        raise ConfigurationError(f"a contribution of {rows} polynomials of degree {layout.degree} is too large to tag")
    return math.ceil(SOUNDNESS_BITS / _per_tag_bits(layout, rows))


def soundness_bits(layout: RingLayout, rows: int) -> float:
    """-log2 of the probability that a forged aggregate passes every tag (>= ``SOUNDNESS_BITS``)."""
    return tag_count(layout, rows) * _per_tag_bits(layout, rows)


class TagAccumulator:
    """The tags of one contribution of ``chunks`` ciphertexts, fed in order one part at a time (:meth:`add`):
    equal to :func:`compute_tags` of the whole, so neither a client nor the key holder ever holds all of it."""

    def __init__(self, tag_key: bytes, layout: RingLayout, *, chunks: int, session_id: bytes, round_id: int) -> None:
        if len(tag_key) != TAG_KEY_BYTES:
            raise ConfigurationError(f"tag key must be {TAG_KEY_BYTES} bytes")
        self._layout, self.chunks, self._next = layout, chunks, 0
        primes, n, rows = len(layout.moduli), layout.degree, 2 * chunks
        self._tags, (g, b) = tag_count(layout, rows), _widths(layout, rows)
        seed = kex.derive_key(tag_key, info=_ROUND_LABEL + session_id + struct.pack("<q", round_id), length=32)
        words = prg.keystream(seed, 4 * primes * self._tags * (n + rows))
        rand = np.frombuffer(words, dtype="<u4").reshape(primes, self._tags, n + rows)
        self._gamma = [(rand[j, :, :n] & np.uint32((1 << g) - 1)).astype(np.uint64) for j in range(primes)]  # (tags, N)
        self._beta = [(rand[j, :, n:] & np.uint32((1 << b) - 1)).astype(np.uint64).T.copy() for j in range(primes)]
        self._acc = [[0] * self._tags for _ in range(primes)]

    def add(self, residues: np.ndarray) -> "TagAccumulator":
        """Feed the next ``residues`` (``(k, 2, L, N)``, reduced): chunks ``[fed, fed + k)``."""
        k, polys, _, n = residues.shape
        if self._next + k > self.chunks:
            raise ConfigurationError(f"{self._next + k} chunks fed to tags of {self.chunks}")
        rows, first = k * polys, polys * self._next
        for j, q in enumerate(self._layout.moduli):
            cols = tag_columns(residues, j, self._gamma[j], self._beta[j][first:first + rows],
                               limbs=math.ceil(q.bit_length() / _LIMB), limb_bits=_LIMB, sub_bits=_SUB)
            acc = self._acc[j]
            for (a, a2, t), v in np.ndenumerate(cols):
                acc[t] += int(v) << (_LIMB * a + _SUB * a2)
        self._next += k
        return self

    def tags(self) -> np.ndarray:
        """``τ[j, l]`` (uint64, shape ``(L, tags)``) once every chunk was fed."""
        if self._next != self.chunks:
            raise ConfigurationError(f"tags asked after {self._next} of {self.chunks} chunks")
        return np.array([[v % q for v in acc] for acc, q in zip(self._acc, self._layout.moduli)], dtype=np.uint64)


def compute_tags(residues: np.ndarray, tag_key: bytes, layout: RingLayout, *, session_id: bytes,
                 round_id: int) -> np.ndarray:
    """The tags ``τ[j, l]`` (uint64, shape ``(L, tags)``) of ``residues`` (``(chunks, 2, L, N)``, reduced) for this
    session and round: see the module docstring."""
    acc = TagAccumulator(tag_key, layout, chunks=residues.shape[0], session_id=session_id, round_id=round_id)
    return acc.add(residues).tags()
