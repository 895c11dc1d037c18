"""Greedy text generation from the global model: what a run's before/after samples are made of.

Deterministic (greedy, no sampling), so the same model and prompt always give the same text; the prompt is
encoded with the run's tokenizer (the model's own, or the corpus BPE of a tiny model) without special tokens.
"""

from __future__ import annotations

import inspect

import torch
from tokenizers import Tokenizer

from training.errors import ConfigError

__all__ = ["greedy"]


@torch.no_grad()
def greedy(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 32,
           stop_id: int | None = None) -> str:
    """The prompt's greedy continuation (new text only), at most ``max_new_tokens`` tokens, stopping early at
    ``stop_id``. The model's train/eval mode is restored afterwards."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise ConfigError("the prompt encodes to no tokens")
    cfg = getattr(model, "config", None)
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is not None:  # a tiny GPT-2 knows only block_size positions
        if len(ids) >= limit:
            raise ConfigError(f"the prompt has {len(ids)} tokens; the model takes at most {limit}")
        max_new_tokens = min(max_new_tokens, limit - len(ids))
    was_training = model.training
    model.eval()
    x = torch.tensor([ids], dtype=torch.int64)
    new: list[int] = []
    key = _cache_argument(model)
    past = None
    step = x
    for _ in range(max_new_tokens):
        out = model(input_ids=step, use_cache=True, **({key: past} if past is not None else {}))
        past = out["cache"] if "cache" in out else out["past_key_values"]
        nxt = int(out.logits[0, -1].argmax())
        if stop_id is not None and nxt == stop_id:
            break
        new.append(nxt)
        step = torch.tensor([[nxt]], dtype=torch.int64)
    model.train(was_training)
    return tokenizer.decode(new)


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper: the HF model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
