"""Check an exported decoder dir against PyTorch before it is declared written.

The graph must pass `onnx.checker.check_model(full_check=True)`; on real text (a batch of prompts of
different lengths) a prefill and a few decode steps through ONNX Runtime must give PyTorch's logits to an
explicit tolerance and hold exactly the same number of K/V entries per layer and row. Both sides are fed the
same tokens (PyTorch's greedy choices), so a near-tie cannot make them drift apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from prunex.data.batching import pad_batch
from prunex.errors import PrunexError
from prunex.format import read_manifest
from prunex.prune.dcp import DCPPolicy
from prunex.prune.forward import run_full
from prunex.prune.lm import PrunedLM
from prunex.prune.pruned_cache import PrunedKVCache

VALIDATION_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Token pruning keeps what matters.",
)


def _compare(name: str, onnx_logits: np.ndarray, torch_logits: torch.Tensor, tolerance: float) -> float:
    """Max |diff| of two (N, vocab) logit sets; raises PrunexError past tolerance * max(1, max |logit|)."""
    reference = torch_logits.numpy()
    diff = float(np.abs(onnx_logits - reference).max())
    allowed = tolerance * max(1.0, float(np.abs(reference).max()))
    if not diff <= allowed:
        raise PrunexError(f"ONNX logits differ from PyTorch at {name}: max |diff| {diff:.3g} > {allowed:.3g}")
    return diff


def _compare_lengths(name: str, ours: np.ndarray, torch_cache: PrunedKVCache) -> None:
    """The kept entries per layer and row (ours: (L, B) counts) must be equal."""
    for layer, (held, ref) in enumerate(zip(ours, torch_cache.layers)):
        theirs = ref.lengths.numpy()
        if not np.array_equal(held, theirs):
            raise PrunexError(
                f"kept K/V entries differ from PyTorch at {name}, layer {layer}: ONNX {held.tolist()} vs "
                f"PyTorch {theirs.tolist()}"
            )


def validate_decoder(
    lm: PrunedLM, policy: DCPPolicy | None, directory: Path, tolerance: float = 1e-4, steps: int = 4,
    texts: tuple[str, ...] = VALIDATION_TEXTS,
) -> dict:
    """Validate the export in `directory`; returns the figures (max logit diff, ...) or raises PrunexError.

    Checks the whole-prompt logits of a batch of prompts of different lengths (PyTorch: right-padded; the
    runtime: one prompt a run, in chunks), then decode steps through the runtime's engine (slot buffers written
    in place), each against PyTorch's physical-removal cache.
    """
    from prunex.runtime.engine import DecoderEngine

    manifest = read_manifest(directory)
    try:
        onnx.checker.check_model(str(directory / manifest.model_file), full_check=True)
    except onnx.checker.ValidationError as err:
        raise PrunexError(f"the exported graph fails onnx.checker: {err}") from err
    reference = PrunedLM(lm.base, policy)
    prompts = [lm.tokenizer(t)["input_ids"] for t in texts]
    engine = DecoderEngine(directory, device="cpu", threads=1, manifest=manifest)

    ids, mask = pad_batch(prompts, pad_id=0)  # (B, T) each
    valid = mask.bool()
    lengths = valid.sum(-1)  # (B,)
    B = len(prompts)
    with torch.no_grad():
        full = run_full(reference.adapter, policy, ids, valid, collect_prefill=True)
        torch_cache = PrunedKVCache.from_prefill(full.prefill, valid)
        all_logits, caches = engine.run_prompts(prompts, all_logits=True)
        max_diff = _compare("prefill", all_logits[valid.numpy()], full.logits[valid], tolerance)
        counts = torch.cat([cache.layer_counts() for cache in caches], dim=1)  # (L, B)
        _compare_lengths("prefill", counts.numpy(), torch_cache)
        engine.prefill(prompts)
        logits = full.logits[torch.arange(B), lengths - 1]
        positions = lengths.clone()
        for step in range(steps):
            tokens = logits.argmax(-1)  # (B,)
            logits = reference.decode_step(torch_cache, tokens, positions)  # (B, vocab)
            step_logits = engine.decode(tokens)
            max_diff = max(max_diff, _compare(f"decode step {step + 1}", step_logits.numpy(), logits, tolerance))
            _compare_lengths(f"decode step {step + 1}", engine.cache.layer_counts().numpy(), torch_cache)
            positions += 1
    held = int(sum(layer.lengths.sum() for layer in torch_cache.layers))
    return {
        "max_logit_diff": max_diff, "tolerance": tolerance, "prompts": len(prompts), "decode_steps": steps,
        "kept_entries": held, "checker": "full_check",
    }


ENCODER_TEXTS = (
    "A gripping, beautifully shot film that never lets go of its audience until the very last scene.",
    "Dull and far too long.",
    "The plot wanders, but the performances are strong enough to carry it home.",
    # A long input, so that a model trained on long texts (its thresholds scale with 1/length) really prunes.
    " ".join(
        [
            "The government announced on Monday that it would raise spending on schools and hospitals next year,",
            "while the opposition said the plans were not paid for and would push up borrowing.",
            "Shares in the largest banks fell after the central bank kept interest rates unchanged,",
            "and analysts expect the economy to grow more slowly than forecast in the spring.",
        ]
        * 8
    ),
)


def validate_encoder(classifier, dense: bool, directory: Path, tolerance: float = 1e-4,
                     texts: tuple[str, ...] = ENCODER_TEXTS) -> dict:
    """Check an exported encoder dir: checker, logits to tolerance, kept tokens per layer and positions equal."""
    from prunex.format import read_encoder_manifest
    from prunex.runtime.session import make_session

    manifest = read_encoder_manifest(directory)
    path = directory / manifest.model_file
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise PrunexError(f"the exported graph fails onnx.checker: {err}") from err
    max_length = classifier.info.get("max_length") or 512
    batch = classifier.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        reference = classifier(ids, mask, mode="dense" if dense else "hard")
    session, _ = make_session(path, device="cpu", threads=1)
    names = manifest.outputs
    logits, kept, positions = session.run(
        [names["logits"], names["kept"], names["positions"]],
        {manifest.inputs["input_ids"]: ids.numpy(), manifest.inputs["attention_mask"]: mask.numpy()},
    )
    max_diff = _compare("the classifier output", logits, reference.logits, tolerance)
    if not np.array_equal(kept, reference.kept.numpy()):
        raise PrunexError(
            f"kept tokens per layer differ from PyTorch: ONNX {kept.tolist()} vs {reference.kept.tolist()}"
        )
    if not np.array_equal(positions, reference.positions.numpy()):
        raise PrunexError("the positions of the tokens left after the last layer differ from PyTorch")
    return {
        "max_logit_diff": max_diff, "tolerance": tolerance, "inputs": len(texts), "checker": "full_check",
        "kept_per_layer": kept.tolist(), "lengths": reference.lengths.tolist(),
    }
