"""SFT rows packed like nanochat 92d63d4 (``sft_data_generator_bos_bestfit`` in ``scripts/chat_sft.py``):
several whole conversations per BOS-aligned row, best fit, padded instead of cropped; one epoch, exact resume.

``sft_bestfit_dataset`` is the packed alternative to ``jaxchat.data.chat.sft_dataset`` (one conversation a
row) and yields the same things: int32 ``{"inputs", "targets"}`` of shape ``(rows, seq_len)``,
``"progress"`` and the running ``"truncated"`` count, from a :class:`~jaxchat.data.chat.ChatDataset`. It is
a port for one process (nanochat's rank 0 of 1) and gives nanochat's batches token for token
(``tools/parity_sft_loader_nanochat.py``; ``tests/test_sft_loader_2026.py`` keeps the evidence):

* Buffer: before every placement the buffer is topped up to ``buffer_size`` (100) conversations, read in
  task order from a cursor that wraps around at the end of the task (so near the end of the epoch the
  buffer already holds the start of the next pass). Each is rendered once, when read, by
  ``render_conversation`` with nanochat's cut, ``max_tokens = 2048`` (nanochat calls it with its
  default, which is 2048 in jaxchat too).
* Rows: each row of ``seq_len + 1`` tokens is filled from position 0 by, again and again, the LARGEST
  buffered conversation that fits entirely into the space left (the first in buffer order among
  equals). When none fits, the rest of the row is padding: ``<|bos|>`` inputs, mask 0. ``inputs =
  row[:-1]``, ``targets = row[1:]`` with −1 where ``mask[1:] == 0`` (so on every padding position too).
  Rows are built one after another and the buffer carries over, so one batch of ``k × rows`` rows is
  exactly ``k`` consecutive nanochat batches of ``rows`` (the micro-batches of gradient accumulation).
* Epoch: ``consumed`` counts the conversations taken out of the buffer (repeats from the wrap-around
  included, as nanochat counts them). ``"progress"`` is ``min(1, consumed / len(task))`` after the
  batch; iteration stops after the batch in which ``consumed`` reaches ``len(task)`` (nanochat's
  ``last_step``). The rest of that batch comes from the wrap-around, as in nanochat.

``"truncated"`` counts the conversations placed cut: by the 2048 cut (nanochat's too, silently) or by
the row (the deviation below).

Deviation: a conversation still longer than the row (possible when ``seq_len + 1 < 2048``) is cut to the
row. nanochat never places such a conversation: it stays in the buffer for good, one slot less, and
every pass of the cursor adds another copy; once the buffer holds nothing else, every row is padding and
``consumed`` stops growing, so the epoch never ends (an endless stream of padding batches; it comes
soon when many conversations are longer than a short context). Before that, they are silently skipped. When every conversation fits a row
(always at nanochat's ``seq_len`` 2048, because of the 2048 cut) the batches are nanochat's.

State (``iter(ds).get_state()``, JSON-able, taken between batches): ``cursor`` (the next task index to
read), ``consumed`` and the buffered conversations' task indices in buffer order; ``set_state``
re-renders those, so the batches that follow are those of an uninterrupted run. A bad row of the task
raises the task's own JaxchatError when the buffer reaches it.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.data.chat import IGNORE, ChatDataset, _check_sizes, _Render

BUFFER_SIZE = 100  # nanochat's buffer_size: conversations buffered before each placement
RENDER_MAX_TOKENS = 2048  # nanochat's render_conversation default, which its loader relies on
LOADER = "sft_bestfit"


class SFTBestFitIterator(grain.DatasetIterator):
    """Iterator of :func:`sft_bestfit_dataset`; yields each batch's own ``truncated`` count (``ChatDataset``
    turns it into the running total)."""

    def __init__(self, task, tokenizer, rows: int, seq_len: int, buffer_size: int):
        super().__init__()
        self._n = len(task)
        self._rows, self._capacity, self._buffer_size = rows, seq_len + 1, buffer_size
        # Cut at nanochat's 2048, or to the row (the deviation above), whichever is shorter.
        self._render = _Render(task, tokenizer, min(RENDER_MAX_TOKENS, self._capacity), keep_mask=True)
        self._pad_id = tokenizer.bos_token_id
        self._reset(cursor=0, consumed=0)

    def _reset(self, cursor: int, consumed: int) -> None:
        self._cursor, self._consumed = cursor, consumed
        self._buffer: list[dict[str, Any]] = []  # rendered conversations (ids, mask, index, truncated)
        self._lens = np.zeros(0, dtype=np.int64)

    def _append(self, index: int) -> None:
        element = self._render(index)  # a bad row raises here, before anything changes
        self._buffer.append(element)
        self._lens = np.append(self._lens, len(element["ids"]))

    def _refill(self) -> None:
        while len(self._buffer) < self._buffer_size:
            self._append(self._cursor)
            self._cursor = (self._cursor + 1) % self._n

    def _fill_row(self, ids: np.ndarray, mask: np.ndarray) -> int:
        """Pack one row (nanochat's loop) into ``ids``/``mask`` (pre-filled with padding); returns how many
        of the conversations placed were cut."""
        pos, cut = 0, 0
        while pos < self._capacity:
            self._refill()
            fits = np.where(self._lens <= self._capacity - pos, self._lens, 0)  # every render has >= 1 token
            i = int(fits.argmax())  # the FIRST index among equals, as nanochat's strict '>' scan
            if fits[i] == 0:
                break  # nothing fits: the rest of the row stays padding
            element = self._buffer.pop(i)
            self._lens = np.delete(self._lens, i)
            k = len(element["ids"])
            ids[pos:pos + k], mask[pos:pos + k] = element["ids"], element["mask"]
            pos += k
            self._consumed += 1
            cut += element["truncated"]
        return cut

    def __next__(self) -> dict[str, Any]:
        if self._consumed >= self._n:  # the epoch ended with the previous batch
            raise StopIteration
        ids = np.full((self._rows, self._capacity), self._pad_id, dtype=np.int32)
        mask = np.zeros((self._rows, self._capacity), dtype=np.int32)
        truncated = sum(self._fill_row(ids[r], mask[r]) for r in range(self._rows))
        # Padding has mask 0, so this also covers nanochat's "targets[i, content_len-1:] = -1".
        targets = np.where(mask[:, 1:] == 1, ids[:, 1:], IGNORE).astype(np.int32)
        return {"inputs": np.ascontiguousarray(ids[:, :-1]), "targets": targets,
                "progress": min(1.0, self._consumed / self._n), "truncated": truncated}

    def get_state(self) -> dict[str, Any]:
        return {"loader": LOADER, "num_conversations": self._n, "cursor": self._cursor, "consumed": self._consumed,
                "buffer": [element["index"] for element in self._buffer]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` (from :meth:`get_state`) was taken: the same buffer, cursor and count."""
        try:
            if state.get("loader") != LOADER:
                raise JaxchatError(f"SFT data state {_short(state)} is not a best-fit SFT state; resume with the "
                                   "SFT packing the checkpoint was trained with")
            n, cursor, consumed = int(state["num_conversations"]), int(state["cursor"]), int(state["consumed"])
            indices = [int(i) for i in state["buffer"]]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise JaxchatError(f"SFT data state {_short(state)} is malformed; expected the dict of loader, "
                               "num_conversations, cursor, consumed, buffer that get_state() returns") from None
        if n != self._n:
            raise JaxchatError(f"SFT data state is for a mixture of {n} conversations, this one has {self._n}; "
                               "resume with the same SFT mixture")
        if not (0 <= cursor < n and consumed >= 0 and all(0 <= i < n for i in indices)):
            raise JaxchatError(f"SFT data state {_short(state)} has positions outside 0..{n - 1}")
        self._reset(cursor, consumed)
        for index in indices:
            self._append(index)


def _short(state: Any, limit: int = 120) -> str:
    text = repr(state)
    return text if len(text) <= limit else text[:limit] + "…"


class _SFTBestFitSource(grain.IterDataset):
    def __init__(self, task, tokenizer, rows: int, seq_len: int, buffer_size: int):
        super().__init__()
        self._args = (task, tokenizer, rows, seq_len, buffer_size)

    def __iter__(self) -> SFTBestFitIterator:
        return SFTBestFitIterator(*self._args)


def sft_bestfit_dataset(task, tokenizer, rows: int, seq_len: int, buffer_size: int = BUFFER_SIZE) -> ChatDataset:
    """One epoch of ``task`` best-fit packed into ``{"inputs", "targets"}`` int32 ``(rows, seq_len)`` batches,
    nanochat 92d63d4's SFT loader (see the module docstring). Pass ``rows = device rows × accumulation``:
    the batch is then nanochat's ``accumulation`` consecutive micro-batches. Also yields ``"progress"``
    and ``"truncated"`` (see ``jaxchat.data.chat``)."""
    n = _check_sizes("SFT best-fit", task, rows, seq_len)
    if not isinstance(buffer_size, (int, np.integer)) or isinstance(buffer_size, bool) or buffer_size < 1:
        raise JaxchatError(f"SFT best-fit pipeline: buffer_size={buffer_size!r}, expected a positive integer")
    source = _SFTBestFitSource(task, tokenizer, int(rows), int(seq_len), int(buffer_size))
    return ChatDataset(source, f"sft_bestfit_dataset({n} conversations, rows={rows}, seq_len={seq_len}, "
                               f"buffer_size={buffer_size})", n)
