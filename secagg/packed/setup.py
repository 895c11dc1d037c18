"""Build every role of one packed-BFV round (what :func:`secagg.simulate` would call for ``scheme="packed"``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secagg.errors import ConfigurationError
from secagg.he_keyholder import granted_tag_key
from secagg.hazmat import sign as ed25519
from secagg.packed.aggregator import PackedAggregator
from secagg.packed.client import PackedClient
from secagg.packed.keyholder import PackedKeyHolder
from secagg.packed.messages import PackedContribution
from secagg.packed.params import PackedParams, load_public_context
from secagg.he_stream import DEFAULT_WINDOW_BYTES
from secagg.roles import RoundSetup

__all__ = ["build_round"]


def build_round(participants: Iterable[int], *, dim: int, weights: Mapping[int, float], graph_seed: bytes,
                max_cohort: int | None = None, min_value_bits: int = 14, clip: float = 1.0,
                rounding: str = "stochastic", min_contributors: int = 2, round_id: int = 0,
                sign: bool = True, window_bytes: int = DEFAULT_WINDOW_BYTES) -> RoundSetup:
    """A fresh key holder, one client per participant and the aggregator, wired for one round.

    ``max_cohort`` defaults to the number of participants (the tightest lane layout); the public weight bound is
    ``max(weights)``. ``sign`` as in :func:`secagg.ckks.build_round` (pad seeds signed by client identities).
    ``graph_seed`` is unused (no pairwise graph). A dropped client is one that never submits. ``window_bytes``
    bounds the aggregator's running sums of a streamed round (:mod:`secagg.he_stream`).
    """
    ids = list(participants)
    if not weights or any(i not in weights for i in ids):
        raise ConfigurationError("weights must give every participant a weight")
    params = PackedParams(max_cohort=max(2, len(ids)) if max_cohort is None else max_cohort,
                          min_value_bits=min_value_bits)
    keys = {i: ed25519.generate() for i in ids} if sign else {}
    public_ids = {i: k.public_key() for i, k in keys.items()} if sign else None
    keyholder = PackedKeyHolder(params, min_contributors=min_contributors, peer_identities=public_ids)
    public = load_public_context(keyholder.public_context(), params, need_public_key=True)  # parsed once, shared
    bound = max(float(weights[i]) for i in ids)
    common = dict(weight_bound=bound, clip=clip, rounding=rounding, round_id=round_id)
    clients = {i: PackedClient(i, public, params, identity=keys.get(i), tag_key=granted_tag_key(keyholder, i, keys.get(i)),
                            **common) for i in ids}
    aggregator = PackedAggregator(public, params, ids, dim=dim, min_contributors=min_contributors,
                                  window_bytes=window_bytes, **common)
    return RoundSetup(clients=dict(clients), aggregator=aggregator, finalizer=keyholder,
                      drop_tag=PackedContribution.TAG)
