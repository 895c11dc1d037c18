"""The only role and key-holder factory: per-round public parameters and every party's role, for each scheme.

Every driver (in-process, gRPC services, Flower) builds roles here and nowhere else. Only the aggregator chooses a round's parameters (:meth:`Scheme.plan`); they travel to the cohort as JSON in the
task header, and every client rebuilds its own role from them (:meth:`Scheme.client_role`). No party ever builds
another party's role, so secrets stay where they are created: masking keys in each client, the CKKS secret key in
the key holder. CKKS clients take the public context from the key holder itself (authenticated by mTLS), never
from the aggregator, so the aggregator cannot substitute a key it could decrypt with. Signed masking rounds name the
cohort's signing certificates by one digest of their fingerprints in the parameters (``identities``); each client
resolves it to keys it has verified against its own CA copy (cached, or fetched and verified: :mod:`.peers`).

Weights: every scheme has clients pre-weight ``[w·x, w]`` inside their encryption or masking (the aggregator never
applies a weight, so it cannot re-weight anyone); with ``private_bound`` (loss-weighted: weights are secret) that
is the public bound each ``w`` must respect. CKKS and packed tasks name the key holder's public bundle by its
SHA-256 (``context_id``). Masking tasks carry a fresh 32-byte ``round_nonce``; a client refuses a task whose
masking parameters are weaker than its own deployment's (fewer honest inputs per sum, or a smaller corruption
bound), so a malicious aggregator cannot lower them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hashlib
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.errors import AuthenticationError, ConfigurationError, MalformedMessageError
from secagg.roles import AggregateResult, AggregatorRole, ClientRole, FinalizerRole
from secagg.terms import terms_digest

__all__ = ["Scheme", "MaskingScheme", "CKKSScheme", "PackedScheme", "make_scheme", "make_keyholder", "context_id",
           "roster_digest", "Identity", "SCHEMES"]

SCHEMES = ("ckks", "masking", "packed")


class Identity(Protocol):
    """A client's verified signing identity: its Ed25519 public key and the fingerprint rounds name it by."""

    key: Ed25519PublicKey
    fingerprint: str


Identities = Mapping[int, Identity]  # client id -> its verified signing identity


def context_id(context: bytes) -> str:
    """The public name (SHA-256, hex) of a serialized public context, sent in tasks so clients can spot a new key."""
    return hashlib.sha256(context).hexdigest()


def roster_digest(listing: Mapping[int, str]) -> str:
    """SHA-256 (hex) over a round's sorted ``client id: certificate fingerprint`` pairs (unambiguous: ids are
    integers, fingerprints 64 hex digits)."""
    h = hashlib.sha256(b"secagg/transport/roster/v1")
    for c in sorted(listing):
        h.update(f"{int(c)}:{listing[c]};".encode())
    return h.hexdigest()




