"""Decoder families that differ from Llama in a few pieces, one file each; importing this registers them.

A new family: a file here with a `LlamaAdapter` (or `DecoderAdapter`) subclass under `@register_decoder(...)`,
overriding only what differs (`projections`, `head_norms`, `packed_qkv`, `packed_up`, ...), and its import below.
"""

from prunex.models.families import gemma3, phi3, qwen3  # noqa: F401
