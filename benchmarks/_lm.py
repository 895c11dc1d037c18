"""Shared helpers of the language-model benchmarks (privacy_utility, paper_tables): a plaintext-sum baseline,
final evaluation of a run, and the public/private document split with cached non-private public pre-training.

Not a benchmark itself (the leading underscore keeps it out of ``secagg bench``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from training.workload import text as D
from secagg.errors import MalformedMessageError
from secagg.roles import AGGREGATOR, AggregateResult, Outbound
from training.engine.roles import Scheme
from training.config import DataConfig, RunConfig
from training.workload.corpus import prepare
from training.workload.trainer import ModelSpec, build_model, evaluate, set_flat
from training.inprocess.simulation import Runner

__all__ = ["PlainScheme", "make_runner", "next_token_accuracy", "final_eval", "documents", "pretrain", "clipped_signal"]


_PLAIN = b"SA\x01\xf0"  # a secagg-style header (magic, version, tag) so a dropout can vanish before it


class _PlainClient:
    """Sends ``[w·x, w]`` in the clear as float32 (what a plaintext federation sends): 4·(d+1) bytes."""

    stage = "input"

    def __init__(self, client_id: int) -> None:
        self.client_id, self.done = client_id, False

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        self.done = True
        body = np.append(weight * np.asarray(update, dtype=np.float64), weight).astype("<f4").tobytes()
        return [Outbound(AGGREGATOR, _PLAIN + body)]

    def receive(self, payload: bytes) -> list[Outbound]:
        raise MalformedMessageError("the plaintext baseline sends clients nothing")


class _PlainServer:
    """Sums what arrives; the stage's deadline closes the round with whoever sent (others are dropouts)."""

    def __init__(self, cohort: list[int], dim: int) -> None:
        self.cohort, self.dim, self.got, self.done = cohort, dim, {}, False

    @property
    def stage(self) -> str:
        return "done" if self.done else "input"

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        if sender not in self.cohort or sender in self.got or payload[:4] != _PLAIN \
                or len(payload) != 4 + 4 * (self.dim + 1):
            raise MalformedMessageError("not a plaintext contribution of this round")
        self.got[sender] = np.frombuffer(payload[4:], dtype="<f4").astype(np.float64)
        self.done = len(self.got) == len(self.cohort)
        return []

    def close_stage(self) -> list[Outbound]:
        self.done = True
        return []

    def result(self) -> AggregateResult:
        ids = sorted(self.got)
        total = sum(self.got[i] for i in ids)
        return AggregateResult(total[:-1], float(total[-1]), tuple(ids),
                               tuple(c for c in sorted(self.cohort) if c not in self.got))


class PlainScheme(Scheme):
    """Benchmark baseline: the exact weighted sum in the clear, run by the same engine as the secure schemes."""

    name = "plaintext"

    @property
    def drop_tag(self) -> int:
        return _PLAIN[3]

    def plan(self, round_id, cohort, weights, dim, context, identities=None, *, private_bound=None, public=None,
             terms=None):
        params = {"round_id": round_id, "cohort": sorted(cohort), "dim": dim, "strategy": dict(terms or {})}
        return params, _PlainServer(sorted(cohort), dim)

    def client_role(self, client_id, params, context, signer=None, peers=None, *, sessions=None, noise=None,
                    tag_key=None):
        return _PlainClient(client_id)


def make_runner(cfg: RunConfig, scheme: str) -> Runner:
    """A Runner for ``scheme``; ``plaintext`` builds a masking-configured Runner (cheap, no keys made until a
    round runs) and swaps its scheme for :class:`PlainScheme` before any round."""
    if scheme == "plaintext":
        cfg.federation.scheme = "masking"
        runner = Runner(cfg)
        runner.fed.secure.roles = runner.fed.engine.scheme = PlainScheme()
        cfg.federation.scheme = "plaintext"
        return runner
    cfg.federation.scheme = scheme
    return Runner(cfg)


@torch.no_grad()
def next_token_accuracy(model: torch.nn.Module, blocks: np.ndarray, batch_size: int = 16) -> float:
    """Fraction of positions 1..L-1 of ``blocks`` whose argmax prediction from the prefix is the true token."""
    was = model.training
    model.eval()
    hit = total = 0
    for i in range(0, len(blocks), batch_size):
        x = torch.from_numpy(np.asarray(blocks[i:i + batch_size], dtype=np.int64))
        pred = model(input_ids=x).logits[:, :-1].argmax(-1)
        hit += int((pred == x[:, 1:]).sum())
        total += pred.numel()
    model.train(was)
    return hit / total


def final_eval(runner: Runner) -> dict:
    """Validation loss, perplexity and next-token accuracy of the final global model (held-out blocks)."""
    set_flat(runner.eval_model, runner.fed.global_vec)
    loss = evaluate(runner.eval_model, runner.data.val)
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)),
            "val_next_token_accuracy": next_token_accuracy(runner.eval_model, runner.data.val)}


