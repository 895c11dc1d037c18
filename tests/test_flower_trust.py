"""What a malicious Flower ServerApp gains by choosing the fields of what it relays: nothing but a named refusal.

The node handlers (:class:`training.flower.client.NodeProcess`) are called directly, without a Flower runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from secagg.errors import AuthenticationError, MalformedMessageError, StageError  # noqa: E402
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound  # noqa: E402
from training.engine import RoundEngine, RoundPolicy, ServerState, Task  # noqa: E402
from training.engine.keyholder import StaleKeyError  # noqa: E402
from training.flower.client import NodeProcess  # noqa: E402
from training.flower.protocol import Trust, unpack  # noqa: E402
from training.services.workloads import SyntheticWorkload  # noqa: E402

DIM, N = 8, 3


def _node(scheme: str, options: dict, trust: Trust) -> NodeProcess:
    settings = {"run": "t", "scheme": scheme, "scheme_options": options, "clients": N}
    return NodeProcess(settings, trust, lambda: SyntheticWorkload(DIM, N, seed=1, clip=1.0))


def _tasks(node: NodeProcess, context=None, identities=None) -> dict[int, Task]:
    eng = RoundEngine(node.scheme, ServerState(np.zeros(DIM)), RoundPolicy(1, N, N), context=context)
    for c in range(N):
        eng.checkin(c, 1.0 + c % 3, 0.0, identity=None if identities is None else identities(c))
    eng.tick(0.0)
    return {e.cid: e for e in eng.drain() if isinstance(e, Task)}


def _body(task: Task) -> bytes:
    return np.ascontiguousarray(task.model, dtype="<f4").tobytes()


def test_a_public_context_not_signed_by_the_trusted_key_holder_is_refused():
    trust = Trust.generate(N)
    kh = _node("ckks", {"params": "default"}, trust)
    op, head, context, _ = unpack(kh.keyholder("context", {}, b"", []))
    client = _node("ckks", {"params": "default"}, Trust(trust.keyholder_public, trust.roster,
                                                        client_private=trust.client_private))
    forged = _node("ckks", {"params": "default"}, Trust.generate(N))  # a key holder the aggregator runs itself
    _, fhead, fcontext, _ = unpack(forged.keyholder("context", {}, b"", []))
    with pytest.raises(AuthenticationError):
        client.client(0, "setup", fhead, fcontext, [])
    with pytest.raises(AuthenticationError):  # the genuine signature on another bundle
        client.client(0, "setup", head, fcontext, [])
    assert 0 not in client.bundles
    _, _, ask, _ = unpack(client.client(0, "setup", head, context, []))
    # the tag-key request travels through the server to the key holder and its grant back, sealed to client 0
    _, answer, _, grants = unpack(kh.keyholder("grant", {"senders": [AGGREGATOR]}, b"", [Outbound(KEYHOLDER, ask)]))
    assert answer["refused"] == [] and [g.to for g in grants] == [0]
    with pytest.raises(StageError):  # client 1 asked for nothing
        client.client(1, "tagkey", {}, grants[0].payload, [])
    client.client(0, "tagkey", {}, grants[0].payload, [])
    assert client.sessions[0].tag_key is not None
    # a task made under the forged key: the client never encrypts to it
    tasks = _tasks(client, context=fcontext)
    with pytest.raises(StaleKeyError):
        client.client(0, "task", tasks[0].header, _body(tasks[0]), [])
    tasks = _tasks(client, context=context)  # the genuine round goes through, pad seed signed for the key holder
    _, _, _, outs = unpack(client.client(0, "task", tasks[0].header, _body(tasks[0]), []))
    assert sorted(o.to for o in outs) == [KEYHOLDER, AGGREGATOR]
    seed = next(o for o in outs if o.to == KEYHOLDER)
    _, ok, _, _ = unpack(kh.keyholder("seed", {"senders": [0]}, b"", [seed]))
    assert ok["refused"] == []
    _, bad, _, _ = unpack(kh.keyholder("seed", {"senders": [1]}, b"", [seed]))  # relabelled as client 1's
    assert len(bad["refused"]) == 1


def test_a_masking_task_naming_untrusted_signing_identities_is_refused():
    trust = Trust.generate(N)
    node = _node("masking", {"clip": 1.0, "signed": True}, trust)
    other = Trust.generate(N)  # keys the aggregator made up for the cohort
    tasks = _tasks(node, identities=other.identity)
    with pytest.raises(AuthenticationError):
        node.client(0, "task", tasks[0].header, _body(tasks[0]), [])
    tasks = _tasks(node, identities=trust.identity)
    _, _, _, outs = unpack(node.client(0, "task", tasks[0].header, _body(tasks[0]), []))
    assert [o.to for o in outs] == [AGGREGATOR]


def test_mail_for_a_round_the_client_is_not_in_and_malformed_tasks_are_refused():
    trust = Trust.generate(N)
    node = _node("masking", {"clip": 1.0, "signed": False}, trust)
    with pytest.raises(StageError):
        node.client(0, "mail", {"round_id": 7}, b"", [])
    tasks = _tasks(node)
    header = dict(tasks[0].header, round_id=99)  # relabelled round
    with pytest.raises(MalformedMessageError):
        node.client(0, "task", header, _body(tasks[0]), [])
    with pytest.raises(MalformedMessageError):  # a model of the wrong size
        node.client(0, "task", tasks[0].header, _body(tasks[0])[:-4], [])
    with pytest.raises(MalformedMessageError):
        node.client(0, "no-such-op", {}, b"", [])


def _discovering(nodes: dict, trust: Trust, scheme: str = "ckks"):
    """A FlowerAggregator discovering ``nodes`` (node id -> the head it answers hello with, given the nonce)."""
    from flwr.app import Message
    from flwr.supercore.task_identity import TaskIdentity

    from training.flower.protocol import pack
    from training.flower.server import FlowerAggregator

    class Grid:
        def get_node_ids(self):
            return list(nodes)

        replies: dict = {}

        def push_messages(self, messages):
            for i, m in enumerate(messages):
                m.metadata.__dict__["_message_id"] = f"m{len(self.replies)}-{i}"  # what a SuperLink's push does
                _, head, _, _ = unpack(m.content)
                self.replies[m.metadata.message_id] = Message(
                    pack("hello", nodes[m.metadata.dst_node_id](bytes.fromhex(head["nonce"]))), reply_to=m)
            return list(self.replies)

        def pull_messages(self, message_ids):
            return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, 1, 1  # what flwr-serverapp sets
    settings = {"run": "r", "scheme": scheme, "scheme_options": {}, "clients": N}
    agg = FlowerAggregator(Grid(), settings, Trust(trust.keyholder_public, trust.roster),
                           SyntheticWorkload(DIM, N, seed=1, clip=1.0), timeout=1)
    agg._discover()
    return agg


def _claim(trust: Trust, party: int, node: int, run: str = "r", nonce: bytes | None = None):
    role = {"role": "keyholder"} if party == KEYHOLDER else {"role": "client", "client_id": party}
    return lambda n: role | {"signature": trust.sign_hello(party, run, nonce or n, node).hex()}


def test_nodes_are_mapped_to_parties_only_by_a_signed_fresh_hello():
    trust = Trust.generate(N)
    honest = {100 + c: _claim(trust, c, 100 + c) for c in range(N)} | {200: _claim(trust, KEYHOLDER, 200)}
    agg = _discovering(honest, trust)
    assert agg.nodes == {0: 100, 1: 101, 2: 102} and agg.keyholder == 200
    # a node that relays client 1's signed hello (made for node 101) and answers first is not client 1
    agg = _discovering({109: _claim(trust, 1, 101)} | honest, trust)
    assert agg.nodes[1] == 101 and 109 not in agg.nodes.values()
    # the same for a rogue key holder, a replayed hello (an earlier nonce) and another run's hello
    agg = _discovering({300: lambda n: {"role": "keyholder", "signature": trust.sign_hello(KEYHOLDER, "r", n,
                                                                                          200).hex()}} | honest, trust)
    assert agg.keyholder == 200
    for forged in (_claim(trust, 1, 101, nonce=bytes(32)), _claim(trust, 1, 101, run="another run"),
                   _claim(Trust.generate(N), 1, 101),  # a key the roster does not certify
                   lambda n: {"role": "client", "client_id": 1, "signature": "ab" * 10_000_000},
                   lambda n: {"role": "client", "client_id": 1, "signature": 7}):
        with pytest.raises(AuthenticationError, match=r"clients \[0, 2\]"):
            _discovering(honest | {101: forged}, trust)


@pytest.mark.parametrize("value", ["zz" * 32, "ab" * 31, "ab" * 33, "a" * 10_000_000, 7])
def test_a_malformed_hello_nonce_or_bundle_signature_is_a_named_error(value):
    trust = Trust.generate(N)
    node = _node("ckks", {"params": "default"}, trust)
    for party in (0, KEYHOLDER):
        with pytest.raises(MalformedMessageError):
            (node.keyholder if party == KEYHOLDER else lambda *a: node.client(0, *a))("hello", {"nonce": value},
                                                                                      b"", [])
    with pytest.raises(MalformedMessageError):
        node.client(0, "setup", {"signature": value}, b"bundle", [])
    assert 0 not in node.bundles
    good = unpack(node.client(0, "hello", {"nonce": "ab" * 32}, b"", []))[1]
    trust.verify_hello(0, "t", bytes.fromhex("ab" * 32), 0, bytes.fromhex(good["signature"]))
