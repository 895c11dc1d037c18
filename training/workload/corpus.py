"""From a :class:`DataConfig` (the run file's ``[data]``) to per-client LM blocks and the server's validation blocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from training.workload import text as D
from training.workload import partition as P
from training.errors import DataError

__all__ = ["DataConfig", "Prepared", "prepare"]


@dataclass
class DataConfig:
    """The run file's ``[data]``: which corpus, how it is tokenised and split among clients and validation."""

    corpus: str = "shakespeare"          # "shakespeare" (embedded) | "wikitext" (local directory)
    wikitext_dir: str | None = None
    plays: list[str] | None = None       # None: the first ``n_documents`` plays in name order
    train_only_plays: list[str] | None = None  # more plays for the clients only: no validation tail is held out
    n_documents: int = 6
    max_articles: int = 600              # WikiText: articles read from the train split
    vocab_size: int = 2048
    block_size: int = 64
    partition: str = "by-document"       # by-document | iid | dirichlet | capacity
    dirichlet_alpha: float = 0.5
    max_blocks_per_client: int | None = 512
    val_fraction: float = 0.1
    max_val_blocks: int = 96
    cache_dir: str | None = None


@dataclass
class Prepared:
    """``clients[i]`` are client i's training blocks; ``val`` the held-out blocks the server evaluates on."""

    clients: list[np.ndarray]
    val: np.ndarray
    pool: np.ndarray
    vocab_size: int
    assignment: list[list[str]]
    tokenizer: Tokenizer | None = None   # what the blocks were encoded with (the model's own, or the corpus BPE)
    eos_id: int | None = None


def _documents(cfg: DataConfig) -> dict[str, str]:
    if cfg.corpus == "shakespeare":
        names = cfg.plays if cfg.plays is not None else sorted(D.shakespeare_files())[: cfg.n_documents]
        overlap = sorted(set(names) & set(cfg.train_only_plays or ()))
        if overlap:
            raise DataError(f"plays {overlap} are both validated on and train-only")
        return D.load_shakespeare([*names, *(cfg.train_only_plays or ())])
    if cfg.train_only_plays:
        raise DataError("train_only_plays names Shakespeare plays: the wikitext corpus has none")
    arts = D.load_wikitext(cfg.wikitext_dir, "train")[: cfg.max_articles]
    return {f"article-{i:05d}": a for i, a in enumerate(arts)}


def prepare(cfg: DataConfig, n_clients: int, rng: np.random.Generator, shares: list[float] | None = None,
            tokenizer_dir: str | Path | None = None) -> Prepared:
    """Tokenize (the model's own tokenizer from ``tokenizer_dir``, else a cached BPE trained on the corpus), cut
    into blocks, hold out the last ``val_fraction`` of every document for the server, and partition the rest
    among clients per ``cfg.partition`` (``shares``: capacity partition). ``train_only_plays`` are wholly
    training data: none of their text is held out, so validation is on the tails of ``plays`` alone."""
    docs = _documents(cfg)
    if tokenizer_dir is not None:
        tok, eos = D.model_tokenizer(tokenizer_dir)
    else:
        tok, eos = D.train_tokenizer(list(docs.values()), cfg.vocab_size, cfg.cache_dir), None
    ids = D.encode_documents(tok, docs, eos)
    train_blocks: dict[str, np.ndarray] = {}
    val_parts = []
    for name, t in ids.items():
        b = D.lm_blocks(t, cfg.block_size)
        if len(b) == 0:
            continue
        n_val = 0 if name in (cfg.train_only_plays or ()) else int(round(len(b) * cfg.val_fraction))
        train_blocks[name], tail = b[: len(b) - n_val], b[len(b) - n_val:]
        val_parts.append(tail)
    if not train_blocks:
        raise DataError("no document is long enough for one block")
    val = np.concatenate(val_parts) if val_parts else np.zeros((0, cfg.block_size), np.int64)
    if len(val) > cfg.max_val_blocks:
        val = val[np.sort(rng.choice(len(val), cfg.max_val_blocks, replace=False))]
    names = list(train_blocks)
    if cfg.partition == "by-document":
        groups = P.by_document({n: len(train_blocks[n]) for n in names}, n_clients)
        clients = [np.concatenate([train_blocks[n] for n in g]) for g in groups]
        assignment = groups
    else:
        allb = np.concatenate([train_blocks[n] for n in names])
        labels = np.concatenate([np.full(len(train_blocks[n]), k) for k, n in enumerate(names)])
        if cfg.partition == "capacity" and cfg.max_blocks_per_client is not None:
            keep = np.sort(rng.permutation(len(allb))[: cfg.max_blocks_per_client * n_clients])
            allb, labels = allb[keep], labels[keep]
        if cfg.partition == "iid":
            parts = P.iid(len(allb), n_clients, rng)
        elif cfg.partition == "dirichlet":
            parts = P.dirichlet(labels, n_clients, cfg.dirichlet_alpha, rng)
        else:
            parts = P.proportional(len(allb), shares or [1.0] * n_clients, rng)
        clients = [allb[p] for p in parts]
        assignment = [sorted({names[k] for k in labels[p]}) for p in parts]
    if cfg.max_blocks_per_client is not None and cfg.partition != "capacity":
        # a uniform subset (a prefix would keep mostly the client's first document and skew every split)
        cap = cfg.max_blocks_per_client
        subset = [np.sort(rng.choice(len(c), cap, replace=False)) if len(c) > cap else np.arange(len(c))
                  for c in clients]
        clients = [c[k] for c, k in zip(clients, subset)]
        if cfg.partition != "by-document":
            assignment = [sorted({names[j] for j in labels[p][k]}) for p, k in zip(parts, subset)]
    if any(len(c) == 0 for c in clients):
        raise DataError("a client received no training blocks; use fewer clients or more data")
    pool = np.concatenate(clients)
    return Prepared(clients, val, pool, tok.get_vocab_size(), assignment, tok,
                    tok.token_to_id(D.EOS) if eos is None else eos)
