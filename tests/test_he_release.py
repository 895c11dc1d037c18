"""Signed releases (issue 25.2, the key holder's half): every sum the key holder releases carries its Ed25519
signature under the release key in the public bundle, so a client can tell the key holder's sum from anything the
aggregator makes up: altered values, another round's release, another cohort, or a release it re-signed itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secagg.errors import AuthenticationError, ConfigurationError
from secagg.hazmat import sign as ed25519
from secagg.he_release import sign_release, verify_release
from secagg.he_round import bundle, release_key, unbundle
from secagg.messages import decode
from secagg.roles import AGGREGATOR
from tests.test_he_malicious import ROUNDS, XS, Scheme, _packed, _residues


@pytest.fixture(scope="module", params=["ckks", "packed"])
def released(request):
    s = Scheme(request.param)
    rid = next(ROUNDS)
    cs = [s.contribute(i, rid, XS[i]) for i in range(3)]
    (out,) = s.kh.receive(AGGREGATOR, s.aggregate(rid, (0, 1, 2), _packed(s, _residues(s, cs))).to_bytes())
    return s, rid, out.payload


def test_the_key_holders_release_verifies_against_its_bundle(released) -> None:
    s, rid, payload = released
    msg = verify_release(s.ctx, payload, round_id=rid)
    assert msg.round_id == rid and msg.contributors == (0, 1, 2)


def _values(msg):
    return "values" if hasattr(msg, "values") else "slots"


def test_a_nudged_or_relabelled_release_is_refused(released) -> None:
    s, rid, payload = released
    msg = decode(payload)
    name = _values(msg)
    nudged = getattr(msg, name).copy()
    nudged[0] = nudged[0] + (1e-3 if name == "values" else 1)
    for forged in (dataclasses.replace(msg, **{name: nudged}), dataclasses.replace(msg, round_id=rid + 1),
                   dataclasses.replace(msg, contributors=(0, 1))):
        with pytest.raises(AuthenticationError):
            verify_release(s.ctx, forged.to_bytes())
    with pytest.raises(AuthenticationError):  # the genuine release, offered for another round
        verify_release(s.ctx, payload, round_id=rid + 1)


def test_a_release_the_aggregator_re_signed_or_another_key_holder_signed_is_refused(released) -> None:
    s, rid, payload = released
    msg = decode(payload)
    own = ed25519.generate()
    resigned = sign_release(own, b"\0" * 32, dataclasses.replace(msg, signature=b""))
    with pytest.raises(AuthenticationError):
        verify_release(s.ctx, resigned.to_bytes())
    other = Scheme(s.name)
    with pytest.raises(AuthenticationError):  # a genuine release of this key holder, checked against another
        verify_release(other.ctx, payload)
    with pytest.raises(AuthenticationError):
        verify_release(s.ctx, dataclasses.replace(msg, signature=b"").to_bytes())


def test_a_bundle_without_a_release_key_verifies_nothing(released) -> None:
    s, _, payload = released
    context, seal = unbundle(s.ctx)
    bare = bundle(context, seal)
    with pytest.raises(AuthenticationError):
        release_key(bare)
    with pytest.raises(AuthenticationError):
        verify_release(bare, payload)
    with pytest.raises(ConfigurationError):
        bundle(context, seal, b"short")
    assert np.frombuffer(release_key(s.ctx), np.uint8).any()


def test_a_fresh_process_verifies_a_release_without_having_run_a_round(released, tmp_path) -> None:
    """A Flower ClientApp is a fresh interpreter per message: verifying must not depend on what it imported before
    (the result types were unregistered there, so every honest model was refused)."""
    import subprocess
    import sys

    s, rid, payload = released
    (tmp_path / "ctx").write_bytes(s.ctx)
    (tmp_path / "payload").write_bytes(payload)
    code = ("import sys, pathlib; from secagg.he_release import verify_release; d = pathlib.Path(sys.argv[1]); "
            f"print(verify_release((d / 'ctx').read_bytes(), (d / 'payload').read_bytes(), round_id={rid}).round_id)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(rid)
