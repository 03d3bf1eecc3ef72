"""SmolTalk (HuggingFaceTB/smol-smoltalk): general chat conversations, train ≈ 460K / test ≈ 24K.

Malformed conversations (roles out of order, null content, fewer than two turns) are SKIPPED and
counted (``num_skipped``, one warning naming the file and the first rows), because SmolTalk is
training / validation-loss data: dropping a rare odd row costs nothing, while crashing a multi-hour
midtraining run would. Pass ``strict=True`` to raise instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.tasks._data import (
    arrow_table,
    bad_conversations,
    check_columns,
    load_split,
    messages_type,
    shuffled_order,
)
from jaxchat.tasks.base import Conversation, DatasetTask, conversation_problem

logger = logging.getLogger(__name__)
SPLITS = ("train", "test")


class SmolTalk(DatasetTask):
    """SmolTalk conversations (optional system message, then user/assistant turns), shuffled with seed 42."""

    def __init__(self, split: str, *, strict: bool = False, home: str | Path | None = None, **view: int | None):
        super().__init__(**view)
        if split not in SPLITS:
            raise JaxchatError(f"SmolTalk split {split!r}: expected one of {SPLITS}")
        self.split = split
        self.ds, self.path = load_split("smoltalk", None, split, home)
        label = f"SmolTalk {split}"
        table = arrow_table(self.ds)
        expected = {"messages": (messages_type, "list<struct<role: string, content: string>>")}
        check_columns(table, self.path, label, expected)
        bad = bad_conversations(table.column("messages"))
        order = shuffled_order(len(bad))
        self.num_skipped = int(bad.sum())
        if self.num_skipped:
            rows = np.flatnonzero(bad)[:3]
            details = "; ".join(f"row {int(i)}: {conversation_problem(self.ds[int(i)]['messages'])}" for i in rows)
            message = f"{label} ({self.path}): {self.num_skipped} malformed conversation(s) of {len(bad)} ({details})"
            if strict:
                raise JaxchatError(message)
            logger.warning("%s; skipped", message)
            order = order[~bad[order]]
        self.order = order

    @property
    def eval_type(self) -> str:
        return "generative"

    def get_example(self, index: int) -> Conversation:
        return {"messages": self.row(index)["messages"]}
