"""The ``secagg`` command: benchmark dispatch, the mounted deployment commands, and the example run file."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training import cli
from training.config import (DataConfig, DPConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig,
                             load_config)
from training.errors import ConfigError
from training.workload.platforms import PlatformProfile

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "run.toml"


def test_unknown_benchmark_is_a_named_error_listing_the_available_ones():
    with pytest.raises(ConfigError, match="unknown benchmark 'no_such_bench'.*ckks_micro"):
        cli.benchmark_module("no_such_bench")
    res = CliRunner().invoke(cli.app, ["bench", "no_such_bench"])
    assert res.exit_code == 2
    assert "unknown benchmark" in res.output and "dp_overhead" in res.output


def test_known_benchmark_is_dispatched_by_module_name_with_its_arguments(monkeypatch):
    assert {"ckks_micro", "dp_overhead"} <= set(cli.available_benchmarks())
    module = cli.benchmark_module("ckks_micro")
    assert module == "benchmarks.ckks_micro" and importlib.util.find_spec(module) is not None
    calls = []

    def fake_run_module(name, run_name, alter_sys):  # records instead of running the benchmark
        calls.append((name, run_name, list(sys.argv)))

    monkeypatch.setattr(cli.runpy, "run_module", fake_run_module)
    before = list(sys.argv)
    res = CliRunner().invoke(cli.app, ["bench", "ckks_micro", "--dim", "7", "--n", "2"])
    assert res.exit_code == 0, res.output
    assert calls == [("benchmarks.ckks_micro", "__main__", ["benchmarks.ckks_micro", "--dim", "7", "--n", "2"])]
    assert sys.argv == before


def test_deployment_commands_are_mounted(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli.app, ["--help"]).output
    for name in ("demo", "run", "bench", "up", "certs", "keyholder", "aggregator", "client"):
        assert name in help_text
    res = runner.invoke(cli.app, ["certs", "init", str(tmp_path / "certs"), "--clients", "2"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "certs").iterdir()}
    assert {"ca.pem", "client-0.pem", "client-1.pem"} <= names and "client-2.pem" not in names


def test_example_run_file_sets_every_option_and_loads():
    raw = tomllib.loads(EXAMPLE.read_text())
    for section, cls in {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                         "federation": FederationConfig, "dp": DPConfig}.items():
        # paths: a local model, the ledger directory (shown commented out: its default follows --out)
        missing = {f.name for f in dataclasses.fields(cls)} - set(raw[section]) - {"path", "ledger"}
        assert not missing, f"[{section}] lacks {sorted(missing)}"
    for p in raw["platforms"]:
        assert set(p) == {f.name for f in dataclasses.fields(PlatformProfile)}
    cfg = load_config(EXAMPLE)
    assert cfg.data.partition == "capacity" and cfg.federation.aggregator == "gradient"
    assert cfg.aggregator_options["optimizer"] == "adam" and cfg.federation.dropouts == {"3": [1]}
    assert [p.name for p in cfg.platforms] == ["aws-us-east", "gcp-europe", "on-prem"]
    from training.deployment import load_transport_config

    assert load_transport_config(EXAMPLE).trainer == "local"  # the same file drives `secagg up`


def test_run_command_follows_the_toml_file_and_keeps_rounds_before_a_budget_stop(tmp_path):
    import json

    from privacy.accounting import epsilon

    one, two = (epsilon(1.0, 8 / 48, k * 3, 1e-5, relation="replace-one") for k in (1, 2))
    run = tmp_path / "tiny.toml"
    run.write_text(f"""
[data]
plays = ["macbeth", "the-tempest", "twelfth-night"]
vocab_size = 384
block_size = 32
max_blocks_per_client = 48
max_val_blocks = 16
cache_dir = "{tmp_path / 'cache'}"
[model]
n_embd = 16
n_layer = 1
[train]
rounds = 3
local_steps = 3
batch_size = 8
[federation]
scheme = "masking"
aggregator = "gradient"
[aggregator_options]
optimizer = "adam"
lr = 0.01
[dp]
noise_multiplier = 1.0
epsilon_budget = {(one + two) / 2}
""")
    res = CliRunner().invoke(cli.app, ["run", "--config", str(run), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "scheme=masking, aggregator=gradient" in res.output
    assert "stopped early: privacy budget reached after 1 rounds" in res.output
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] and rows[0]["epsilon"] == pytest.approx(one, rel=0.02)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["aggregator_options"] == {"optimizer": "adam", "lr": 0.01}
    # the same --out again: each client's ledger in out/ledger continues; none can afford a round, none trains
    again = CliRunner().invoke(cli.app, ["run", "--config", str(run), "--out", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output
    assert "stopped early: privacy budget reached after 0 rounds" in again.output and "spent ε=" in again.output
    shown = CliRunner().invoke(cli.app, ["budget", "show", str(tmp_path / "out"), "--json"])
    ledgers = [json.loads(x) for x in shown.output.splitlines()]
    assert [r["client"] for r in ledgers] == ["client-0", "client-1", "client-2"]
    assert all(r["epsilon"] == pytest.approx(one, rel=0.02) and r["epsilon"] <= r["budget"] and r["releases"] == 1
               for r in ledgers)
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\naggregator = \"gradient\"\n[aggregator_options]\nmomentum = 0.9\n")
    res = CliRunner().invoke(cli.app, ["run", "--config", str(bad)])
    assert res.exit_code == 2 and "momentum" in res.output
    with pytest.raises(ConfigError, match="momentum"):
        load_config(bad)  # refused when the file is read, before anything is built


def test_the_smollm2_example_is_the_demo_run():
    from training.config import demo_config, distribute_noise

    assert load_config(EXAMPLE.with_name("smollm2_lora.toml")) == distribute_noise(demo_config("smollm2-135m"))
    cfg = demo_config("smollm2-135m")
    assert cfg.model.use_lora and cfg.dp.enabled and cfg.federation.scheme == "ckks"
    assert demo_config("tiny") == RunConfig()
    with pytest.raises(ConfigError, match="unknown demo model"):
        demo_config("gpt-17")
