"""Networked deployment: aggregator, key holder and clients as separate processes over gRPC with mutual TLS.

Thin adapters over secagg's sans-I/O roles: :mod:`.coordinator` is the aggregator's round engine (cohorts,
routing, stage deadlines, atomic checkpoints), :mod:`.aggregator` and :mod:`.keyholder` its gRPC services,
:mod:`.client` the client agent, :mod:`.certs` the CA and per-role certificates, :mod:`.wire` the 1 MiB chunked
framing and the error ↔ status mapping, :mod:`.cli` the ``secagg`` sub-commands.
"""

from training.transport.certs import Credentials, init_certs
from training.transport.checkpoint import ServerState
from training.transport.client import ClientAgent, SyntheticSource, UpdateSource
from training.transport.coordinator import Coordinator, RoundPolicy, RoundRecord

__all__ = ["Credentials", "init_certs", "ServerState", "ClientAgent", "SyntheticSource", "UpdateSource",
           "Coordinator", "RoundPolicy", "RoundRecord"]
