"""DP-SGD on tiny HF causal LMs: per-example gradients against a one-example-at-a-time loop, clipping, LoRA,
tied embeddings, clean state_dict keys, position ids, per-sequence loss, virtual batches, ledger refusal."""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import privacy.dpsgd as dpsgd
from privacy.accounting import epsilon
from privacy.ledger import PrivacyLedger
from privacy.dpsgd import make_private
from privacy.errors import (BudgetExceededError, ConfigurationError, InsecureRNGWarning, PlanExceededError,
                            UnsupportedModelError)
from privacy.events import PrivacyEvent
from privacy.hf import load_causal_lm, position_ids_for, sequence_loss, tied_embeddings, untie_embeddings

VOCAB, T = 128, 12
GEN = torch.Generator().manual_seed(1234)
DATA = torch.randint(0, VOCAB, (48, T), generator=GEN)
MASK = torch.ones(4, T, dtype=torch.long)
MASK[1, 9:] = 0  # right padding on two rows
MASK[3, 5:] = 0
BATCH = {"input_ids": DATA[:4], "attention_mask": MASK}


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0,
                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def private(model, **kw):
    kw.setdefault("max_grad_norm", 1.0)
    kw.setdefault("noise_multiplier", 1.0)
    loader = DataLoader(TensorDataset(DATA), batch_size=kw.pop("batch_size", 8))
    return make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, **kw)


