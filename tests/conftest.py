"""Every test gets its own user state directory: a standalone client's or Flower SuperNode's default privacy
ledger (platformdirs' user_state_dir, under XDG_STATE_HOME) never touches the real one nor another test's.

BLAS runs on one thread (set before numpy loads; inherited by the xdist workers and every child process): in the
Flower simulation the ServerApp thread's ``np.dot`` was seen spinning forever in OpenBLAS's ``exec_blas`` beside
Ray's threads (the suite stalled in CI). Two cores and two workers leave nothing for BLAS threads anyway."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
