"""CKKS secure aggregation (TenSEAL): clients encrypt under a public key, an untrusted aggregator sums the
ciphertexts, and a separate key holder decrypts only that sum (never an individual contribution).

    from secagg.ckks import KeyHolder, CKKSClient, CKKSAggregator
    kh = KeyHolder()                       # the only party with a secret key
    ctx = kh.public_context()              # bytes, no secret key: give to clients and the aggregator

Trust model: the aggregator may deviate arbitrarily, the key holder releases only verified sums (see
:mod:`secagg.he_round`); the two must not collude (see :mod:`secagg.ckks.keyholder`).
"""

from secagg.ckks.aggregator import CKKSAggregator
from secagg.ckks.client import CKKSClient
from secagg.ckks.keyholder import KeyHolder
from secagg.ckks.messages import CKKSAggregate, CKKSContribution, CKKSResult
from secagg.ckks.params import PARAMS, CKKSParams
from secagg.ckks.setup import build_round

__all__ = ["KeyHolder", "CKKSClient", "CKKSAggregator", "CKKSParams", "PARAMS", "build_round",
           "CKKSContribution", "CKKSAggregate", "CKKSResult"]
