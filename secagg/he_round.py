"""The verifiable one-shot round both homomorphic-encryption schemes run (:mod:`secagg.ckks`, :mod:`secagg.packed`).

Each client sends the key holder its sealed pad seed (:mod:`secagg.he_pads`) and the aggregator one padded
contribution: ``[w*x, w]`` and zero *guard* values, encrypted under the key holder's public key, with a secret
uniform pad added to ``c0`` of every ciphertext, in the compact raw form of :mod:`secagg.hazmat.rlwe`. The
aggregator adds residues mod ``q`` without any key and sends the sum to the key holder once every participant
submitted, or at ``close_stage()`` with whoever did. The key holder (:mod:`secagg.he_keyholder`) checks the
aggregate's linear tags against the sum of the tags each named contributor sealed with its seed
(:mod:`secagg.he_tags`: a term the aggregator added itself fails them), removes the named contributors' pads,
decrypts, and releases the sum only if every guard decrypts to zero: otherwise the aggregate was not the sum of
exactly the named contributions under this key and this round (``VerificationError``), and nothing is released.
Before its first round a client asks the key holder for the session tag key (:class:`TagKeyRequest`).

Streamed (:meth:`HEClient.stream`): the seed goes first, then the contribution in parts of contiguous ciphertexts,
the last carrying the client's tags sealed under its seed (:func:`secagg.he_pads.seal_tags`); the aggregator sums
parts per chunk within a bounded window and forwards finished ranges (:mod:`secagg.he_stream`), and the key holder
decrypts part by part, releasing only after the last. :meth:`HEClient.start` is the same round in one part.

Invariants kept here for both schemes:

* the aggregator checks every contribution part (stage, participant, round, sender = the client it names, no
  duplicate, session, layout, order, window, every residue reduced) before any of it touches the running sums;
* fewer than ``min_contributors`` at the deadline raises ``DropoutError`` (stage ``"failed"``), nothing decrypted;
* a client without the session tag key refuses to start (nothing it sent could be verified);
* the key holder bounds every size field (``max_dim``, chunk count, contributors) before it allocates anything,
  decrypts at most one aggregate per round, and consumes that round's seeds whether it releases or refuses;
* a key-holder result must answer the aggregate that was sent (round and contributor set);
* the key holder releases a sum only if every contributor's pad seed names the same round-terms digest.

Public material travels as a *bundle* (:func:`bundle`): the TenSEAL public context (no secret key) and the key
holder's X25519 sealing key; its SHA-256 is the session id every message names.

Aggregator stages: ``"collect"`` -> ``"finalize"`` (sum sent, waiting for the key holder) -> ``"done"``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import tenseal as ts
import tenseal.sealapi  # noqa: F401  (registers SEAL's types, e.g. Modulus, with pybind)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.encoding import MAX_DIM, check_weight, update_length
from secagg.errors import AuthenticationError, ConfigurationError, DropoutError, DuplicateMessageError, \
    MalformedMessageError, StageError, UnknownClientError, WrongRoundError
from secagg.he_pads import fresh_seed, pad_key, seal_seed, seal_tags
from secagg.he_stream import DEFAULT_WINDOW_BYTES, StreamedSum, window_chunks
from secagg.he_tags import TagAccumulator, open_grant, request_tag_key
from secagg.hazmat import kex, rlwe
from secagg.terms import NO_TERMS
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, Outbound, StagedRole

__all__ = ["check_int", "bundle", "unbundle", "release_key", "ring_of", "HEClient", "HEAggregator", 
           "TagKeyRequest", "DEFAULT_MAX_DIM"]

_BUNDLE_MAGIC = b"SAHE\x02"
DEFAULT_MAX_DIM = MAX_DIM  # values per aggregate the key holder accepts unless told otherwise
DEFAULT_PART_CHUNKS = 16  # ciphertexts per streamed part (a few MiB)


def check_int(name: str, v: object, lo: int = 0) -> int:
    """``v`` if it is an int (not a bool) ``>= lo``; otherwise ConfigurationError."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def bundle(context: bytes, seal_key: bytes, release: bytes = bytes(32)) -> bytes:
    """The public bundle: magic, the X25519 sealing key, the Ed25519 release key (:mod:`secagg.he_release`; all
    zero: none), then the serialized public TenSEAL context."""
    if len(release) != 32:
        raise ConfigurationError("the release key must be 32 bytes")
    return _BUNDLE_MAGIC + seal_key + release + bytes(context)


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    if not isinstance(data, (bytes, bytearray)):
        raise ConfigurationError(f"public context must be bytes, got {type(data).__name__}")
    head = len(_BUNDLE_MAGIC) + kex.KEY_BYTES + 32
    if len(data) <= head or bytes(data[:len(_BUNDLE_MAGIC)]) != _BUNDLE_MAGIC:
        raise ConfigurationError("not a secagg public bundle (key holder context, sealing and release keys)")
    start = len(_BUNDLE_MAGIC)
    return bytes(data[head:]), bytes(data[start:start + kex.KEY_BYTES]), bytes(data[start + kex.KEY_BYTES:head])


