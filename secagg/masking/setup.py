"""Build every role of one masking round (what :func:`secagg.simulate` calls for ``scheme="masking"``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secagg.errors import ConfigurationError
from secagg.hazmat import sign as ed25519
from secagg.masking.client import MaskingClient
from secagg.masking.config import MaskingConfig
from secagg.masking.messages import MaskedInput
from secagg.masking.server import MaskingServer
from secagg.roles import RoundSetup

__all__ = ["build_round"]


def build_round(participants: Iterable[int], *, dim: int, weights: Mapping[int, float], graph_seed: bytes,
                threshold: int | None = None, neighbors: int | None = None, ring_bits: int = 32, clip: float = 1.0,
                rounding: str = "stochastic", sign: bool = True, round_id: int = 0,
                max_corrupt: int | None = None, share_dropouts: int | None = None) -> RoundSetup:
    """One client per participant and the server, sharing one :class:`MaskingConfig` (fresh round nonce).

    The public weight bound is ``max(weights)``. ``sign=True`` (default) gives every client a fresh Ed25519
    identity and hands all public identities to every client and the server (advertisements and survivor lists
    are signed): the protocol is then safe against a server that deviates. ``sign=False`` is an opt-out for a
    trusted, honest-but-curious server only: without signatures a server can impersonate every neighbour of a
    client and unmask it. The drop tag is :class:`MaskedInput`'s: a dropped client vanishes after sharing its keys.
    """
    ids = list(participants)
    if not weights or any(i not in weights for i in ids):
        raise ConfigurationError("weights must give every participant a weight")
    cfg = MaskingConfig(participants=tuple(ids), dim=dim, threshold=threshold, neighbors=neighbors,
                        ring_bits=ring_bits, clip=clip, weight_bound=max(float(weights[i]) for i in ids),
                        rounding=rounding, round_id=round_id, graph_seed=graph_seed, max_corrupt=max_corrupt,
                        share_dropouts=share_dropouts)
    keys = {i: ed25519.generate() for i in ids} if sign else {}
    public = {i: k.public_key() for i, k in keys.items()} if sign else None
    clients = {i: MaskingClient(i, cfg, identity=keys.get(i), peer_identities=public) for i in ids}
    return RoundSetup(clients=dict(clients), aggregator=MaskingServer(cfg, peer_identities=public),
                      finalizer=None, drop_tag=MaskedInput.TAG)
