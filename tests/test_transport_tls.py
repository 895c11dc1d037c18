"""Mutual TLS: who may talk to the aggregator and the key holder, and who they are taken to be."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from secagg.errors import AuthenticationError
from secagg.roles import AGGREGATOR, KEYHOLDER
from training.services.aggregator import KeyHolderLink, serve_aggregator, status_of
from training.services.pki.certs import Credentials, init_certs
from training.services.checkpoint import ServerState
from training.services.coordinator import Coordinator, RoundPolicy
from training.services.rpc import Stub, open_channel
from training.engine.roles import make_scheme
from training.services.wire import TransportError, channel_options, pack, unpack

LIMIT = 1 << 24


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    init_certs(d, 3)
    other = tmp_path_factory.mktemp("other-pki")
    init_certs(other, 3)
    return d, other


@pytest.fixture(scope="module")
def aggregator(certs):
    d, _ = certs
    coord = Coordinator(make_scheme("masking", {"signed": False}), ServerState(np.zeros(4)), RoundPolicy(1, 3, 3))
    server, port = serve_aggregator(coord, Credentials.load(d, AGGREGATOR), "127.0.0.1", 0,
                                    max_message_bytes=LIMIT, workers=8, poll_seconds=0.2)
    try:
        yield f"127.0.0.1:{port}", coord
    finally:
        server.stop(0).wait()


def _checkin(channel: grpc.Channel, claim: int | None = None) -> dict:
    header = {"weight": 1.0} if claim is None else {"weight": 1.0, "client_id": claim}
    return unpack(Stub(channel, "secagg.Aggregator", LIMIT).unary_stream("Checkin", pack(header), 5.0))[0]


def _raw_channel(address: str, creds: grpc.ChannelCredentials, role: str = "aggregator") -> grpc.Channel:
    return grpc.secure_channel(address, creds, options=channel_options(role))


def test_valid_client_certificate_is_accepted(certs, aggregator):
    address, coord = aggregator
    with open_channel(Credentials.load(certs[0], 1), address, AGGREGATOR) as ch:
        assert _checkin(ch) == {"type": "idle"}
        assert _checkin(ch, claim=1) == {"type": "idle"}  # repeating its own id is fine


def test_client_without_certificate_is_refused(certs, aggregator):
    address, coord = aggregator
    ca = Credentials.load(certs[0], 0).ca
    with _raw_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
        with pytest.raises(TransportError):
            _checkin(ch)


def test_certificate_from_another_ca_is_refused(certs, aggregator):
    address, _ = aggregator
    foreign = Credentials.load(certs[1], 0)
    own_ca = Credentials.load(certs[0], 0).ca
    creds = grpc.ssl_channel_credentials(root_certificates=own_ca, private_key=foreign.key,
                                         certificate_chain=foreign.cert)
    with _raw_channel(address, creds) as ch:
        with pytest.raises(TransportError):
            _checkin(ch)


def test_stolen_certificate_without_its_key_is_refused(certs, aggregator):
    address, _ = aggregator
    mine, victim = Credentials.load(certs[0], 0), Credentials.load(certs[0], 2)
    creds = grpc.ssl_channel_credentials(root_certificates=mine.ca, private_key=mine.key,
                                         certificate_chain=victim.cert)
    with _raw_channel(address, creds) as ch:
        with pytest.raises(TransportError):
            _checkin(ch)


def test_client_claiming_another_identity_is_refused_and_server_keeps_serving(certs, aggregator):
    address, coord = aggregator
    with open_channel(Credentials.load(certs[0], 0), address, AGGREGATOR) as ch:
        stub = Stub(ch, "secagg.Aggregator", LIMIT)
        before = status_of(stub)["rejections"].get("AuthenticationError", 0)
        with pytest.raises(AuthenticationError, match="certificate says client 0"):
            _checkin(ch, claim=2)
        with pytest.raises(AuthenticationError):
            stub.stream_unary("Send", pack({"client_id": 1, "round_id": 1}, b"x"), 5.0)
        # both refusals are counted; the claimed identities gained nothing (no one is waiting)
        assert status_of(stub)["rejections"]["AuthenticationError"] == before + 2
        assert not coord.waiting
        assert _checkin(ch) == {"type": "idle"}


def test_server_roles_cannot_act_as_clients(certs, aggregator):
    address, _ = aggregator
    with open_channel(Credentials.load(certs[0], KEYHOLDER), address, AGGREGATOR) as ch:
        with pytest.raises(AuthenticationError, match="only client certificates"):
            _checkin(ch)


def test_client_refuses_a_server_with_the_wrong_role(certs, aggregator):
    address, _ = aggregator
    # the aggregator's certificate does not name the key holder, so a "key holder" channel to it fails
    with open_channel(Credentials.load(certs[0], 0), address, KEYHOLDER) as ch:
        with pytest.raises(TransportError):
            _checkin(ch)


def test_keyholder_decrypts_only_for_the_aggregator(certs):
    from secagg.ckks import KeyHolder

    from training.services.keyholder import serve_keyholder

    d, _ = certs
    server, port = serve_keyholder(KeyHolder(), Credentials.load(d, KEYHOLDER), "127.0.0.1", 0,
                                   max_message_bytes=LIMIT)
    address = f"127.0.0.1:{port}"
    try:
        with open_channel(Credentials.load(d, 0), address, KEYHOLDER) as ch:
            stub = Stub(ch, "secagg.KeyHolder", LIMIT)
            ctx = unpack(stub.unary_stream("Context", pack({}), 30.0))[1]  # public context: any role
            assert len(ctx) > 1000
            with pytest.raises(AuthenticationError, match="only the aggregator"):
                stub.stream_stream("Finalize", pack({"round_id": 1}, b"\x00" * 64), 30.0)
        link = KeyHolderLink(Credentials.load(d, AGGREGATOR), address, LIMIT)
        try:
            assert link.context() == ctx
        finally:
            link.close()
    finally:
        server.stop(0).wait()


def test_large_messages_stream_in_chunks_and_the_size_limit_holds(certs, aggregator):
    from secagg.errors import WrongRoundError

    from training.services.wire import OversizeMessageError

    address, coord = aggregator
    with open_channel(Credentials.load(certs[0], 0), address, AGGREGATOR) as ch:
        stub = Stub(ch, "secagg.Aggregator", LIMIT)
        # 9 MiB (> the 4 MB gRPC default) arrives whole: the refusal is about the round, read from the header
        with pytest.raises(WrongRoundError):
            stub.stream_unary("Send", pack({"round_id": 99}, b"\x01" * (9 << 20)), 30.0)
        with pytest.raises(OversizeMessageError):
            stub.stream_unary("Send", pack({"round_id": 99}, b"\x01" * (LIMIT + 1)), 30.0)
        # a single gRPC message above one chunk is refused by gRPC itself (no raised cap to rely on)
        with pytest.raises(grpc.RpcError) as info:
            ch.stream_unary("/secagg.Aggregator/Send")(iter([b"\x00" * (2 << 20)]), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _checkin(ch) == {"type": "idle"}