def loop_gradients(model, names, batch=BATCH):
    """Gradient of each example's own per-sequence loss, one example at a time (no Opacus involved)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = []
    for i in range(ids.shape[0]):
        model.zero_grad()
        x, m = ids[i:i + 1], mask[i:i + 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits = model(input_ids=x, attention_mask=m, position_ids=position_ids_for(x, m)).logits
            sequence_loss(logits, x.masked_fill(m == 0, -100)).sum().backward()
        out.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if n in names})
    return out


def flat_norm(grads: dict) -> torch.Tensor:
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))


@pytest.mark.parametrize("factory", [gpt2, llama], ids=["gpt2", "llama"])
def test_hooks_per_sample_gradients_match_loop(factory):
    tr = private(factory())
    per_sample = tr.per_sample_gradients(BATCH)
    reference = loop_gradients(factory(), set(per_sample))
    assert set(per_sample) == {n for n, p in tr.model.named_parameters() if p.requires_grad}
    for name, g in per_sample.items():
        expect = torch.stack([r[name] for r in reference])
        torch.testing.assert_close(g, expect, rtol=1e-4, atol=1e-6, msg=name)
    if factory is gpt2:  # tied embedding kept: both uses of the shared weight are summed per example
        assert tr.tied_embeddings == "keep" and tied_embeddings(tr.model)


def test_ghost_norms_and_clipped_sum_match_loop():
    tr = private(gpt2(), mode="ghost", max_grad_norm=3.0)
    assert tr.tied_embeddings == "untie" and not tied_embeddings(tr.model)
    ref_model = gpt2()
    untie_embeddings(ref_model)
    names = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    reference = loop_gradients(ref_model, names)
    ref_norms = torch.stack([flat_norm(r) for r in reference])
    torch.testing.assert_close(tr.per_sample_gradient_norms(BATCH).double(), ref_norms, rtol=1e-4, atol=1e-6)
    _check_clipped_sum(tr, reference, ref_norms, 3.0)


def test_hooks_clipped_sum_matches_manual_clipping():
    tr = private(gpt2(), max_grad_norm=2.0)
    reference = loop_gradients(gpt2(), {n for n, p in tr.model.named_parameters() if p.requires_grad})
    _check_clipped_sum(tr, reference, torch.stack([flat_norm(r) for r in reference]), 2.0)


def _check_clipped_sum(tr, reference, ref_norms, clip):
    assert (ref_norms > clip).any()  # the check exercises clipping
    got = tr.clipped_gradient_sum(BATCH)
    factors = (clip / (ref_norms + 1e-6)).clamp(max=1.0)
    for name, g in got.items():
        expect = sum(f * r[name].double() for f, r in zip(factors, reference))
        torch.testing.assert_close(g.double(), expect, rtol=1e-4, atol=1e-6, msg=name)
    single = tr.clipped_gradient_sum({"input_ids": DATA[:1], "attention_mask": MASK[:1]})
    assert float(flat_norm(single)) <= clip * (1 + 1e-5)


def test_lora_trains_only_adapters():
    tr = private(gpt2(), mode="lora")
    trainable = [n for n, p in tr.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    per_sample = tr.per_sample_gradients(BATCH)
    reference = loop_gradients(tr.model, set(per_sample))
    for name, g in per_sample.items():
        torch.testing.assert_close(g, torch.stack([r[name] for r in reference]), rtol=1e-4, atol=1e-7)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train(3)
    for n, p in tr.model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n  # adapters moved, base frozen
    assert set(tr.trainable_state_dict()) == set(trainable)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_state_dict_keys_are_clean_and_reload(mode):
    original_keys = set(gpt2().state_dict())
    tr = private(gpt2(), mode=mode)
    tr.train(2)
    state = tr.model.state_dict()
    assert set(state) == original_keys
    fresh = gpt2(seed=5)
    fresh.load_state_dict(state)  # strict: loads into a plain HF model
    assert torch.equal(fresh.transformer.h[0].attn.c_attn.weight, tr.model.transformer.h[0].attn.c_attn.weight)


def test_freeze_strategy_and_ghost_refuses_tied_weights():
    tr = private(gpt2(), mode="ghost", tied="freeze")
    assert tr.tied_embeddings == "freeze" and tied_embeddings(tr.model)
    assert "transformer.wte.weight" not in tr.trainable_state_dict()
    with pytest.raises(UnsupportedModelError):
        private(gpt2(), mode="ghost", tied="keep")


def test_position_ids_are_per_example():
    ids = torch.zeros(3, 5, dtype=torch.long)
    pos = position_ids_for(ids)
    assert pos.shape == (3, 5) and pos.is_contiguous() and torch.equal(pos[2], torch.arange(5))
    left_padded = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert position_ids_for(ids, left_padded).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]


def test_sequence_loss_matches_manual_computation():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[1, 3:] = -100
    labels[2, 1:] = -100  # no valid target at all
    got = sequence_loss(logits, labels)
    logp = torch.log_softmax(logits, -1)
    for b in range(3):
        terms = [-logp[b, t, labels[b, t + 1]] for t in range(5) if labels[b, t + 1] != -100]
        expect = torch.stack(terms).mean() if terms else torch.tensor(0.0)
        torch.testing.assert_close(got[b], expect)
    with pytest.raises(ConfigurationError):
        sequence_loss(logits, labels[:, :4])


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_virtual_batches_give_the_same_update_as_one_physical_batch(mode):
    def one_step(max_physical):  # q = 1: the trainer's own Poisson batch is the whole data set, every time
        tr = private(gpt2(), max_physical_batch_size=max_physical, max_grad_norm=2.0, mode=mode, batch_size=48)

        def no_noise(self):  # isolate clipping/accumulation from the noise
            for p in self.params:
                p.grad = p.summed_grad.clone().view_as(p)
        tr.optimizer.add_noise = types.MethodType(no_noise, tr.optimizer)
        tr.step()
        assert tr.round_steps == 1
        return tr.trainable_state_dict()

    whole, split = one_step(None), one_step(7)
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], rtol=1e-5, atol=1e-7)


def test_model_from_a_local_directory_never_downloads(tmp_path):
    gpt2(seed=3).save_pretrained(tmp_path)
    model = load_causal_lm(tmp_path)
    assert torch.equal(model.transformer.wpe.weight, gpt2(seed=3).transformer.wpe.weight)
    assert private(model).per_sample_gradients(BATCH)["transformer.wte.weight"].shape[0] == 4
    assert isinstance(load_causal_lm(gpt2().config), GPT2LMHeadModel)
    with pytest.raises(ConfigurationError):
        load_causal_lm("gpt2")  # a hub name, not a local directory: refused instead of downloaded


def test_train_with_batch_memory_manager_counts_logical_steps():
    tr = private(gpt2(), max_physical_batch_size=2, batch_size=12)
    losses = tr.train(3)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    (event,) = tr.end_round()
    assert (event.noise_multiplier, event.sample_rate, event.steps) == (1.0, 12 / 48, 3)
    assert tr.history == (event,) and tr.round_steps == 0


class _NoneIn:  # a sampler stream that includes no record: an empty Poisson batch
    @staticmethod
    def uniform(n):
        return np.ones(n)


def test_empty_poisson_batch_takes_a_noise_only_step():
    tr = private(gpt2())
    tr.data_loader.batch_sampler._rng = _NoneIn()
    before = tr.trainable_state_dict()
    assert math.isnan(tr.step())
    assert tr.round_steps == 1
    assert any(not torch.equal(before[n], p) for n, p in tr.trainable_state_dict().items())


def test_csprng_noise_has_the_dp_std():
    tr = private(gpt2(), noise_multiplier=0.7, max_grad_norm=1.5)
    for p in tr.optimizer.params:
        p.summed_grad = torch.zeros_like(p)
    tr.optimizer.add_noise()
    noise = torch.cat([p.grad.reshape(-1) for p in tr.optimizer.params]).double().numpy()
    stat = float(np.sum(noise**2)) / (0.7 * 1.5) ** 2
    assert chi2.ppf(1e-6, noise.size) <= stat <= chi2.ppf(1 - 1e-6, noise.size)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_one_dp_sgd_step_moves_the_weights_by_noise_of_std_sigma_c_over_b(mode):
    """End to end through ``step()`` (a real Poisson batch, SGD at lr 0.1): Δθ·B/lr = −(clipped sum + noise),
    with B = q·N = 8 the expected batch size (σ large, so the signal is small). The noise is N(0, (σC)²)^d, so ‖Δθ·B/lr‖ lies within the
    chi-square band of σC·√d widened by the signal's norm (at most |batch|·C); a B off by 10% falls outside."""
    sigma, c, lr = 40.0, 1.0, 0.1
    tr = private(gpt2(seed=5), noise_multiplier=sigma, max_grad_norm=c, mode=mode, tied="freeze")
    before = {n: p.detach().clone() for n, p in tr.trainable_state_dict().items()}
    tr.step()
    moved = torch.cat([(p - before[n]).reshape(-1) for n, p in tr.trainable_state_dict().items()]).double()
    d, b = moved.numel(), 8 / 48 * len(DATA)
    lo, hi = (math.sqrt(chi2.ppf(p, d)) * sigma * c for p in (1e-6, 1 - 1e-6))
    signal = len(DATA) * c  # no Poisson batch of 48 records holds more (under 1% of the noise's norm here)
    norm = float(torch.linalg.norm(moved)) * b / lr
    assert lo - signal <= norm <= hi + signal, (norm, lo, hi)
    for wrong in (0.9 * b, 1.1 * b):  # the bound can fail: a step scaled by another B is outside it
        off = float(torch.linalg.norm(moved)) * wrong / lr
        assert not lo - signal <= off <= hi + signal


