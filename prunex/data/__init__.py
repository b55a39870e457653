"""Real text and labelled examples from installed packages, with fixed splits."""

from prunex.data.text import TEXT_SOURCES, load_articles, split_text, token_windows

__all__ = ["TEXT_SOURCES", "load_articles", "split_text", "token_windows"]
