"""The key holder of both HE schemes (:mod:`secagg.he_round`): decrypts verified aggregates only.

Invariants (every one checked before anything is decrypted, each failure a named error):

* only the aggregator's aggregate of this session is decrypted, of ``min_contributors..max_contributors`` named
  clients, with ``dim <= max_dim`` and the chunk count checked arithmetically before any allocation;
* an aggregate may arrive in parts (contiguous chunk ranges in order, :mod:`secagg.he_stream`); each part is
  decrypted into one plaintext buffer as it comes (the tags accumulate over it), and nothing is released before
  the last part, which carries the contributors' sealed tags, passed every check below; a part that does not
  continue the open stream (round, contributors, next chunk) is refused, and a part that fails a check ends it;
* one aggregate per round: the round's seeds are consumed by its first part whether it is released or refused;
* every named contributor's sealed pad seed must be here and name the same round-terms digest;
* the aggregate's tags must be the sum of the named contributions' tags (:mod:`secagg.he_tags`), each sealed under
  its contributor's pad seed, so a term the aggregator added itself is refused (probability of a pass below
  2^-128); the pads are removed, and the scheme's guard check decides;
* every release is Ed25519-signed with the session's release key (:mod:`secagg.he_release`);
* the session tag key goes only to the client that asks, sealed to that request's ephemeral key (relayed requests
  must be signed by the client they name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.errors import AuthenticationError, CapacityError, ConfigurationError, DecryptionError, \
    DuplicateMessageError, MalformedMessageError, TooFewContributorsError, UnknownClientError, VerificationError, \
    WrongRoundError
from secagg.hazmat import kex, rlwe, sign
from secagg.he_pads import PadSeed, open_seed, open_tags, pad_key
from secagg.he_release import sign_release
from secagg.he_round import TagKeyRequest, check_int
from secagg.he_tags import TagAccumulator, TagRequest, fresh_tag_key, grant_tag_key
from secagg.messages import decode
from secagg.roles import AGGREGATOR, Outbound

__all__ = ["HEKeyHolder", "AggregateStream", "granted_tag_key", "MAX_PENDING_SEEDS"]

MAX_PENDING_SEEDS = 1 << 16  # seeds of undecrypted rounds a key holder keeps at most


def granted_tag_key(keyholder: "HEKeyHolder", client_id: int, identity: Ed25519PrivateKey | None = None) -> bytes:
    """In one process: client ``client_id`` asks ``keyholder`` for the tag key over the direct channel."""
    req = TagKeyRequest(keyholder.public_context(), client_id, identity)
    (out,) = keyholder.receive(client_id, req.payload)
    return req.open(out.payload)



class HEKeyHolder(ABC):
    """Decrypts verified aggregates only; subclasses own the secret context, the chunk layout and the guard check."""

    aggregate_type: ClassVar[type]
    session_id: bytes
    _public: bytes
    _layout: rlwe.RingLayout

    def _init_keyholder(self, min_contributors: int, max_contributors: int | None, max_dim: int,
                        peer_identities: Mapping[int, Ed25519PublicKey] | None) -> None:
        top = max_contributors if max_contributors is not None else math.inf
        if isinstance(min_contributors, bool) or not isinstance(min_contributors, int) or \
                not 2 <= min_contributors <= top:
            bound = "" if max_contributors is None else f" and <= {max_contributors}"
            raise ConfigurationError(f"min_contributors must be an int >= 2{bound} (a sum of one client is that "
                                     f"client's update), got {min_contributors!r}")
        self.min_contributors, self._max_contributors = min_contributors, max_contributors
        self.max_dim = check_int("max_dim", max_dim, 1)
        self._peers = dict(peer_identities) if peer_identities is not None else None
        self._seal = kex.generate()
        self.seal_key = kex.public_bytes(self._seal)
        self._finalized: set[int] = set()
        self._seeds: dict[int, dict[int, tuple[bytes, bytes]]] = {}  # round -> client -> (seed, terms)
        self._stream: AggregateStream | None = None  # the aggregate being received part by part
        self._tag_key = fresh_tag_key()  # the session's tag key: granted to clients only, never to the aggregator
        self._release = sign.generate()  # signs every release (its public half is in the bundle)
        self.release_key = self._release.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public_context(self) -> bytes:
        """The public bundle: the context with the public key only (no secret, relinearization or Galois keys)
        and the X25519 key clients seal their pad seeds to."""
        return self._public

    @property
    def finalized_rounds(self) -> frozenset[int]:
        """Round ids whose aggregate has been decrypted or refused (each is processed only once)."""
        return frozenset(self._finalized)

    @property
    def streaming_round(self) -> int | None:
        """The round whose aggregate is arriving in parts (its first part in, its last not yet), or None."""
        return None if self._stream is None else self._stream.round_id

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's sealed pad seed, or an aggregate (part) from the aggregator (answered with the verified sum
        after its last part)."""
        msg = decode(payload)
        if isinstance(msg, PadSeed):
            return self._on_seed(sender, msg)
        if isinstance(msg, TagRequest):
            return [Outbound(msg.client_id, self._grant(sender, msg))]
        if sender != AGGREGATOR:
            raise AuthenticationError(f"the key holder accepts aggregates from the aggregator only, not {sender}")
        if not isinstance(msg, self.aggregate_type):
            raise MalformedMessageError(f"the key holder decrypts {self.aggregate_type.__name__} only, "
                                        f"got {type(msg).__name__}")
        if self._session_of(msg) != self.session_id:
            raise DecryptionError("aggregate was made under another session (another key holder or layout)")
        if msg.dim > self.max_dim:
            raise MalformedMessageError(f"aggregate of dim {msg.dim} exceeds this key holder's max_dim={self.max_dim}")
        total = self._chunk_count(msg.dim)
        if msg.first + len(msg.chunks) > total:
            raise MalformedMessageError(f"aggregate part [{msg.first}, {msg.first + len(msg.chunks)}) passes the "
                                        f"{total} chunks dim {msg.dim} needs")
        n = len(msg.contributors)
        if n < self.min_contributors:
            raise TooFewContributorsError(f"aggregate of {n} contributor(s); at least {self.min_contributors} required")
        if self._max_contributors is not None and n > self._max_contributors:
            raise MalformedMessageError(f"aggregate of {n} contributors exceeds max_cohort={self._max_contributors}: "
                                        "lanes could carry into each other")
        last = msg.first + len(msg.chunks) == total
        if bool(msg.tags) != last:
            raise MalformedMessageError("the contributors' sealed tags belong in the aggregate's last part only")
        residues = rlwe.unpack(msg.chunks, self._layout)  # every chunk checked before the round is consumed
        stream = self._stream_for(msg, total)
        try:
            stream.tags.add(residues)
            for key in stream.pads:
                rlwe.apply_pad(residues[:, 0], key, self._layout, subtract=True, first=msg.first)
            self._decrypt_part(stream, msg.first, residues)
            stream.next = msg.first + residues.shape[0]
            if not last:
                return []
            self._check_tags(msg, stream)
            result = dataclasses.replace(self._finish(msg, stream), terms=stream.terms)
        finally:
            if stream.next != msg.first + residues.shape[0] or last:
                self._stream = None  # refused, or finished: the round stays consumed
        result = sign_release(self._release, hashlib.sha256(self._public).digest(), result)
        return [Outbound(AGGREGATOR, result.to_bytes())]

    def _stream_for(self, msg: Any, total: int) -> AggregateStream:
        """The open stream this part continues, or (first part) a new one after every check on its round."""
        if msg.first:
            s = self._stream
            if s is None or s.round_id != msg.round_id or s.contributors != msg.contributors or s.next != msg.first:
                raise MalformedMessageError(f"aggregate part from chunk {msg.first} of round {msg.round_id} does not "
                                            "continue the open stream (its round, contributors and next chunk)")
            return s
        if msg.round_id in self._finalized:
            raise DuplicateMessageError(f"an aggregate of round {msg.round_id} was already processed")
        seeds = self._seeds.get(msg.round_id, {})
        missing = [c for c in msg.contributors if c not in seeds]
        if missing:
            raise VerificationError(f"no pad seed from clients {missing} for round {msg.round_id}: not decrypted")
        self._finalized.add(msg.round_id)  # consumed from here on, released or not
        del self._seeds[msg.round_id]
        self._stream = None
        told = {seeds[c][1] for c in msg.contributors}
        if len(told) != 1:
            raise VerificationError(f"the contributors of round {msg.round_id} were told {len(told)} different sets "
                                    "of round terms (a server may have lowered one client's noise terms): "
                                    "nothing released")
        terms = told.pop()
        pads = [pad_key(seeds[c][0], session_id=self.session_id, round_id=msg.round_id, client_id=c, terms=terms)
                for c in msg.contributors]
        tags = TagAccumulator(self._tag_key, self._layout, chunks=total, session_id=self.session_id,
                              round_id=msg.round_id)
        self._stream = AggregateStream(msg.round_id, msg.contributors, terms, [seeds[c][0] for c in msg.contributors],
                               pads, tags, self._buffer(msg.dim))
        return self._stream

    def _identity_of(self, sender: int, client_id: int, what: str) -> Ed25519PublicKey | None:
        """The key a relayed ``what`` from ``client_id`` must be signed with (None: it must come directly)."""
        if self._peers is not None:
            if client_id not in self._peers:
                raise UnknownClientError(f"no identity key for client {client_id}")
            if sender not in (AGGREGATOR, client_id):
                raise AuthenticationError(f"sender {sender} relayed a {what} naming client {client_id}")
            return self._peers[client_id]
        if sender != client_id:
            raise AuthenticationError(f"without identities a {what} must come from its client over an "
                                      f"authenticated channel; sender {sender} named client {client_id}")
        return None

    def _grant(self, sender: int, msg: TagRequest) -> bytes:
        identity = self._identity_of(sender, msg.client_id, "tag-key request")
        return grant_tag_key(msg, self._tag_key, self._seal, hashlib.sha256(self._public).digest(), identity).to_bytes()

    def _check_tags(self, msg: Any, stream: AggregateStream) -> None:
        """VerificationError unless the aggregate's tags are the sum of the named contributions' sealed tags."""
        want = stream.tags.tags()
        total = [0] * want.size
        for c, seed, sealed in zip(stream.contributors, stream.seeds, msg.tags):
            try:
                tags = open_tags(seed, sealed, session_id=self.session_id, round_id=msg.round_id, client_id=c,
                                 terms=stream.terms)
            except DecryptionError as exc:
                raise self._guard_error(f"client {c}'s sealed tags do not open ({exc})") from exc
            if len(tags) != 8 * want.size:
                raise self._guard_error(f"a contributor sealed {len(tags) // 8} tags, {want.size} expected")
            for k, v in enumerate(np.frombuffer(tags, dtype="<u8")):
                total[k] += int(v)
        moduli = [q for q in self._layout.moduli for _ in range(want.shape[1])]
        if any(t % q != int(w) for t, q, w in zip(total, moduli, want.ravel())):
            raise self._guard_error("the aggregate's tags are not the sum of the named contributions' tags")

    def _on_seed(self, sender: int, msg: PadSeed) -> list[Outbound]:
        if msg.session_id != self.session_id:
            raise DecryptionError("pad seed for another session (another key holder)")
        identity = self._identity_of(sender, msg.client_id, "seed")
        if msg.round_id in self._finalized:
            raise WrongRoundError(f"round {msg.round_id} was already processed")
        pending = self._seeds.setdefault(msg.round_id, {})
        if msg.client_id in pending:
            raise DuplicateMessageError(f"client {msg.client_id} already sent its seed for round {msg.round_id}")
        if sum(len(s) for s in self._seeds.values()) >= MAX_PENDING_SEEDS:
            raise CapacityError(f"{MAX_PENDING_SEEDS} seeds of undecrypted rounds are pending")
        pending[msg.client_id] = (open_seed(msg, self._seal, identity), msg.terms)
        return []

    def _guard_error(self, what: str) -> VerificationError:
        return VerificationError(f"{what}: the aggregate is not the sum of the named contributions of this round "
                                 "under this key (or it is corrupted); nothing released")

    @staticmethod
    def _session_of(msg: Any) -> bytes:
        return msg.context_id if hasattr(msg, "context_id") else msg.session_id

    @abstractmethod
    def _chunk_count(self, dim: int) -> int:
        """Ciphertexts an aggregate of ``dim`` values has (computed, never allocated)."""

    @abstractmethod
    def _buffer(self, dim: int) -> np.ndarray:
        """The plaintext buffer one aggregate of ``dim`` values decrypts into (allocated once per round)."""

    @abstractmethod
    def _decrypt_part(self, stream: AggregateStream, first: int, residues: np.ndarray) -> None:
        """Decrypt the pad-free ``residues`` (chunks ``first, ...``) into ``stream.plain``."""

    @abstractmethod
    def _finish(self, msg: Any, stream: AggregateStream) -> Any:
        """The result message from ``stream.plain``; VerificationError if a guard is not zero."""


@dataclasses.dataclass
class AggregateStream:
    """One round's aggregate being received: its contributors, their seeds and pads, the running tags and the
    plaintext decrypted so far (never released before the last part's checks)."""

    round_id: int
    contributors: tuple[int, ...]
    terms: bytes
    seeds: list[bytes]
    pads: list[bytes]
    tags: TagAccumulator
    plain: np.ndarray
    next: int = 0
