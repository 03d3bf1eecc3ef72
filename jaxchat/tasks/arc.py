"""ARC (allenai/ai2_arc), configs ARC-Easy and ARC-Challenge: science multiple choice.

Choice labels are usually A–D but sometimes 1–4, and some questions have 3 or 5 choices; the
labels are used as given (the conversation's ``letters``). Malformed rows (text/label lengths
differ, fewer than 2 choices, answerKey not among the labels, nulls) RAISE a JaxchatError naming the
file, row and reason when the task is built: ARC is a benchmark, so a bad row is a damaged download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.tasks._data import (
    arrow_table,
    bad_row_error,
    check_columns,
    is_str,
    is_str_list,
    load_split,
    shuffled_order,
    struct_with,
)
from jaxchat.tasks.base import Conversation, DatasetTask, evaluate_letter, render_mc

SUBSETS = ("ARC-Easy", "ARC-Challenge")
SPLITS = ("train", "validation", "test")


def _row_problem(question: str | None, choices: dict | None, answer: str | None) -> str | None:
    if question is None:
        return "question is null"
    texts = (choices or {}).get("text") or []
    labels = (choices or {}).get("label") or []
    if len(texts) != len(labels):
        return f"{len(texts)} choice texts but {len(labels)} labels"
    if len(texts) < 2 or any(t is None for t in texts) or any(lab is None for lab in labels):
        return f"expected at least 2 non-null choices, got {choices!r}"
    if answer not in labels:
        return f"answerKey {answer!r} is not one of the labels {labels}"
    return None


class ARC(DatasetTask):
    """ARC questions rendered as multiple choice (docs/DESIGN.md §8) with the dataset's own labels as letters."""

    def __init__(self, subset: str, split: str, *, home: str | Path | None = None, **view: int | None):
        super().__init__(**view)
        if subset not in SUBSETS:
            raise JaxchatError(f"ARC subset {subset!r}: expected one of {SUBSETS}")
        if split not in SPLITS:
            raise JaxchatError(f"ARC split {split!r}: expected one of {SPLITS}")
        self.subset, self.split = subset, split
        label = f"ARC {subset}/{split}"
        self.ds, self.path = load_split("arc", subset, split, home)
        table = arrow_table(self.ds)
        check_columns(table, self.path, label, {
            "question": (is_str, "string"),
            "choices": (
                struct_with({"text": is_str_list, "label": is_str_list}),
                "struct<text: list<string>, label: list<string>>",
            ),
            "answerKey": (is_str, "string"),
        })
        # ARC splits are small (≤ 3.6K rows): a plain Python pass is fast enough.
        rows = table.select(["question", "choices", "answerKey"]).to_pylist()
        problems = [_row_problem(r["question"], r["choices"], r["answerKey"]) for r in rows]
        bad = np.array([p is not None for p in problems], dtype=bool)
        if bad.any():
            raise bad_row_error(label, self.path, bad, lambda i: problems[i], "arc")
        self.order = shuffled_order(len(rows))

    @property
    def name(self) -> str:
        return f"ARC({self.subset}/{self.split})"

    @property
    def eval_type(self) -> str:
        return "categorical"

    def get_example(self, index: int) -> Conversation:
        row = self.row(index)
        letters = list(row["choices"]["label"])
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, row["choices"]["text"])},
                {"role": "assistant", "content": row["answerKey"]},
            ],
            "letters": letters,
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        """True when ``completion`` is the reference label."""
        return evaluate_letter(conversation, completion)
