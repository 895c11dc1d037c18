"""The masking client: a sans-I/O stage machine (Bonawitz et al. 2017, active-adversary variant, over the SecAgg+
graph of Bell et al. 2020), safe against a server that deviates from the protocol (see :mod:`.config`).

Stages: ``"init"`` -start-> ``"advertised"`` -KeyRoster-> ``"shared"`` -ShareDelivery-> ``"masked"``
-ConsistencyRequest-> ``"checked"`` -UnmaskRequest-> ``"done"``.

Invariants:

* the masked input is ``y = [enc(w*x), enc(w)] + PRG(b) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)`` in the ring,
  over exactly the neighbours ``v`` whose shares the server delivered; a delivery missing more than
  ``share_dropouts`` of the roster the client shared with is refused (so a server cannot isolate this client by
  forwarding few shares and then claiming those neighbours dropped);
* ``b`` and the mask secret ``s_sk`` are Shamir-shared t-of-(holders) among the roster and the client; each share
  travels AES-GCM-encrypted under a pairwise channel key with the session, sender and recipient bound as associated
  data, and every share is committed to (SHA-256 with a nonce, sent to the server) so a holder cannot reveal a
  different one; the pairwise mask seeds are derived before anything is shared (a low-order peer key fails
  there), ``c_sk`` and ``s_sk`` are discarded once the shares are encrypted, and ``b``, the seeds, the channel
  keys and the plain encoding once the masked input is built;
* every signed or derived value binds the session id (nonce, cohort, parameters); with ``sessions`` given, a
  session the client already took part in is refused (``ReplayError``);
* an unmask request is answered at most once, only if its alive set is the survivor list the client signed, it
  does not name the client as dropped, holds at least ``t`` ids, and (with identities) carries valid signatures of
  that list from at least ``min_signers`` participants in it. Alive and dropped sets are disjoint (checked by the
  decoder), so no secret's two shares are ever revealed by this client;
* a rejected message raises a named error and leaves the client's state unchanged;
* streamed (:meth:`MaskingClient.stream`), the update is read slice by slice and the masked input leaves in parts,
  each masked with the same keystream positions as the whole (so the server's sum is the same); the parts are
  made only as the driver takes them, so the client never holds its whole encoding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableSet
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.encoding import check_weight, update_length, update_slice
from secagg.errors import AuthenticationError, ConfigurationError, DecryptionError, DropoutError, \
    DuplicateMessageError, MalformedMessageError, MalformedUpdateError, ReplayError, StageError, \
    UnknownClientError, WrongRoundError
from secagg.hazmat import aead, kex, shamir, sign
from secagg.hazmat.prg import SEED_BYTES, add_masks
from secagg.masking.config import MaskingConfig
from secagg.masking.messages import B_SHARE_BYTES, OPENING_BYTES, S_SHARE_BYTES, AdvertiseKeys, \
    ConsistencyRequest, ConsistencyResponse, KeyRoster, MaskedInput, ShareDelivery, ShareKeys, UnmaskRequest, \
    UnmaskResponse, advertise_payload, seed_commitment, share_commitment, survivors_payload
from secagg.messages import decode
from secagg.roles import AGGREGATOR, Outbound, StagedRole

__all__ = ["MaskingClient", "share_ad", "parse_share_pair", "PART_VALUES", "DEFAULT_PART_CHUNKS"]

PART_VALUES = 1 << 16  # values per chunk of a streamed masked input (a multiple of 16 bytes in every ring)
DEFAULT_PART_CHUNKS = 16  # chunks per streamed part (1 Mi values: 4 MiB in a 32-bit ring)

_PLAIN_BYTES = B_SHARE_BYTES + S_SHARE_BYTES + 2 * OPENING_BYTES


def share_ad(session_id: bytes, sender: int, recipient: int) -> bytes:
    """Associated data of a share ciphertext: binds the session, the sender and the recipient."""
    return b"secagg/masking/shares/v2" + session_id + sender.to_bytes(8, "little") + recipient.to_bytes(8, "little")


def parse_share_pair(plaintext: bytes, owner: int, holder: int) -> tuple[bytes, bytes]:
    """Split a decrypted share plaintext into the (b, s) openings ``share | nonce`` held by ``holder``; checks the
    shares' form and point. Raises DecryptionError."""
    if len(plaintext) != _PLAIN_BYTES:
        raise DecryptionError(f"share plaintext from {owner} has {len(plaintext)} bytes")
    b_end = B_SHARE_BYTES + OPENING_BYTES
    b_open, s_open = plaintext[:b_end], plaintext[b_end:]
    try:
        b = shamir.Share.from_bytes(b_open[:B_SHARE_BYTES])
        s = shamir.Share.from_bytes(s_open[:S_SHARE_BYTES])
    except MalformedMessageError as exc:
        raise DecryptionError(f"malformed shares from {owner}: {exc}") from exc
    if b.x != holder + 1 or s.x != holder + 1:
        raise DecryptionError(f"shares from {owner} are not at this client's point")
    return b_open, s_open


