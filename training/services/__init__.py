"""Networked deployment: aggregator, key holder and clients as separate processes over gRPC with mutual TLS.

A thin driver of the round engine (:mod:`training.engine`): :mod:`.coordinator` turns RPCs into engine events and
its effects into mailboxes and atomic checkpoints (:mod:`.checkpoint`); :mod:`.aggregator` and :mod:`.keyholder`
are the gRPC services, :mod:`.client` the client agent, :mod:`.pki.certs` the CA, per-role TLS certificates and
the clients' Ed25519 signing identities, :mod:`.pki.peers` the clients' cache of verified peer certificates, :mod:`.wire`
the 1 MiB chunked framing and the error ↔ status mapping, :mod:`.node`/:mod:`.launcher` one process per role and
``secagg up``, :mod:`.cli` the ``secagg`` sub-commands (mounted with :func:`.cli.mount`), :mod:`.loopback` a whole
deployment on threads of one process (tests, benchmarks). What a deployment trains is :mod:`training.services.workloads`.
"""

from training.engine.rounds import RoundPolicy, RoundRecord
from training.engine.state import ServerState
from training.services.pki.certs import Credentials, init_certs
from training.services.client import ClientAgent
from training.services.coordinator import Coordinator

__all__ = ["Credentials", "init_certs", "ServerState", "ClientAgent", "Coordinator", "RoundPolicy", "RoundRecord"]
