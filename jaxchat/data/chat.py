"""The chat input pipelines: midtraining (packed rows, docs/DESIGN.md §6) and SFT (one conversation a row, §7).

Both read ONE epoch of a ``jaxchat.tasks.Task`` in index order (the mixtures already shuffle with seed
42), render each conversation with ``tokenizer.render_conversation`` and yield int32
``{"inputs", "targets"}`` batches of a fixed number of rows, plus

- ``"progress"`` (float): the fraction of the epoch's conversations consumed once this batch is done
  (1.0 for the last batch); the midtraining LR schedule reads it;
- ``"truncated"`` (int): how many conversations of the epoch, up to and including this batch, were
  longer than ``seq_len + 1`` tokens and were cut to it (log it; it is part of the iterator state, so
  it survives a resume).

The last, partial batch is filled with fully masked rows (targets all −1) so shapes stay static.
Everything is a grain pipeline (``MapDataset.range → map(render) → to_iter_dataset → pack/batch``):
deterministic, and ``iter(ds).get_state()`` / ``set_state()`` resume exactly. A bad row of the task
raises the task's own JaxchatError when the pipeline reaches it.

Midtraining (``mid_dataset``): conversations are packed into rows of ``seq_len + 1`` tokens with
grain's ``BestFitPackIterDataset`` (``num_packing_bins = rows``, bins not shuffled): each conversation
goes, whole, into the row where it leaves the least room; when it fits in no row, the batch is emitted
and a new one started with it. So a conversation is never cut across rows: it starts at a row start or
right after another one in the same row. A conversation longer than ``seq_len + 1`` is truncated to it
(and counted). Every real token is a target (the mask is not used in midtraining: docs/DESIGN.md §6); the rest
of a row is padding with ``<|bos|>`` as input and −1 as target. Row ``r``: ``inputs = row[:-1]``,
``targets = row[1:]``.

SFT (``sft_dataset``): one conversation per row, rendered with ``max_tokens = seq_len + 1`` (cut to the
sequence length: upstream #590), ``inputs = ids[:-1]``, ``targets = ids[1:]`` with −1 where
``mask[1:] == 0``; rows are padded with ``<|assistant_end|>`` (targets −1) to the batch's longest row
rounded UP to one of a few ``buckets`` (the top one is ``seq_len``), so jit compiles a handful of shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from grain.experimental import BestFitPackIterDataset

from jaxchat.common import JaxchatError

IGNORE = -1  # target value the loss skips


def _check_sizes(stage: str, task, rows: int, seq_len: int) -> int:
    for field, value in (("rows", rows), ("seq_len", seq_len)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise JaxchatError(f"{stage} pipeline: {field}={value!r}, expected a positive integer")
    n = len(task)
    if n == 0:
        raise JaxchatError(f"{stage} pipeline: task {getattr(task, 'name', type(task).__name__)} has no conversations")
    return n


# ---- rendering (picklable callables, so the pipelines also work with grain worker processes) ----------


class _Render:
    """Task index → ``{"ids": int32 array, "mask": int32 array, "index", "truncated"}``."""

    def __init__(self, task, tokenizer, max_tokens: int, keep_mask: bool):
        self.task, self.tokenizer = task, tokenizer
        self.max_tokens, self.keep_mask = max_tokens, keep_mask

    def __call__(self, index: int) -> dict[str, Any]:
        conversation = self.task[int(index)]  # a bad row raises the task's own JaxchatError
        # Render in full first: only then do we know whether the conversation had to be cut.
        try:
            ids, mask = self.tokenizer.render_conversation(conversation, max_tokens=None)
        except JaxchatError as e:
            name = getattr(self.task, "name", type(self.task).__name__)
            raise JaxchatError(f"{name} example {int(index)}: {e}") from None
        truncated = len(ids) > self.max_tokens
        element = {"ids": np.asarray(ids[: self.max_tokens], dtype=np.int32), "index": int(index),
                   "truncated": int(truncated)}
        if self.keep_mask:
            element["mask"] = np.asarray(mask[: self.max_tokens], dtype=np.int32)
        return element


# ---- running totals kept in the iterator state ---------------------------------------------------


class _TruncationTotalIterator(grain.DatasetIterator):
    """Turns each batch's ``truncated`` count into the running total of the epoch (kept in the state)."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._total = 0

    def __next__(self) -> dict[str, Any]:
        batch = next(self._parent)
        self._total += batch["truncated"]
        return {**batch, "truncated": self._total}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "truncated": self._total}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._total = int(state["truncated"])


class ChatDataset(grain.IterDataset):
    """A chat pipeline (see the module docstring); ``iter()`` gives a resumable grain iterator."""

    def __init__(self, parent: grain.IterDataset, description: str, num_conversations: int):
        super().__init__(parent)
        self._description = description
        self.num_conversations = num_conversations

    def __iter__(self) -> grain.DatasetIterator:
        return _TruncationTotalIterator(self._parent.__iter__())

    def __str__(self) -> str:
        return self._description


# ---- midtraining ---------------------------------------------------------------------------------