# server message -> (the stage it may arrive in, its handler); by name, so a client's state is plain data
_HANDLERS = {KeyRoster: ("advertised", "_on_roster"), ShareDelivery: ("shared", "_on_delivery"),
             ConsistencyRequest: ("masked", "_on_consistency"), UnmaskRequest: ("checked", "_on_unmask")}


class MaskingClient(StagedRole):
    """One participant of a masking round. ``identity`` signs its messages; ``peer_identities`` verify others'.
    ``sessions`` (optional, shared across this client's rounds) records the session ids it took part in."""

    def __init__(self, client_id: int, config: MaskingConfig, *, identity: Ed25519PrivateKey | None = None,
                 peer_identities: Mapping[int, Ed25519PublicKey] | None = None,
                 sessions: MutableSet[bytes] | None = None) -> None:
        if client_id not in config.participants:
            raise ConfigurationError(f"client {client_id} is not a participant of this round")
        if sessions is not None:
            if config.session_id in sessions:
                raise ReplayError("this client already took part in a round with this session (nonce reused)")
            sessions.add(config.session_id)
        self.client_id, self.config = client_id, config
        self._identity = identity
        self._peers = dict(peer_identities) if peer_identities is not None else None
        self._neighbours = config.graph[client_id]
        self._stage = "init"
        self._seen: set[int] = set()
        self._source: tuple[Any, int, float] | None = None  # a streamed update, its part size and weight

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        """Encode ``[w*x, w]`` and advertise two fresh X25519 public keys (signed when an identity is set)."""
        if self._stage != "init":
            raise StageError(f"start() called in stage {self._stage!r}")
        cfg = self.config
        w = check_weight(weight, cfg.weight_bound)
        if isinstance(update, np.ndarray) and update.ndim == 1 and update.shape[0] != cfg.dim:
            raise MalformedUpdateError(f"update has length {update.shape[0]}, expected {cfg.dim}")
        enc = np.empty(cfg.dim + 1, dtype=cfg.dtype)
        cfg.value_codec.encode(update, factor=w, out=enc[:-1])  # validates (finite, numeric, 1-D, in range)
        return self._advertise(enc, w)

    def stream(self, update: Any, weight: float, *, part_chunks: int | None = DEFAULT_PART_CHUNKS
               ) -> Iterator[Outbound]:
        """As :meth:`start`, but ``update`` (an array or a sliceable source, :func:`secagg.encoding.update_length`)
        is never encoded whole: it is checked slice by slice now, and read again slice by slice when the share
        delivery comes, whose answer is then an iterator of :class:`MaskedInput` parts of ``part_chunks *
        PART_VALUES`` values (None: one part), each masked as it is taken."""
        if self._stage != "init":
            raise StageError(f"stream() called in stage {self._stage!r}")
        cfg = self.config
        w = check_weight(weight, cfg.weight_bound)
        if update_length(update) != cfg.dim:
            raise MalformedUpdateError(f"update has length {update_length(update)}, expected {cfg.dim}")
        if part_chunks is not None and (isinstance(part_chunks, bool) or not isinstance(part_chunks, int)
                                        or part_chunks < 1):
            raise ConfigurationError(f"part_chunks must be an int >= 1 or None, got {part_chunks!r}")
        step = cfg.dim + 1 if part_chunks is None else PART_VALUES * part_chunks
        scratch = np.empty(min(step, cfg.dim), dtype=cfg.dtype)
        for a in range(0, cfg.dim, step):  # every value checked before any key is made
            b = min(cfg.dim, a + step)
            cfg.value_codec.encode(update_slice(update, a, b), factor=w, out=scratch[:b - a])
        self._source = (update, step, w)
        return iter(self._advertise(None, w))

    def start_levels(self, levels: np.ndarray, weight: float) -> list[Outbound]:
        """As :meth:`start`, for a value lane the caller quantised itself: ``levels`` are the signed integers of
        ``w*x`` on the value codec's grid (``value_codec.scale`` levels per unit), each within
        ``±value_codec.max_level`` so the sum cannot wrap (e.g. a rounded update plus integer DP noise)."""
        if self._stage != "init":
            raise StageError(f"start_levels() called in stage {self._stage!r}")
        cfg = self.config
        w = check_weight(weight, cfg.weight_bound)
        if not isinstance(levels, np.ndarray) or levels.dtype != np.int64 or levels.shape != (cfg.dim,):
            raise MalformedUpdateError(f"levels must be an int64 vector of length {cfg.dim}")
        top = cfg.value_codec.max_level
        if levels.size and int(np.abs(levels).max()) > top:
            raise MalformedUpdateError(f"a level exceeds ±{top}: the sum of the cohort could wrap")
        enc = np.empty(cfg.dim + 1, dtype=cfg.dtype)
        enc[:-1] = (levels.view(np.uint64) & np.uint64(cfg.ring_mask)).astype(cfg.dtype)  # two's complement
        return self._advertise(enc, w)

    def _advertise(self, enc: np.ndarray | None, w: float) -> list[Outbound]:
        cfg = self.config
        if enc is not None:
            enc[-1:] = cfg.weight_codec.encode(np.array([w]))
            self._encoded = enc
        self._c_sk, self._s_sk = kex.generate(), kex.generate()
        c_pk, s_pk = kex.public_bytes(self._c_sk), kex.public_bytes(self._s_sk)
        sig = b"" if self._identity is None else \
            sign.sign(self._identity, advertise_payload(cfg.session_id, self.client_id, c_pk, s_pk))
        self._stage = "advertised"
        msg = AdvertiseKeys(round_id=cfg.round_id, client_id=self.client_id, c_pk=c_pk, s_pk=s_pk, signature=sig)
        return [Outbound(AGGREGATOR, msg.to_bytes())]

    def receive(self, payload: bytes) -> list[Outbound]:
        """Handle one server message; a rejected one raises a named error and changes nothing."""
        msg = decode(payload)
        if msg.round_id != self.config.round_id:  # type: ignore[attr-defined]
            raise WrongRoundError(f"message for round {msg.round_id}, this is round {self.config.round_id}")  # type: ignore[attr-defined]
        entry = _HANDLERS.get(type(msg))
        if entry is None:
            raise MalformedMessageError(f"{type(msg).__name__} is not a server-to-client masking message")
        if msg.TAG in self._seen:
            raise DuplicateMessageError(f"{type(msg).__name__} already received")
        if self._stage != entry[0]:
            raise StageError(f"{type(msg).__name__} arrived in stage {self._stage!r}")
        outs = getattr(self, entry[1])(msg)
        self._seen.add(msg.TAG)
        return outs

    def _known(self, ids, allowed, what: str) -> None:
        bad = sorted(set(ids) - set(allowed))
        if bad:
            raise UnknownClientError(f"{what} names clients {bad} outside the allowed set")

    def _verify(self, v: int, signature: bytes, payload: bytes) -> None:
        assert self._peers is not None
        if v not in self._peers:
            raise AuthenticationError(f"no identity key for client {v}")
        sign.verify(self._peers[v], signature, payload)

    def _on_roster(self, msg: KeyRoster) -> list[Outbound]:
        cfg, u, sid = self.config, self.client_id, self.config.session_id
        self._known(msg.client_ids, self._neighbours, "key roster")
        if len(msg.client_ids) + 1 < cfg.t:
            raise DropoutError(f"only {len(msg.client_ids)} neighbours advertised keys; threshold is {cfg.t}")
        if self._peers is not None:
            for v, c_pk, s_pk, sig in zip(msg.client_ids, msg.c_pks, msg.s_pks, msg.signatures):
                self._verify(v, sig, advertise_payload(sid, v, c_pk, s_pk))
        roster = {v: (c, s) for v, c, s in zip(msg.client_ids, msg.c_pks, msg.s_pks)}
        # the pairwise mask seeds now, before any secret is shared: a low-order mask key fails here (the exchange
        # checks it), not after this client shared its secrets; and it is one X25519 per neighbour, not two
        seeds = {v: kex.mask_seed(self._s_sk, s_pk, session=sid, u=u, v=v) for v, (_, s_pk) in roster.items()}
        keys = {v: kex.channel_key(self._c_sk, c_pk, session=sid, u=u, v=v) for v, (c_pk, _) in roster.items()}
        holders = sorted([*roster, u])
        b = os.urandom(SEED_BYTES)
        b_sh = shamir.split(b, cfg.t, [h + 1 for h in holders])
        s_sh = shamir.split(kex.private_bytes(self._s_sk), cfg.t, [h + 1 for h in holders])
        cts, commits = {}, {}
        for h, bs, ss in zip(holders, b_sh, s_sh):
            rb, rs = os.urandom(OPENING_BYTES), os.urandom(OPENING_BYTES)
            b_open, s_open = bs.to_bytes() + rb, ss.to_bytes() + rs
            commits[h] = share_commitment(b"b", sid, u, h, bs.to_bytes(), rb) + \
                share_commitment(b"s", sid, u, h, ss.to_bytes(), rs)
            if h == u:
                own = (b_open, s_open)
            else:
                cts[h] = aead.encrypt(keys[h], b_open + s_open, share_ad(sid, u, h))
        self._roster, self._channel, self._b, self._held, self._seeds = roster, keys, b, {u: own}, seeds
        del self._c_sk, self._s_sk  # channel keys serve both directions; the mask secret lives on in its shares
        self._stage = "shared"
        out = ShareKeys(round_id=cfg.round_id, client_id=u, ciphertexts=cts, commitments=commits,
                        seed_commitment=seed_commitment(sid, u, b))
        return [Outbound(AGGREGATOR, out.to_bytes())]

    def _on_delivery(self, msg: ShareDelivery) -> list[Outbound]:
        cfg, u, sid = self.config, self.client_id, self.config.session_id
        if msg.recipient != u:
            raise UnknownClientError(f"delivery for client {msg.recipient} reached client {u}")
        self._known(msg.ciphertexts, self._roster, "share delivery")
        missing = len(self._roster) - len(msg.ciphertexts)
        if missing > int(cfg.share_dropouts):  # type: ignore[arg-type]
            raise DropoutError(f"the delivery lacks {missing} of the {len(self._roster)} neighbours this client "
                               f"shared with; at most share_dropouts={cfg.share_dropouts} may be missing (a server "
                               "could otherwise isolate this client's input)")
        if len(msg.ciphertexts) + 1 < cfg.t:
            raise DropoutError(f"only {len(msg.ciphertexts)} neighbours shared keys; threshold is {cfg.t}")
        held = {v: parse_share_pair(aead.decrypt(self._channel[v], ct, share_ad(sid, v, u)), v, u)
                for v, ct in msg.ciphertexts.items()}
        plus, minus = [self._b], []
        for v in msg.ciphertexts:
            (plus if v > u else minus).append(self._seeds[v])
        self._held.update(held)
        del self._b, self._seeds, self._channel  # secrets no longer needed
        self._stage = "masked"
        if self._source is not None:
            return self._masked_parts(plus, minus)  # type: ignore[return-value]
        y = self._encoded  # masked in place: the plain encoding must not outlive this stage
        del self._encoded
        add_masks(y, plus, minus)
        if cfg.ring_bits < 8 * y.dtype.itemsize:
            y &= y.dtype.type(cfg.ring_mask)
        return [Outbound(AGGREGATOR, MaskedInput(round_id=cfg.round_id, client_id=u, first=0, masked=y).to_bytes())]

    def _masked_parts(self, plus: list[bytes], minus: list[bytes]) -> Iterator[Outbound]:
        cfg, (update, step, w) = self.config, self._source  # type: ignore[misc]
        self._source = None
        for a in range(0, cfg.dim + 1, step):
            b = min(cfg.dim + 1, a + step)
            y = np.empty(b - a, dtype=cfg.dtype)
            top = min(b, cfg.dim)
            if top > a:
                cfg.value_codec.encode(update_slice(update, a, top), factor=w, out=y[:top - a])
            if b == cfg.dim + 1:
                y[-1:] = cfg.weight_codec.encode(np.array([w]))
            add_masks(y, plus, minus, first=a)
            if cfg.ring_bits < 8 * y.dtype.itemsize:
                y &= y.dtype.type(cfg.ring_mask)
            yield Outbound(AGGREGATOR, MaskedInput(round_id=cfg.round_id, client_id=self.client_id, first=a,
                                                   masked=y).to_bytes())

    def _on_consistency(self, msg: ConsistencyRequest) -> list[Outbound]:
        cfg, u = self.config, self.client_id
        self._known(msg.survivors, cfg.participants, "survivor list")
        if u not in msg.survivors:
            raise MalformedMessageError("the survivor list omits this client, whose masked input was sent")
        need = cfg.min_signers if self._peers is not None else cfg.t
        if len(msg.survivors) < need:
            raise DropoutError(f"{len(msg.survivors)} survivors; the round needs {need} to finish")
        sig = b"" if self._identity is None else \
            sign.sign(self._identity, survivors_payload(cfg.session_id, msg.survivors))
        self._survivors = msg.survivors
        self._stage = "checked"
        return [Outbound(AGGREGATOR, ConsistencyResponse(round_id=cfg.round_id, client_id=u, signature=sig).to_bytes())]

    def _on_unmask(self, msg: UnmaskRequest) -> list[Outbound]:
        cfg, u = self.config, self.client_id
        self._known(msg.alive + msg.dropped, cfg.participants, "unmask request")
        if u in msg.dropped:
            raise MalformedMessageError("the unmask request names this client as dropped")
        if msg.alive != self._survivors:
            raise MalformedMessageError("the unmask request's alive set differs from the signed survivor list")
        if len(msg.alive) < cfg.t:
            raise DropoutError(f"{len(msg.alive)} alive clients is below the threshold {cfg.t}")
        if self._peers is not None:
            self._known(msg.signatures, msg.alive, "signature list")
            if len(msg.signatures) < cfg.min_signers:
                raise AuthenticationError(f"{len(msg.signatures)} consistency signatures; {cfg.min_signers} needed "
                                          "so that no other survivor list can be accepted by anyone")
            payload = survivors_payload(cfg.session_id, msg.alive)
            for v in sorted(msg.signatures)[:cfg.min_signers]:
                self._verify(v, msg.signatures[v], payload)
        b_out = {v: self._held[v][0] for v in msg.alive if v in self._held}
        s_out = {v: self._held[v][1] for v in msg.dropped if v in self._held}
        self._stage = "done"
        resp = UnmaskResponse(round_id=cfg.round_id, client_id=u, b_shares=b_out, s_shares=s_out)
        return [Outbound(AGGREGATOR, resp.to_bytes())]
