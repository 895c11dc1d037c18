"""Every code block in README.md is run here: shell commands, Python examples, and the printed table."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", README, flags=re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def test_readme_is_short_and_every_block_is_covered_here():
    assert README.count("\n") <= 200
    assert sorted({kind for kind, _ in BLOCKS}) == ["bash", "python", "text"]
    assert (len(_blocks("bash")), len(_blocks("python")), len(_blocks("text"))) == (2, 2, 1)


def test_the_two_make_commands_run_what_readme_says():
    commands = [ln.split("#")[0].strip() for ln in _blocks("bash")[0].splitlines()]
    assert commands == ["make demo", "make test"]
    demo = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    test = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "-m training.cli demo --out runs/demo" in demo
    assert re.search(r"-m pytest -q -n 2 .*tests$", test, flags=re.M)
    # what `make demo` runs exists and parses its options (the run itself: tests/test_training_e2e.py)
    out = subprocess.run([sys.executable, "-m", "training.cli", "demo", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--model" in out.stdout


def test_the_example_command_runs():
    (line,) = [ln for ln in _blocks("bash")[1].splitlines() if ln.strip()]
    argv = shlex.split(line)
    assert argv[0] == ".venv/bin/python"
    out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"round 1: validation loss \d+\.\d+", out.stdout), out.stdout


def test_the_wrapped_loop_runs_two_secure_rounds():
    import torch

    from training.workload.trainer import ModelSpec, build_model

    model = build_model(ModelSpec(vocab_size=64, block_size=16, n_embd=16))
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 64, (32, 16), generator=gen) for _ in range(3)]
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    scope = {"model": model, "data": data, "rounds": 2}
    exec(compile(_blocks("python")[0], "README.md", "exec"), scope)
    after = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert len(scope["fed"].reports) == 2 and not torch.equal(before, after)


def test_the_one_round_example_gives_the_weighted_mean_it_promises():
    scope: dict = {}
    exec(compile(_blocks("python")[1], "README.md", "exec"), scope)
    xs, w = scope["updates"][:4], np.array([1, 2, 3, 4])
    assert np.max(np.abs(scope["mean"] - np.average(xs, axis=0, weights=w))) < 1e-4


def test_the_printed_table_is_what_the_demo_formats():
    """README's table is a real `make demo` run's metrics.jsonl, formatted by the demo's own code."""
    from training.inprocess.report import final_table

    relation = "replace-one record of the clients' union, against server + 0 colluding clients (secure sum of >= 3)"
    rows = [SimpleNamespace(round=r, loss=loss, perplexity=ppl, epsilon=e, bytes_up=9_585_900, bytes_down=down,
                            seconds=s, modelled_seconds=m, sim_time=39.38, epsilon_per_client=eps,
                            epsilon_relation=relation, exposed_epsilon_per_client=exposed)
            for r, loss, ppl, e, down, s, m in [(1, 5.0757, 160.08, 1.236, 1_782_057, 9.574, 6.627),
                                                 (2, 5.0343, 153.60, 1.503, 691_200, 7.145, 3.316),
                                                 (3, 4.9805, 145.55, 1.664, 691_200, 5.821, 3.6147),
                                                 (4, 4.9151, 136.33, 1.779, 691_200, 5.955, 4.869),
                                                 (5, 4.8386, 126.29, 1.869, 691_200, 8.527, 5.360),
                                                 (6, 4.7611, 116.88, 1.944, 691_200, 6.929, 3.402),
                                                 (7, 4.6869, 108.52, 2.007, 691_200, 8.063, 4.474),
                                                 (8, 4.6272, 102.23, 2.062, 691_200, 6.835, 3.798),
                                                 (9, 4.5860, 98.104, 2.111, 691_200, 7.099, 3.922)]
            for eps, exposed in [({0: 2.111, 1: 1.995, 2: 2.069}, {0: 9.459, 1: 9.231, 2: 9.375})]]
    assert final_table(rows, initial_loss=5.100944) == _blocks("text")[0].rstrip("\n")


@pytest.mark.parametrize("link", sorted(set(re.findall(r"\]\(([^)#]+)\)", README))))
def test_every_link_resolves(link):
    assert (ROOT / link).exists(), link


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")) + ["../CHANGELOG.md"])
def test_every_docs_page_links_only_to_what_exists(page):
    path = ROOT / "docs" / page
    links = set(re.findall(r"\]\(([^)#:]+)\)", path.read_text(encoding="utf-8")))
    assert [link for link in links if not (path.parent / link).exists()] == []


def test_the_performance_table_is_made_from_the_result_files():
    """README's table is exactly what benchmarks.readme_table makes of benchmarks/results/ (never typed)."""
    from benchmarks.readme_table import BEGIN, END, table

    text = (ROOT / "README.md").read_text()
    assert text.split(BEGIN, 1)[1].split(END, 1)[0].strip() == table().strip()
    assert "full_model.json" in table() and "| What | Goal | Measured | Verdict | From |" in table()
