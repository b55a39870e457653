"""Text corpora: deterministic, disjoint article splits; user text files; fixed-size token windows."""

from __future__ import annotations

import pytest
import torch

from prunex.data import text
from prunex.data.text import load_articles, split_text, token_windows
from prunex.errors import PrunexError
from prunex.models.sources import byte_tokenizer


def test_wikipedia_splits_disjoint_and_deterministic():
    """train/validation/test partition the articles 80/10/10, identically for the same seed."""
    pytest.importorskip("gensim")
    articles = load_articles("wikipedia")
    splits = {name: split_text("wikipedia", name) for name in ("train", "validation", "test")}
    n = len(articles)
    assert n > 50
    assert len(splits["train"]) == int(n * 0.8) and len(splits["validation"]) == int(n * 0.1)
    assert sum(len(s) for s in splits.values()) == n
    sets = {name: set(s) for name, s in splits.items()}
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"] or sets["validation"] & sets["test"])
    assert set().union(*sets.values()) == set(articles)
    assert split_text("wikipedia", "test") == splits["test"]
    assert split_text("wikipedia", "train", seed=1) != splits["train"]
    assert all("[[" not in a and "'''" not in a for a in articles)  # wiki markup stripped


def test_user_text_file_used_for_every_split(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("naïve café text\nsecond line", encoding="utf-8")
    for split in ("train", "validation", "test"):
        assert split_text(str(path), split) == ["naïve café text\nsecond line"]


def test_missing_file_and_bad_split(tmp_path):
    with pytest.raises(PrunexError, match="unknown text source"):
        split_text(str(tmp_path / "missing.txt"), "train")
    with pytest.raises(PrunexError, match="unknown split"):
        split_text("wikipedia", "dev")


def test_non_utf8_file_refused(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(PrunexError, match="not UTF-8"):
        split_text(str(path), "train")


def test_token_windows_shape():
    """Byte-level tokens cut into non-overlapping windows; `limit` caps the count; too-short text is refused."""
    tokenizer = byte_tokenizer()
    text = "abcdefghij" * 10  # 100 bytes -> 100 tokens
    windows = token_windows(tokenizer, [text], 16)
    assert windows.shape == (6, 16) and windows.dtype == torch.long
    assert windows.flatten().tolist() == tokenizer(text)["input_ids"][:96]
    assert token_windows(tokenizer, [text], 16, limit=2).shape == (2, 16)
    joined = token_windows(tokenizer, ["ab", "cd"], 6)  # articles joined by a blank line
    assert tokenizer.decode(joined[0].tolist()) == "ab\n\ncd"
    with pytest.raises(PrunexError, match="fewer than one window"):
        token_windows(tokenizer, ["short"], 16)


def test_packaged_corpus_extracted_once_then_read_from_the_cache(monkeypatch, prunex_cache):
    calls = []

    def fake_corpus() -> list[str]:
        calls.append(1)
        return ["first article", "second article"]

    monkeypatch.setitem(text.TEXT_SOURCES, "fake", fake_corpus)
    assert text._packaged_articles("fake") == ["first article", "second article"]
    assert text._packaged_articles("fake") == ["first article", "second article"]
    assert len(calls) == 1
    assert (prunex_cache / "texts" / f"fake-v{text.TEXT_CACHE_VERSION}.json").is_file()