@dataclass
class Scheme:
    """Scheme-specific round construction; ``options`` are the deployment's public settings."""

    options: dict[str, Any] = field(default_factory=dict)
    name = ""

    def plan(self, round_id: int, cohort: list[int], weights: dict[int, float], dim: int,
             context: bytes | None, identities: Identities | None = None, *,
             private_bound: float | None = None, public: object = None,
             terms: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], AggregatorRole]:
        """Public round parameters (JSON-able) and the aggregator's role built from exactly those (``public``: the
        already parsed ``context``, to skip re-parsing it). ``terms``: the strategy's public round terms, carried
        as ``params["strategy"]``; every client binds the digest of the whole ``params``
        (:func:`secagg.terms.terms_digest`) into what it signs or seals, so clients told different parameters
        cannot end up in one released sum.
        ``identities``: the cohort's verified signing identities (required when :attr:`needs_identities`);
        ``private_bound``: weights are private (clients pre-weight) and at most this."""
        raise NotImplementedError

    def client_role(self, client_id: int, params: dict[str, Any], context: object,
                    signer: Ed25519PrivateKey | None = None, peers: Mapping[int, Ed25519PublicKey] | None = None, *,
                    sessions: set[bytes] | None = None, noise: Any = None, tag_key: bytes | None = None) -> ClientRole:
        """This client's role for the round (``context``: the key holder's public context, bytes or parsed;
        ``tag_key``: the key holder's grant, :class:`secagg.he_round.TagKeyRequest`, for the HE schemes);
        for signed rounds ``signer`` (its signing key) and ``peers``: the
        verified key of every cohort member, resolved from the roster digest ``params["identities"]``;
        ``sessions``: the masking sessions this client already took part in (a reused one is refused);
        ``noise``: the client's :class:`~training.engine.contribution.IntegerNoise`, for a scheme that adds its
        distributed noise on the integer grid itself (:attr:`integer_noise`); the others ignore it."""
        raise NotImplementedError

    def decode_release(self, params: dict[str, Any], context: bytes, payload: bytes) -> AggregateResult:
        """The sum the key holder released for the round of ``params``, checked: signed with the release key of
        ``context`` (the bundle this client trusts), of this round, over contributors of its cohort, under the
        terms digest of exactly these ``params``; anything else raises a named error. Masking has no release."""
        from secagg.he_release import verify_release

        if not self.needs_keyholder:
            raise ConfigurationError(f"{self.name} sums are unmasked by the server: there is no signed release")
        msg = verify_release(context, payload, round_id=int(params["round_id"]))
        cohort = [int(c) for c in params["cohort"]]
        if not set(msg.contributors) <= set(cohort):
            raise AuthenticationError("the release names contributors outside the round's cohort")
        if msg.terms != terms_digest(params):
            raise AuthenticationError("the release was made under other round terms than these parameters")
        weighted, total = self._release_decoder(params, context)._decode(msg)
        return AggregateResult(weighted, total, tuple(msg.contributors),
                               tuple(c for c in cohort if c not in msg.contributors))

    def _release_decoder(self, params: dict[str, Any], context: bytes) -> Any:
        raise NotImplementedError

    @property
    def needs_keyholder(self) -> bool:
        return False

    @property
    def integer_noise(self) -> bool:
        """Whether clients add their distributed noise in the role (integers) rather than in the contribution."""
        return False

    @property
    def drop_tag(self) -> int | None:
        """The wire tag of a client's input message (an in-process dropout vanishes instead of sending it)."""
        return None

    @property
    def needs_identities(self) -> bool:
        """Whether every client must check in with a signing certificate."""
        return False


class MaskingScheme(Scheme):
    """SecAgg+ masking: a fresh graph seed per round; clients pre-weight within the public ``weight_bound``.
    With ``signed`` (default) every advertisement and consistency response is signed by the client's CA-certified
    Ed25519 identity, so the aggregator cannot substitute keys or survivor lists (the active-adversary variant)."""

    name = "masking"
    _KEYS = ("threshold", "neighbors", "ring_bits", "clip", "weight_bound", "rounding", "max_corrupt",
             "share_dropouts")

    def _config(self, params: dict[str, Any]):
        from secagg.masking import MaskingConfig

        try:
            seed, nonce = bytes.fromhex(params["graph_seed"]), bytes.fromhex(params["round_nonce"])
            kwargs = {k: params[k] for k in self._KEYS if params.get(k) is not None}
            return MaskingConfig(participants=[int(p) for p in params["cohort"]], dim=int(params["dim"]),
                                 round_id=int(params["round_id"]), graph_seed=seed, round_nonce=nonce,
                                 terms=terms_digest(params), **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"bad masking round parameters: {exc!r}") from exc

    def _check_policy(self, config) -> None:
        """ConfigurationError if ``config`` protects less than this deployment's own options would."""
        local = self._config({**{k: self.options.get(k) for k in self._KEYS}, "round_id": config.round_id,
                              "cohort": list(config.participants), "dim": config.dim, "graph_seed": "00" * 16,
                              "round_nonce": "00" * 32, "weight_bound": config.weight_bound})
        if config.min_honest_sum < local.min_honest_sum or config.max_corrupt < local.max_corrupt:
            raise ConfigurationError(
                f"the round's masking parameters (t={config.t}, max_corrupt={config.max_corrupt}, share_dropouts="
                f"{config.share_dropouts}) protect less than this client's (t={local.t}, max_corrupt="
                f"{local.max_corrupt}, share_dropouts={local.share_dropouts}); refusing the round")

    @property
    def needs_identities(self) -> bool:
        return bool(self.options.get("signed", True))

    @property
    def drop_tag(self) -> int:
        from secagg.masking import MaskedInput

        return MaskedInput.TAG

    def plan(self, round_id, cohort, weights, dim, context, identities=None, *, private_bound=None, public=None,
             terms=None):
        from secagg.masking import MaskingServer

        opts = dict(self.options)
        if private_bound is not None:
            opts["weight_bound"] = float(private_bound)
        elif opts.get("weight_bound") is None:
            opts["weight_bound"] = max(weights.values())
        params = {k: opts.get(k) for k in self._KEYS} | {
            "round_id": round_id, "cohort": sorted(cohort), "dim": dim, "graph_seed": secrets.token_hex(16),
            "round_nonce": secrets.token_hex(32), "strategy": dict(terms or {})}
        peers = None
        if self.needs_identities:
            if identities is None or any(c not in identities for c in cohort):
                raise AuthenticationError("a signed masking round needs every member's signing identity")
            params["identities"] = roster_digest({c: identities[c].fingerprint for c in cohort})
            peers = {c: identities[c].key for c in cohort}
        return params, MaskingServer(self._config(params), peer_identities=peers)

    @property
    def integer_noise(self) -> bool:
        return True

    def client_role(self, client_id, params, context, signer=None, peers=None, *, sessions=None, noise=None,
                    tag_key=None):
        from secagg.masking import MaskingClient

        config = self._config(params)
        self._check_policy(config)
        listed = params.get("identities")
        if listed is None:
            if self.needs_identities:
                raise AuthenticationError("this deployment signs masking rounds, but the round lists no identities")
            role = MaskingClient(client_id, config, sessions=sessions)
        else:
            if signer is None:
                raise ConfigurationError(f"client {client_id} has no signing identity for a signed masking round")
            if not isinstance(listed, str):
                raise MalformedMessageError("the round's identities are not a roster digest")
            if peers is None or set(peers) != set(config.participants):
                raise AuthenticationError("a signed masking round needs a verified key for every cohort member")
            role = MaskingClient(client_id, config, identity=signer, peer_identities=dict(peers), sessions=sessions)
        if noise is None or not noise.noise_multiplier:
            return role
        from training.engine.contribution import NoisyMaskingClient

        return NoisyMaskingClient(role, noise, params.get("strategy") or {}, len(config.participants))


