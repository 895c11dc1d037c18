"""Flower's own SecAgg+ with no runtime in between: ``SecAggPlusWorkflow`` drives ``secaggplus_mod`` ClientApps
through :class:`DirectGrid`, a Flower ``Grid`` that hands every message to its node's ClientApp in this thread.

Why a grid of our own: Flower's simulation runtime (Ray actors, a LinkState, pull loops with sleeps) and its
deployment runtime (SuperLink/SuperNodes over gRPC) add seconds of waiting and copying that are not SecAgg+.
This grid leaves exactly Flower's protocol work: the workflow's server side, and per client the mod, Flower's
quantization and masking, and the protobuf (de)serialisation of every message both ways, as a deployment
does (``flwr.common.serde``). Messages get uuid4 ids (cheaper than Flower's content hashes: this flatters
Flower). Each client call is timed with ``time.process_time`` (this process is single-threaded here); the
server's time is the workflow's CPU time less the clients'.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from uuid import uuid4

import numpy as np

__all__ = ["flower_secaggplus_round"]


def flower_secaggplus_round(updates: dict[int, np.ndarray], weights: dict[int, int], k: int, t: int) -> dict:
    """One Flower SecAgg+ round of ``len(updates)`` clients, graph degree ``k`` (``num_shares = k + 1``: Flower
    counts the share a client keeps) and threshold ``t``: per-client CPU seconds (sum over its messages), the
    server's CPU seconds, wall seconds, bytes per client (protobuf) and the weighted mean Flower returns."""
    from flwr.app import Context, Message, RecordDict
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp.grid import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.WARNING)  # its per-stage INFO lines
    ids = sorted(updates)
    node_of = {cid: 1000 + cid for cid in ids}  # Flower node ids (0 and 1 are reserved)
    client_cpu: dict[int, float] = defaultdict(float)
    up: dict[int, int] = defaultdict(int)
    down: dict[int, int] = defaultdict(int)

    class Fixed(NumPyClient):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, parameters, config):
            return [updates[self.cid]], weights[self.cid], {}

    app = ClientApp(client_fn=lambda ctx: Fixed(int(ctx.node_config["partition-id"])).to_client(),
                    mods=[secaggplus_mod])
    contexts = {node_of[c]: Context(run_id=1, node_id=node_of[c], node_config={"partition-id": c},
                                    state=RecordDict(), run_config={}) for c in ids}
    cid_of = {v: c for c, v in node_of.items()}

    class DirectGrid(Grid):
        """Every pushed message is serialised, delivered to its node's ClientApp, and the reply serialised back."""

        def __init__(self) -> None:
            self._run, self._replies = Run.create_empty(run_id=1), {}

        def set_run(self, run) -> None:
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return list(contexts)

        def push_messages(self, messages) -> Iterable[str]:
            out = []
            for msg in messages:
                meta = msg.metadata.__dict__
                meta["_message_id"], meta["_run_id"], meta["_src_node_id"] = str(uuid4()), 1, 1
                wire = message_to_proto(msg).SerializeToString()  # server side: counted in the server's time
                node = msg.metadata.dst_node_id
                c0 = time.process_time()
                proto = ProtoMessage()
                proto.ParseFromString(wire)
                reply = app(message_from_proto(proto), contexts[node])
                reply.metadata.__dict__["_message_id"] = str(uuid4())
                back = message_to_proto(reply).SerializeToString()
                client_cpu[cid_of[node]] += time.process_time() - c0
                down[cid_of[node]] += len(wire)
                up[cid_of[node]] += len(back)
                parsed = ProtoMessage()
                parsed.ParseFromString(back)
                self._replies[msg.metadata.message_id] = message_from_proto(parsed)
                out.append(msg.metadata.message_id)
            return out

        def pull_messages(self, message_ids) -> Iterable[Message]:
            return [self._replies.pop(m) for m in message_ids if m in self._replies]

        def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
            return self.pull_messages(self.push_messages(messages))

    seen: list[np.ndarray] = []
    n = len(ids)
    # a one-value model: the model broadcast is not SecAgg+ and our round has none either (flatters Flower)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                      initial_parameters=ndarrays_to_parameters([np.zeros(1, np.float32)]),
                      fit_metrics_aggregation_fn=lambda _m: {})
    inner = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):
        params, metrics = inner(server_round, results, failures)
        seen.append(parameters_to_ndarrays(params)[0])
        return params, metrics

    strategy.aggregate_fit = aggregate_fit  # type: ignore[method-assign]
    server_ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(server_ctx, config=ServerConfig(num_rounds=1), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=t))
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # what Flower's ServerApp runner sets
    c0, w0 = time.process_time(), time.perf_counter()
    workflow(DirectGrid(), legacy)
    total_cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if len(seen) != 1 or len(client_cpu) != n:
        raise RuntimeError(f"Flower's SecAgg+ round did not complete ({len(seen)} results, {len(client_cpu)} clients)")
    return {"client_cpu_s": dict(client_cpu), "server_cpu_s": total_cpu - sum(client_cpu.values()),
            "round_cpu_s": total_cpu, "wall_s": wall, "bytes_up": dict(up), "bytes_down": dict(down),
            "mean": seen[0]}