def unbundle(data: bytes) -> tuple[bytes, bytes]:
    """(context bytes, sealing key) of a bundle; anything else raises ConfigurationError."""
    context, key, _ = _split(data)
    try:
        kex.check_public(key)
    except MalformedMessageError as exc:
        raise ConfigurationError(f"the bundle's sealing key is unusable: {exc}") from exc
    return context, key


def release_key(data: bytes) -> bytes:
    """The key holder's Ed25519 release key (raw) in a bundle; AuthenticationError if the bundle has none."""
    key = _split(data)[2]
    if key == bytes(32):
        raise AuthenticationError("this public bundle carries no release key: its sums cannot be verified")
    return key


class TagKeyRequest:
    """A client's request for the session tag key (:mod:`secagg.he_tags`) of the key holder whose public
    ``bundle`` it holds: send :attr:`payload` to the key holder (relayed only if ``identity`` signs it), then
    :meth:`open` its grant. The tag key is a client secret: never hand it to the aggregator."""

    def __init__(self, bundle_bytes: bytes, client_id: int, identity: Ed25519PrivateKey | None = None) -> None:
        _, self._seal_key = unbundle(bundle_bytes)
        self.client_id, self.session = check_int("client_id", client_id), hashlib.sha256(bundle_bytes).digest()
        self._eph, msg = request_tag_key(self.session, client_id, identity)
        self.payload = msg.to_bytes()

    def open(self, grant: bytes) -> bytes:
        """The tag key in the key holder's ``grant`` (AuthenticationError/DecryptionError if it is not one)."""
        return open_grant(grant, self._eph, self._seal_key, self.session, self.client_id)

    def __getstate__(self) -> dict:  # a sealed snapshot (Flower node state) keeps the ephemeral key as raw bytes
        return {**self.__dict__, "_eph": kex.private_bytes(self._eph)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _eph=kex.load_private(state["_eph"]))


def ring_of(context: ts.Context, *, ntt: bool) -> tuple[rlwe.RingLayout, list[int]]:
    """The fresh-level ring layout of ``context`` and that level's parms_id."""
    data = context.seal_context().data.first_context_data()
    parms = data.parms()
    layout = rlwe.RingLayout(parms.poly_modulus_degree(), tuple(q.value() for q in parms.coeff_modulus()), ntt)
    return layout, list(data.parms_id())