class CKKSScheme(Scheme):
    """CKKS: clients pre-weight and pad, the aggregator only adds; the key holder releases only verified sums of
    at least ``min_contributors`` clients."""

    name = "ckks"

    @property
    def needs_keyholder(self) -> bool:
        return True

    @property
    def drop_tag(self) -> int:
        from secagg.ckks import CKKSContribution

        return CKKSContribution.TAG

    def plan(self, round_id, cohort, weights, dim, context, identities=None, *, private_bound=None, public=None,
             terms=None):
        from secagg.ckks import CKKSAggregator

        if context is None:
            raise ConfigurationError("CKKS needs the key holder's public context")
        params = {"round_id": round_id, "cohort": sorted(cohort), "dim": dim, "context_id": context_id(context),
                  "strategy": dict(terms or {})}
        agg = CKKSAggregator(public if public is not None else context, sorted(cohort), dim=dim, round_id=round_id,
                             min_contributors=int(self.options.get("min_contributors", 2)),
                             window_bytes=_window(self.options))
        return params, agg

    def _release_decoder(self, params, context):
        from secagg.ckks import CKKSAggregator

        return CKKSAggregator(context, [int(c) for c in params["cohort"]], dim=int(params["dim"]),
                              round_id=int(params["round_id"]))

    def client_role(self, client_id, params, context, signer=None, peers=None, *, sessions=None, noise=None,
                    tag_key=None):
        from secagg.ckks import CKKSClient

        if context is None:
            raise ConfigurationError("CKKS needs the key holder's public context")
        return CKKSClient(client_id, context, round_id=int(params["round_id"]),
                          max_cohort=max(1, len(params["cohort"])), identity=signer, terms=terms_digest(params),
                          tag_key=tag_key)


