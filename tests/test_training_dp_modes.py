"""DP-SGD modes in a federation: ghost clipping needs the tied embedding frozen (untying would change the model
every client shares); frozen embeddings never move and drop out of the shared vector; either clipping mode
accounts exactly the steps it takes."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import DPConfig, ModelConfig
from training.errors import ConfigError
from training.workload.trainer import LocalTrainer, ModelSpec, build_model, get_flat

VOCAB, T = 64, 16


def _spec(freeze: bool) -> ModelSpec:
    m = ModelConfig(n_layer=1, n_embd=16, n_head=2, freeze_embeddings=freeze)
    return ModelSpec.from_config(m, VOCAB, T, seed=3)


def _blocks(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=(n, T))


def _dp(mode: str) -> DPConfig:
    return DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, mode=mode)


def test_unknown_mode_and_ghost_without_frozen_embeddings_are_refused():
    with pytest.raises(ConfigError, match="dp.mode"):
        DPConfig(mode="fast")
    with pytest.raises(ConfigError, match="freeze_embeddings"):
        LocalTrainer(0, _spec(False), _blocks(), batch_size=8, local_steps=1, dp=_dp("ghost"))


def test_frozen_embeddings_leave_the_shared_vector_and_never_move():
    free, frozen = build_model(_spec(False)), build_model(_spec(True))
    emb = frozen.get_input_embeddings().weight
    assert not emb.requires_grad
    assert get_flat(free).size - get_flat(frozen).size == emb.numel()
    trainer = LocalTrainer(0, _spec(True), _blocks(), batch_size=8, lr=1e-2, local_steps=2, dp=_dp("ghost"))
    before = trainer.model.get_input_embeddings().weight.detach().clone()
    start = get_flat(build_model(_spec(True)))
    upd = trainer.train(start)
    assert upd.delta.shape == start.shape and np.linalg.norm(upd.delta) > 0
    assert np.array_equal(trainer.model.get_input_embeddings().weight.detach().numpy(), before.numpy())


def test_ghost_and_hooks_spend_what_dp_accounting_computes_for_the_steps_taken():
    """Each mode records its 3 steps at σ = 1 and the Poisson rate q = B/N = 8/64, and its ε is dp_accounting's
    PLD of exactly that (run independently, replace-one: the example counts are public)."""
    from privacy.events import PrivacyEvent
    from tests.independent import pld_epsilon

    ref = pld_epsilon([(1.0, 8 / 64, 3)], _dp("hooks").delta, relation="replace-one")
    for mode in ("hooks", "ghost"):
        trainer = LocalTrainer(0, _spec(True), _blocks(), batch_size=8, local_steps=3, dp=_dp(mode))
        trainer.train(get_flat(build_model(_spec(True))))
        assert trainer.ledger.events == (PrivacyEvent(1.0, 8 / 64, 3),), mode
        assert ref - 1e-3 <= trainer.epsilon() <= ref * 1.01, mode
