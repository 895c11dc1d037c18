"""Runner features beyond the basic loop: capacity-aware re-balancing from observed step times (with and without
DP-SGD), modelled cross-cloud time from the real byte counts, configured dropouts, LoRA, and DP accounting."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.accounting import epsilon
from training.engine.rules import FedAvg
from training.config import RunConfig
from training.inprocess.federation import Federation
from training.workload.partition import largest_remainder
from training.workload.platforms import PlatformProfile
from training.inprocess.simulation import Runner
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate


def _tiny(tmp_path, **fed) -> RunConfig:
    cfg = RunConfig()
    cfg.data.plays = ["macbeth", "the-tempest", "twelfth-night"]
    cfg.data.vocab_size, cfg.data.block_size = 384, 32
    cfg.data.max_blocks_per_client, cfg.data.max_val_blocks = 48, 32
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.n_embd, cfg.model.n_layer = 32, 1
    cfg.train.rounds, cfg.train.local_steps, cfg.train.batch_size, cfg.train.lr = 2, 4, 8, 5e-3
    cfg.dp.enabled = False
    for k, v in fed.items():
        setattr(cfg.federation, k, v)
    return cfg


def _capacity(tmp_path, dp: bool) -> Runner:
    cfg = _tiny(tmp_path, scheme="masking")
    cfg.data.partition = "capacity"
    cfg.dp.enabled = dp
    cfg.platforms = [PlatformProfile("a", speed=1.0), PlatformProfile("b", speed=1.0), PlatformProfile("c", speed=2.0)]
    return Runner(cfg)


def _timed(runner: Runner, seconds_per_step: list[float]) -> dict[int, ClientUpdate]:
    dim = runner.fed.global_vec.size
    return {i: ClientUpdate(i, np.zeros(dim), 1, 1.0, seconds=seconds_per_step[i] * tr.local_steps,
                            steps=tr.local_steps) for i, tr in enumerate(runner.trainers)}


def test_capacity_partition_starts_from_declared_speeds_and_rebalances_from_step_times(tmp_path):
    runner = _capacity(tmp_path, dp=False)
    pool = len(runner.data.pool)
    sizes = [len(tr.blocks) for tr in runner.trainers]
    assert sizes == list(largest_remainder(pool, [1, 1, 2]))
    assert [tr.local_steps for tr in runner.trainers] == [3, 3, 6]  # E * n * share
    # cloud 0 ran 4x slower per step than its declared speed; the others as declared (speed 2 halves time)
    runner.rebalance(_timed(runner, [4.0, 1.0, 0.5]))
    # measured throughput (steps per modelled second) 0.25 : 1 : 4 ; smoothing 0.5 with the declared 1 : 1 : 2
    expect = 0.5 * np.array([1, 1, 2]) / 4 + 0.5 * np.array([0.25, 1, 4]) / 5.25
    assert np.allclose(runner.capacity.shares(), expect / expect.sum())
    new_sizes = [len(tr.blocks) for tr in runner.trainers]
    assert new_sizes == list(largest_remainder(pool, runner.capacity.shares()))
    assert new_sizes[0] < sizes[0] and sum(new_sizes) == pool
    rows = np.concatenate([tr.blocks for tr in runner.trainers])  # every pool block assigned exactly once
    assert sorted(map(bytes, rows)) == sorted(map(bytes, runner.data.pool))
    assert runner.trainers[0].local_steps < 3


def test_capacity_under_dp_keeps_each_clients_data_and_moves_only_local_steps(tmp_path):
    runner = _capacity(tmp_path, dp=True)
    before = [tr.blocks.copy() for tr in runner.trainers]
    runner.rebalance(_timed(runner, [4.0, 1.0, 0.5]))
    assert all(np.array_equal(b, tr.blocks) for b, tr in zip(before, runner.trainers))
    assert runner.trainers[0].local_steps < 3 and runner.trainers[2].local_steps >= 6


def test_modelled_round_time_comes_from_the_real_byte_counts():
    plat = [PlatformProfile("slow", speed=0.5, up_mbps=8, down_mbps=16, latency_ms=0),
            PlatformProfile("fast", speed=2.0, up_mbps=80, down_mbps=160, latency_ms=0)]
    rng = np.random.default_rng(0)
    fed = Federation(np.zeros(500), FedAvg(), SecureSum("masking", clip=1.0), [0, 1], platforms=plat,
                     update_clip=1.0)
    rep = fed.aggregate({i: ClientUpdate(i, rng.uniform(-0.01, 0.01, 500), 10, 1.0, seconds=3.0) for i in (0, 1)})
    for i, p in enumerate(plat):
        up, down = rep.bytes_up[i], rep.bytes_down[i]
        assert up > 4 * 500 and down >= 4 * 500  # masked vector and the float32 global model at least
        comm = 8 * up / (p.up_mbps * 1e6) + 8 * down / (p.down_mbps * 1e6)
        assert rep.comm_seconds[i] == pytest.approx(comm)
        assert rep.modelled_seconds[i] == pytest.approx(3.0 / p.speed + comm)


def test_configured_dropout_and_dp_accounting_in_a_run(tmp_path):
    cfg = _tiny(tmp_path, scheme="masking", dropouts={"2": [1]})
    cfg.dp.enabled, cfg.dp.noise_multiplier = True, 1.0
    runner = Runner(cfg)
    rows = runner.run()
    assert rows[0].contributors == [0, 1, 2] and rows[1].contributors == [0, 2] and rows[1].dropped == [1]
    n = min(len(tr.blocks) for tr in runner.trainers)
    # each client's ε is the PRV ε of its own history: σ = 1, q = batch/N, 2 rounds of local_steps steps, for
    # replace-one neighbours (its example count is public)
    for c, eps in rows[-1].epsilon_per_client.items():
        q = min(1.0, cfg.train.batch_size / len(runner.trainers[c].blocks))
        assert eps == pytest.approx(epsilon(1.0, q, 2 * cfg.train.local_steps, cfg.dp.delta,
                                            relation="replace-one"), rel=0.02)
        assert eps > epsilon(1.0, q, 2 * cfg.train.local_steps, cfg.dp.delta)  # add/remove would under-state it
    assert rows[-1].epsilon == max(rows[-1].epsilon_per_client.values()) and n > 0
    assert rows[-1].epsilon_relation == rows[-1].as_json()["epsilon_relation"] == "replace-one record"


def test_lora_run_sends_only_adapters(tmp_path):
    pytest.importorskip("peft")
    cfg = _tiny(tmp_path, scheme="ckks")
    cfg.model.lora, cfg.model.lora_rank = True, 4
    cfg.train.lr = 2e-2
    runner = Runner(cfg)
    full = sum(p.numel() for p in runner.eval_model.parameters())
    assert 0 < runner.fed.global_vec.size < full / 5
    rows = runner.run()
    assert rows[-1].loss < runner.initial_loss
    assert rows[-1].bytes_up < 3 * 20 * 4 * full  # CKKS of the adapters, not of the full model


def test_wikitext_from_a_local_directory_feeds_a_run(tmp_path):
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(60)]
    lines = []
    for a in range(12):  # articles in the raw layout: a top-level heading, sub-headings, paragraphs
        lines += [" \n", f" = Article {a} = \n", " \n"]
        for _ in range(6):
            lines += [" " + " ".join(rng.choice(words, 40)) + " . \n", " = = Section = = \n"]
    root = tmp_path / "wikitext-103-raw"
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"wiki.{split}.raw").write_text("".join(lines))
    cfg = _tiny(tmp_path, scheme="masking")
    cfg.data.corpus, cfg.data.wikitext_dir, cfg.data.partition = "wikitext", str(root), "iid"
    cfg.data.max_articles, cfg.train.rounds = 10, 1
    runner = Runner(cfg)
    assert len(runner.data.assignment[0]) > 1 and all(a.startswith("article-") for a in runner.data.assignment[0])
    names = {n for a in runner.data.assignment for n in a}
    assert names <= {f"article-{i:05d}" for i in range(10)}  # max_articles honoured
    rows = runner.run()
    assert rows[0].loss < runner.initial_loss


@pytest.mark.parametrize("aggregator", ["fedavg", "async"])
def test_privacy_budget_ends_the_run_early_keeping_completed_rounds(tmp_path, aggregator):
    cfg = _tiny(tmp_path, scheme="masking", aggregator=aggregator)
    cfg.dp.enabled, cfg.dp.noise_multiplier, cfg.train.rounds = True, 1.0, 4
    q = cfg.train.batch_size / cfg.data.max_blocks_per_client
    one, two = (epsilon(1.0, q, k * cfg.train.local_steps, cfg.dp.delta, relation="replace-one") for k in (1, 2))
    cfg.dp.epsilon_budget = (one + two) / 2  # every client can afford one round of local steps, not two
    runner = Runner(cfg)
    assert all(len(tr.blocks) == cfg.data.max_blocks_per_client for tr in runner.trainers)
    rows = runner.run()
    # sync: round 1, then round 2's first local run is refused; async: the first buffer's step completes, then
    # its clients cannot train again
    assert len(rows) == 1 and "privacy budget" in runner.stop_reason
    assert all(e is not None and e <= cfg.dp.epsilon_budget for e in rows[0].epsilon_per_client.values())


def test_a_local_model_directory_is_loaded_without_download(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "my-model"
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_positions=32, n_embd=24, n_layer=1, n_head=2)).save_pretrained(path)
    cfg = _tiny(tmp_path, scheme="masking")
    cfg.model.path, cfg.train.rounds = str(path), 1
    assert cfg.model.use_lora  # a pretrained model gets LoRA adapters unless told otherwise
    runner = Runner(cfg)
    assert runner.eval_model.config.n_embd == 24  # the saved architecture, not the [model] shape
    trainable = [n for n, p in runner.eval_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # only the adapters are aggregated: the frozen base never enters the shared vector
    assert runner.fed.global_vec.size == sum(p.numel() for p in runner.eval_model.parameters() if p.requires_grad)
    assert runner.fed.global_vec.size < sum(p.numel() for p in runner.eval_model.parameters()) // 5
    rows = runner.run()
    assert rows[0].loss < runner.initial_loss


def test_a_local_model_directory_can_be_trained_in_full(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "my-model"
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_positions=32, n_embd=24, n_layer=1, n_head=2)).save_pretrained(path)
    cfg = _tiny(tmp_path, scheme="masking")
    cfg.model.path, cfg.model.lora, cfg.train.rounds = str(path), False, 1
    runner = Runner(cfg)
    assert runner.fed.global_vec.size == sum(p.numel() for p in runner.eval_model.parameters())


def test_loss_weighted_runs_account_the_loss_releases_the_weights_come_from(tmp_path):
    """Under DP the loss that sets a client's weight is a DP release (a Poisson batch's clipped loss sum plus
    Gaussian noise, averaged over ``loss_batches``); the ε reported covers it, checked against dp_accounting
    composing the same releases directly."""
    import math

    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    cfg = _tiny(tmp_path, scheme="ckks", aggregator="loss-weighted")
    cfg.dp.enabled, cfg.dp.noise_multiplier, cfg.train.rounds, cfg.train.local_steps = True, 1.0, 2, 2
    runner = Runner(cfg)
    rows = runner.run()
    q = cfg.train.batch_size / len(runner.trainers[0].blocks)
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0))
    loss = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(cfg.dp.loss_noise_multiplier))
    acc = PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-3)
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(step, 4),
                                               dp_accounting.SelfComposedDpEvent(loss, 2 * cfg.dp.loss_batches)]))
    assert rows[-1].epsilon_per_client[0] == pytest.approx(acc.get_epsilon(cfg.dp.delta), rel=1e-6)
    assert rows[-1].epsilon_per_client[0] > epsilon(1.0, q, 4, cfg.dp.delta, relation="replace-one")
    assert math.isfinite(rows[-1].loss)
