"""The verifiable one-shot round both homomorphic-encryption schemes run (:mod:`secagg.ckks`, :mod:`secagg.packed`).

Each client sends the key holder its sealed pad seed (:mod:`secagg.he_pads`) and the aggregator one padded
contribution: ``[w*x, w]`` and zero *guard* values, encrypted under the key holder's public key, with a secret
uniform pad added to ``c0`` of every ciphertext, in the compact raw form of :mod:`secagg.hazmat.rlwe`. The
aggregator adds residues mod ``q`` without any key and sends the sum to the key holder once every participant
submitted, or at ``close_stage()`` with whoever did. The key holder removes the named contributors' pads, decrypts,
and releases the sum only if every guard decrypts to zero: otherwise the aggregate was not the sum of exactly the
named contributions under this key and this round (``VerificationError``), and nothing is released.

Invariants kept here for both schemes:

* the aggregator checks every contribution (stage, participant, round, sender = the client it names, no duplicate,
  session, layout, every residue reduced) before any of it touches the running sum;
* fewer than ``min_contributors`` at the deadline raises ``DropoutError`` (stage ``"failed"``), nothing decrypted;
* the key holder bounds every size field (``max_dim``, chunk count, contributors) before it allocates anything,
  decrypts at most one aggregate per round, and consumes that round's seeds whether it releases or refuses;
* a key-holder result must answer the aggregate that was sent (round and contributor set);
* the key holder releases a sum only if every contributor's pad seed names the same round-terms digest.

Public material travels as a *bundle* (:func:`bundle`): the TenSEAL public context (no secret key) and the key
holder's X25519 sealing key; its SHA-256 is the session id every message names.

Aggregator stages: ``"collect"`` -> ``"finalize"`` (sum sent, waiting for the key holder) -> ``"done"``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import tenseal as ts
import tenseal.sealapi  # noqa: F401  (registers SEAL's types, e.g. Modulus, with pybind)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.encoding import check_weight, validate_update
from secagg.errors import AuthenticationError, CapacityError, ConfigurationError, DecryptionError, DropoutError, \
    DuplicateMessageError, MalformedMessageError, StageError, TooFewContributorsError, UnknownClientError, \
    VerificationError, WrongRoundError
from secagg.he_pads import PadSeed, fresh_seed, open_seed, pad_key, seal_seed
from secagg.hazmat import kex, rlwe
from secagg.messages import decode
from secagg.terms import NO_TERMS
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, Outbound, StagedRole

__all__ = ["check_int", "bundle", "unbundle", "ring_of", "HEClient", "HEAggregator", "HEKeyHolder",
           "DEFAULT_MAX_DIM", "MAX_PENDING_SEEDS"]

_BUNDLE_MAGIC = b"SAHE\x01"
DEFAULT_MAX_DIM = 1 << 28  # values per aggregate the key holder accepts unless told otherwise
MAX_PENDING_SEEDS = 1 << 16  # seeds of undecrypted rounds a key holder keeps at most


def check_int(name: str, v: object, lo: int = 0) -> int:
    """``v`` if it is an int (not a bool) ``>= lo``; otherwise ConfigurationError."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def bundle(context: bytes, seal_key: bytes) -> bytes:
    """The public bundle: magic, the X25519 sealing key, then the serialized public TenSEAL context."""
    return _BUNDLE_MAGIC + seal_key + bytes(context)


def unbundle(data: bytes) -> tuple[bytes, bytes]:
    """(context bytes, sealing key) of a bundle; anything else raises ConfigurationError."""
    if not isinstance(data, (bytes, bytearray)):
        raise ConfigurationError(f"public context must be bytes, got {type(data).__name__}")
    head = len(_BUNDLE_MAGIC) + kex.KEY_BYTES
    if len(data) <= head or bytes(data[:len(_BUNDLE_MAGIC)]) != _BUNDLE_MAGIC:
        raise ConfigurationError("not a secagg public bundle (key holder context and sealing key)")
    key = bytes(data[len(_BUNDLE_MAGIC):head])
    try:
        kex.check_public(key)
    except MalformedMessageError as exc:
        raise ConfigurationError(f"the bundle's sealing key is unusable: {exc}") from exc
    return bytes(data[head:]), key


