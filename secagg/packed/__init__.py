"""Packed BFV secure aggregation (BatchCrypt idea): several quantized values per plaintext slot, with carry
headroom for the cohort, so one contribution costs about 4x/lanes float32 instead of CKKS's 8-14x.

    from secagg.packed import PackedParams, PackedKeyHolder, PackedClient, PackedAggregator
    params = PackedParams(max_cohort=32)       # lanes and value bits follow from the cohort bound
    kh = PackedKeyHolder(params)               # the only party with a secret key
    ctx = kh.public_context()                  # bytes, no secret key: give to clients and the aggregator

Trust model as :mod:`secagg.ckks` (verified sums; aggregator and key holder must not collude). No range proofs:
a malicious client can send lanes outside its range and so corrupt other lanes of the sum; the key holder's guard
check catches carries into the guard slots only.
"""

from secagg.packed.aggregator import PackedAggregator
from secagg.packed.client import PackedClient
from secagg.packed.codec import PackedCodec
from secagg.packed.keyholder import PackedKeyHolder
from secagg.packed.messages import PackedAggregate, PackedContribution, PackedResult
from secagg.packed.params import PackedParams
from secagg.packed.setup import build_round

__all__ = ["PackedParams", "PackedKeyHolder", "PackedClient", "PackedAggregator", "PackedCodec", "build_round",
           "PackedContribution", "PackedAggregate", "PackedResult"]
