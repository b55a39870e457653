"""Learned Token Pruning on tiny random encoders: thresholds, soft mask, physical removal, checkpoints, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import write_labelled_csv
from typer.testing import CliRunner

from prunex.checkpoints.ltp import DENSE_FILE, MODEL_FILE
from prunex.checkpoints.meta import META_FILE, WEIGHTS_FILE, CheckpointMeta, save_checkpoint
from prunex.cli.main import app
from prunex.errors import PrunexError
from prunex.eval.accuracy import evaluate_accuracy
from prunex.loading import load_ltp
from prunex.models.encoder_adapters import encoder_adapter, supported_encoder_types
from prunex.models.encoders import TINY_ENCODER_VOCAB, load_classifier
from prunex.prune.encoder_forward import dense_flops, layer_flops, run_encoder
from prunex.prune.ltp import LTPClassifier, LTPConfig, LTPThresholds, token_importance
from prunex.train import ltp_trainer
from prunex.train.ltp_trainer import LTPTrainConfig, train_ltp

ENCODERS = ("tiny-bert", "tiny-roberta")
LENGTHS = (30, 17, 9, 24)  # rows of different lengths, right-padded to 30
runner = CliRunner()


def padded_batch(lengths=LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with [CLS]=2 first and [SEP]=3 last per row, padding 0 on the right."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, TINY_ENCODER_VOCAB, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 2, 3
        mask[row, :n] = 1
    return ids, mask


def peaky(name: str, labels: int = 3) -> LTPClassifier:
    """A tiny encoder whose attention is sharp enough (q, k x20) that a threshold keeps some tokens per row."""
    base = load_classifier(name, labels)
    with torch.no_grad():
        for layer in base.model.base_model.encoder.layer:
            layer.attention.self.query.weight.mul_(20)
            layer.attention.self.key.weight.mul_(20)
    thresholds = LTPThresholds(3, LTPConfig(final_threshold=0.05, temperature=0.005))
    return LTPClassifier(base.model, thresholds, tokenizer=base.tokenizer).eval()


# --- thresholds and the soft mask -------------------------------------------------------------------------


def test_threshold_schedule_is_linear_plus_offset():
    """threshold_l = final * ((l+1)/L + offset_l): 0.02, 0.04, 0.06, 0.08 at init; offsets scale by final."""
    thresholds = LTPThresholds(4, LTPConfig(final_threshold=0.08, temperature=1e-3))
    torch.testing.assert_close(thresholds.thresholds(), torch.tensor([0.02, 0.04, 0.06, 0.08]))
    assert torch.equal(thresholds.offset.detach(), torch.zeros(4))
    with torch.no_grad():
        thresholds.offset.copy_(torch.tensor([0.5, 0.0, -0.25, 1.0]))
    torch.testing.assert_close(thresholds.thresholds(), torch.tensor([0.06, 0.04, 0.04, 0.16]))
    assert [n for n, _ in thresholds.named_parameters()] == ["offset"]


def test_config_resolution_from_mean_length():
    """None fields: relative importance, final = 1 (an average token), T = final / 10; with absolute importance
    final = 1 / mean tokens; explicit values are kept."""
    resolved = LTPConfig().resolved(mean_tokens=128.0)
    assert (resolved.importance, resolved.final_threshold, resolved.temperature) == ("relative", 1.0, 0.1)
    absolute = LTPConfig(importance="absolute").resolved(mean_tokens=128.0)
    assert absolute.final_threshold == pytest.approx(1 / 128)
    assert 1e-5 <= absolute.temperature <= 1e-3  # the reference's range at GLUE lengths
    assert LTPConfig(0.02, 1e-4, 3, "absolute").resolved(50.0) == LTPConfig(0.02, 1e-4, 3, "absolute")
    with pytest.raises(PrunexError, match="positive"):
        LTPConfig(-1.0, None).resolved(10.0)
    with pytest.raises(PrunexError, match="relative"):
        LTPConfig(importance="softmax").resolved(10.0)


def test_relative_importance_means_the_same_at_any_length():
    """Under uniform attention every token is average: relative importance 1 for a row of 5 tokens as for one of
    50 (absolute: 1/5 and 1/50), so one threshold prunes snippets and articles alike."""
    relative = LTPThresholds(2, LTPConfig().resolved(20.0))
    absolute = LTPThresholds(2, LTPConfig(importance="absolute").resolved(20.0))
    for n in (5, 50):
        alive = torch.ones(1, n, dtype=torch.bool)
        probs = torch.full((1, 2, n, n), 1.0 / n)  # (B, H, n, n) uniform
        torch.testing.assert_close(relative.score(0, probs, alive), torch.ones(1, n))
        torch.testing.assert_close(absolute.score(0, probs, alive), torch.full((1, n), 1.0 / n))


def test_token_importance_excludes_padding_rows_and_keys():
    """Mean probability received over heads and real query rows; padding rows (garbage) do not count."""
    probs = torch.zeros(1, 2, 4, 4)  # (B, H, n, n): 3 real tokens, 1 padding
    probs[0, 0, :3, :3] = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.6]])
    probs[0, 1, :3, :3] = torch.tensor([[0.0, 1.0, 0.0], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8]])
    probs[0, :, 3] = 7.0  # the padding query row: must be ignored
    alive = torch.tensor([[True, True, True, False]])
    importance = token_importance(probs, alive)
    expected = torch.tensor([[2.2, 2.1, 1.7, 0.0]]) / 6  # column sums over the 2 x 3 real rows / 6
    torch.testing.assert_close(importance, expected)
    assert float(importance.sum()) == pytest.approx(1.0)  # an average token scores 1/n


@pytest.mark.parametrize("name", ENCODERS)
def test_soft_mask_shapes_and_threshold_gradients(name):
    """Soft mode keeps every token, returns (B, C) logits, (B, L) counts and a scalar mask loss; the loss
    ce + lambda * mask_loss sends gradients to the thresholds, and the mask loss alone pushes them up."""
    classifier = peaky(name)
    ids, mask = padded_batch()
    result = classifier(ids, mask, "soft")
    assert result.logits.shape == (4, 3) and result.kept.shape == (4, 3) and result.mask_loss.dim() == 0
    assert 0 < float(result.mask_loss.detach()) < 3  # a sum over 3 layers of means in (0, 1)
    assert (result.kept <= result.lengths[:, None]).all() and (result.kept >= 1).all()
    assert (result.kept[:, 1:] <= result.kept[:, :-1]).all()  # as hard decisions: a removed token stays removed
    n_in = torch.cat([result.lengths[:, None], result.kept[:, :-1]], dim=1)  # (B, L) what each layer would get
    expected = sum(layer_flops(32, 64, n_in[:, layer], result.kept[:, layer]) for layer in range(3))
    torch.testing.assert_close(result.flops, expected)  # the hard cost the soft decisions stand for
    loss = torch.nn.functional.cross_entropy(result.logits, torch.tensor([0, 1, 2, 0])) + 0.1 * result.mask_loss
    loss.backward()
    grad = classifier.thresholds.offset.grad
    assert grad is not None and grad.shape == (3,) and torch.isfinite(grad).all() and grad.abs().sum() > 0

    classifier.thresholds.offset.grad = None
    classifier(ids, mask, "soft").mask_loss.backward()
    mask_grad = classifier.thresholds.offset.grad
    assert (mask_grad <= 0).all() and (mask_grad < 0).any()  # higher thresholds -> smaller masks


# --- [CLS], padding, physical removal -----------------------------------------------------------------------


def test_cls_is_never_removed_and_padding_never_counts():
    """Thresholds above any importance keep only [CLS] (index 0); thresholds of 0 keep exactly the real tokens.
    In soft mode the mask loss counts real tokens only, with [CLS] at 1."""
    classifier = peaky("tiny-bert")
    ids, mask = padded_batch()
    lengths = torch.tensor(LENGTHS)
    with torch.no_grad():
        classifier.thresholds.offset.fill_(100.0)  # thresholds ~ 5: above any probability
        hard = classifier(ids, mask, "hard")
        soft = classifier(ids, mask, "soft")
    assert (hard.kept == 1).all()
    assert hard.positions.tolist() == [[0]] * 4  # packed to width 1: [CLS] of every row
    expected = 3 * len(LENGTHS) / lengths.sum()  # per layer: 4 [CLS] masks of 1 over all real tokens
    assert float(soft.mask_loss) == pytest.approx(float(expected), rel=1e-4)

    with torch.no_grad():
        classifier.thresholds.offset.fill_(-100.0)  # negative thresholds: keep everything real
        keep_all = classifier(ids, mask, "hard")
        dense = classifier(ids, mask, "dense")
    assert keep_all.kept.tolist() == [[n] * 3 for n in LENGTHS]
    assert (keep_all.positions >= 0).sum(-1).tolist() == list(LENGTHS)
    torch.testing.assert_close(keep_all.logits, dense.logits, atol=1e-6, rtol=0)
    with pytest.raises(PrunexError, match="pad on the right"):
        classifier(ids.flip(-1), mask.flip(-1), "hard")


def hf_masked_reference(classifier: LTPClassifier, ids: torch.Tensor, mask: torch.Tensor):
    """The masking reference built from transformers' own modules (eager attention, probabilities returned):
    removed tokens stay in the tensors and are only excluded by the attention mask from later layers."""
    model = classifier.model
    model.set_attn_implementation("eager")
    encoder = model.base_model
    thresholds = classifier.thresholds.thresholds()
    heads = model.config.num_attention_heads
    alive = mask.bool()  # (B, T)
    hidden = encoder.embeddings(input_ids=ids)  # (B, T, d)
    counts = []
    for index, layer in enumerate(encoder.encoder.layer):
        additive = (~alive)[:, None, None, :].float() * torch.finfo(torch.float32).min  # (B, 1, 1, T)
        attended, probs = layer.attention(hidden, additive)  # probs (B, H, T, T)
        received = (probs * alive[:, None, :, None]).sum(dim=(1, 2)) / (heads * alive.sum(-1, keepdim=True))
        keep = (received > thresholds[index]) & alive
        keep[:, 0] = True
        hidden = layer.feed_forward_chunk(attended)
        alive = keep
        counts.append(keep.sum(-1))
    return classifier.adapter.classify(hidden), torch.stack(counts, dim=1)  # the HF head on [CLS]


@pytest.mark.parametrize("name", ENCODERS)
def test_hard_removal_equals_masking(name):
    """Physically removing tokens (packed rows of different lengths) gives the logits of a forward that only
    masks the same tokens: against transformers' own layers and against our static-shape `masked` mode."""
    classifier = peaky(name)
    ids, mask = padded_batch()
    with torch.no_grad():
        hard = classifier(ids, mask, "hard")
        masked = classifier(ids, mask, "masked")
        reference_logits, reference_kept = hf_masked_reference(classifier, ids, mask)
    lengths = torch.tensor(LENGTHS)[:, None]
    assert ((hard.kept > 1) & (hard.kept < lengths)).any()  # some rows really lose some tokens
    assert (hard.kept[:, 1:] <= hard.kept[:, :-1]).all()  # a removed token stays removed
    assert hard.positions.shape[1] == int(hard.kept[:, -1].max()) < ids.shape[1]  # later layers ran narrower
    assert torch.equal(hard.kept, reference_kept) and torch.equal(masked.kept, reference_kept)
    torch.testing.assert_close(hard.logits, reference_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(hard.logits, masked.logits, atol=1e-5, rtol=0)
    kept_positions = [[p for p in row if p >= 0] for row in hard.positions.tolist()]
    assert all(row == sorted(row) and row[0] == 0 for row in kept_positions)  # order kept, [CLS] first
    assert [len(row) for row in kept_positions] == hard.kept[:, -1].tolist()


@pytest.mark.parametrize("name", ENCODERS)
def test_dense_loop_matches_transformers(name):
    """Our layer loop without pruning reproduces the Hugging Face classifier on a padded batch."""
    classifier = peaky(name)
    ids, mask = padded_batch()
    with torch.no_grad():
        ours = classifier(ids, mask, "dense").logits
        theirs = classifier.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_flops_follow_the_kept_lengths():
    """Dense: 2 (4 n d^2 + 2 n^2 d + 2 n d d_ff) per layer; hard: counted at the lengths actually kept."""
    n = torch.tensor([10, 3])
    torch.testing.assert_close(
        layer_flops(32, 64, n, n), 2 * (4 * n * 32**2 + 2 * n**2 * 32 + 2 * n * 32 * 64).double()
    )
    classifier = peaky("tiny-bert")
    ids, mask = padded_batch()
    with torch.no_grad():
        hard = classifier(ids, mask, "hard")
    n_in = torch.cat([hard.lengths[:, None], hard.kept[:, :-1]], dim=1)  # (B, L) tokens entering each layer
    expected = sum(layer_flops(32, 64, n_in[:, layer], hard.kept[:, layer]) for layer in range(3))
    torch.testing.assert_close(hard.flops, expected)
    assert (hard.flops <= dense_flops(classifier.adapter, hard.lengths)).all()


def test_unsupported_encoder_type_is_refused():
    assert {"bert", "roberta"} <= set(supported_encoder_types())
    model = load_classifier("tiny-bert").model
    model.config.model_type = "electra-like"
    with pytest.raises(PrunexError, match="not supported"):
        encoder_adapter(model)
    with pytest.raises(PrunexError, match="unknown pruning mode"):
        run_encoder(encoder_adapter(load_classifier("tiny-bert").model), *padded_batch(), mode="fast")


# --- training, checkpoints, evaluation ------------------------------------------------------------------------


def calibrated_scale(figures: dict) -> float:
    """The product of the threshold scales the soft and hard stages' calibrations applied."""
    scale = 1.0
    for stage in ("soft", "hard"):
        scale *= figures[stage].get("calibration", {"scale": 1.0})["scale"]
    return scale


@pytest.fixture(scope="module")
def trained(tmp_path_factory, csv_task):
    """All three stages, 15 steps each, on the CSV; captures the classifier handed to save_ltp."""
    out = tmp_path_factory.mktemp("ltp-ckpt") / "all"
    captured = {}
    original = ltp_trainer.save_ltp

    def spy(out_dir, classifier, base, training, dense_weights):
        captured["state"] = {k: v.detach().clone() for k, v in classifier.model.state_dict().items()}
        captured["offset"] = classifier.thresholds.offset.detach().clone()
        return original(out_dir, classifier, base, training, dense_weights)

    config = LTPTrainConfig(model="tiny-bert", task=str(csv_task), steps=15, batch_size=8, threads=1, lr=1e-2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ltp_trainer, "save_ltp", spy)
        meta = train_ltp(config, out, LTPConfig(importance="absolute", final_threshold=0.05), show_progress=False)
    return out, meta, captured


def test_train_writes_ltp_checkpoint(trained, csv_task):
    out, _, _ = trained
    for name in (META_FILE, WEIGHTS_FILE, MODEL_FILE, DENSE_FILE):
        assert (out / name).is_file()
    saved = json.loads((out / META_FILE).read_text())
    assert saved["format_version"] == 1 and saved["method"] == "ltp" and saved["base_model"] == "tiny-bert"
    assert saved["base_model_hash"] == load_classifier("tiny-bert").weights_hash  # the pretrained encoder's
    training = saved["training"]
    scale = calibrated_scale(training["figures"])  # the thresholds scaled to the FLOPs target
    assert saved["config"] == {"final_threshold": pytest.approx(0.05 * scale, rel=1e-2),  # scales rounded to 4 digits
                               "temperature": pytest.approx(0.005 * scale, rel=1e-2), "min_tokens": 4,
                               "importance": "absolute"}
    assert training["stage"] == "hard" and training["label_names"] == ["neg", "pos"]
    assert training["task"] == str(csv_task.resolve()) and training["max_length"] == 512
    for stage in ("base", "soft", "hard"):
        figures = training["figures"][stage]
        assert figures["steps"] == 15 and figures["validation"]["accuracy"] >= 0.7  # 10 examples, majority 0.5
        assert len(figures["validation"]["tokens_kept_per_layer"]) == 3
    assert training["figures"]["base"]["validation"]["relative_flops"] == 1.0


def test_checkpoint_roundtrip(trained, tmp_path):
    """load_ltp rebuilds the trained classifier: same weights, fp16 thresholds equal to those trained with,
    same logits; dense=True gives the stage-1 model, which differs from the final one; a checkpoint written
    before relative importance existed keeps the absolute importance it was trained with."""
    out, _, captured = trained
    classifier, base = load_ltp(out)
    assert classifier.stage == "hard" and classifier.inference_mode == "hard"
    assert base.weights_hash == load_classifier("tiny-bert").weights_hash
    for name, value in captured["state"].items():
        assert torch.equal(classifier.model.state_dict()[name], value), name
    assert torch.equal(classifier.thresholds.offset.detach(), captured["offset"])  # rounded before the hard stage
    ids, mask = padded_batch((12, 7, 20))
    reference = load_classifier("tiny-bert")
    reference.model.load_state_dict(captured["state"])
    thresholds = LTPThresholds(3, classifier.thresholds.config)
    thresholds.offset.data.copy_(captured["offset"])
    with torch.no_grad():
        got = classifier(ids, mask)
        want = LTPClassifier(reference.model, thresholds).eval()(ids, mask, "hard")
    torch.testing.assert_close(got.logits, want.logits, atol=1e-6, rtol=0)
    assert torch.equal(got.kept, want.kept)
    dense, _ = load_ltp(out, dense=True)
    assert dense.inference_mode == "dense"
    assert any(not torch.equal(dense.model.state_dict()[k], v) for k, v in captured["state"].items())
    old = tmp_path / "old"
    shutil.copytree(out, old)
    saved = json.loads((old / META_FILE).read_text())
    del saved["config"]["importance"]  # written before the field existed: absolute, as it was trained
    (old / META_FILE).write_text(json.dumps(saved))
    assert not classifier.thresholds.relative and not load_ltp(old)[0].thresholds.relative
    saved["config"]["importance"] = "relative"
    (old / META_FILE).write_text(json.dumps(saved))
    assert load_ltp(old)[0].thresholds.relative


def test_checkpoint_refusals(tmp_path, trained):
    """Another base model's hash, a DCP checkpoint, or a missing model file: clear PrunexErrors."""
    out, _, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta = json.loads((copy / META_FILE).read_text())
    meta["base_model_hash"] = "0123456789abcdef"
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PrunexError, match="0123456789abcdef"):
        load_ltp(copy)
    dcp = tmp_path / "dcp"
    save_checkpoint(dcp, CheckpointMeta("dcp", "tiny-llama", "x", {}), {"bias": torch.zeros(3)})
    with pytest.raises(PrunexError, match="'dcp' checkpoint"):
        load_ltp(dcp)
    with pytest.raises(PrunexError, match="not an LTP checkpoint"):
        load_ltp(tmp_path)
    (copy / META_FILE).write_text(json.dumps({**meta, "base_model_hash": load_classifier("tiny-bert").weights_hash}))
    (copy / MODEL_FILE).unlink()
    with pytest.raises(PrunexError, match=MODEL_FILE):
        load_ltp(copy)