def ring_of(context: ts.Context, *, ntt: bool) -> tuple[rlwe.RingLayout, list[int]]:
    """The fresh-level ring layout of ``context`` and that level's parms_id."""
    data = context.seal_context().data.first_context_data()
    parms = data.parms()
    layout = rlwe.RingLayout(parms.poly_modulus_degree(), tuple(q.value() for q in parms.coeff_modulus()), ntt)
    return layout, list(data.parms_id())


class HEClient(StagedRole, ABC):
    """Stages ``"ready"`` -> ``start`` -> ``"done"``; a refused input leaves the client ready to retry.

    Subclasses set ``client_id``, ``round_id``, ``_layout``, ``_session_id``, ``_seal_key``, ``_identity`` (and
    ``terms``, the digest of the round's public terms, when it has any) and implement :meth:`_encrypt` and
    :meth:`_contribution`."""

    terms: bytes = NO_TERMS
    client_id: int
    round_id: int
    _layout: rlwe.RingLayout
    _session_id: bytes
    _seal_key: bytes
    _identity: Ed25519PrivateKey | None

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        """Encrypt and pad ``[weight * update, weight]``: the sealed seed to the key holder, then the contribution."""
        if self._stage != "ready":
            raise StageError(f"client {self.client_id} already submitted its contribution")
        x = validate_update(update)
        w = check_weight(weight)
        serialized = self._encrypt(x, w)  # raises on out-of-range input before any randomness is spent
        seed = fresh_seed()
        residues = np.empty((len(serialized), *self._layout.shape), dtype=np.uint64)
        for k, raw in enumerate(serialized):
            residues[k] = rlwe.extract(raw, self._layout)
        key = pad_key(seed, session_id=self._session_id, round_id=self.round_id, client_id=self.client_id,
                      terms=self.terms)
        rlwe.apply_pad(residues[:, 0], key, self._layout)
        chunks = rlwe.pack(residues, self._layout)
        sealed = seal_seed(seed, self._seal_key, session_id=self._session_id, round_id=self.round_id,
                           client_id=self.client_id, identity=self._identity, terms=self.terms)
        msg = self._contribution(int(x.shape[0]), tuple(chunks))
        self._stage = "done"
        return [Outbound(KEYHOLDER, sealed.to_bytes()), Outbound(AGGREGATOR, msg.to_bytes())]

    def receive(self, payload: bytes) -> list[Outbound]:
        """HE clients are sent nothing: always raises StageError."""
        raise StageError(f"client {self.client_id} of a one-shot HE round expects no messages "
                         f"(stage {self._stage!r})")

    @abstractmethod
    def _encrypt(self, x: np.ndarray, weight: float) -> list[bytes]:
        """One serialized one-ciphertext TenSEAL vector per chunk of ``[w*x, w, guards]``."""

    @abstractmethod
    def _contribution(self, dim: int, chunks: tuple[bytes, ...]) -> Any:
        """The contribution message carrying the padded, packed ``chunks``."""


