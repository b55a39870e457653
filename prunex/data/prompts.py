"""Prompts as token ids: plain text, chat messages (through the tokenizer's chat template) or ids as given."""

from __future__ import annotations

from typing import Any, Union

from prunex.errors import PrunexError

# A prompt: text, a list of token ids, or chat messages [{"role": ..., "content": ...}, ...]
Prompt = Union[str, list[int], list[dict[str, str]]]


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a text, of chat messages (the chat template, with the assistant's turn opened), or ids."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    if prompt and all(isinstance(m, dict) for m in prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            raise PrunexError("this model's tokenizer has no chat template: give plain text")
        try:
            return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                      return_dict=False))
        except (KeyError, TypeError, ValueError) as err:
            raise PrunexError(f"messages must be {{'role': ..., 'content': ...}} dicts: {err}") from err
    if prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    raise PrunexError("a prompt is a string, a list of token ids, or a list of chat messages")