def test_evaluate_accuracy_reports(trained, csv_task):
    """Accuracy with pruning and of the stage-1 model, FLOPs, and kept tokens that never grow."""
    out, _, _ = trained
    report = evaluate_accuracy(out, str(csv_task), "test")
    assert report.examples == 10 and report.dense_source == "stage-1 model" and report.stage == "hard"
    assert report.accuracy == report.dense_accuracy == 1.0  # the words give the label away: no error is right
    assert report.relative_flops == pytest.approx(0.5, abs=0.1)  # the --target-flops default, on held-out rows
    assert report.gflops == pytest.approx(report.relative_flops * report.dense_gflops)
    kept = report.tokens_kept_per_layer
    assert len(kept) == 3 and kept[0] <= report.mean_tokens and kept == sorted(kept, reverse=True)
    with pytest.raises(PrunexError, match="labels"):
        evaluate_accuracy(out, "bbc", "test", limit=2)


def test_bench_classify_times_both_models_on_the_same_examples(trained, csv_task):
    """The side-by-side benchmark reports both throughputs and the same accuracies as the evaluation."""
    from prunex.bench.classify import bench_classify

    out, _, _ = trained
    result = bench_classify(out, str(csv_task), "test", batch_size=4, repeats=2)
    report = evaluate_accuracy(out, str(csv_task), "test")
    assert result.examples == 10 and result.repeats == 2
    assert result.pruned_examples_per_s > 0 and result.dense_examples_per_s > 0
    assert result.speedup == pytest.approx(result.pruned_examples_per_s / result.dense_examples_per_s)
    assert result.pruned_accuracy == report.accuracy and result.dense_accuracy == report.dense_accuracy
    assert result.relative_flops == pytest.approx(report.relative_flops)


