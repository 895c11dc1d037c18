"""Networked deployment: aggregator, key holder and clients as separate processes over gRPC with mutual TLS.

Thin adapters over secagg's sans-I/O roles: :mod:`.coordinator` is the aggregator's round engine (cohorts,
routing, stage deadlines, atomic checkpoints of model, round counter, privacy ledgers and strategy state;
:mod:`.rounds` its bookkeeping), :mod:`.step` the aggregation strategy's two halves and the public round terms
they share, :mod:`.aggregator` and :mod:`.keyholder` its gRPC services, :mod:`.client` the client agent,
:mod:`.certs` the CA, per-role TLS certificates and the clients' Ed25519 signing identities, :mod:`.schemes` the
per-round parameters of each scheme (masking, CKKS, packed BFV), :mod:`.wire` the 1 MiB chunked framing and the
error ↔ status mapping, :mod:`.node`/:mod:`.launcher` one process per role and ``secagg up``, :mod:`.cli` the
``secagg`` sub-commands (mounted with :func:`.cli.mount`), :mod:`.inproc` a whole deployment on threads of one
process (tests, benchmarks), :mod:`.trainer`/:mod:`.local_workload` what a deployment trains.
"""

from training.transport.certs import Credentials, init_certs
from training.transport.checkpoint import ServerState
from training.transport.client import ClientAgent, SyntheticSource, UpdateSource
from training.transport.coordinator import Coordinator, RoundPolicy, RoundRecord

__all__ = ["Credentials", "init_certs", "ServerState", "ClientAgent", "SyntheticSource", "UpdateSource",
           "Coordinator", "RoundPolicy", "RoundRecord"]