def test_a_round_is_reserved_whole_before_its_first_step_and_never_outrun():
    ledger = PrivacyLedger(1.5, 1e-5, accountant="rdp")
    tr = private(gpt2(), ledger=ledger, noise_multiplier=1.5)
    allowed = ledger.remaining_steps(1.5, 8 / 48)
    assert 0 < allowed < 20
    with pytest.raises(PlanExceededError):  # with a ledger, no step outside a reserved round
        tr.step()
    before = tr.trainable_state_dict()
    with pytest.raises(BudgetExceededError) as info:  # one step too many for the budget: nothing at all runs
        tr.begin_round(allowed + 1)
    assert "spent ε=0" in str(info.value) and "budget ε=1.5" in str(info.value)
    assert ledger.events == () and tr.round_steps == 0
    assert all(torch.equal(before[n], p) for n, p in tr.trainable_state_dict().items())
    assert tr.begin_round(allowed) == ledger.spent() <= 1.5  # spent before the first step (write-ahead)
    assert ledger.events == (PrivacyEvent(1.5, 8 / 48, allowed),)
    tr.train(allowed)
    with pytest.raises(PlanExceededError):  # beyond the reservation
        tr.step()
    with pytest.raises(PlanExceededError):  # a loss release the round did not reserve
        tr.release_loss(noise_multiplier=2.0, bound=1.0)
    assert tr.round_steps == allowed
    with pytest.raises(ConfigurationError):  # one round at a time
        tr.begin_round(1)
    assert tr.end_round() == (PrivacyEvent(1.5, 8 / 48, allowed),)
    with pytest.raises(BudgetExceededError):
        tr.begin_round(1)
    # a round that takes fewer steps than it reserved: the ledger keeps the reservation (over-counts, never under)
    roomy = PrivacyLedger(50.0, 1e-5)
    tr = private(gpt2(), ledger=roomy, noise_multiplier=1.5)
    tr.begin_round(5)
    tr.train(2)
    assert tr.end_round()[0].steps == 2 and roomy.events[0].steps == 5