class _CollatePacked:
    """Packed rows (grain's packer output) → one ``(rows, seq_len)`` batch."""

    def __init__(self, rows: int, capacity: int, pad_id: int, num_conversations: int):
        self.rows, self.capacity, self.pad_id, self.n = rows, capacity, pad_id, num_conversations

    def __call__(self, packed: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids = np.full((self.rows, self.capacity), self.pad_id, dtype=np.int32)
        segments = np.zeros((self.rows, self.capacity), dtype=np.int32)
        last_index, truncated = -1, 0
        for r, row in enumerate(packed):
            ids[r], segments[r] = row["ids"], row["ids_segment_ids"]
            last_index = max([last_index, *row["index"]])
            truncated += sum(row["truncated"])
        # A packed batch takes a contiguous run of the task, so every index <= last_index is consumed.
        targets = np.where(segments[:, 1:] > 0, ids[:, 1:], IGNORE).astype(np.int32)
        return {"inputs": np.ascontiguousarray(ids[:, :-1]), "targets": targets,
                "progress": (last_index + 1) / self.n, "truncated": truncated}


def mid_dataset(task, tokenizer, rows: int, seq_len: int) -> ChatDataset:
    """One epoch of ``task`` packed into ``{"inputs", "targets"}`` int32 ``(rows, seq_len)`` batches.

    Conversations (``render_conversation(conv, max_tokens=None)``, cut to ``seq_len + 1`` tokens when
    longer and counted in ``"truncated"``) are best-fit packed into rows of ``seq_len + 1`` without
    being split; every real token is a target, padding (input ``<|bos|>``) has target −1. Also yields
    ``"progress"`` and ``"truncated"``; see the module docstring.
    """
    n = _check_sizes("midtraining", task, rows, seq_len)
    capacity = seq_len + 1
    pad_id = tokenizer.bos_token_id
    ds = grain.MapDataset.range(n).map(_Render(task, tokenizer, capacity, keep_mask=False)).to_iter_dataset()
    ds = BestFitPackIterDataset(
        ds,
        length_struct={"ids": capacity},
        num_packing_bins=rows,  # one packed batch of grain's = one of our batches
        shuffle_bins=False,  # keep the order deterministic and simple (the mixture is already shuffled)
        meta_features=("index", "truncated"),
        padding_struct={"ids": pad_id},
    )
    ds = ds.batch(rows, drop_remainder=False, batch_fn=_CollatePacked(rows, capacity, pad_id, n))
    return ChatDataset(ds, f"mid_dataset({n} conversations, rows={rows}, seq_len={seq_len})", n)


# ---- SFT -----------------------------------------------------------------------------------------


def default_buckets(seq_len: int) -> tuple[int, ...]:
    """Row lengths SFT batches are padded to: 1/8, 1/4, 1/2, 3/4 and all of ``seq_len``."""
    return tuple(sorted({max(1, seq_len * k // 8) for k in (1, 2, 4, 6, 8)}))


def _check_buckets(buckets: Sequence[int] | None, seq_len: int) -> tuple[int, ...]:
    if buckets is None:
        return default_buckets(seq_len)
    try:
        values = sorted({int(b) for b in buckets})
    except (TypeError, ValueError):
        raise JaxchatError(f"sft buckets {buckets!r}: expected a sequence of positive integers") from None
    if not values or values[0] < 1 or values[-1] > seq_len:
        raise JaxchatError(f"sft buckets {list(buckets)}: expected positive lengths no larger than seq_len={seq_len}")
    if values[-1] != seq_len:
        values.append(seq_len)  # the top bucket must hold a full-length row
    return tuple(values)


class _CollateSFT:
    """Rendered conversations → one ``(rows, bucket)`` batch."""

    def __init__(self, rows: int, buckets: tuple[int, ...], pad_id: int, num_conversations: int):
        self.rows, self.buckets, self.pad_id, self.n = rows, np.asarray(buckets), pad_id, num_conversations

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(item["ids"]) - 1 for item in items)
        width = int(self.buckets[np.searchsorted(self.buckets, longest)])  # round UP to a bucket
        inputs = np.full((self.rows, width), self.pad_id, dtype=np.int32)
        targets = np.full((self.rows, width), IGNORE, dtype=np.int32)
        for r, item in enumerate(items):
            ids, mask = item["ids"], item["mask"]
            k = len(ids) - 1
            inputs[r, :k] = ids[:-1]
            targets[r, :k] = np.where(mask[1:] == 1, ids[1:], IGNORE)
        return {"inputs": inputs, "targets": targets, "progress": (items[-1]["index"] + 1) / self.n,
                "truncated": sum(item["truncated"] for item in items)}


def sft_dataset(task, tokenizer, rows: int, seq_len: int, buckets: Sequence[int] | None = None) -> ChatDataset:
    """One epoch of ``task``, one conversation per row, as ``{"inputs", "targets"}`` int32 ``(rows, L)``.

    ``L`` is the batch's longest row rounded up to one of ``buckets`` (default :func:`default_buckets`;
    ``seq_len`` is always the top one). Targets are −1 where the render mask is 0 and on padding
    (``<|assistant_end|>``). Also yields ``"progress"`` and ``"truncated"``; see the module docstring.
    """
    n = _check_sizes("SFT", task, rows, seq_len)
    bucket_lengths = _check_buckets(buckets, seq_len)
    pad_id = tokenizer.encode_special("<|assistant_end|>")
    ds = grain.MapDataset.range(n).map(_Render(task, tokenizer, seq_len + 1, keep_mask=True)).to_iter_dataset()
    ds = ds.batch(rows, drop_remainder=False, batch_fn=_CollateSFT(rows, bucket_lengths, pad_id, n))
    return ChatDataset(ds, f"sft_dataset({n} conversations, rows={rows}, seq_len={seq_len}, "
                           f"buckets={bucket_lengths})", n)