class HEAggregator(StagedRole, ABC):
    """Collects one contribution per participant and adds their residues; subclasses check headers and decode."""

    contribution_type: ClassVar[type]
    result_type: ClassVar[type]
    _layout: rlwe.RingLayout
    _chunks: int

    def _init_round(self, participants: Iterable[int], *, dim: int, round_id: int, min_contributors: int,
                    max_cohort: int | None = None) -> None:
        ids = [int(p) for p in participants]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ConfigurationError("participants must be distinct client ids >= 0, at least one")
        if max_cohort is not None and len(ids) > max_cohort:
            raise ConfigurationError(f"{len(ids)} participants exceed max_cohort={max_cohort}: their lane sums "
                                     "could carry into each other; use PackedParams(max_cohort=...) of the cohort")
        check_int("dim", dim, 1), check_int("round_id", round_id), check_int("min_contributors", min_contributors, 1)
        if min_contributors > len(ids):
            raise ConfigurationError(f"min_contributors={min_contributors} exceeds the {len(ids)} participants")
        self.participants, self.dim, self.round_id = tuple(sorted(ids)), dim, round_id
        self.min_contributors = min_contributors
        self._sum: np.ndarray | None = None
        self._received: list[int] = []
        self._sent: tuple[int, ...] = ()
        self._result: AggregateResult | None = None
        self._stage = "collect"

    @property
    def received(self) -> tuple[int, ...]:
        """Clients whose contribution is in the running sum, in arrival order."""
        return tuple(self._received)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's contribution, or the key holder's result."""
        if sender == KEYHOLDER:
            return self._on_result(payload)
        if self._stage != "collect":
            raise StageError(f"contribution from {sender} arrived in stage {self._stage!r}; collection is closed")
        if sender not in self.participants:
            raise UnknownClientError(f"sender {sender} is not a participant of round {self.round_id}")
        msg = self.contribution_type.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"contribution for round {msg.round_id}; this is round {self.round_id}")
        if msg.client_id != sender:
            raise AuthenticationError(f"sender {sender} sent a contribution naming client {msg.client_id}")
        if sender in self._received:
            raise DuplicateMessageError(f"client {sender} already contributed to round {self.round_id}")
        self._check_header(msg)
        if msg.dim != self.dim or len(msg.chunks) != self._chunks:
            raise MalformedMessageError(f"contribution of dim {msg.dim} in {len(msg.chunks)} chunks; expected dim "
                                        f"{self.dim} in {self._chunks}")
        parts = rlwe.unpack(msg.chunks, self._layout)  # every chunk checked before any of it is added
        if self._sum is None:
            self._sum = parts
        else:
            rlwe.add_into(self._sum, parts, self._layout)
        self._received.append(sender)
        return self._send() if len(self._received) == len(self.participants) else []

    def close_stage(self) -> list[Outbound]:
        """Deadline: aggregate whoever submitted (``DropoutError`` if too few). Waiting on the key holder: ``[]``."""
        if self._stage == "finalize":
            return []
        if self._stage != "collect":
            raise StageError(f"nothing to close in stage {self._stage!r}")
        if len(self._received) < self.min_contributors:
            self._stage, self._sum = "failed", None
            raise DropoutError(f"only {len(self._received)} of {len(self.participants)} clients contributed to "
                               f"round {self.round_id}; at least {self.min_contributors} needed")
        return self._send()

    def _send(self) -> list[Outbound]:
        assert self._sum is not None
        self._sent = tuple(sorted(self._received))
        chunks = tuple(rlwe.pack(self._sum, self._layout))
        msg = self._aggregate(self._sent, chunks)
        self._sum, self._stage = None, "finalize"
        return [Outbound(KEYHOLDER, msg.to_bytes())]

    def _on_result(self, payload: bytes) -> list[Outbound]:
        if self._stage != "finalize":
            raise StageError(f"a key-holder result arrived in stage {self._stage!r}")
        msg = self.result_type.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"result for round {msg.round_id}; this is round {self.round_id}")
        if msg.contributors != self._sent:
            raise MalformedMessageError("result names other contributors than the aggregate that was sent")
        weighted_sum, total = self._decode(msg)
        dropped = tuple(i for i in self.participants if i not in self._sent)
        self._result = AggregateResult(weighted_sum, total, self._sent, dropped)
        self._stage = "done"
        return []

    def result(self) -> AggregateResult:
        """Σ w_i x_i and Σ w_i over the contributors; StageError before ``done``."""
        if self._result is None:
            raise StageError(f"no result in stage {self._stage!r}")
        return self._result

    @abstractmethod
    def _check_header(self, msg: Any) -> None:
        """MalformedMessageError unless ``msg`` names this round's session (and layout)."""

    @abstractmethod
    def _aggregate(self, contributors: tuple[int, ...], chunks: tuple[bytes, ...]) -> Any:
        """The aggregate message for the key holder."""

    @abstractmethod
    def _decode(self, msg: Any) -> tuple[np.ndarray, float]:
        """``(Σ w_i x_i, Σ w_i)`` from the key holder's result (already matched to the aggregate sent)."""


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
        self._seeds: dict[int, dict[int, tuple[bytes, bytes]]] = {}  # round -> client -> (seed, terms digest)

    def public_context(self) -> bytes:
        """The public bundle: the context with the public key only (no secret, relinearization or Galois keys)
        and the X25519 key clients seal their pad seeds to."""
        return self._public

    @property
    def finalized_rounds(self) -> frozenset[int]:
        """Round ids whose aggregate has been decrypted or refused (each is processed only once)."""
        return frozenset(self._finalized)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's sealed pad seed, or an aggregate from the aggregator (answered with the verified sum)."""
        msg = decode(payload)
        if isinstance(msg, PadSeed):
            return self._on_seed(sender, msg)
        if sender != AGGREGATOR:
            raise AuthenticationError(f"the key holder accepts aggregates from the aggregator only, not {sender}")
        if not isinstance(msg, self.aggregate_type):
            raise MalformedMessageError(f"the key holder decrypts {self.aggregate_type.__name__} only, "
                                        f"got {type(msg).__name__}")
        if self._session_of(msg) != self.session_id:
            raise DecryptionError("aggregate was made under another session (another key holder or layout)")
        if msg.dim > self.max_dim:
            raise MalformedMessageError(f"aggregate of dim {msg.dim} exceeds this key holder's max_dim={self.max_dim}")
        if len(msg.chunks) != self._chunk_count(msg.dim):
            raise MalformedMessageError(f"aggregate has {len(msg.chunks)} chunks, dim {msg.dim} needs "
                                        f"{self._chunk_count(msg.dim)}")
        n = len(msg.contributors)
        if n < self.min_contributors:
            raise TooFewContributorsError(f"aggregate of {n} contributor(s); at least {self.min_contributors} required")
        if self._max_contributors is not None and n > self._max_contributors:
            raise MalformedMessageError(f"aggregate of {n} contributors exceeds max_cohort={self._max_contributors}: "
                                        "lanes could carry into each other")
        if msg.round_id in self._finalized:
            raise DuplicateMessageError(f"an aggregate of round {msg.round_id} was already processed")
        seeds = self._seeds.get(msg.round_id, {})
        missing = [c for c in msg.contributors if c not in seeds]
        if missing:
            raise VerificationError(f"no pad seed from clients {missing} for round {msg.round_id}: not decrypted")
        residues = rlwe.unpack(msg.chunks, self._layout)
        self._finalized.add(msg.round_id)  # consumed from here on, released or not
        del self._seeds[msg.round_id]
        told = {seeds[c][1] for c in msg.contributors}
        if len(told) != 1:
            raise VerificationError(f"the contributors of round {msg.round_id} were told {len(told)} different sets "
                                    "of round terms (a server may have lowered one client's noise terms): "
                                    "nothing released")
        for c in msg.contributors:
            seed, terms = seeds[c]
            key = pad_key(seed, session_id=self.session_id, round_id=msg.round_id, client_id=c, terms=terms)
            rlwe.apply_pad(residues[:, 0], key, self._layout, subtract=True)
        return [Outbound(AGGREGATOR, self._decrypt(msg, residues).to_bytes())]

    def _on_seed(self, sender: int, msg: PadSeed) -> list[Outbound]:
        if msg.session_id != self.session_id:
            raise DecryptionError("pad seed for another session (another key holder)")
        identity = None
        if self._peers is not None:
            if msg.client_id not in self._peers:
                raise UnknownClientError(f"no identity key for client {msg.client_id}")
            if sender not in (AGGREGATOR, msg.client_id):
                raise AuthenticationError(f"sender {sender} relayed a seed naming client {msg.client_id}")
            identity = self._peers[msg.client_id]
        elif sender != msg.client_id:
            raise AuthenticationError(f"without identities a seed must come from its client over an authenticated "
                                      f"channel; sender {sender} named client {msg.client_id}")
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
    def _decrypt(self, msg: Any, residues: np.ndarray) -> Any:
        """The result message for the pad-free ``residues`` of ``msg``; VerificationError if a guard is not zero."""

