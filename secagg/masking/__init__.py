"""Pairwise-masking secure aggregation: Bonawitz et al. 2017 over the SecAgg+ k-regular graph (Bell et al. 2020).

Each client masks ``[w*x, w]`` (fixed point in Z_2^k) with a self mask and pairwise masks shared with its graph
neighbours; Shamir shares of both secrets let the server cancel the masks of any dropout while only ever
learning the sum. Sans-I/O roles (:mod:`secagg.roles`):

    cfg = MaskingConfig(participants=(0, 1, 2, 3), dim=10, weight_bound=2.0)
    clients = {i: MaskingClient(i, cfg) for i in cfg.participants}; server = MaskingServer(cfg)

Trust model: the server may deviate arbitrarily and collude with up to ``max_corrupt`` clients; every sum it
learns covers at least ``t - share_dropouts - max_corrupt >= 2`` honest inputs (see :mod:`.config`). That needs
identities: with ``identity``/``peer_identities`` (Ed25519, on by default in ``build_round``) key advertisements
and survivor lists are signed; without them the server must be trusted to follow the protocol.
"""

from secagg.masking.client import MaskingClient
from secagg.masking.config import MaskingConfig
from secagg.masking.messages import AdvertiseKeys, ConsistencyRequest, ConsistencyResponse, KeyRoster, \
    MaskedInput, ShareDelivery, ShareKeys, UnmaskRequest, UnmaskResponse
from secagg.masking.server import MaskingServer
from secagg.masking.setup import build_round

__all__ = ["MaskingConfig", "MaskingClient", "MaskingServer", "build_round", "AdvertiseKeys", "KeyRoster",
           "ShareKeys", "ShareDelivery", "MaskedInput", "ConsistencyRequest", "ConsistencyResponse",
           "UnmaskRequest", "UnmaskResponse"]
