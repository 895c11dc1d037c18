"""Short end-to-end federated runs (real data, real model, real secure aggregation): validation loss decreases,
metrics and CLI outputs are complete, the TOML config is honoured."""

from __future__ import annotations

import json

import pytest

from training.config import RunConfig, load_config
from training.errors import ConfigError
from training.inprocess.simulation import Runner


def _tiny(tmp_path, **fed) -> RunConfig:
    cfg = RunConfig()
    cfg.data.plays = ["macbeth", "the-tempest", "twelfth-night"]
    cfg.data.vocab_size, cfg.data.block_size = 384, 32
    cfg.data.max_blocks_per_client, cfg.data.max_val_blocks = 48, 32
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.n_embd, cfg.model.n_layer = 32, 1
    cfg.train.rounds, cfg.train.local_steps, cfg.train.batch_size, cfg.train.lr = 3, 4, 8, 5e-3
    cfg.dp.enabled = False
    for k, v in fed.items():
        setattr(cfg.federation, k, v)
    return cfg


@pytest.mark.parametrize("scheme,aggregator", [("ckks", "fedavg"), ("masking", "loss-weighted"), ("packed", "gradient")])
def test_federated_run_decreases_validation_loss(tmp_path, scheme, aggregator):
    runner = Runner(_tiny(tmp_path, scheme=scheme, aggregator=aggregator))
    rows = runner.run()
    assert [r.round for r in rows] == [1, 2, 3]
    assert rows[-1].loss < runner.initial_loss - 0.3
    assert all(r.bytes_up > 0 and r.bytes_down >= 3 * 4 * runner.fed.global_vec.size for r in rows)
    assert rows[0].contributors == [0, 1, 2]


def test_async_run_uses_buffers_and_reports_staleness(tmp_path):
    cfg = _tiny(tmp_path, scheme="masking", aggregator="async")
    cfg.aggregator_options = {"buffer_size": 2}
    cfg.train.rounds = 4
    runner = Runner(cfg)
    rows = runner.run()
    assert all(len(r.contributors) == 2 for r in rows)
    assert any(max(r.staleness.values()) >= 1 for r in rows)  # the slow cloud arrives late
    assert rows[-1].loss < runner.initial_loss
    assert [r.sim_time for r in rows] == sorted(r.sim_time for r in rows)


def test_toml_config_round_trip_and_refusals(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text("""
[data]
plays = ["macbeth", "hamlet"]
partition = "iid"
[train]
rounds = 2
[federation]
clients = 2
scheme = "masking"
aggregator = "gradient"
[aggregator_options]
lr = 0.5
optimizer = "adam"
[dp]
enabled = false
[[platforms]]
name = "aws"
speed = 2.0
[[platforms]]
name = "gcp"
speed = 0.5
latency_ms = 80
""")
    cfg = load_config(good)
    assert cfg.data.plays == ["macbeth", "hamlet"] and cfg.federation.scheme == "masking"
    assert cfg.aggregator_options == {"lr": 0.5, "optimizer": "adam"}
    assert [p.name for p in cfg.platforms] == ["aws", "gcp"] and cfg.platforms[1].latency_ms == 80
    for bad in ("[train]\nepochs = 3\n", "[federation]\nscheme = \"rot13\"\n", "[nonsense]\n",
                "[federation]\nclients = 3\n[[platforms]]\nname = \"a\"\n", "[[platforms]]\nspeed = 1\n"):
        p = tmp_path / "bad.toml"
        p.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(p)


def test_cli_demo_writes_metrics_and_plots(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from training import cli

    tiny = _tiny(tmp_path, scheme="masking")
    tiny.train.rounds = 2
    asked = []
    monkeypatch.setattr(cli, "demo_config", lambda model: asked.append(model) or tiny)
    res = CliRunner().invoke(cli.app, ["demo", "--model", "tiny", "--out", str(tmp_path / "out"),
                                       "--scheme", "masking", "--rounds", "2", "--no-dp", "--prompt", "ROMEO."])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert {"round", "loss", "epsilon", "bytes_up", "bytes_down", "seconds"} <= set(r)
    assert (tmp_path / "out" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "epsilon.png").stat().st_size > 1000
    assert "round   2:" in res.output and "total up" in res.output and "privacy spent" in res.output
    assert asked == ["tiny"]
    assert "initial_loss" in rows[0] and "initial_loss" not in rows[1]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_name"] == "tiny" and config["trainable_parameters"] > 0
    assert config["base_parameters"] == config["trainable_parameters"]  # the tiny model trains in full
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()  # the trained global model is kept
    samples = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert samples["prompt"] == "ROMEO." and isinstance(samples["before"], str) and samples["after"]


def test_cli_demo_places_the_noise_under_the_secure_sum_and_prints_both_guarantees(tmp_path, monkeypatch):
    """`secagg demo` (distributed placement, its default): one SGD step a round, the gradient rule; it prints
    the central ε (against the server) and the per-client ε of one contribution seen alone, which must be
    larger (that contribution carries only σ/√n); a rule other than `gradient` is refused, not ignored."""
    from typer.testing import CliRunner

    from training import cli

    tiny = _tiny(tmp_path, scheme="ckks", update_clip=1.0)
    tiny.train.rounds, tiny.train.local_steps = 1, 2
    tiny.dp.enabled, tiny.dp.noise_multiplier, tiny.dp.max_grad_norm = True, 1.0, 1.0
    monkeypatch.setattr(cli, "demo_config", lambda model: tiny)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.app, ["demo", "--out", str(out), "--prompt", ""])
    assert res.exit_code == 0, res.output
    assert (tiny.train.rounds, tiny.train.local_steps, tiny.federation.aggregator) == (2, 1, "gradient")
    assert "noise under the secure sum" in res.output and "if the secure sum were broken" in res.output
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for c, central in last["epsilon_per_client"].items():
        assert last["exposed_epsilon_per_client"][c] > 1.3 * central > 0
    assert "against server + 0 colluding clients" in last["epsilon_relation"]
    bad = CliRunner().invoke(cli.app, ["demo", "--out", str(tmp_path / "o2"), "--aggregator", "fedavg"])
    assert bad.exit_code != 0 and "--placement local" in bad.output
