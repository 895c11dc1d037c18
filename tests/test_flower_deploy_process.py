"""The committed Flower app (``examples/flower``) deployed as a user deploys it: ``flower-superlink`` with TLS on
127.0.0.1 (the CA and server certificate from ``secagg certs init``), three client SuperNodes and a key-holder
SuperNode (``--node-config "role='keyholder'"``), each with only its own signing key, then ``flwr run`` with a
connection in a private ``FLWR_HOME``. No runtime dependency installation (nothing reaches the index). CKKS,
2 rounds; the aggregate equals the in-process engine's. About 2.3 min here: every message is a fresh
``flwr-clientapp`` process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from tests.test_engine_parity import DIM, N, _in_process  # noqa: E402
from training.engine.rules import FedAvg  # noqa: E402
from training.services.pki.certs import init_certs  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-process")]  # processes, no Ray

APP = Path(__file__).resolve().parents[1] / "examples" / "flower"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, seconds: float, procs) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a Flower process exited early")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {port} after {seconds} s")


def _node_dir(certs: Path, root: Path, role: str | None) -> Path:
    """What one node holds: the CA, every public signing certificate, and its own keys only."""
    d = root / (role or "server")
    d.mkdir(parents=True)
    for f in [certs / "ca.pem", *certs.glob("*.sign.pem")]:
        shutil.copy(f, d)
    if role is not None:
        for suffix in (".sign.key", ".pem", ".key"):
            shutil.copy(certs / f"{role}{suffix}", d)
    return d


def test_flwr_run_against_superlink_and_supernodes_with_tls(tmp_path):
    certs = init_certs(tmp_path / "certs", N)
    nodes = tmp_path / "nodes"
    home = tmp_path / "flwr-home"
    home.mkdir()
    link = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local-tls"\n\n[superlink.local-tls]\n'
                                      f'address = "127.0.0.1:{link}"\nroot-certificates = "{certs / "ca.pem"}"\n')
    env = os.environ | {"FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        out = open(logs / f"{name}.log", "wb")
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      cwd=tmp_path, start_new_session=True))

    try:
        start("superlink", "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.pem"), "--ssl-certfile",
              str(certs / "aggregator.pem"), "--ssl-keyfile", str(certs / "aggregator.key"), "--port", str(link),
              "--disable-runtime-dependency-installation")
        _wait_port(link, 60, procs)
        for role in [*(f"client-{c}" for c in range(N)), "keyholder"]:
            d = _node_dir(certs, nodes, role)
            conf = "role='keyholder'" if role == "keyholder" else f"client-id={role.split('-')[1]}"
            start(role, "flower-supernode", "--root-certificates", str(certs / "ca.pem"), "--superlink",
                  f"127.0.0.1:{link}", "--port", str(_free_port()), "--node-config",
                  f"{conf} scheme='ckks' clients={N} certs='{d}'")
        out = tmp_path / "out"
        run_config = (f"scheme='ckks' dim={DIM} seed=7 rounding='deterministic' rounds=2 clients={N} "
                      f"certs='{_node_dir(certs, nodes, None)}' out='{out}' timeout=60.0")
        res = subprocess.run([str(BIN / "flwr"), "run", str(APP), "local-tls", "--run-config", run_config,
                              "--stream"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert (out / "model.npy").exists(), res.stdout[-3000:] + res.stderr[-2000:]
        rows = (out / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 2 and all('"status": "done"' in r for r in rows)
        local = _in_process("ckks", FedAvg(), [{c: r for c in range(N)} for r in range(2)])
        np.testing.assert_allclose(np.load(out / "model.npy"), local, atol=1e-5, rtol=0)
        assert not list(home.glob("**/*.sign.key"))  # no node's secret travelled with the app
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