class HEClient(StagedRole, ABC):
    """Stages ``"ready"`` -> ``start`` -> ``"done"``; a refused input leaves the client ready to retry.

    Subclasses set ``client_id``, ``round_id``, ``_layout``, ``_session_id``, ``_seal_key``, ``_identity``,
    ``_tag_key`` (the session tag key, :class:`TagKeyRequest`; without it ``start`` refuses) and ``terms`` (the
    digest of the round's public terms, when it has any) and implement :meth:`_encrypt` and :meth:`_contribution`."""

    terms: bytes = NO_TERMS
    _tag_key: bytes | None = None
    client_id: int
    round_id: int
    _layout: rlwe.RingLayout
    _session_id: bytes
    _seal_key: bytes
    _identity: Ed25519PrivateKey | None

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        """Encrypt and pad ``[weight * update, weight]``: the sealed seed to the key holder, then the contribution
        in one part (:meth:`stream` with every chunk in one part)."""
        return list(self.stream(update, weight, part_chunks=None))

    def stream(self, update: Any, weight: float, *, part_chunks: int | None = DEFAULT_PART_CHUNKS
               ) -> Iterator[Outbound]:
        """The round's messages, made one at a time as they are consumed: the sealed seed to the key holder, then
        the contribution in parts of ``part_chunks`` ciphertexts (None: one part), the last with the sealed tags.

        ``update`` is a numpy array or a sliceable source (:func:`secagg.encoding.update_length`), read one chunk
        at a time. Every value is checked before anything is drawn or sent: a refused input leaves the client
        ready to retry (the check reads the source once more)."""
        if self._stage != "ready":
            raise StageError(f"client {self.client_id} already submitted its contribution")
        if self._tag_key is None:
            raise ConfigurationError(f"client {self.client_id} has no tag key: request it from the key holder "
                                     "(secagg.he_round.TagKeyRequest) before the first round")
        if part_chunks is not None:
            check_int("part_chunks", part_chunks, 1)
        dim = update_length(update)
        w = check_weight(weight)
        self._check_values(update, dim, w)  # raises on out-of-range input before any randomness is spent
        self._stage = "done"
        return self._parts(update, dim, w, part_chunks)

    def _parts(self, update: Any, dim: int, w: float, part_chunks: int | None) -> Iterator[Outbound]:
        seed = fresh_seed()
        binding = dict(session_id=self._session_id, round_id=self.round_id, client_id=self.client_id,
                       terms=self.terms)
        yield Outbound(KEYHOLDER, seal_seed(seed, self._seal_key, identity=self._identity, **binding).to_bytes())
        key = pad_key(seed, **binding)
        chunks = self._chunk_count(dim)
        tag_key: bytes = self._tag_key  # type: ignore[assignment]  # checked by stream()
        tags = TagAccumulator(tag_key, self._layout, chunks=chunks, session_id=self._session_id, round_id=self.round_id)
        lanes, step = self._lanes(update, dim, w), part_chunks or chunks
        for first in range(0, chunks, step):
            residues = np.empty((min(step, chunks - first), *self._layout.shape), dtype=np.uint64)
            for k in range(residues.shape[0]):
                residues[k] = rlwe.extract(self._encrypt_one(next(lanes)), self._layout)
            rlwe.apply_pad(residues[:, 0], key, self._layout, first=first)
            tags.add(residues)
            last = first + residues.shape[0] == chunks
            sealed = seal_tags(seed, tags.tags().astype("<u8").tobytes(), **binding) if last else b""
            msg = self._contribution(dim, first, tuple(rlwe.pack(residues, self._layout)), sealed)
            del residues
            yield Outbound(AGGREGATOR, msg.to_bytes())

    def receive(self, payload: bytes) -> list[Outbound]:
        """HE clients are sent nothing: always raises StageError."""
        raise StageError(f"client {self.client_id} of a one-shot HE round expects no messages "
                         f"(stage {self._stage!r})")

    @abstractmethod
    def _chunk_count(self, dim: int) -> int:
        """Ciphertexts of a contribution of ``dim`` values."""

    @abstractmethod
    def _lanes(self, update: Any, dim: int, weight: float) -> Iterator[np.ndarray]:
        """Each chunk's slot values of ``[w*x, w, guards]`` in order, read from ``update`` one chunk at a time;
        MalformedUpdateError on a value the scheme cannot carry."""

    def _check_values(self, update: Any, dim: int, weight: float) -> None:
        """MalformedUpdateError where :meth:`_lanes` would raise on this input (default: run the lanes)."""
        for _ in self._lanes(update, dim, weight):
            pass

    @abstractmethod
    def _encrypt_one(self, values: np.ndarray) -> bytes:
        """One serialized one-ciphertext TenSEAL vector of one chunk's slot values."""

    @abstractmethod
    def _contribution(self, dim: int, first: int, chunks: tuple[bytes, ...], sealed_tags: bytes) -> Any:
        """The contribution part carrying the padded, packed ``chunks`` from index ``first``."""


