"""Build every role of one CKKS round (what :func:`secagg.simulate` calls for ``scheme="ckks"``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secagg.ckks.aggregator import CKKSAggregator
from secagg.ckks.client import CKKSClient
from secagg.ckks.keyholder import KeyHolder
from secagg.ckks.messages import CKKSContribution
from secagg.ckks.params import CKKSParams, load_public_context
from secagg.errors import ConfigurationError
from secagg.roles import RoundSetup

__all__ = ["build_round"]


def build_round(participants: Iterable[int], *, dim: int, weights: Mapping[int, float], graph_seed: bytes,
                params: str | CKKSParams = "default", weighting: str = "aggregator", min_contributors: int = 2,
                round_id: int = 0) -> RoundSetup:
    """A fresh key holder, one client per participant and the aggregator, wired for one round.

    ``weighting="aggregator"``: the aggregator applies the public ``weights`` (needs a set that supports the multiply);
    ``"client"``: clients encrypt ``[w*x, w]`` and the aggregator only adds. ``graph_seed`` is unused: CKKS has no
    pairwise graph. The drop tag is the contribution's, so a dropped client is one that never submits.
    """
    if weighting not in ("aggregator", "client"):
        raise ConfigurationError(f"weighting must be 'aggregator' or 'client', got {weighting!r}")
    ids = list(participants)
    keyholder = KeyHolder(params, min_contributors=min_contributors)
    public = load_public_context(keyholder.public_context(), need_public_key=True)  # parsed once, shared
    pre = weighting == "client"
    clients = {i: CKKSClient(i, public, round_id=round_id, preweight=pre, max_cohort=max(1, len(ids))) for i in ids}
    aggregator = CKKSAggregator(public, ids, dim=dim, round_id=round_id, weights=None if pre else weights,
                                min_contributors=min_contributors)
    return RoundSetup(clients=dict(clients), aggregator=aggregator, finalizer=keyholder,
                      drop_tag=CKKSContribution.TAG)
