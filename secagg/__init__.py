"""secagg: secure aggregation for federated training.

Three schemes behind one sans-I/O interface (:mod:`secagg.roles`): CKKS and packed BFV homomorphic encryption
(:mod:`secagg.ckks`, :mod:`secagg.packed`: an untrusted aggregator sums padded ciphertexts, a separate key holder
releases only verified sums) and pairwise masking with Shamir-shared seeds (:mod:`secagg.masking`, Bonawitz et
al. 2017 / SecAgg+ of Bell et al. 2020, signed). Every protocol holds against an aggregator that deviates from it.
"""

from secagg import errors
from secagg.encoding import FixedPoint, flatten, unflatten, validate_update
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, Outbound, RoundSetup
from secagg.simulation import run_round, simulate

__all__ = [
    "simulate",
    "run_round",
    "errors",
    "AggregateResult",
    "Outbound",
    "RoundSetup",
    "AGGREGATOR",
    "KEYHOLDER",
    "FixedPoint",
    "flatten",
    "unflatten",
    "validate_update",
]
__version__ = "0.1.0"
