"""Every test gets its own user state directory: a standalone client's or Flower SuperNode's default privacy
ledger (platformdirs' user_state_dir, under XDG_STATE_HOME) never touches the real one nor another test's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
