"""MMLU (cais/mmlu): 4-way multiple choice. Configs ``all`` (test / validation / dev) and
``auxiliary_train`` (train; every row wrapped in a struct column ``train``, unwrapped here).

Malformed rows (null question, not 4 choices, answer outside 0–3) RAISE a JaxchatError naming the
file, row and reason when the task is built: MMLU is a fixed benchmark, so a bad row means a damaged
download, and silently dropping rows would change reported accuracies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxchat.common import JaxchatError
from jaxchat.tasks._data import (
    arrow_table,
    bad_row_error,
    check_columns,
    is_int,
    is_str,
    is_str_list,
    load_split,
    shuffled_order,
    struct_with,
    to_numpy_bool,
)
from jaxchat.tasks.base import Conversation, DatasetTask, evaluate_letter, render_mc

SPLITS = {"all": ("test", "validation", "dev"), "auxiliary_train": ("train",)}
FIELDS = {"question": is_str, "subject": is_str, "choices": is_str_list, "answer": is_int}
DESCRIPTIONS = {"question": "string", "subject": "string", "choices": "list<string>", "answer": "int64"}


def _unwrap(table: pa.Table) -> pa.Table:
    """The ``train`` struct column of auxiliary_train as ordinary columns (no copy of the data)."""
    col = table.column("train")
    return pa.table({name: pc.struct_field(col, name) for name in FIELDS})


class MMLU(DatasetTask):
    """MMLU questions rendered as multiple choice (docs/DESIGN.md §8); answers are the letters A–D."""

    letters = ("A", "B", "C", "D")

    def __init__(self, subset: str, split: str, *, home: str | Path | None = None, **view: int | None):
        super().__init__(**view)
        if subset not in SPLITS:
            raise JaxchatError(f"MMLU subset {subset!r}: expected one of {list(SPLITS)}")
        if split not in SPLITS[subset]:
            raise JaxchatError(
                f"MMLU subset {subset} has no cached split {split!r}; expected one of {list(SPLITS[subset])}"
            )
        self.subset, self.split = subset, split
        self.label = f"MMLU {subset}/{split}"
        self.ds, self.path = load_split("mmlu", subset, split, home)
        table = arrow_table(self.ds)
        if subset == "auxiliary_train":
            wrapper = (struct_with(FIELDS), "struct<question, subject, choices, answer>")
            check_columns(table, self.path, self.label, {"train": wrapper})
            table = _unwrap(table)
        else:
            check_columns(table, self.path, self.label, {k: (FIELDS[k], DESCRIPTIONS[k]) for k in FIELDS})
        self._validate(table)
        self.order = shuffled_order(table.num_rows)

    def _validate(self, table: pa.Table) -> None:
        choices = table.column("choices")
        n_choices = np.asarray(pc.fill_null(pc.list_value_length(choices), 0).to_numpy(zero_copy_only=False))
        null_choice = np.zeros(table.num_rows, dtype=bool)
        flat_null = to_numpy_bool(pc.is_null(pc.list_flatten(choices)))
        if flat_null.any():
            lengths = n_choices.astype(np.int64)
            null_choice[np.repeat(np.arange(table.num_rows), lengths)[flat_null]] = True
        answer = np.asarray(pc.fill_null(table.column("answer"), -1).to_numpy(zero_copy_only=False))
        no_question = to_numpy_bool(pc.is_null(table.column("question")))
        bad = no_question | (n_choices != 4) | null_choice | (answer < 0) | (answer > 3)
        if bad.any():
            def reason(i: int) -> str:
                if no_question[i]:
                    return "question is null"
                if n_choices[i] != 4 or null_choice[i]:
                    return f"expected 4 non-null choices, got {table.column('choices')[i].as_py()!r}"
                return f"answer {table.column('answer')[i].as_py()!r} is not 0-3"

            raise bad_row_error(self.label, self.path, bad, reason, "mmlu")

    @property
    def name(self) -> str:
        return f"MMLU({self.subset}/{self.split})"

    @property
    def eval_type(self) -> str:
        return "categorical"

    def get_example(self, index: int) -> Conversation:
        row = self.row(index)
        if self.subset == "auxiliary_train":
            row = row["train"]
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], self.letters, row["choices"])},
                {"role": "assistant", "content": self.letters[row["answer"]]},
            ],
            "subject": row["subject"],
            "letters": self.letters,
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        """True when ``completion`` is the reference letter."""
        return evaluate_letter(conversation, completion)
