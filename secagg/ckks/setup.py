"""Build every role of one CKKS round (what :func:`secagg.simulate` calls for ``scheme="ckks"``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secagg.ckks.aggregator import CKKSAggregator
from secagg.ckks.client import CKKSClient
from secagg.ckks.keyholder import KeyHolder
from secagg.ckks.messages import CKKSContribution
from secagg.ckks.params import CKKSParams, load_public_context
from secagg.errors import ConfigurationError
from secagg.he_keyholder import granted_tag_key
from secagg.hazmat import sign as ed25519
from secagg.he_stream import DEFAULT_WINDOW_BYTES
from secagg.roles import RoundSetup

__all__ = ["build_round"]


def build_round(participants: Iterable[int], *, dim: int, weights: Mapping[int, float], graph_seed: bytes,
                params: str | CKKSParams = "default", min_contributors: int = 2, round_id: int = 0,
                sign: bool = True, window_bytes: int = DEFAULT_WINDOW_BYTES) -> RoundSetup:
    """A fresh key holder, one client per participant and the aggregator, wired for one round.

    Clients pre-weight ``[w*x, w]``; the aggregator only adds. ``sign=True`` (default) gives every client an
    Ed25519 identity that signs its pad seed and hands the key holder the public identities (so seeds may be
    relayed); ``sign=False`` trusts the driver's sender ids (an authenticated channel). ``graph_seed`` is unused:
    CKKS has no pairwise graph. The drop tag is the contribution's, so a dropped client is one that never submits.
    ``window_bytes`` bounds the aggregator's running sums of a streamed round (:mod:`secagg.he_stream`).
    """
    ids = list(participants)
    if not weights or any(i not in weights for i in ids):
        raise ConfigurationError("weights must give every participant a weight")
    keys = {i: ed25519.generate() for i in ids} if sign else {}
    public_ids = {i: k.public_key() for i, k in keys.items()} if sign else None
    keyholder = KeyHolder(params, min_contributors=min_contributors, peer_identities=public_ids)
    public = load_public_context(keyholder.public_context(), need_public_key=True)  # parsed once, shared
    clients = {i: CKKSClient(i, public, round_id=round_id, max_cohort=max(1, len(ids)), identity=keys.get(i),
                          tag_key=granted_tag_key(keyholder, i, keys.get(i))) for i in ids}
    aggregator = CKKSAggregator(public, ids, dim=dim, round_id=round_id, min_contributors=min_contributors,
                                window_bytes=window_bytes)
    return RoundSetup(clients=dict(clients), aggregator=aggregator, finalizer=keyholder,
                      drop_tag=CKKSContribution.TAG)
