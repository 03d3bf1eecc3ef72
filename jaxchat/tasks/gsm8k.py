"""GSM8K (openai/gsm8k, config main): grade-school math with calculator calls.

The solution's ``<<expr=result>>`` spans become a ``python`` part (expr) and a ``python_output`` part
(result), so the model learns to call the calculator and is fed its output; the final answer
follows ``#### ``. Malformed rows (null question/answer, no ``#### `` line) RAISE a JaxchatError
naming the file, row and reason when the task is built: GSM8K is a fixed dataset, a bad row means a
damaged download, and the evaluator needs every reference answer.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow.compute as pc

from jaxchat.common import JaxchatError
from jaxchat.tasks._data import (
    arrow_table,
    bad_row_error,
    check_columns,
    is_str,
    load_split,
    shuffled_order,
    to_numpy_bool,
)
from jaxchat.tasks.base import Conversation, DatasetTask

SPLITS = ("train", "test")
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
CALC_RE = re.compile(r"(<<[^>]+>>)")


def extract_answer(text: str) -> str | None:
    """The number after the first ``#### `` in ``text``, commas removed (GSM8K's official normalisation)."""
    match = ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def same_number(a: str | None, b: str | None) -> bool:
    """Whether two extracted answers are the same number ('18', '18.', '18.0' agree); None never matches."""
    if a is None or b is None:
        return False
    try:
        return Decimal(a.rstrip(".")) == Decimal(b.rstrip("."))
    except InvalidOperation:  # e.g. "1.2.3": fall back to the strings
        return a == b


def solution_parts(solution: str) -> list[dict[str, str]]:
    """Split a GSM8K solution into text / python / python_output parts (empty text parts dropped)."""
    parts: list[dict[str, str]] = []
    for piece in CALC_RE.split(solution):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, sep, result = piece[2:-2].rpartition("=")
            if not sep:  # no '=': the whole span is the expression, nothing to show as output
                expr, result = piece[2:-2], ""
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def evaluate_hash_answer(conversation: Conversation, completion: str) -> bool:
    """Generative scoring shared with SpellingBee: the numbers after ``#### `` agree."""
    content = conversation["messages"][-1]["content"]
    reference = content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")
    predicted = extract_answer(completion) if isinstance(completion, str) else None
    return same_number(extract_answer(reference), predicted)


class GSM8K(DatasetTask):
    """GSM8K problems: user question → assistant solution with calculator parts and ``#### N``."""

    def __init__(self, subset: str, split: str, *, home: str | Path | None = None, **view: int | None):
        super().__init__(**view)
        if subset != "main":
            raise JaxchatError(f"GSM8K subset {subset!r}: only 'main' is downloaded")
        if split not in SPLITS:
            raise JaxchatError(f"GSM8K split {split!r}: expected one of {SPLITS}")
        self.subset, self.split = subset, split
        label = f"GSM8K {subset}/{split}"
        self.ds, self.path = load_split("gsm8k", subset, split, home)
        table = arrow_table(self.ds)
        check_columns(table, self.path, label, {"question": (is_str, "string"), "answer": (is_str, "string")})
        no_question = to_numpy_bool(pc.is_null(table.column("question")))
        no_answer = ~to_numpy_bool(pc.match_substring(table.column("answer"), "#### "))
        bad = no_question | no_answer
        if bad.any():
            def reason(i: int) -> str:
                if no_question[i]:
                    return "question is null"
                return f"answer has no '#### ' line: {table.column('answer')[i].as_py()!r}"

            raise bad_row_error(label, self.path, bad, reason, "gsm8k")
        self.order = shuffled_order(table.num_rows)

    @property
    def name(self) -> str:
        return f"GSM8K({self.split})"

    @property
    def eval_type(self) -> str:
        return "generative"

    def get_example(self, index: int) -> Conversation:
        row = self.row(index)
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": solution_parts(row["answer"])},
            ]
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        """True when the number after ``#### `` in ``completion`` equals the reference answer."""
        return evaluate_hash_answer(conversation, completion)
