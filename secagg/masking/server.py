"""The masking server: routes messages, tracks the survivor sets U1..U5 and unmasks only the sum.

Stages: ``"advertise"`` (collect keys, U1) -> ``"share"`` (collect encrypted shares and commitments, U2) ->
``"masked"`` (collect masked inputs, U3) -> ``"consistency"`` (collect survivor-list signatures, U4) -> ``"unmask"``
(collect shares, U5) -> ``"done"``; ``"failed"`` after a DropoutError or a dealer's inconsistent shares. A stage
advances by itself once every expected client answered, or at ``close_stage()`` (deadline) treating silent
clients as dropped.

Invariants:

* a key advertisement with a low-order X25519 key is refused and its sender excluded from the round (the stage no
  longer waits for it), so one bad client cannot stall its neighbourhood;
* U1 is pruned until every member has at least ``t - 1`` neighbours in it; U2 until every member misses at most
  ``share_dropouts`` of its U1 neighbours and keeps ``t - 1`` of them: exactly what honest clients accept, so an
  honest round never stalls on a refusal; fewer than ``t`` members at any stage (``min_signers`` from the masked
  stage on, when signed) raises ``DropoutError``;
* the unmask request asks for self-mask shares of U3 and mask-key shares of U2 \\ U3: disjoint sets;
* every revealed share must open the commitment its dealer made in the share stage (else the response is refused:
  ``VerificationError``, and the round goes on with the other holders); every reconstructed secret is checked
  against its dealer's commitment (self-mask seed) or advertised public key (mask key), so a tampered or
  inconsistent share gives the right sum or a named error, never a wrong sum;
* a rejected message (unknown sender, wrong round, wrong stage, duplicate, bad size, signature or opening)
  raises a named error before any state changes (but the exclusion above), so the round continues for everyone
  else; no partial result is ever produced.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secagg.errors import AuthenticationError, DropoutError, DuplicateMessageError, MalformedMessageError, \
    SecAggError, StageError, UnknownClientError, VerificationError, WrongRoundError
from secagg.hazmat import kex, shamir, sign
from secagg.hazmat.prg import SEED_BYTES, add_masks
from secagg.masking.config import MaskingConfig
from secagg.masking.messages import B_SHARE_BYTES, COMMITMENT_BYTES, S_SHARE_BYTES, AdvertiseKeys, \
    ConsistencyRequest, ConsistencyResponse, KeyRoster, MaskedInput, ShareDelivery, ShareKeys, UnmaskRequest, \
    UnmaskResponse, advertise_payload, seed_commitment, share_commitment, survivors_payload
from secagg.messages import decode
from secagg.roles import AggregateResult, Outbound, StagedRole

__all__ = ["MaskingServer"]

_STAGES = {AdvertiseKeys: "advertise", ShareKeys: "share", MaskedInput: "masked",
           ConsistencyResponse: "consistency", UnmaskResponse: "unmask"}


class MaskingServer(StagedRole):
    """The untrusted aggregator of one masking round; ``peer_identities`` verifies client signatures."""

    def __init__(self, config: MaskingConfig, *, peer_identities: Mapping[int, Ed25519PublicKey] | None = None) -> None:
        self.config = config
        self._peers = dict(peer_identities) if peer_identities is not None else None
        self._graph = config.graph
        self._stage = "advertise"
        self._expected: frozenset[int] = frozenset(config.participants)
        self._got: dict[str, dict[int, object]] = {s: {} for s in _STAGES.values()}
        self._sets: dict[str, frozenset[int]] = {}
        self._excluded: dict[int, str] = {}
        self._acc = np.zeros(config.dim + 1, dtype=config.dtype)
        self._parts: dict[int, int] = {}  # client -> values of its masked input received so far
        self._result: AggregateResult | None = None

    @property
    def survivors(self) -> dict[str, frozenset[int]]:
        """The sets fixed so far: ``U1`` (keys), ``U2`` (shares), ``U3`` (inputs), ``U4`` (checked), ``U5``."""
        return dict(self._sets)

    @property
    def excluded(self) -> dict[int, str]:
        """Clients excluded from the round for a protocol violation, with the reason."""
        return dict(self._excluded)

    def result(self) -> AggregateResult:
        if self._result is None:
            raise StageError(f"no result in stage {self._stage!r}")
        return self._result

    # --- receiving -------------------------------------------------------------------------------------------
    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """Check and record one client message; returns the next stage's messages when the stage completes."""
        msg = decode(payload)
        cfg = self.config
        if msg.round_id != cfg.round_id:  # type: ignore[attr-defined]
            raise WrongRoundError(f"message for round {msg.round_id}, this is round {cfg.round_id}")  # type: ignore[attr-defined]
        if sender not in cfg.participants:
            raise UnknownClientError(f"sender {sender} is not a participant of this round")
        stage = _STAGES.get(type(msg))
        if stage is None:
            raise MalformedMessageError(f"{type(msg).__name__} is not a client-to-server masking message")
        if msg.client_id != sender:  # type: ignore[attr-defined]
            raise AuthenticationError(f"sender {sender} claims to be client {msg.client_id}")  # type: ignore[attr-defined]
        if sender in self._got[stage]:
            raise DuplicateMessageError(f"client {sender} already sent its {type(msg).__name__}")
        if stage != self._stage:
            raise StageError(f"{type(msg).__name__} from {sender} arrived in stage {self._stage!r}")
        if sender not in self._expected:
            raise StageError(f"client {sender} dropped out or was excluded and is not part of stage {stage!r}")
        got = getattr(self, f"_check_{stage}")(sender, msg)
        if got is None:  # a part of a streamed masked input: the input is not complete yet
            return []
        self._got[stage][sender] = got
        if len(self._got[stage]) == len(self._expected):
            return self._advance()
        return []

    def close_stage(self) -> list[Outbound]:
        """Deadline: clients that did not answer the current stage are dropped; advance with the rest."""
        if self._stage in ("done", "failed"):
            raise StageError(f"no stage to close in stage {self._stage!r}")
        return self._advance()

    def _check_advertise(self, u: int, msg: AdvertiseKeys) -> AdvertiseKeys:
        if self._peers is not None:
            if u not in self._peers:
                raise AuthenticationError(f"no identity key for client {u}")
            sign.verify(self._peers[u], msg.signature, advertise_payload(self.config.session_id, u, msg.c_pk, msg.s_pk))
        try:
            kex.check_public(msg.c_pk)
            kex.check_public(msg.s_pk)
        except MalformedMessageError as exc:  # the client itself advertised it: it is out of the round
            self._excluded[u] = str(exc)
            self._expected = self._expected - {u}  # the round goes on without it; the deadline advances the stage
            raise
        return msg

    def _check_share(self, u: int, msg: ShareKeys) -> tuple[dict[int, bytes], dict[int, bytes], bytes]:
        want = self._graph[u] & self._sets["U1"]
        if set(msg.ciphertexts) != want:
            raise UnknownClientError(f"client {u} shared with {sorted(msg.ciphertexts)}, expected {sorted(want)}")
        return msg.ciphertexts, msg.commitments, msg.seed_commitment

    def _check_masked(self, u: int, msg: MaskedInput) -> bool | None:
        """Add one masked input, or one part of it (parts in order); True once the whole input is in."""
        cfg = self.config
        y, first = msg.masked, msg.first
        if first != self._parts.get(u, 0) or y.dtype != cfg.dtype or first + y.size > cfg.dim + 1:
            raise MalformedMessageError(f"masked input of client {u} must continue at value {self._parts.get(u, 0)} "
                                        f"with {cfg.dtype} values, {cfg.dim + 1} in all; got {y.size} "
                                        f"{y.dtype} from {first}")
        if cfg.ring_bits < 8 * y.dtype.itemsize and int(y.max()) > cfg.ring_mask:
            raise MalformedMessageError(f"masked input holds values outside Z_2^{cfg.ring_bits}")
        part = self._acc[first:first + y.size]
        part += y  # wraps mod 2^(8*itemsize); reduced mod 2^ring_bits at the end
        self._parts[u] = first + y.size
        return True if self._parts[u] == cfg.dim + 1 else None

    def _check_consistency(self, u: int, msg: ConsistencyResponse) -> bytes:
        if self._peers is not None:
            if u not in self._peers:
                raise AuthenticationError(f"no identity key for client {u}")
            sign.verify(self._peers[u], msg.signature,
                        survivors_payload(self.config.session_id, tuple(sorted(self._sets["U3"]))))
        return msg.signature

    def _opened(self, kind: bytes, owner: int, holder: int, opening: bytes) -> shamir.Share:
        size = B_SHARE_BYTES if kind == b"b" else S_SHARE_BYTES
        share, nonce = opening[:size], opening[size:]
        commits = self._got["share"][owner][1]  # type: ignore[index]
        want = commits[holder][:COMMITMENT_BYTES] if kind == b"b" else commits[holder][COMMITMENT_BYTES:]
        if share_commitment(kind, self.config.session_id, owner, holder, share, nonce) != want:
            raise VerificationError(f"client {holder} revealed a share of client {owner} that does not open the "
                                    "dealer's commitment")
        parsed = shamir.Share.from_bytes(share)
        if parsed.x != holder + 1:
            raise VerificationError(f"client {holder} revealed a share that is not at its point")
        return parsed

    def _check_unmask(self, u: int, msg: UnmaskResponse) -> tuple[dict[int, shamir.Share], dict[int, shamir.Share]]:
        holds = (self._graph[u] & self._sets["U2"]) | {u}
        want_b, want_s = holds & self._sets["U3"], (holds & self._sets["U2"]) - self._sets["U3"]
        if set(msg.b_shares) != want_b or set(msg.s_shares) != want_s:
            raise MalformedMessageError(f"client {u} revealed shares of the wrong clients")
        b = {v: self._opened(b"b", v, u, o) for v, o in msg.b_shares.items()}
        s = {v: self._opened(b"s", v, u, o) for v, o in msg.s_shares.items()}
        return b, s

    # --- advancing -------------------------------------------------------------------------------------------
    def _prune(self, alive: set[int], base: frozenset[int] | None = None) -> frozenset[int]:
        """Drop members with fewer than t - 1 neighbours among the members (and, given the previous set ``base``,
        members missing more than ``share_dropouts`` of their neighbours in it), until none is left to drop."""
        t, e = self.config.t, int(self.config.share_dropouts)  # type: ignore[arg-type]
        while True:
            weak = {u for u in alive if len(self._graph[u] & alive) + 1 < t or
                    (base is not None and len((self._graph[u] & base) - alive) > e)}
            if not weak:
                return frozenset(alive)
            alive -= weak

    def _need(self, members: frozenset[int], what: str, count: int | None = None) -> None:
        need = self.config.t if count is None else count
        if len(members) < need:
            self._stage = "failed"
            raise DropoutError(f"only {len(members)} clients {what}; the round needs {need}")

    def _advance(self) -> list[Outbound]:
        cfg, stage = self.config, self._stage
        got = self._got[stage]
        rid = cfg.round_id
        quorum = cfg.min_signers if self._peers is not None else cfg.t
        if stage == "advertise":
            u1 = self._prune(set(got))
            self._need(u1, "advertised keys")
            self._sets["U1"], self._stage, self._expected = u1, "share", u1
            outs = []
            for u in sorted(u1):
                nb = sorted(self._graph[u] & u1)
                ads = [got[v] for v in nb]
                roster = KeyRoster(round_id=rid, client_ids=tuple(nb), c_pks=tuple(a.c_pk for a in ads),
                                   s_pks=tuple(a.s_pk for a in ads), signatures=tuple(a.signature for a in ads))
                outs.append(Outbound(u, roster.to_bytes()))
            return outs
        if stage == "share":
            u2 = self._prune(set(got), self._sets["U1"])
            self._need(u2, "shared keys")
            self._sets["U2"], self._stage, self._expected = u2, "masked", u2
            return [Outbound(u, ShareDelivery(round_id=rid, recipient=u, ciphertexts={
                v: got[v][0][u] for v in sorted(self._graph[u] & u2)}).to_bytes()) for u in sorted(u2)]
        if stage == "masked":
            partial = sorted(set(self._parts) - set(got))
            if partial:  # their parts are in the sum and cannot be taken out
                self._stage = "failed"
                raise DropoutError(f"clients {partial} stopped mid-stream: their partial masked inputs are in the "
                                   "sum, so the round cannot finish")
            u3 = frozenset(got)
            self._need(u3, "sent masked inputs", quorum)
            self._sets["U3"], self._stage, self._expected = u3, "consistency", u3
            req = ConsistencyRequest(round_id=rid, survivors=tuple(sorted(u3))).to_bytes()
            return [Outbound(u, req) for u in sorted(u3)]
        if stage == "consistency":
            u4 = frozenset(got)
            self._need(u4, "passed the consistency check", quorum)
            self._sets["U4"], self._stage, self._expected = u4, "unmask", u4
            signers = sorted(v for v, s in got.items() if s)[:cfg.min_signers]
            req = UnmaskRequest(round_id=rid, alive=tuple(sorted(self._sets["U3"])),
                                dropped=tuple(sorted(self._sets["U2"] - self._sets["U3"])),
                                signatures={v: got[v] for v in signers})
            data = req.to_bytes()
            return [Outbound(u, data) for u in sorted(u4)]
        self._sets["U5"] = frozenset(got)
        try:
            self._result = self._unmask(got)  # type: ignore[arg-type]
        except SecAggError:
            self._stage = "failed"
            raise
        self._stage = "done"
        return []

    def _secret(self, got, owner: int, which: int, nbytes: int) -> bytes:
        """``owner``'s secret from the first t revealed shares (each opened its commitment), checked against the
        dealer's own commitment: a dealer whose shares disagree raises VerificationError, never a wrong secret."""
        t = self.config.t
        shares = [got[h][which][owner] for h in sorted(got) if owner in got[h][which]]
        if len(shares) < t:
            raise DropoutError(f"only {len(shares)} shares of client {owner}'s secret arrived; need {t}")
        secret = shamir.reconstruct(shares, t, nbytes)
        if which == 0:
            ok = seed_commitment(self.config.session_id, owner, secret) == self._got["share"][owner][2]  # type: ignore[index]
        else:
            ok = kex.public_bytes(kex.load_private(secret)) == self._got["advertise"][owner].s_pk  # type: ignore[attr-defined]
        if not ok:
            raise VerificationError(f"client {owner} dealt shares that do not reconstruct its committed secret")
        return secret

    def _unmask(self, got: dict[int, tuple[dict[int, shamir.Share], dict[int, shamir.Share]]]) -> AggregateResult:
        cfg = self.config
        u2, u3 = self._sets["U2"], self._sets["U3"]
        dropped = u2 - u3
        self._need(frozenset(got), "revealed shares")
        b_seeds = [self._secret(got, u, 0, SEED_BYTES) for u in sorted(u3)]
        plus, minus = [], []  # the survivors' masks to add back (v < u in y_u) or remove (v > u)
        for v in sorted(dropped):
            s_sk = kex.load_private(self._secret(got, v, 1, kex.KEY_BYTES))
            pks = self._got["advertise"]
            for u in sorted(self._graph[v] & u3):
                seed = kex.mask_seed(s_sk, pks[u].s_pk, session=cfg.session_id, u=v, v=u)  # type: ignore[attr-defined]
                (minus if v > u else plus).append(seed)
        total = self._acc
        add_masks(total, plus, minus + b_seeds)
        if cfg.ring_bits < 8 * total.dtype.itemsize:
            total &= total.dtype.type(cfg.ring_mask)
        weighted = cfg.value_codec.decode_sum(total[:-1])
        weight = float(cfg.weight_codec.decode_sum(total[-1:])[0])
        del total
        self._acc = np.empty(0, dtype=cfg.dtype)  # decoded: the ring sum is not kept beside the result
        if not weight > 0:
            raise DropoutError("the unmasked total weight is not positive: the sum is inconsistent")
        return AggregateResult(weighted_sum=weighted, total_weight=weight, contributors=tuple(sorted(u3)),
                               dropped=tuple(sorted(set(cfg.participants) - u3)))
