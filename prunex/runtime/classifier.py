"""Classifier: an exported encoder (LTP or dense) run on ONNX Runtime; texts in, labels and probabilities out.

Texts are tokenized, sorted by length and cut into batches whose padded size (rows x longest row) stays under
a token budget, so short texts are not padded to the longest one in the call and long ones do not blow up
memory; results come back in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunex.data.batching import encode_texts, pad_rows
from prunex.errors import PrunexError
from prunex.format import read_encoder_manifest
from prunex.runtime.runtime import load_tokenizer
from prunex.runtime.session import make_session


@dataclass
class Prediction:
    """One text's class."""

    label: str
    label_id: int
    probabilities: list[float]  # (num_labels,) softmax of the logits
    tokens: int  # tokens the text was given as (after truncation)
    tokens_kept: int  # tokens left after the last layer (LTP removes the rest on the way)
    tokens_kept_per_layer: list[int]  # (L,) tokens left after each layer


def length_batches(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices grouped longest first so that rows x longest row <= max_tokens (a longer text goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < max_rows and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


class Classifier:
    """An exported encoder classifier. device: "auto" | "cpu" | "cuda"; threads: intra-op threads."""

    def __init__(self, directory: str | Path, device: str = "auto", threads: int | None = None,
                 max_tokens_per_batch: int = 8192, max_batch: int = 64) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise PrunexError(f"{directory} is not a folder: give a dir written by `prunex export`")
        self.manifest = read_encoder_manifest(self.directory)
        self.session, choice = make_session(self.directory / self.manifest.model_file, device, threads)
        self.device, self.device_note = choice.device, choice.reason
        self.tokenizer = load_tokenizer(self.directory)
        self.max_tokens_per_batch, self.max_batch = max_tokens_per_batch, max_batch

    def _run(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded rows -> logits (N, C), kept tokens after each layer (N, L)."""
        m = self.manifest
        ids, valid = pad_rows(rows, self.tokenizer.pad_token_id or 0)  # (N, T) each
        mask = valid.astype(np.int64)
        logits, kept = self.session.run([m.outputs["logits"], m.outputs["kept"]],
                                        {m.inputs["input_ids"]: ids, m.inputs["attention_mask"]: mask})
        return logits, kept

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Logits (N, C), kept tokens after each layer (N, L) and token counts, in the order of `texts`."""
        if not texts:
            raise PrunexError("give at least one text")
        encoded = encode_texts(self.tokenizer, texts, self.manifest.max_length)
        logits = np.zeros((len(texts), self.manifest.num_labels), np.float32)
        kept = np.zeros((len(texts), self.manifest.num_layers), np.int64)
        for batch in length_batches([len(e) for e in encoded], self.max_tokens_per_batch, self.max_batch):
            logits[batch], kept[batch] = self._run([encoded[i] for i in batch])
        return logits, kept, [len(e) for e in encoded]

    def classify(self, texts: list[str]) -> list[Prediction]:
        """The label and class probabilities of each text."""
        logits, kept, lengths = self.logits(texts)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probs = shifted / shifted.sum(-1, keepdims=True)  # (N, C)
        names = self.manifest.label_names or [str(i) for i in range(self.manifest.num_labels)]
        return [
            Prediction(names[int(p.argmax())], int(p.argmax()), p.tolist(), length, int(k[-1]), k.tolist())
            for p, k, length in zip(probs, kept, lengths)
        ]