def documents(cfg: DataConfig, n_public: int) -> tuple[dict[str, str], dict[str, str]]:
    """The clients' documents exactly as :func:`training.workload.corpus.prepare` selects them (so the cached tokenizer is
    the same) and up to ``n_public`` public documents disjoint from them (and so from the validation blocks)."""
    if cfg.corpus == "shakespeare":
        names = sorted(D.shakespeare_files())
        private = list(cfg.plays) if cfg.plays is not None else names[: cfg.n_documents]
        public = [n for n in names if n not in set(private)][:n_public]
        return D.load_shakespeare(private), D.load_shakespeare(public)
    arts = D.load_wikitext(cfg.wikitext_dir, "train")
    private = {f"article-{i:05d}": a for i, a in enumerate(arts[: cfg.max_articles])}
    public = {f"public-{i:05d}": a for i, a in enumerate(arts[cfg.max_articles: cfg.max_articles + n_public])}
    return private, public


def pretrain(cfg: RunConfig, n_public: int, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Non-private pre-training (AdamW) of ``cfg``'s tiny GPT-2 on ``n_public`` public documents only, saved as a
    local HF model directory (cached under the secagg cache by a hash of every input). Returns its path and
    what it was trained on. Refuses if the federation's validation blocks are not rows of its private documents
    under the same tokenizer (the public text is then provably disjoint from what is evaluated)."""
    private, public = documents(cfg.data, n_public)
    if not public:
        raise SystemExit("no public documents left for pre-training; pass --pretrain-steps 0")
    tok = D.train_tokenizer(list(private.values()), cfg.data.vocab_size, cfg.data.cache_dir)
    m, bs = cfg.model, cfg.data.block_size
    mine = {row.tobytes() for t in D.encode_documents(tok, private).values() for row in D.lm_blocks(t, bs)}
    val = prepare(cfg.data, cfg.federation.clients, np.random.default_rng(cfg.train.seed)).val
    if not all(row.tobytes() in mine for row in val):
        raise SystemExit("pre-training would use other documents or another tokenizer than the federation")
    key = json.dumps([sorted(public), hashlib.sha256(tok.to_str().encode()).hexdigest(), bs, m.n_layer, m.n_embd,
                      m.n_head, steps, batch_size, lr, seed])
    path = D.default_cache_dir() / "pretrained" / hashlib.sha256(key.encode()).hexdigest()[:20]
    meta_path = path / "pretrain.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    blocks = np.concatenate([D.lm_blocks(t, bs) for t in D.encode_documents(tok, public).values()])
    model = build_model(ModelSpec(None, tok.get_vocab_size(), bs, m.n_layer, m.n_embd, m.n_head, seed=seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        x = torch.from_numpy(blocks[torch.randint(len(blocks), (batch_size,), generator=gen).numpy()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    meta = {"path": str(path), "public_documents": sorted(public), "public_blocks": int(len(blocks)),
            "steps": steps, "lr": lr, "batch_size": batch_size,
            "seconds": time.perf_counter() - t0, "final_train_loss": float(np.mean(losses[-20:]))}
    (tmp / "pretrain.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return meta


def clipped_signal(cfg: RunConfig, model_path: str | None, batch_size: int, repeats: int = 3) -> dict:
    """What DP-SGD's noise competes with at the start of fine-tuning: the L2 norm of the mean of per-sequence
    gradients clipped to ``cfg.dp.max_grad_norm`` (C), over ``repeats`` batches of ``batch_size`` blocks of
    client 0 (no update, no noise, nothing released), and the median unclipped per-sequence gradient norm. A
    DP-SGD step adds noise of expected L2 norm ≈ σ·C·√d / B to that mean (d trainable parameters)."""
    from torch.utils.data import DataLoader, TensorDataset

    from privacy.dpsgd import make_private

    data = prepare(cfg.data, cfg.federation.clients, np.random.default_rng(cfg.train.seed))
    m = cfg.model
    model = build_model(ModelSpec(model_path, data.vocab_size, cfg.data.block_size, m.n_layer, m.n_embd, m.n_head,
                                  seed=cfg.train.seed))
    blocks = torch.from_numpy(np.asarray(data.clients[0], dtype=np.int64))
    trainer = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0),
                           DataLoader(TensorDataset(blocks), batch_size=batch_size),
                           max_grad_norm=cfg.dp.max_grad_norm, noise_multiplier=1.0)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    signal, norms = [], []
    for _ in range(repeats):
        x = blocks[torch.randperm(len(blocks), generator=gen)[:batch_size]]
        norms.append(trainer.per_sample_gradient_norms(x))
        total = trainer.clipped_gradient_sum(x)
        signal.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in total.values()))) / len(x))
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    all_norms = torch.cat(norms)
    return {"batch_size": batch_size, "params": int(d), "max_grad_norm": cfg.dp.max_grad_norm,
            "clipped_mean_grad_norm": float(np.mean(signal)),
            "median_grad_norm": float(all_norms.median()),
            "fraction_clipped": float((all_norms > cfg.dp.max_grad_norm).double().mean())}
