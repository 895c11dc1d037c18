"""Command-line errors are one clear line and exit status 2 (issue 25.4); a traceback only with ``--verbose``.

``secagg up`` checks the run file before it starts a process; an error only a child can find (a corpus directory
that is not there) is reported with that child's own error line, not as a timeout on a port file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _secagg(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # no traceback, no locals
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("command", [["up", "--clients", "2", "--rounds", "1"], ["run"]])
def test_a_broken_run_file_is_one_line_with_exit_2(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\npartition = "nope"\n')
    line = _one_error_line(_secagg(*command, "--config", str(bad), *(["--out", str(tmp_path / "o")]
                                                                       if command[0] == "up" else [])))
    assert "ConfigError" in line and "partition" in line


def test_an_unreadable_run_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[train\nrounds = 2\n")
    line = _one_error_line(_secagg("up", "--config", str(bad), "--out", str(tmp_path / "o")))
    assert "cannot read config" in line


@pytest.mark.slow
def test_a_child_that_fails_is_named_with_its_own_error(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\ncorpus = "wikitext"\nwikitext_dir = "{tmp_path / "missing"}"\n')
    proc = _secagg("up", "--config", str(run), "--clients", "2", "--rounds", "1", "--scheme", "masking",
                   "--out", str(tmp_path / "o"), "--timeout", "120")
    line = _one_error_line(proc)
    assert "LaunchError" in line and "exited with status 2" in line and "error: DataError" in line
    assert "no port published" not in proc.stderr


def test_verbose_prints_the_traceback_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\npartition = "nope"\n')
    proc = _secagg("--verbose", "run", "--config", str(bad))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ConfigError")
    assert "Traceback (most recent call last)" in proc.stderr and "load_config" in proc.stderr