def test_stages_one_at_a_time(tmp_path, csv_task):
    """base -> soft -> hard, each from the previous dir; wrong order and a wrong task are refused."""
    common = {"task": str(csv_task), "steps": 15, "batch_size": 8, "threads": 1, "lr": 1e-2, "distill": 0.0}
    train_ltp(LTPTrainConfig(model="tiny-bert", stage="base", **common), tmp_path / "b", show_progress=False)
    assert not (tmp_path / "b" / DENSE_FILE).exists()  # its model.safetensors is the stage-1 model
    with pytest.raises(PrunexError, match="'soft'-stage"):
        train_ltp(LTPTrainConfig(model=str(tmp_path / "b"), stage="hard", **common), tmp_path / "x")
    with pytest.raises(PrunexError, match="--task"):
        train_ltp(LTPTrainConfig(model=str(tmp_path / "b"), stage="soft", **{**common, "task": "bbc"}), tmp_path / "x")
    soft = train_ltp(LTPTrainConfig(model=str(tmp_path / "b"), stage="soft", **common), tmp_path / "s",
                     show_progress=False)
    assert set(soft.training["figures"]) == {"base", "soft"}
    assert (tmp_path / "s" / DENSE_FILE).read_bytes() == (tmp_path / "b" / MODEL_FILE).read_bytes()
    hard = train_ltp(LTPTrainConfig(model=str(tmp_path / "s"), stage="hard", **common), tmp_path / "h",
                     show_progress=False)
    assert hard.training["stage"] == "hard" and set(hard.training["figures"]) == {"base", "soft", "hard"}
    hard_scale = hard.training["figures"]["hard"].get("calibration", {"scale": 1.0})["scale"]
    assert hard.config["final_threshold"] == pytest.approx(soft.config["final_threshold"] * hard_scale, rel=1e-2)
    assert load_ltp(tmp_path / "h")[0].stage == "hard"


