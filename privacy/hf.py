"""Hugging Face causal-LM plumbing for DP-SGD (torch/transformers only; Opacus lives in :mod:`privacy.dpsgd`).

* :func:`sequence_loss` — one loss per SEQUENCE (mean next-token cross-entropy over that sequence's own valid
  tokens). HF's ``labels=`` loss is a mean over all tokens of the batch, which couples examples (an example's
  gradient would depend on the other examples' lengths) and breaks the per-example sensitivity bound.
* :func:`position_ids_for` — explicit per-example ``position_ids`` of shape (B, T). HF otherwise builds a (1, T)
  tensor that the position-embedding hook sees as a batch of one.
* :func:`tied_embeddings`, :func:`untie_embeddings`, :func:`freeze_embeddings` — tied input/output embeddings.
* :func:`apply_lora` — ``peft`` LoRA adapters, the base model frozen.
* :func:`load_causal_lm` — a model from a config or a LOCAL directory only (never downloads).
* :func:`conv1d_grad_sample`, :func:`rmsnorm_grad_sample` — exact per-example gradients of GPT-2's ``Conv1D`` and
  Llama-style RMSNorm from the layer input and output gradient (registered with Opacus by privacy.dpsgd).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from privacy.errors import ConfigurationError, UnsupportedModelError

__all__ = [
    "IGNORE_INDEX",
    "LoraSettings",
    "sequence_loss",
    "position_ids_for",
    "labels_for",
    "tied_embeddings",
    "untie_embeddings",
    "freeze_embeddings",
    "apply_lora",
    "load_causal_lm",
    "conv1d_grad_sample",
    "rmsnorm_grad_sample",
]

IGNORE_INDEX = -100


def labels_for(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token labels: ``input_ids`` with padding (attention_mask == 0) set to IGNORE_INDEX."""
    labels = input_ids.clone()
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return labels


def position_ids_for(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) positions: arange(T) per row, or the running count of real tokens when a mask is given."""
    b, t = input_ids.shape
    if attention_mask is None:
        return torch.arange(t, device=input_ids.device).expand(b, -1).contiguous()
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-sequence loss, shape (B,): mean over positions t with labels[:, t+1] != ignore_index of
    -log softmax(logits[:, t])[labels[:, t+1]]. A sequence with no valid target gets loss 0 (and no gradient)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ConfigurationError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    b, t, v = logits.shape
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), targets.reshape(-1),
                                 ignore_index=ignore_index, reduction="none").view(b, t - 1)
    valid = (targets != ignore_index).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / valid


def tied_embeddings(model: nn.Module) -> bool:
    """True if the model's output projection shares its weight with the input embedding."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def untie_embeddings(model: nn.Module) -> None:
    """Give the output projection its own copy of the shared weight (and tell the config, so HF won't re-tie)."""
    out = model.get_output_embeddings()
    out.weight = nn.Parameter(out.weight.detach().clone(), requires_grad=out.weight.requires_grad)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def freeze_embeddings(model: nn.Module) -> None:
    """Freeze the (shared) embedding weight: neither the input embedding nor the tied output layer trains."""
    model.get_input_embeddings().weight.requires_grad_(False)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters. ``target_modules=None`` picks GPT-2's ``c_attn`` or Llama's ``q_proj``/``v_proj``."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: Sequence[str] | None = None


def _default_targets(model: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for candidate in (["c_attn"], ["q_proj", "v_proj"], ["query_key_value"]):
        if set(candidate) <= names:
            return candidate
    raise UnsupportedModelError("no known attention projection to put LoRA on; pass LoraSettings.target_modules")


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only adapter weights stay trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # optional extra
        raise UnsupportedModelError("mode='lora' needs peft: pip install peft (a dependency of secagg)") from exc
    targets = list(settings.target_modules) if settings.target_modules else _default_targets(model)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        raise UnsupportedModelError(f"LoRA target modules {missing} are not in the model (it has e.g. "
                                    f"{sorted(n for n in names if 'proj' in n or 'attn' in n)[:8]})")
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules()
                         if n.rsplit(".", 1)[-1] in targets)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; not actionable here
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def load_causal_lm(source: str | os.PathLike | object) -> nn.Module:
    """A causal LM from a ``transformers`` config object (random init) or a local directory (no download)."""
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if isinstance(source, PretrainedConfig):
        return AutoModelForCausalLM.from_config(source)
    if not os.path.isdir(os.fspath(source)):
        raise ConfigurationError(f"{source!r} is not a local model directory (downloads are disabled)")
    return AutoModelForCausalLM.from_pretrained(os.fspath(source), local_files_only=True)


def conv1d_grad_sample(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """HF Conv1D is y = x @ W + b with W of shape (in, out): per-example dW = Σ_t x_t ⊗ g_t, db = Σ_t g_t."""
    x = activations[0].to(backprops.dtype)
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...k->nk", backprops)
    return out


def rmsnorm_grad_sample(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Llama-style RMSNorm y = w ⊙ x / rms(x): per-example dw = Σ_t g_t ⊙ x_t / rms(x_t)."""
    if not layer.weight.requires_grad:
        return {}
    x = activations[0].float()
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + layer.variance_epsilon)
    g = backprops.float() * normed
    return {layer.weight: g.reshape(g.shape[0], -1, g.shape[-1]).sum(1).to(layer.weight.dtype)}