class HEAggregator(StagedRole, ABC):
    """Collects one contribution per participant and adds their residues; subclasses check headers and decode."""

    contribution_type: ClassVar[type]
    result_type: ClassVar[type]
    _layout: rlwe.RingLayout
    _chunks: int

    def _init_round(self, participants: Iterable[int], *, dim: int, round_id: int, min_contributors: int,
                    max_cohort: int | None = None, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        ids = [int(p) for p in participants]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ConfigurationError("participants must be distinct client ids >= 0, at least one")
        if max_cohort is not None and len(ids) > max_cohort:
            raise ConfigurationError(f"{len(ids)} participants exceed max_cohort={max_cohort}: their lane sums "
                                     "could carry into each other; use PackedParams(max_cohort=...) of the cohort")
        check_int("dim", dim, 1), check_int("round_id", round_id), check_int("min_contributors", min_contributors, 1)
        check_int("window_bytes", window_bytes, 1)
        if dim > MAX_DIM:
            raise ConfigurationError(f"dim {dim} exceeds MAX_DIM = {MAX_DIM}")
        if min_contributors > len(ids):
            raise ConfigurationError(f"min_contributors={min_contributors} exceeds the {len(ids)} participants")
        self.participants, self.dim, self.round_id = tuple(sorted(ids)), dim, round_id
        self.min_contributors = min_contributors
        self._sum = StreamedSum(self.participants, self._chunks, self._layout, window_chunks(self._layout,
                                                                                              window_bytes))
        self._sent: tuple[int, ...] = ()
        self._result: AggregateResult | None = None
        self._stage = "collect"

    @property
    def received(self) -> tuple[int, ...]:
        """Clients whose contribution is (at least in part) in the running sums, in arrival order."""
        return self._sum.started

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's contribution part, or the key holder's result. A refused part changes nothing."""
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
        if sender in self._sum.tags:
            raise DuplicateMessageError(f"client {sender} already contributed to round {self.round_id}")
        self._check_header(msg)
        if msg.dim != self.dim:
            raise MalformedMessageError(f"contribution of dim {msg.dim}; expected dim {self.dim}")
        self._sum.check(sender, msg.first, len(msg.chunks), msg.sealed_tags)
        parts = rlwe.unpack(msg.chunks, self._layout)  # every chunk checked before any of it is added
        self._sum.add(sender, msg.first, parts, msg.sealed_tags)
        return self._forward()

    def close_stage(self) -> list[Outbound]:
        """Deadline. Before the contributors are fixed: fix them to the clients that started (``DropoutError`` if
        too few); after: a contributor that has not finished fails the round (``DropoutError``: its residues are
        in the sums). Waiting on the key holder: ``[]``."""
        if self._stage == "finalize":
            return []
        if self._stage != "collect":
            raise StageError(f"nothing to close in stage {self._stage!r}")
        if self._sum.contributors is None:
            if len(self._sum.started) < self.min_contributors:
                self._fail(f"only {len(self._sum.started)} of {len(self.participants)} clients contributed to "
                           f"round {self.round_id}; at least {self.min_contributors} needed")
            self._sum.fix()
            return self._forward()
        if self._sum.unfinished():
            self._fail(f"clients {list(self._sum.unfinished())} stopped mid-stream in round {self.round_id}: their "
                       "residues are in the running sums, so the round cannot finish")
        return []

    def _fail(self, why: str) -> None:
        self._stage = "failed"
        self._sum.clear()
        raise DropoutError(why)

    def _forward(self) -> list[Outbound]:
        """The next aggregate part, if enough chunks are complete: all of them when the contribution fits the
        window (one part), else at least half a window."""
        s = self._sum
        ready, left = s.ready(), self._chunks - s.frontier
        if not ready or (ready < left and (self._chunks <= s.window or ready < max(1, s.window // 2))):
            return []
        assert s.contributors is not None
        self._sent, first = s.contributors, s.frontier
        residues = s.take(ready)
        last = ready == left
        tags = tuple(s.tags[c] for c in s.contributors) if last else ()
        msg = self._aggregate(s.contributors, first, tuple(rlwe.pack(residues, self._layout)), tags)
        del residues
        if last:
            self._stage = "finalize"
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
        self.release = payload  # the key holder's signed release, for clients to check (secagg.he_release)
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
    def _aggregate(self, contributors: tuple[int, ...], first: int, chunks: tuple[bytes, ...],
                   tags: tuple[bytes, ...]) -> Any:
        """The aggregate part for the key holder (``tags``: the contributors' sealed tags, last part only)."""

    @abstractmethod
    def _decode(self, msg: Any) -> tuple[np.ndarray, float]:
        """``(Σ w_i x_i, Σ w_i)`` from the key holder's result (already matched to the aggregate sent)."""