# --- command line ------------------------------------------------------------------------------------------------


def test_cli_unknown_task(run_prunex, tmp_path):
    """An unknown task is a user error (exit 2, 'error:'), before --out is created or a model loads."""
    code, err = run_prunex("train", "ltp", "--task", "imdb", "--out",
                         str(tmp_path / "x"))
    assert code == 2 and err.startswith("error: ") and "imdb" in err and "rotten-tomatoes" in err
    assert not (tmp_path / "x").exists()
    code, err = run_prunex("eval", "accuracy", str(tmp_path), "--task", "imdb")
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


def test_cli_bad_stage_and_method(run_prunex, tmp_path, csv_task):
    code, err = run_prunex("train", "ltp", "--stage", "medium", "--task",
                         str(csv_task), "--out", str(tmp_path / "x"))
    assert code == 2 and "--stage" in err and "soft" in err
    code, err = run_prunex("train", "nope", "--out", str(tmp_path / "y"))
    assert code == 2 and "No such command 'nope'" in err and "dcp" in err and "ltp" in err
    code, err = run_prunex("eval", "accuracy", str(tmp_path), "--task", str(csv_task))
    assert code == 2 and "not an LTP checkpoint" in err


def test_cli_train_then_eval_json(tmp_path, csv_task):
    out = tmp_path / "ckpt"
    result = runner.invoke(app, ["train", "ltp", "--model", "tiny-bert", "--task", str(csv_task),
                                 "--steps", "15", "--batch-size", "8", "--threads", "1", "--lambda", "0.2",
                                     "--model-lr", "1e-2",
                                 "--out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert f"wrote {out} (hard stage)" in result.stdout
    assert json.loads((out / META_FILE).read_text())["training"]["config"]["lam"] == 0.2
    result = runner.invoke(app, ["eval", "accuracy", str(out), "--task", str(csv_task), "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    report = json.loads(result.stdout)
    for key in ("accuracy", "dense_accuracy", "relative_flops", "gflops", "tokens_kept_per_layer"):
        assert key in report
    assert report["split"] == "test" and len(report["tokens_kept_per_layer"]) == 3


# --- defaults that train: the majority-label check, the FLOPs target, the floor, distillation -------------------


@pytest.fixture(scope="module")
def shuffled_task(tmp_path_factory):
    """Labels that carry no information: 70% 'a', 30% 'b', assigned at random to random word rows."""
    import random

    rng = random.Random(1)
    rows = []
    for i in range(120):
        words = " ".join(rng.choice(["good", "bad", "fine", "poor", "great", "awful"]) for _ in range(8))
        rows.append((f"{words} no {i}", "a" if rng.random() < 0.7 else "b"))
    path = tmp_path_factory.mktemp("ltp-noise") / "noise.csv"
    write_labelled_csv(path, rows)
    return path


def test_a_stage_no_better_than_the_majority_label_fails_loudly(tmp_path, shuffled_task):
    """Shuffled labels: the base stage cannot beat always answering 'a'; the error says so and what to change,
    and no checkpoint is written."""
    config = LTPTrainConfig(model="tiny-bert", task=str(shuffled_task), steps=15, batch_size=8, threads=1, lr=1e-2)
    with pytest.raises(PrunexError, match="no better than always answering the majority label 0") as err:
        train_ltp(config, tmp_path / "noise", show_progress=False)
    assert "--epochs" in str(err.value) and "labels match the texts" in str(err.value)
    assert not (tmp_path / "noise").exists()
    result = runner.invoke(app, ["train", "ltp", "--model", "tiny-bert", "--task", str(shuffled_task),
                                 "--steps", "15", "--batch-size", "8", "--threads", "1", "--model-lr", "1e-2",
                                 "--out", str(tmp_path / "cli")])
    assert result.exit_code != 0 and "majority label" in str(result.exception)
    assert not (tmp_path / "cli" / "pruning.json").exists()


def test_the_majority_check_passes_a_real_classifier():
    from prunex.train.ltp_budget import check_beats_majority, majority_share

    labels = [0] * 60 + [1] * 40
    assert majority_share(labels, [0, 0, 1]) == (0, 0.6)
    check_beats_majority("base", 0.8, labels, labels)  # well above 0.6 + one standard error (0.049)
    with pytest.raises(PrunexError, match="majority label 0"):
        check_beats_majority("base", 0.62, labels, labels)


def test_stage_budget_counts_epochs_and_checks():
    from prunex.train.ltp_budget import EarlyStopping, stage_budget

    common = {"steps": 0, "base_epochs": 2.0, "prune_epochs": 0.25, "check_epochs": 0.25, "min_steps": 30,
              "patience": 1}
    base = stage_budget("base", 10_240, 32, **common)  # 320 steps an epoch
    assert (base.steps, base.check_every, base.patience) == (640, 80, 1)
    assert stage_budget("soft", 10_240, 32, **common).steps == 80
    assert stage_budget("hard", 200, 32, **common).steps == 30  # a small file still trains min_steps
    assert stage_budget("base", 10_240, 32, **{**common, "steps": 7}).steps == 7  # fixed: no early stopping
    stopping = EarlyStopping(patience=1)
    assert stopping.update(80, 0.7) and not stopping.should_stop
    assert stopping.update(160, 0.8) and not stopping.update(240, 0.79) and stopping.should_stop
    assert stopping.best_step == 160


def test_base_stage_stops_on_validation_and_keeps_the_best(tmp_path, csv_task):
    """Default (epoch-based) budget on the CSV: checks are recorded, the stage stops early, the best is kept."""
    config = LTPTrainConfig(model="tiny-bert", task=str(csv_task), stage="base", batch_size=8, threads=1, lr=1e-2,
                            min_steps=5, check_epochs=0.5, base_epochs=4.0)
    meta = train_ltp(config, tmp_path / "b", show_progress=False)
    figures = meta.training["figures"]["base"]
    checks = [c["accuracy"] for c in figures["checks"]]
    assert figures["planned_steps"] == 40 and figures["steps"] < 40  # 4 epochs of 80 rows / 8; stopped early
    assert figures["validation"]["accuracy"] == max(checks) and max(checks) > 0.8


def test_lambda_controller_steers_towards_the_target():
    from prunex.train.ltp_target import MAX_LAMBDA, LambdaController

    controller = LambdaController(target=0.5, lam=0.1)
    above = [controller.update(0.9) for _ in range(5)]
    assert above == sorted(above) and above[-1] > 0.1  # too many FLOPs: lambda grows
    for _ in range(100):
        controller.update(1.0)
    assert controller.lam == MAX_LAMBDA  # bounded
    below = LambdaController(target=0.5, lam=0.1)
    assert below.update(0.1) < 0.1  # pruning more than asked: lambda shrinks


@pytest.mark.parametrize("target", [0.35, 0.6])
def test_threshold_search_reaches_the_target(target):
    """calibrate_thresholds scales the thresholds until hard pruning on the examples runs at the target or
    just under it, never over."""
    from prunex.eval.accuracy import measure
    from prunex.train.ltp_target import calibrate_thresholds

    classifier = peaky("tiny-bert")
    g = torch.Generator().manual_seed(3)
    encoded = [[2, *torch.randint(5, TINY_ENCODER_VOCAB, (n - 2,), generator=g).tolist(), 3]
               for n in (40, 31, 25, 18, 12, 9, 33, 27)]
    labels = [0] * len(encoded)
    found = calibrate_thresholds(classifier, encoded, labels, target, tolerance=0.02)
    assert target - 0.02 <= found.relative_flops <= target
    assert measure(classifier, encoded, labels, mode="hard").relative_flops == pytest.approx(found.relative_flops)
    assert classifier.thresholds.config.final_threshold == pytest.approx(0.05 * found.scale)


def test_trained_checkpoint_lands_on_the_flops_target(trained):
    """The default target (0.5) is what the soft stage's calibration reached on the validation examples."""
    _, meta, _ = trained
    soft = meta.training["figures"]["soft"]
    assert 0.49 <= soft["calibration"]["relative_flops"] <= 0.5
    assert "final_lambda" in soft
    hard = meta.training["figures"]["hard"]
    assert abs(hard["validation"]["relative_flops"] - 0.5) <= 0.05 and hard["distill"] == 0.5


def test_the_floor_keeps_short_rows_whole_and_long_rows_above_cls():
    """Thresholds above any importance: each layer keeps [CLS] + the most important tokens up to the floor."""
    from prunex.prune.ltp import protected_tokens

    classifier = peaky("tiny-bert")
    classifier.thresholds = LTPThresholds(3, LTPConfig(final_threshold=10.0, temperature=0.5, min_tokens=4))
    ids, mask = padded_batch()
    with torch.no_grad():
        hard = classifier(ids, mask, "hard")
        masked = classifier(ids, mask, "masked")
    assert (hard.kept == 4).all()  # every row (9..30 tokens) keeps 4 after each layer
    torch.testing.assert_close(hard.logits, masked.logits, atol=1e-5, rtol=1e-5)
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.4, 0.0], [0.3, 0.1, 0.6, 0.0, 0.0]])
    alive = torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert protected_tokens(scores, alive, 3).tolist() == [
        [True, True, False, True, False],  # [CLS] + the two highest others
        [True, True, True, False, False],  # a row of 3 keeps all 3
    ]
    assert protected_tokens(scores, alive, 1).tolist() == [[True] + [False] * 4] * 2


def test_distillation_loss_is_zero_when_the_student_matches():
    from prunex.train.ltp_trainer import _distill_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert float(_distill_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(_distill_loss(logits, logits.flip(-1), 2.0)) > 0


def test_a_separate_evaluation_file_is_scored_whole(trained, csv_task, tmp_path):
    """The training file: its test split; another file: every row, and the report names the split."""
    from prunex.data.labelled import default_split

    out, _, _ = trained
    assert default_split("bbc") == "test" and default_split("rotten-tomatoes", "bbc") == "test"
    assert default_split(str(csv_task), str(csv_task.resolve())) == "test"
    other = tmp_path / "other.csv"
    other.write_text(csv_task.read_text())  # same rows, another file: a separate evaluation set
    assert default_split(str(other), str(csv_task.resolve())) == "all"
    assert evaluate_accuracy(out, str(csv_task)).split == "test"
    report = evaluate_accuracy(out, str(other))
    assert report.split == "all" and report.examples == 100
    result = runner.invoke(app, ["eval", "accuracy", str(out), "--task", str(other), "--json"])
    assert json.loads(result.output)["split"] == "all"


def test_bench_classify_ort_runs_four_engines_side_by_side(trained, csv_task, monkeypatch, tmp_path):
    """LTP and dense exports, fp32 and int8, each batch size, one run: rates, accuracies and the ratios."""
    from prunex.bench.classify_ort import ENGINES, OrtClassifyConfig, bench_classify_ort

    monkeypatch.setenv("PRUNEX_CACHE", str(tmp_path / "cache"))
    out, _, _ = trained
    report = bench_classify_ort(out, OrtClassifyConfig(batches=[1, 4], repeats=1, limit=8), progress=lambda _: None)
    assert report["split"] == "test" and report["examples"] == 8 and 0 < report["relative_flops"] < 1
    assert [row["batch"] for row in report["rows"]] == [1, 4]
    from prunex.eval.exported import training_task

    assert training_task(report["dirs"]["pruned_int8"]) == str(csv_task.resolve())  # found through the source
    for row in report["rows"]:
        assert set(row["engines"]) == set(ENGINES)
        assert all(e["examples_per_s"] > 0 for e in row["engines"].values())
        assert row["engines"]["pruned_fp32"]["tokens_kept_after_last_layer"] < \
            row["engines"]["dense_fp32"]["tokens_kept_after_last_layer"]
        assert row["pruned_vs_dense_fp32"] > 0 and row["pruned_vs_dense_int8"] > 0
