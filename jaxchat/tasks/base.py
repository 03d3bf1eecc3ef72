"""The Task abstraction (docs/DESIGN.md §8): an indexable list of conversations, with views and mixtures.

A conversation is ``{"messages": [{"role": ..., "content": ...}, ...], **extras}`` as rendered by
``jaxchat.tokenizer.render``; eval tasks add keys their evaluator needs (``letters``, ``test``...).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxchat.common import JaxchatError

logger = logging.getLogger(__name__)

Conversation = dict[str, Any]
PART_TYPES = ("text", "python", "python_output")


class Task:
    """Base class: a lazily indexed dataset of conversations with an optional ``[start:stop:step]`` view.

    Subclasses implement ``num_examples``, ``get_example`` (physical index → conversation),
    ``eval_type`` and, for eval tasks, ``evaluate``. A ``stop`` beyond the data is capped (logged once).
    """

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or (stop is not None and stop < start) or step < 1:
            raise JaxchatError(
                f"{type(self).__name__}: bad view start={start}, stop={stop}, step={step}; "
                "expected 0 <= start <= stop (or stop=None) and step >= 1"
            )
        self.start, self.stop, self.step = start, stop, step
        self._warned_stop = False

    @property
    def name(self) -> str:
        """A short label for logs."""
        return type(self).__name__

    @property
    def eval_type(self) -> str:
        """'categorical' (pick one of ``conversation['letters']``) or 'generative' (free text)."""
        raise NotImplementedError

    def num_examples(self) -> int:
        """Number of examples in the underlying data (ignoring the view)."""
        raise NotImplementedError

    def get_example(self, index: int) -> Conversation:
        """The conversation at physical ``index`` of the underlying data."""
        raise NotImplementedError

    def evaluate(self, conversation: Conversation, completion: str) -> bool | int:
        """Score ``completion`` (the model's assistant reply) against ``conversation``'s reference answer."""
        raise NotImplementedError(f"{self.name} has no evaluator")

    def __len__(self) -> int:
        n = self.num_examples()
        stop = n if self.stop is None else self.stop
        if stop > n:
            if not self._warned_stop:
                logger.warning("%s: stop=%d exceeds the %d examples available; using %d", self.name, stop, n, n)
                self._warned_stop = True
            stop = n
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index: int) -> Conversation:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name} indices must be integers, got {type(index).__name__}")
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name} index {index} out of range for {n} examples")
        return self.get_example(self.start + int(index) * self.step)

    def __iter__(self) -> Iterator[Conversation]:
        for i in range(len(self)):
            yield self[i]


class DatasetTask(Task):
    """A task over one cached HF split: the rows of ``self.ds`` visited in ``self.order`` (set by the
    subclass: a fixed shuffle, minus skipped rows)."""

    ds: Any
    order: np.ndarray

    def num_examples(self) -> int:
        return len(self.order)

    def row(self, index: int) -> dict[str, Any]:
        """The dataset row behind example ``index``."""
        return self.ds[int(self.order[index])]


class ConversationList(Task):
    """A generative task over conversations held in memory (``self.conversations``: message lists)."""

    conversations: list[list[dict[str, Any]]]

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> Conversation:
        return {"messages": [dict(m) for m in self.conversations[index]]}


class TaskMixture(Task):
    """All examples of ``tasks`` in one deterministic shuffled order (so the tasks are interleaved).

    Listing a task twice includes its examples twice (oversampling). The order equals nanochat's:
    ``random.Random(seed).shuffle`` of the concatenated (task, index) list.
    """

    def __init__(self, tasks: Sequence[Task], seed: int = 42, **view: int | None):
        super().__init__(**view)
        self.tasks = list(tasks)
        if not self.tasks:
            raise JaxchatError("TaskMixture needs at least one task")
        self.lengths = [len(t) for t in self.tasks]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        order = list(range(int(self.offsets[-1])))
        random.Random(seed).shuffle(order)  # shuffling ints permutes exactly like shuffling (task, idx) tuples
        self.order = np.asarray(order, dtype=np.int64)

    @property
    def eval_type(self) -> str:
        kinds = {t.eval_type for t in self.tasks}
        if len(kinds) != 1:
            raise JaxchatError(f"TaskMixture mixes eval types {sorted(kinds)}; evaluate its tasks one by one")
        return kinds.pop()

    def num_examples(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(task number, index within that task)`` of physical mixture index ``index``."""
        flat = int(self.order[index])
        task_idx = int(np.searchsorted(self.offsets, flat, side="right")) - 1
        return task_idx, flat - int(self.offsets[task_idx])

    def get_example(self, index: int) -> Conversation:
        task_idx, local = self.locate(index)
        return self.tasks[task_idx][local]


class TaskSequence(Task):
    """The examples of ``tasks`` one task after another (a curriculum), no shuffling."""

    def __init__(self, tasks: Sequence[Task], **view: int | None):
        super().__init__(**view)
        self.tasks = list(tasks)
        self.lengths = [len(t) for t in self.tasks]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def eval_type(self) -> str:
        kinds = {t.eval_type for t in self.tasks}
        if len(kinds) != 1:
            raise JaxchatError(f"TaskSequence mixes eval types {sorted(kinds)}; evaluate its tasks one by one")
        return kinds.pop()

    def num_examples(self) -> int:
        return int(self.offsets[-1])

    def get_example(self, index: int) -> Conversation:
        task_idx = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.tasks[task_idx][index - int(self.offsets[task_idx])]


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """The multiple-choice prompt of docs/DESIGN.md §8 (nanochat's ``render_mc``).

    The letter comes AFTER its choice and right after ``=`` (no space): small models bind a choice
    to its letter better that way, and "A" and " A" are different tokens while the answer is "A".
    """
    lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices, strict=True))
    return f"Multiple Choice question: {question}\n{lines}\nRespond only with the letter of the correct answer."


def evaluate_letter(conversation: Conversation, completion: str) -> bool:
    """Categorical scoring: the completion (stripped) equals the reference letter. Non-letters score False."""
    reference = conversation["messages"][-1]["content"]
    return isinstance(completion, str) and completion.strip() == reference


def conversation_problem(messages: Any) -> str | None:
    """Why ``messages`` is not a trainable conversation, or None when it is fine.

    Accepted: an optional leading system message, then user/assistant alternating starting with user,
    at least one user and one assistant message; string contents (assistant content may also be a list
    of ``{"type": text|python|python_output, "text": str}`` parts).
    """
    if not isinstance(messages, list) or not messages:
        return "expected a non-empty list of messages"
    body = messages[1:] if isinstance(messages[0], dict) and messages[0].get("role") == "system" else messages
    offset = len(messages) - len(body)
    if offset and not isinstance(messages[0].get("content"), str):
        return "message 0 (system): content must be a string"
    if len(body) < 2:
        after = " after the system message" if offset else ""
        return f"expected at least a user and an assistant message, got {len(body)} message(s){after}"
    for i, msg in enumerate(body):
        k = i + offset
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            return f"message {k}: expected a dict with 'role' and 'content'"
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            return f"message {k}: role {msg['role']!r}, expected {expected!r}"
        content = msg["content"]
        if isinstance(content, str):
            continue
        if expected == "assistant" and isinstance(content, list) and content:
            for j, part in enumerate(content):
                ok = isinstance(part, dict) and part.get("type") in PART_TYPES and isinstance(part.get("text"), str)
                if not ok:
                    return f"message {k} part {j}: expected {{'type': one of {PART_TYPES}, 'text': str}}"
            continue
        return f"message {k}: content must be a string" + (" or a list of parts" if expected == "assistant" else "")
    return None
