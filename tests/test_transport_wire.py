"""Transport building blocks: chunked framing, envelopes, error <-> status mapping, certificates, checkpoints,
configuration. No network."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings, strategies as st

from secagg import errors as E
from secagg.roles import AGGREGATOR, KEYHOLDER
from training.errors import ConfigError, TrainingError
from training.services import checkpoint, wire
from training.services.pki.certs import Credentials, init_certs, parse_identity, role_name
from training.deployment import load_transport_config


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 5))
def test_split_join_round_trip_and_chunk_bound(data, scale):
    # shrink the chunk so small examples span several chunks; restore afterwards
    old = wire.CHUNK
    wire.CHUNK = 97 * scale
    try:
        chunks = list(wire.split(data))
        assert all(1 <= len(c) <= wire.CHUNK for c in chunks) or data == b""
        assert b"".join(chunks) == data
        assert len(chunks) == max(1, -(-len(data) // wire.CHUNK))
    finally:
        wire.CHUNK = old


def test_real_chunks_are_one_mebibyte_and_join_enforces_limit():
    data = os.urandom((1 << 20) * 2 + 5)
    chunks = list(wire.split(data))
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, 5]
    assert wire.join(iter(chunks), len(data)) == data
    with pytest.raises(wire.OversizeMessageError):
        wire.join(iter(chunks), len(data) - 1)
    with pytest.raises(E.MalformedMessageError):
        wire.join(iter([b"x" * (wire.CHUNK + 1)]), 10 * wire.CHUNK)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**53, 2**53), st.text(max_size=20),
                                                      st.booleans(), st.none()), max_size=6),
       st.binary(max_size=200))
def test_envelope_round_trip(header, body):
    assert wire.unpack(wire.pack(header, body)) == (header, body)


def _well_formed(data: bytes):
    """Independent oracle: (header, body) if ``data`` is 'ST', a u32 length <= MAX_HEADER, that many bytes of a
    UTF-8 JSON object without NaN/Infinity constants, then the body; else None."""
    import json

    if len(data) < 6 or data[:2] != b"ST":
        return None
    n = int.from_bytes(data[2:6], "little")
    if n > wire.MAX_HEADER or 6 + n > len(data):
        return None

    def no_constants(_name):
        raise ValueError("constant")

    try:
        header = json.loads(data[6:6 + n].decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError):
        return None
    return (header, data[6 + n:]) if isinstance(header, dict) else None


def _mutated(header: dict, body: bytes, where: int, value: int) -> bytes:
    raw = bytearray(wire.pack(header, body))
    raw[where % len(raw)] = value
    return bytes(raw)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=120),
                 st.builds(_mutated, st.dictionaries(st.text(max_size=5), st.integers(-9, 9), max_size=3),
                           st.binary(max_size=20), st.integers(0, 200), st.integers(0, 255))))
def test_unpack_accepts_exactly_the_well_formed_envelopes(data):
    want = _well_formed(data)
    try:
        got = wire.unpack(data)
    except E.MalformedMessageError:
        assert want is None, data  # refused only what is not an envelope
        return
    assert got == want  # and what it accepts parses the same independently


def test_unpack_rejects_non_object_nan_and_bad_lengths():
    for bad in [b"ST" + (5).to_bytes(4, "little") + b"[1,2]", b"ST" + (3).to_bytes(4, "little") + b"NaN",
                b"ST" + (99).to_bytes(4, "little") + b"{}", b"XX" + (2).to_bytes(4, "little") + b"{}"]:
        with pytest.raises(E.MalformedMessageError):
            wire.unpack(bad)


def test_field_type_checks():
    h = {"a": 1, "b": True, "c": "x", "d": 1.5}
    assert wire.field(h, "a", int) == 1
    assert wire.field(h, "d", (int, float)) == 1.5
    assert wire.field(h, "zz", int, 7) == 7
    for key, kind in [("b", int), ("c", int), ("zz", int), ("b", (int, float))]:
        with pytest.raises(E.MalformedMessageError):
            wire.field(h, key, kind)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("cls", [getattr(E, n) for n in E.__all__] + [wire.OversizeMessageError])
def test_every_named_error_survives_the_wire(cls):
    exc = cls("something specific")
    code = wire.status_code(exc)
    assert code not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    with pytest.raises(cls) as info:
        wire.raise_rpc_error(_FakeRpcError(code, f"{cls.__name__}: something specific"))
    assert type(info.value) is cls and str(info.value) == "something specific"
    assert info.value.code == code


def test_unnamed_status_becomes_transport_error():
    with pytest.raises(wire.TransportError, match="UNAVAILABLE"):
        wire.raise_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect"))


@settings(max_examples=50, deadline=None)
@given(st.integers(-2, 999_999_999))
def test_role_names_round_trip(identity):
    assert parse_identity(role_name(identity)) == identity


@pytest.mark.parametrize("name", ["client-01", "client--1", "client-", "Aggregator", "client-1 ", "root"])
def test_foreign_names_are_not_identities(name):
    with pytest.raises(E.AuthenticationError):
        parse_identity(name)


def test_init_certs_names_every_role(tmp_path):
    init_certs(tmp_path, 2)
    for ident in (AGGREGATOR, KEYHOLDER, 0, 1):
        creds = Credentials.load(tmp_path, ident)
        assert creds.identity == ident
        cert = x509.load_pem_x509_certificate(creds.cert)
        ca = x509.load_pem_x509_certificate(creds.ca)
        cert.verify_directly_issued_by(ca)  # raises if not signed by the CA
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert role_name(ident) in sans.get_values_for_type(x509.DNSName)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == role_name(ident)
    assert oct(os.stat(tmp_path / "client-0.key").st_mode & 0o777) == "0o600"
    # a second init keeps the CA, so earlier certificates stay valid
    ca_before = (tmp_path / "ca.pem").read_bytes()
    init_certs(tmp_path, 3)
    assert (tmp_path / "ca.pem").read_bytes() == ca_before and (tmp_path / "client-2.pem").exists()


def test_checkpoint_round_trip_and_atomic_replace(tmp_path, monkeypatch):
    path = tmp_path / "agg.ckpt"
    assert checkpoint.load(path) is None
    rng = np.random.default_rng(1)
    s1 = checkpoint.ServerState(rng.normal(size=17), 3, 5, {"client-0": {"events": [[1.0, 0.1, 4]]}})
    checkpoint.save(path, s1)
    got = checkpoint.load(path)
    assert np.array_equal(got.model, s1.model) and (got.round, got.next_round_id, got.ledgers) == (3, 5, s1.ledgers)
    # a crash while writing the next checkpoint leaves the previous one intact
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        checkpoint.save(path, checkpoint.ServerState(np.zeros(17), 4, 6))
    monkeypatch.undo()
    assert checkpoint.load(path).round == 3


_proofs = st.lists(st.fixed_dictionaries({"round": st.integers(0, 99), "params": st.fixed_dictionaries(
    {"round_id": st.integers(0, 9)}), "release": st.one_of(st.none(), st.binary(max_size=64))}), max_size=4)


@settings(max_examples=40, deadline=None)
@given(_proofs, st.binary(max_size=32))
def test_proofs_travel_as_bytes_before_the_model_and_round_trip(proofs, model):
    """The releases go in the body (not the 1 MiB JSON header), in order, before the model; a checkpoint keeps
    them as binary entries."""
    from training.engine.codec import proofs_in, proofs_out

    heads, releases = proofs_out(proofs)
    assert all("release" not in h for h in heads) and len(wire.pack({"proofs": heads})) < 200 + 120 * len(heads)
    got, rest = proofs_in(heads, b"".join([*releases, model]))
    assert got == proofs and bytes(rest) == model


def test_malformed_proof_heads_are_refused():
    from training.engine.codec import proofs_in

    for heads, body in (("x", b""), ([1], b""), ([{"round": 0, "release_bytes": 5}], b"1234"),
                        ([{"round": 0, "release_bytes": -1}], b"1"), ([{"round": 0, "release_bytes": True}], b"1"),
                        ([{"round": 0, "release_bytes": 1.0}], b"1")):
        with pytest.raises(E.MalformedMessageError):
            proofs_in(heads, body)


def test_checkpoint_keeps_binary_proofs(tmp_path):
    path = tmp_path / "agg.ckpt"
    proofs = [{"round": 0, "params": {"a": 1}, "release": os.urandom(1000)},
              {"round": 1, "params": {}, "release": None},
              {"round": 2, "params": {"b": [1, 2]}, "release": b""}, {"round": 3, "params": {}, "release": b"xyz"}]
    checkpoint.save(path, checkpoint.ServerState(np.ones(3), 4, 5, proofs=proofs))
    assert checkpoint.load(path).proofs == proofs


def test_damaged_checkpoint_is_refused(tmp_path):
    path = tmp_path / "agg.ckpt"
    checkpoint.save(path, checkpoint.ServerState(np.ones(4), 1, 2))
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(TrainingError):
        checkpoint.load(path)
    checkpoint.save(path, checkpoint.ServerState(np.array([1.0, np.nan]), 1, 2))
    with pytest.raises(TrainingError):
        checkpoint.load(path)


def test_config_reads_run_file_sections_and_transport_table(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[federation]\nclients = 5\nscheme = "ckks"\n[train]\nrounds = 4\n'
                 '[transport]\nstage_timeout = 2.5\ndim = 64\n')
    cfg = load_transport_config(f, rounds=7)
    assert (cfg.clients, cfg.scheme, cfg.rounds, cfg.stage_timeout, cfg.dim) == (5, "ckks", 7, 2.5, 64)
    assert cfg.cohort_size == 5 and cfg.min_cohort == 4
    f.write_text("[transport]\nstage_timout = 1\n")
    with pytest.raises(ConfigError, match="stage_timout"):
        load_transport_config(f)
    with pytest.raises(ConfigError):
        load_transport_config(None, scheme="rot13")
    with pytest.raises(ConfigError):
        load_transport_config(None, clients=3, cohort=4)


def test_privacy_reports_are_checkpointed_before_the_reply_and_composed_once(tmp_path):
    import json as _json

    from privacy.accounting import epsilon
    from privacy.ledger import PrivacyLedger
    from training.services.coordinator import Coordinator, RoundPolicy
    from training.engine.roles import make_scheme

    path = tmp_path / "agg.ckpt"

    def coordinator(state):
        return Coordinator(make_scheme("masking"), state, RoundPolicy(1, 3, 3), checkpoint_path=str(path))

    def spent(cid: str) -> float:
        return PrivacyLedger.from_json(_json.dumps(checkpoint.load(path).ledgers[cid])).spent()

    events = [{"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 50}]
    coord = coordinator(checkpoint.ServerState(np.zeros(4)))
    assert wire.unpack(coord.checkin(0, 1.0, 0.0, privacy=events, report="report-one"))[0] == {"type": "idle"}
    once = epsilon(1.1, 0.01, 50, 1e-5, relation="replace-one")  # N_i is public
    assert spent("0") == pytest.approx(once, rel=1e-6)  # on disk before the reply
    # the aggregator dies before its reply arrives; the client re-sends the same report to the restarted one
    coord = coordinator(checkpoint.load(path))
    coord.checkin(0, 1.0, 0.0, privacy=events, report="report-one")
    assert spent("0") == pytest.approx(once, rel=1e-6)
    coord.checkin(0, 1.0, 0.0, privacy=events, report="report-two")  # a new report composes
    assert spent("0") == pytest.approx(epsilon(1.1, 0.01, 100, 1e-5, relation="replace-one"), rel=1e-6)
    assert checkpoint.load(path).reports == {"0": "report-two"}


def test_signing_identities_chain_to_the_ca_and_name_their_client(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from training.services.pki.certs import verify_signing_cert

    init_certs(tmp_path / "a", 2)
    init_certs(tmp_path / "b", 2)
    mine, other = Credentials.load(tmp_path / "a", 1), Credentials.load(tmp_path / "b", 1)
    assert Credentials.load(tmp_path / "a", AGGREGATOR).signer() is None  # servers sign nothing
    key = verify_signing_cert(mine.ca, mine.sign_cert, 1)
    assert isinstance(key, Ed25519PublicKey)
    signature = mine.signer().sign(b"survivors")
    key.verify(signature, b"survivors")  # the certified key is the signer's (raises otherwise)
    for ca, cert, ident in [(mine.ca, mine.sign_cert, 0),      # used for another client
                            (mine.ca, other.sign_cert, 1),     # issued by another CA
                            (mine.ca, mine.cert, 1),           # a TLS certificate, not a signing one
                            (mine.ca, b"not a certificate", 1)]:
        with pytest.raises(E.AuthenticationError):
            verify_signing_cert(ca, cert, ident)
    assert oct(os.stat(tmp_path / "a" / "client-1.sign.key").st_mode & 0o777) == "0o600"


def test_mounted_cli_reads_the_run_file(tmp_path):
    """`secagg certs init DIR` issues one certificate pair per client of the run file; `client run` takes the
    aggregator's address from the file's fixed port or refuses to guess it (exit 2)."""
    from typer.testing import CliRunner

    from training.errors import cli_app
    from training.services.cli import mount

    app = cli_app()  # what `secagg` mounts them on: named errors are one line and exit 2
    app.callback()(lambda: None)
    mount(app)
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == {"up", "certs", "keyholder", "aggregator", "client"}
    run = tmp_path / "run.toml"
    run.write_text('[federation]\nclients = 4\nscheme = "masking"\n[transport]\ntrainer = "synthetic"\n')
    result = CliRunner().invoke(app, ["certs", "init", str(tmp_path / "pki"), "--config", str(run)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pki").glob("client-*.sign.pem")) == [
        f"client-{i}.sign.pem" for i in range(4)]
    assert not (tmp_path / "pki" / "client-4.pem").exists()
    result = CliRunner().invoke(app, ["client", "run", "--id", "0", "--config", str(run)])
    assert result.exit_code == 2 and "aggregator_port" in result.output
