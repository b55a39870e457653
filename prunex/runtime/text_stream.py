"""Turning a request's tokens into text as they come: incremental decoding, stop strings, safe deltas."""

from __future__ import annotations


class TextStream:
    """The text of one request's generated tokens, cut at the first stop string.

    `push(token)` returns the new text that is safe to show: text that could still turn out to be the start
    of a stop string, or half of a multi-byte character, is held back until it is settled.

    Decoding is incremental: each push decodes only the tokens since the last settled character plus the few
    before them (a tokenizer may render a token differently at the start of a text, so the new text is what the
    window adds to its first part), not the whole generation again; a push costs the same at token 10 and at
    token 10,000.
    """

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.tokens: list[int] = []
        self.text = ""  # the full text so far (cut at a stop string once one appeared)
        self.emitted = 0  # characters of `text` already returned
        self.stopped = False
        self._decoded = ""  # the text of tokens[:_read], never cut
        self._prefix = 0  # tokens[_prefix:_read]: the context the next window is decoded with
        self._read = 0  # tokens[_read:]: not yet settled into text (e.g. half of a multi-byte character)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _new_text(self, final: bool) -> str:
        """The text the unread tokens add, and they become read; "" while they end in half a character (unless
        `final`: then it comes out as the full decode would show it)."""
        context = self._decode(self.tokens[self._prefix:self._read])
        window = self._decode(self.tokens[self._prefix:])
        if not final and (len(window) <= len(context) or window.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return window[len(context):]

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may still be the start of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _advance(self, new: str) -> str:
        """Add newly decoded text; returns what is settled (all of the rest once a stop string appears)."""
        self._decoded += new
        text = self._decoded
        hits = [text.find(s, max(0, self.emitted - len(s))) for s in self.stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.text, self.stopped = text[: min(hits)], True
            return self._rest()
        self.text = text
        settled = len(text) - self._held_back(text)
        delta = text[self.emitted: settled] if settled > self.emitted else ""
        self.emitted = max(self.emitted, settled)
        return delta

    def _rest(self) -> str:
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta

    def push(self, token: int) -> str:
        """Add a token; returns the newly settled text (empty if none)."""
        self.tokens.append(token)
        return self._advance(self._new_text(final=False))

    def flush(self) -> str:
        """The rest of the text, once the request is finished."""
        delta = "" if self.stopped else self._advance(self._new_text(final=True))
        return delta + self._rest()
