"""The secure-sum backend a federation uses: one scheme (CKKS, masking or packed BFV), real roles, bytes counted.

:class:`SecureSum` runs one secure-aggregation round over a cohort's :class:`Contribution` s with the real
``secagg`` roles driven by :func:`secagg.run_round` (every message is ``bytes``). Each role is wrapped to count
bytes sent/received per client and to let an optional ``observer(party, payload)`` see every message delivered to
the aggregator or key holder (tests use it to prove that no individual loss ever reaches them).

Every scheme runs its hardened protocol (see README, *Threat model*): masking rounds are signed (each client has
an Ed25519 identity for the federation's life; every round has a fresh nonce, and a client refuses a session it
already took part in); HE clients pad their ciphertexts and seal their pad seeds to the key holder, which
releases only verified sums. ``sign=False`` opts masking out of signatures, for a trusted server only.

Weights: every client pre-weights ``[w·x, w]`` inside its own encryption or masking, so no aggregator ever
applies (or sees) a weight; the value range ``[-clip, clip]`` and the weight bound are public and checked before
encoding.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from secagg import run_round
from secagg.hazmat import sign as ed25519
from secagg.roles import AggregateResult, Outbound

from training.aggregation.base import Contribution
from training.errors import ConfigError

__all__ = ["SecureSum", "RoundTraffic", "Observer", "SCHEMES"]

SCHEMES = ("ckks", "masking", "packed")

Observer = Callable[[str, bytes], None]


@dataclass
class RoundTraffic:
    """Bytes moved in one secure round: per client up/down, and aggregator <-> key holder."""

    up: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    down: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    messages: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    keyholder: int = 0


class _CountingClient:
    def __init__(self, inner, traffic: RoundTraffic) -> None:
        self._inner, self._t = inner, traffic
        self.client_id = inner.client_id

    @property
    def stage(self) -> str:
        return self._inner.stage

    @property
    def done(self) -> bool:
        return self._inner.done

    def _out(self, outs: list[Outbound]) -> list[Outbound]:
        for o in outs:
            self._t.up[self.client_id] += len(o.payload)
            self._t.messages[self.client_id] += 1
        return outs

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        return self._out(self._inner.start(update, weight))

    def receive(self, payload: bytes) -> list[Outbound]:
        self._t.down[self.client_id] += len(payload)
        self._t.messages[self.client_id] += 1
        return self._out(self._inner.receive(payload))


class _ObservedAggregator:
    def __init__(self, inner, traffic: RoundTraffic, observer: Observer | None) -> None:
        self._inner, self._t, self._obs = inner, traffic, observer

    stage = property(lambda self: self._inner.stage)
    done = property(lambda self: self._inner.done)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        if self._obs is not None:
            self._obs("aggregator", payload)
        if sender < 0:
            self._t.keyholder += len(payload)
        return self._inner.receive(sender, payload)

    def close_stage(self) -> list[Outbound]:
        return self._inner.close_stage()

    def result(self) -> AggregateResult:
        res = self._inner.result()
        if self._obs is not None:
            self._obs("aggregator-result", np.asarray(res.weighted_sum, dtype=np.float64).tobytes()
                      + np.float64(res.total_weight).tobytes())
        return res


class _ObservedFinalizer:
    def __init__(self, inner, traffic: RoundTraffic, observer: Observer | None) -> None:
        self._inner, self._t, self._obs = inner, traffic, observer

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        if self._obs is not None:
            self._obs("keyholder", payload)
        self._t.keyholder += len(payload)
        return self._inner.receive(sender, payload)


class SecureSum:
    """One federation's secure aggregation. CKKS and packed keep ONE key holder (and public context) for life.

    Options — ckks: ``params`` ("default" | "add-only"), ``min_contributors``; masking: ``clip`` (L∞ bound of
    every value), ``ring_bits``, ``threshold``, ``neighbors``, ``max_corrupt``, ``share_dropouts``, ``rounding``,
    ``sign``; packed: ``clip``, ``rounding``, ``min_contributors`` and ``max_cohort`` (required: the largest cohort,
    which fixes the lane layout).
    """

    def __init__(self, scheme: str = "ckks", *, params: str = "default", min_contributors: int = 2,
                 clip: float = 1.0, ring_bits: int = 32, threshold: int | None = None,
                 neighbors: int | None = None, rounding: str = "stochastic", max_cohort: int | None = None,
                 max_corrupt: int | None = None, share_dropouts: int | None = None, sign: bool = True) -> None:
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.min_contributors = int(min_contributors)
        self.clip, self.ring_bits, self.threshold, self.neighbors = float(clip), int(ring_bits), threshold, neighbors
        self.max_corrupt, self.share_dropouts, self.sign = max_corrupt, share_dropouts, bool(sign)
        self.rounding = rounding
        self._identities: dict = {}  # client id -> its Ed25519 signing key (masking), made on first use
        self._sessions: dict[int, set[bytes]] = defaultdict(set)  # client id -> masking sessions it took part in
        self._keyholder = None
        self._context: bytes | None = None
        self._rounds = 0
        self.last_roles: tuple | None = None  # (clients, aggregator, finalizer) of the latest round, for audits
        if scheme == "ckks":
            from secagg.ckks import KeyHolder
            from secagg.ckks.params import load_public_context

            self._keyholder = KeyHolder(params=params, min_contributors=self.min_contributors)
            self._context = self._keyholder.public_context()
            self._public = load_public_context(self._context, need_public_key=True)  # parsed once, shared
        elif scheme == "packed":
            from secagg.packed import PackedKeyHolder, PackedParams
            from secagg.packed.params import load_public_context as load_packed_context

            if max_cohort is None:
                raise ConfigError("the packed scheme needs max_cohort (the largest cohort: it fixes the lane layout)")
            self._packed = PackedParams(max_cohort=max(2, int(max_cohort)))
            self._keyholder = PackedKeyHolder(self._packed, min_contributors=self.min_contributors)
            self._context = self._keyholder.public_context()
            self._public = load_packed_context(self._context, self._packed, need_public_key=True)

    @property
    def setup_bytes(self) -> int:
        """Bytes each client downloads once when joining (the HE public context; 0 for masking)."""
        return len(self._context) if self._context is not None else 0

    def _roles(self, ids: list[int], dim: int, weight_bound: float, round_id: int):
        if self.scheme == "ckks":
            from secagg.ckks import CKKSAggregator, CKKSClient, CKKSContribution

            clients = {i: CKKSClient(i, self._public, round_id=round_id, max_cohort=len(ids)) for i in ids}
            agg = CKKSAggregator(self._public, ids, dim=dim, round_id=round_id, min_contributors=self.min_contributors)
            return clients, agg, self._keyholder, CKKSContribution.TAG
        if self.scheme == "packed":
            from secagg.packed import PackedAggregator, PackedClient, PackedContribution

            common = dict(weight_bound=weight_bound, clip=self.clip, rounding=self.rounding, round_id=round_id)
            clients = {i: PackedClient(i, self._public, self._packed, **common) for i in ids}
            agg = PackedAggregator(self._public, self._packed, ids, dim=dim, min_contributors=self.min_contributors,
                                   **common)
            return clients, agg, self._keyholder, PackedContribution.TAG
        from secagg.masking import MaskedInput, MaskingClient, MaskingConfig, MaskingServer

        cfg = MaskingConfig(participants=tuple(ids), dim=dim, threshold=self.threshold, neighbors=self.neighbors,
                            ring_bits=self.ring_bits, clip=self.clip, weight_bound=weight_bound,
                            rounding=self.rounding, round_id=round_id, graph_seed=secrets.token_bytes(16),
                            max_corrupt=self.max_corrupt, share_dropouts=self.share_dropouts)
        public = None
        if self.sign:
            for i in ids:
                if i not in self._identities:
                    self._identities[i] = ed25519.generate()
            public = {i: self._identities[i].public_key() for i in ids}
        clients = {i: MaskingClient(i, cfg, identity=self._identities.get(i) if self.sign else None,
                                    peer_identities=public, sessions=self._sessions[i]) for i in ids}
        return clients, MaskingServer(cfg, peer_identities=public), None, MaskedInput.TAG

    def aggregate(self, contributions: Mapping[int, Contribution], *, private: bool,
                  weight_bound: float | None = None, drop: tuple[int, ...] = (),
                  observer: Observer | None = None) -> tuple[AggregateResult, RoundTraffic]:
        """Σ w_i x_i and Σ w_i over the surviving contributors, plus the bytes each party moved.

        ``drop`` lists clients that vanish before submitting their input (a dropout, not an error, as long as
        enough survive). ``weight_bound`` is required for private weights (it is public, e.g. e^{margin/T}).
        Every call is a new protocol round with a fresh round id (the key holder decrypts each round once).
        """
        self._rounds += 1
        round_id = self._rounds
        ids = sorted(contributions)
        if not ids:
            raise ConfigError("a secure round needs at least one contribution")
        vecs = {i: np.asarray(contributions[i].vector, dtype=np.float64) for i in ids}
        weights = {i: float(contributions[i].weight) for i in ids}
        dim = vecs[ids[0]].shape[0]
        if private and weight_bound is None:
            raise ConfigError("private weights need a public weight_bound")
        wb = float(weight_bound) if weight_bound is not None else max(weights.values())
        if self.scheme != "ckks":  # what the codecs encode is w·x, within clip·weight_bound
            worst = max(float(np.max(np.abs(v))) * weights[i] for i, v in vecs.items())
            if worst > self.clip * wb:
                raise ConfigError(f"a weighted update value {worst:.4g} exceeds the {self.scheme} bound "
                                  f"{self.clip * wb:.4g} (clip x weight bound); clip updates in L2 to the clip first")
        traffic = RoundTraffic()
        clients, agg, fin, drop_tag = self._roles(ids, dim, wb, round_id)
        self.last_roles = (clients, agg, fin)
        wrapped = {i: _CountingClient(c, traffic) for i, c in clients.items()}
        drop_at = {i: drop_tag for i in drop}
        res = run_round(wrapped, _ObservedAggregator(agg, traffic, observer), vecs, weights,
                        finalizer=None if fin is None else _ObservedFinalizer(fin, traffic, observer),
                        drop_at=drop_at)
        return res, traffic