class PackedScheme(Scheme):
    """Packed BFV (several quantized values per slot): clients always pre-weight ``[w·x, w]`` within the public
    ``weight_bound`` (the largest checked-in weight, or ``private_bound``) and value bound ``clip``; the key
    holder (a :class:`secagg.packed.PackedKeyHolder` for the same ``max_cohort``/``min_value_bits``) decrypts sums
    of ``min_contributors..max_cohort`` clients only."""

    name = "packed"
    _KEYS = ("max_cohort", "min_value_bits", "clip", "rounding")

    @property
    def needs_keyholder(self) -> bool:
        return True

    @property
    def drop_tag(self) -> int:
        from secagg.packed import PackedContribution

        return PackedContribution.TAG

    @staticmethod
    def _parse(params: dict[str, Any]):
        from secagg.packed import PackedParams

        try:
            packed = PackedParams(max_cohort=params["max_cohort"], min_value_bits=params["min_value_bits"])
            common = {"weight_bound": float(params["weight_bound"]), "clip": float(params["clip"]),
                      "rounding": str(params["rounding"]), "round_id": int(params["round_id"])}
            return packed, common, [int(c) for c in params["cohort"]], int(params["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"bad packed round parameters: {exc!r}") from exc

    def plan(self, round_id, cohort, weights, dim, context, identities=None, *, private_bound=None, public=None,
             terms=None):
        from secagg.packed import PackedAggregator

        if context is None:
            raise ConfigurationError("the packed scheme needs the key holder's public context")
        if "max_cohort" not in self.options:
            raise ConfigurationError("the packed scheme needs max_cohort (the key holder's cohort bound)")
        opts = {"min_value_bits": 14, "clip": 1.0, "rounding": "stochastic"} | {
            k: v for k, v in self.options.items() if v is not None}
        bound = private_bound if private_bound is not None else opts.get("weight_bound") or max(weights.values())
        params = {k: opts[k] for k in self._KEYS} | {
            "round_id": round_id, "cohort": sorted(cohort), "dim": dim, "weight_bound": float(bound),
            "context_id": context_id(context), "strategy": dict(terms or {})}
        packed, common, ids, dim = self._parse(params)
        agg = PackedAggregator(public if public is not None else context, packed, ids, dim=dim,
                               min_contributors=int(opts.get("min_contributors", 2)), window_bytes=_window(opts),
                               **common)
        return params, agg

    def _release_decoder(self, params, context):
        from secagg.packed import PackedAggregator

        packed, common, ids, dim = self._parse(params)
        return PackedAggregator(context, packed, ids, dim=dim, **common)

    def client_role(self, client_id, params, context, signer=None, peers=None, *, sessions=None, noise=None,
                    tag_key=None):
        from secagg.packed import PackedClient

        if context is None:
            raise ConfigurationError("the packed scheme needs the key holder's public context")
        packed, common, _, _ = self._parse(params)
        return PackedClient(client_id, context, packed, identity=signer, terms=terms_digest(params), tag_key=tag_key,
                            **common)


def _window(options: Mapping[str, Any]) -> int:
    """The aggregator's window of running sums (``window_bytes``, :mod:`secagg.he_stream`)."""
    from secagg.he_stream import DEFAULT_WINDOW_BYTES

    return int(options.get("window_bytes") or DEFAULT_WINDOW_BYTES)


def make_keyholder(name: str, options: Mapping[str, Any] | None = None, *,
                   peer_identities: Mapping[int, Ed25519PublicKey] | None = None) -> FinalizerRole:
    """A fresh key holder (new keys, in memory only) for ``name`` ("ckks" or "packed") and the deployment's public
    ``options`` (ckks: ``params``, ``min_contributors``; packed: ``max_cohort``, ``min_value_bits``,
    ``min_contributors``): the only place key holders are made. With ``peer_identities`` it accepts only pad seeds
    signed by those clients (pad seeds relayed by the aggregator, e.g. over Flower)."""
    opts = {k: v for k, v in dict(options or {}).items() if v is not None}
    if name == "packed":
        from secagg.packed import PackedKeyHolder, PackedParams

        if "max_cohort" not in opts:
            raise ConfigurationError("the packed scheme needs max_cohort (the largest cohort: it fixes the lanes)")
        params = PackedParams(max_cohort=max(2, int(opts["max_cohort"])), min_value_bits=opts.get("min_value_bits", 14))
        return PackedKeyHolder(params, min_contributors=int(opts.get("min_contributors", 2)),
                               peer_identities=peer_identities)
    if name == "ckks":
        from secagg.ckks import KeyHolder

        return KeyHolder(params=opts.get("params", "default"), min_contributors=int(opts.get("min_contributors", 2)),
                         peer_identities=peer_identities)
    raise ConfigurationError(f"scheme {name!r} has no key holder")


def make_scheme(name: str, options: dict[str, Any] | None = None) -> Scheme:
    """The scheme called ``name`` ("masking", "ckks" or "packed") with public ``options``."""
    table = {"masking": MaskingScheme, "ckks": CKKSScheme, "packed": PackedScheme}
    if name not in table:
        raise ConfigurationError(f"unknown scheme {name!r}; expected 'masking', 'ckks' or 'packed'")
    return table[name](dict(options or {}))
