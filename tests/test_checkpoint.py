"""Pruning checkpoints: train_dcp writes one, load_lm restores it, and mismatches are refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import dropping_policy

import prunex.train.dcp_trainer as dcp_trainer
from prunex.checkpoints.meta import META_FILE, WEIGHTS_FILE, CheckpointMeta, save_checkpoint
from prunex.config import DCPConfig, DCPTrainConfig
from prunex.errors import PrunexError
from prunex.loading import load_lm
from prunex.models.sources import load_model, weights_hash
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM

SENTENCES = (
    "The quick brown fox jumps over the lazy dog. "
    "A small model learns which tokens it may forget. "
    "Rain fell on the quiet town while the bakers lit their ovens.\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train DCP for 3 steps on a small text file; capture the exact tensors handed to save_checkpoint."""
    root = tmp_path_factory.mktemp("train")
    text = root / "corpus.txt"
    text.write_text(SENTENCES * 25, encoding="utf-8")  # ~4.5 KB
    captured = {}
    original = dcp_trainer.save_checkpoint

    def spy(out_dir, meta, tensors):
        captured.update({k: v.detach().clone() for k, v in tensors.items()})
        return original(out_dir, meta, tensors)

    dcp = DCPConfig(interaction_dim=16)
    config = DCPTrainConfig(model="tiny-llama", text=str(text), steps=3, context=32, threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dcp_trainer, "save_checkpoint", spy)
        meta = dcp_trainer.train_dcp(config, dcp, root / "ckpt", show_progress=False)
    return root / "ckpt", meta, captured, dcp


def test_train_writes_checkpoint(trained):
    """Both files exist; the metadata ties the checkpoint to tiny-llama's weights and records the run."""
    out, meta, captured, dcp = trained
    assert (out / META_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
    saved = json.loads((out / META_FILE).read_text())
    assert saved["format_version"] == 1
    assert saved["method"] == "dcp" and saved["base_model"] == "tiny-llama"
    assert saved["base_model_hash"] == load_model("tiny-llama").weights_hash
    assert saved["config"] == {"interaction_dim": 16, "init_bias": 5.0, "sink_tokens": 4, "recent_tokens": 0}
    assert saved["training"]["config"]["steps"] == 3
    assert len(saved["training"]["last_steps"]) == 3
    # Three steps from a keep-logit bias of 5 move no decision yet: validation keeps every entry.
    assert saved["training"]["figures"]["validation"]["sparsity"] == 0.0
    assert set(captured) == {f"{p}.{i}.weight" for p in ("q_int", "k_int") for i in range(3)} | {"bias"}
    assert captured["q_int.0.weight"].shape == (16, 64)
    assert not torch.equal(captured["bias"], torch.full((3,), 5.0))  # the optimizer did move the bias


def test_load_lm_restores_trained_policy(trained, tiny_llama):
    """load_lm(dir) rebuilds the base model and a policy equal to the trained one (to float16 precision),
    with the same forward logits as a policy holding the trained (fp16-rounded) parameters."""
    out, _, captured, dcp = trained
    lm = load_lm(out)
    assert lm.base.weights_hash == tiny_llama.weights_hash
    assert lm.policy.config == dcp
    loaded = lm.policy.state_dict()
    assert set(loaded) == set(captured)
    for name, value in captured.items():
        torch.testing.assert_close(loaded[name], value, atol=1e-3, rtol=1e-3)
        assert torch.equal(loaded[name], value.half().float())

    reference = DCPPolicy(3, 64, dcp)
    reference.load_state_dict({k: v.half().float() for k, v in captured.items()})
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = lm.forward(ids)
        want = PrunedLM(tiny_llama, reference.eval()).forward(ids)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-6, rtol=0)
    assert float(got.kept_entries) == float(want.kept_entries)


def _save_policy(path, tiny_llama, **meta_changes):
    policy = dropping_policy(tiny_llama)
    fields = dict(method="dcp", base_model="tiny-llama", base_model_hash=tiny_llama.weights_hash,
                  config={"interaction_dim": 64, "init_bias": 0.3, "sink_tokens": 1})
    fields.update(meta_changes)
    save_checkpoint(path, CheckpointMeta(**fields), policy.state_dict())
    return policy


def test_roundtrip_of_dropping_policy(tmp_path, tiny_llama):
    """A policy that drops tokens survives save/load: same hard decisions, same logits (fp16 weights)."""
    policy = _save_policy(tmp_path, tiny_llama)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(p.half().float())
    lm = load_lm(tmp_path)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, want = lm.forward(ids), PrunedLM(tiny_llama, policy).forward(ids)
    assert got.kept_fraction == want.kept_fraction < 0.9
    torch.testing.assert_close(got.logits, want.logits, atol=1e-6, rtol=0)


def test_wrong_base_hash_refused(tmp_path, tiny_llama):
    """A checkpoint whose recorded base weights differ from the model it names is refused."""
    _save_policy(tmp_path, tiny_llama, base_model_hash="0123456789abcdef")
    with pytest.raises(PrunexError) as err:
        load_lm(tmp_path)
    message = str(err.value)
    assert "0123456789abcdef" in message and tiny_llama.weights_hash in message
    assert "base model" in message


def test_newer_format_refused(tmp_path, tiny_llama):
    """A pruning.json from a newer prunex (format_version 999) asks the user to upgrade."""
    _save_policy(tmp_path, tiny_llama)
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["format_version"] = 999
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PrunexError, match="upgrade"):
        load_lm(tmp_path)


def test_missing_weights_file_refused(tmp_path, tiny_llama):
    _save_policy(tmp_path, tiny_llama)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(PrunexError, match=WEIGHTS_FILE):
        load_lm(tmp_path)


def test_unknown_model_name_lists_supported(tmp_path, monkeypatch):
    """An unknown model name names the packaged and tiny models."""
    monkeypatch.chdir(tmp_path)  # so that the name cannot be an existing relative path
    with pytest.raises(PrunexError) as err:
        load_model("no-such-model")
    for name in ("smollm2", "minilm", "tiny-llama", "tiny-gpt2"):
        assert name in str(err.value)


def test_train_all_saves_and_restores_base_weights(tmp_path):
    """--train all also fine-tunes the base model; its weights are saved and restored by load_lm.

    tiny-llama (like SmolLM2) ties lm_head to the embeddings, which safetensors' save_file refuses.
    """
    text = tmp_path / "corpus.txt"
    text.write_text(SENTENCES * 10, encoding="utf-8")
    config = DCPTrainConfig(model="tiny-llama", text=str(text), steps=1, context=32, threads=1, train="all")
    dcp_trainer.train_dcp(config, DCPConfig(interaction_dim=8), tmp_path / "ckpt", show_progress=False)
    assert (tmp_path / "ckpt" / "base.safetensors").is_file()
    lm = load_lm(tmp_path / "ckpt")
    assert weights_hash(lm.base.model) != load_model("tiny-llama").weights_hash  # fine-tuned weights loaded