def test_target_epsilon_picks_a_sufficient_noise_multiplier():
    tr = private(gpt2(), noise_multiplier=None, target_epsilon=3.0, target_steps=30)
    assert epsilon(tr.noise_multiplier, tr.sample_rate, 30, 1e-5) <= 3.0
    assert epsilon(tr.noise_multiplier * 0.9, tr.sample_rate, 30, 1e-5) > 3.0


def test_insecure_noise_warns_once(monkeypatch):
    monkeypatch.setattr(dpsgd, "_warned_insecure", False)
    with pytest.warns(InsecureRNGWarning):
        private(gpt2(), noise="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureRNGWarning)
        private(gpt2(), noise="torch")


def test_misuse_raises_named_errors():
    model = gpt2()
    trainer = private(model)
    with pytest.raises(ConfigurationError):  # one trainer per client, never re-wrapped
        private(model)
    trainer.close()  # hooks removed: the model can be made private again, with single (not doubled) hooks
    again = private(model)
    grads = again.per_sample_gradients(BATCH)
    reference = loop_gradients(gpt2(), set(grads))
    torch.testing.assert_close(grads["transformer.wpe.weight"],
                               torch.stack([r["transformer.wpe.weight"] for r in reference]), rtol=1e-4, atol=1e-6)
    lora_base = gpt2()
    private(lora_base, mode="lora")
    with pytest.raises(ConfigurationError):
        private(lora_base, mode="lora")
    with pytest.raises(ConfigurationError):
        private(gpt2(), noise_multiplier=None)
    with pytest.raises(ConfigurationError):
        private(gpt2(), target_epsilon=1.0)  # both σ and target
    with pytest.raises(ConfigurationError):
        private(gpt2(), mode="functorch")
    with pytest.raises(TypeError):  # the trainer draws its own Poisson batches: a caller's batch is not accepted
        private(gpt2()).step(BATCH)


def test_a_loss_release_is_a_subsampled_gaussian_release_composed_with_the_steps():
    """ε of steps plus loss releases, from the trainer's ledger, against the same releases composed directly in
    dp_accounting; the estimate is the clipped mean loss (checked with negligible noise), clipped at its bound."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    ledger = PrivacyLedger(50.0, 1e-5)
    tr = private(gpt2(), ledger=ledger, noise_multiplier=1.0, batch_size=8)
    q = 8 / 48
    for _ in range(2):  # two rounds of 3 steps and 4 loss releases at σ_L = 2
        tr.begin_round(3, loss_releases=[(2.0, 4)])
        tr.train(3)
        tr.release_loss(noise_multiplier=2.0, bound=math.log(VOCAB), batches=4)
        events = tr.end_round()
        assert [(e.noise_multiplier, e.steps) for e in events] == [(1.0, 3), (2.0, 4)]
    direct = PLDAccountant(value_discretization_interval=1e-3)
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0))
    loss = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(2.0))
    direct.compose(dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(step, 6),
                                                  dp_accounting.SelfComposedDpEvent(loss, 8)]))
    assert ledger.spent() == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    assert ledger.spent() > epsilon(1.0, q, 6, 1e-5)  # the releases cost ε: they are not free
    tr.ledger = None  # the estimate itself, with negligible noise (an ε no ledger would allow)
    with torch.no_grad():  # the clipped mean per-sequence loss over all the data (what the release estimates)
        out = tr.model(input_ids=DATA, position_ids=position_ids_for(DATA, None), use_cache=False)
        clean = float(sequence_loss(out.logits, DATA).clamp(0, math.log(VOCAB)).mean())
    est = tr.release_loss(noise_multiplier=1e-6, bound=math.log(VOCAB), batches=400)
    # 400 Poisson batches of expected size 8 out of 48: the batch-size spread alone is ~1.8% of the estimate
    # (60 batches, ~4.6%, failed a 10% tolerance by chance once)
    assert est == pytest.approx(clean, rel=0.1)
    assert tr.release_loss(noise_multiplier=1e-6, bound=0.5, batches=20) <= 0.5 * 1.6  # clipped at the bound
    assert epsilon(1e-6, q, 80, 1e-5) > 1e6  # such noise is no privacy at all, and the accountant says so fast
    tight = PrivacyLedger(ledger.spent() + 1e-3, 1e-5)
    tight.spend_events(ledger.events)
    tr.ledger = tight
    with pytest.raises(BudgetExceededError):  # a release the budget cannot afford is refused with its round
        tr.begin_round(0, loss_releases=[(0.5, 50)])
    with pytest.raises(ConfigurationError):
        tr.release_loss(noise_multiplier=0.0, bound=1.0)
