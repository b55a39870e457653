"""Turning a request's tokens into text as they come: incremental decoding, stop strings, safe deltas."""

from __future__ import annotations


class TextStream:
    """The text of one request's generated tokens, cut at the first stop string.

    `push(token)` returns the new text that is safe to show: text that could still turn out to be the start
    of a stop string, or half of a multi-byte character, is held back until it is settled.
    """

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.tokens: list[int] = []
        self.text = ""  # the full text so far (cut at a stop string once one appeared)
        self.emitted = 0  # characters of `text` already returned
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may still be the start of a stop string or a broken char."""
        if text.endswith("\ufffd"):
            return len(text) - len(text.rstrip("\ufffd"))
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def push(self, token: int) -> str:
        """Add a token; returns the newly settled text (empty if none)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [text.find(s, max(0, self.emitted - len(s))) for s in self.stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.text, self.stopped = text[: min(hits)], True
            return self.flush()
        self.text = text
        settled = len(text) - self._held_back(text)
        delta = text[self.emitted: settled] if settled > self.emitted else ""
        self.emitted = max(self.emitted, settled)
        return delta

    def flush(self) -> str:
        """The rest of the text, once the request is finished."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta
