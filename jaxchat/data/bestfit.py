"""BOS-aligned best-fit packing of pretraining documents (nanochat's current loader), with EXACT resume.

``pretrain_dataset(..., packing="bestfit")`` / ``val_batches(..., packing="bestfit")`` build their batches
here. It is a port of nanochat's ``tokenizing_distributed_data_loader_with_state_bos_bestfit``
(``nanochat/dataloader.py`` at commit 92d63d4) for one process, and gives the same batches, token for
token (``tools/parity_loader_nanochat.py``; ``tests/test_loader_2026.py`` keeps the evidence):

* Reading order: the shards in the order given (the train shards, or the val shard: ``split_shards``
  holds the LAST shard out, as nanochat does), each shard's row groups in order, each row group in
  slices of ``tokenizer_batch_size`` (128) documents; a slice never crosses a row group. Each
  document is tokenised as ``<|bos|>`` + its tokens. After the last shard the reading starts again
  at the first (the ``epoch`` of the documents read counts the passes). Null texts are skipped
  (nanochat's loader would fail on them); an empty text is a document of one token (``<|bos|>``).
* Buffer: before each document is placed, slices are read until the buffer holds at least
  ``buffer_size`` (1000) documents. Buffer order is reading order.
* Rows: each row of ``seq_len + 1`` tokens is filled from position 0 by, again and again, the
  LARGEST buffered document that fits into the space left (the first in buffer order among equals);
  when none fits, the SHORTEST buffered document (the first among equals) is cropped to fill the row
  exactly and the rest of it is dropped. So every row starts with ``<|bos|>`` and there is no padding.
  ``inputs = row[:-1]``, ``targets = row[1:]``. Rows are built one after another and the buffer
  carries over from batch to batch, so one batch of ``k × rows`` rows holds exactly the rows of
  ``k`` batches of ``rows`` (gradient accumulation sees nanochat's micro-batches).

State (``iter(ds).get_state()``, JSON-able), taken between batches: where the next slice is read
(``cursor``: epoch, shard, shard_name, row_group, doc; ``None`` at the end of a non-looping stream)
and which documents the buffer holds, in buffer order (``buffer``: ``[epoch, shard, row_group,
[doc, ...]]`` runs). ``set_state`` re-reads and re-tokenises exactly those documents, so the batches
that follow are identical to those of an uninterrupted run (nanochat's own resume restarts at a row
group boundary with an empty buffer, which is only approximate). The state does not depend on
``rows`` or ``seq_len``.

Non-looping streams (``loop=False``) stop refilling at the end of the shards, keep packing from the
buffer, and end when a row cannot be completed. The validation batches use a LOOPING stream, as
nanochat's val loader does, and refuse (``JaxchatError``) to return batches that repeat a document.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.data.documents import DocumentEncoder, ShardReader, check_pipeline

BUFFER_SIZE = 1000  # nanochat's buffer_size: documents the buffer is refilled to before each placement
TOKENIZER_BATCH_SIZE = 128  # nanochat's tokenizer_batch_size: documents read (and tokenised) per slice
PACKING = "bestfit"

Key = tuple[int, int, int, int]  # (epoch, shard, row_group, doc)


class BestFitIterator(grain.DatasetIterator):
    """Iterator of :class:`BestFitDataset` (see the module docstring for the order and the state)."""

    def __init__(self, paths: Sequence[Path], tokenizer, rows: int, seq_len: int, loop: bool,
                 threads: int | None, buffer_size: int = BUFFER_SIZE,
                 tokenizer_batch_size: int = TOKENIZER_BATCH_SIZE):
        super().__init__()
        self._reader = ShardReader(paths)
        self._rows, self._capacity = rows, seq_len + 1
        self._loop = loop
        self._buffer_size, self._batch_docs = buffer_size, tokenizer_batch_size
        self._encoder = DocumentEncoder(tokenizer, threads)
        self.max_epoch_placed = -1  # the latest epoch any placed document was read in (-1: none yet)
        self._reset(None)
        self._cursor = self._advance(0, 0, 0)

    # ---- buffer ---------------------------------------------------------------------------------

    def _reset(self, cursor: Key | None) -> None:
        self._keys: list[Key] = []  # buffered documents, in buffer (= reading) order
        self._docs: list[np.ndarray] = []  # their tokens, <|bos|> first
        self._lens = np.zeros(0, dtype=np.int64)
        self._cursor = cursor  # the next slice: (epoch, shard, row_group, first doc); None: stream ended
        self._added_this_pass, self._empty_passes = 0, 0  # guards an endless loop over empty shards

    def _append(self, keys: list[Key], flat: np.ndarray, lengths: np.ndarray) -> None:
        """Buffer the documents ``keys`` (their tokens concatenated in ``flat``); null texts (length 0) are
        skipped. Each document gets its own copy: a long one may stay buffered long after its slice."""
        starts = np.concatenate([[0], np.cumsum(lengths)])
        for key, start, stop in zip(keys, starts[:-1], starts[1:]):
            if stop > start:
                self._keys.append(key)
                self._docs.append(flat[start:stop].copy())
        present = lengths[lengths > 0]
        self._lens = np.concatenate([self._lens, present.astype(np.int64)])
        self._added_this_pass += len(present)

    def _pop(self, i: int) -> tuple[Key, np.ndarray]:
        self._lens = np.delete(self._lens, i)
        return self._keys.pop(i), self._docs.pop(i)

    def _advance(self, epoch: int, shard: int, row_group: int) -> Key | None:
        """The first slice of the first existing row group at or after ``(shard, row_group)``, wrapping
        to the next epoch when looping; None at the end of a non-looping stream."""
        n_shards = len(self._reader.paths)
        for _ in range(2 * n_shards + 1):  # enough to find a row group if any shard has one
            while shard < n_shards and row_group >= self._reader.num_row_groups(shard):
                shard, row_group = shard + 1, 0
            if shard < n_shards:
                return epoch, shard, row_group, 0
            if not self._loop:
                return None
            self._empty_passes = 0 if self._added_this_pass else self._empty_passes + 1
            if self._empty_passes >= 2:  # a whole pass over the shards without a single document
                raise JaxchatError(f"the shards {[p.name for p in self._reader.paths]} hold no non-null documents")
            self._added_this_pass = 0
            epoch, shard, row_group = epoch + 1, 0, 0
        raise JaxchatError(f"the shards {[p.name for p in self._reader.paths]} hold no row groups")

    def _refill(self) -> bool:
        """Read and tokenise the next slice into the buffer; False at the end of a non-looping stream."""
        if self._cursor is None:
            return False
        epoch, shard, row_group, doc = self._cursor
        texts = self._reader.texts(shard, row_group)
        stop = min(doc + self._batch_docs, len(texts))
        flat, lengths = self._encoder(texts[doc:stop])
        self._append([(epoch, shard, row_group, d) for d in range(doc, stop)], flat, lengths)
        if stop < len(texts):
            self._cursor = (epoch, shard, row_group, stop)
        else:
            self._cursor = self._advance(epoch, shard, row_group + 1)
        return True

    # ---- packing --------------------------------------------------------------------------------

    def _fill_row(self, row: np.ndarray) -> bool:
        """Pack one row (nanochat's algorithm); False when a non-looping stream cannot complete it."""
        capacity, pos = len(row), 0
        while pos < capacity:
            while len(self._docs) < self._buffer_size and self._refill():
                pass
            if not self._docs:
                return False
            remaining = capacity - pos
            lens = self._lens
            fits = np.where(lens <= remaining, lens, 0)  # every document has >= 1 token (its <|bos|>)
            i = int(fits.argmax())  # argmax/argmin: the FIRST index among equals, as nanochat's scans
            if fits[i] > 0:
                key, doc = self._pop(i)
                row[pos:pos + len(doc)] = doc
                pos += len(doc)
            else:  # nothing fits: crop the shortest document to fill the row exactly
                key, doc = self._pop(int(lens.argmin()))
                row[pos:] = doc[:remaining]
                pos = capacity
            self.max_epoch_placed = max(self.max_epoch_placed, key[0])
        return True

    def __next__(self) -> dict[str, np.ndarray]:
        rows = np.empty((self._rows, self._capacity), dtype=np.int32)
        for r in range(self._rows):
            if not self._fill_row(rows[r]):
                raise StopIteration
        # Separate contiguous arrays: no shared memory between the two, and a plain copy to the device.
        return {"inputs": np.ascontiguousarray(rows[:, :-1]), "targets": np.ascontiguousarray(rows[:, 1:])}

    # ---- state ----------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """The read cursor and the buffered documents (JSON-able; see the module docstring)."""
        paths = self._reader.paths
        cursor = None
        if self._cursor is not None:
            epoch, shard, row_group, doc = self._cursor
            cursor = {"epoch": epoch, "shard": shard, "shard_name": paths[shard].name, "row_group": row_group,
                      "doc": doc}
        runs: list[list[Any]] = []
        for (epoch, shard, row_group), keys in itertools.groupby(self._keys, key=lambda k: k[:3]):
            runs.append([epoch, shard, row_group, [k[3] for k in keys]])
        shards = sorted({k[1] for k in self._keys} | ({self._cursor[1]} if self._cursor else set()))
        return {"packing": PACKING, "cursor": cursor, "buffer": runs,
                "shard_names": {str(s): paths[s].name for s in shards}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` (from :meth:`get_state`) was taken: the same buffer, the same next slice."""
        try:
            if state.get("packing") != PACKING:
                raise JaxchatError(
                    f"pretraining data state {_short(state)} is not a best-fit state (packing="
                    f"{state.get('packing', 'stream')!r}); resume with the packing the checkpoint was trained with")
            names = {int(k): str(v) for k, v in state["shard_names"].items()}
            c = state["cursor"]
            cursor = None if c is None else (int(c["epoch"]), int(c["shard"]), int(c["row_group"]), int(c["doc"]))
            runs = [(int(e), int(s), int(g), [int(d) for d in docs]) for e, s, g, docs in state["buffer"]]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise JaxchatError(f"pretraining data state {_short(state)} is malformed; expected the dict of packing, "
                               "cursor, buffer, shard_names that get_state() returns") from None
        paths = self._reader.paths
        for shard, name in sorted(names.items()):
            if not 0 <= shard < len(paths) or paths[shard].name != name:
                here = paths[shard].name if 0 <= shard < len(paths) else f"missing (there are {len(paths)} shards)"
                raise JaxchatError(f"pretraining data state points at shard {shard} = {name}, but here shard {shard} "
                                   f"is {here}; resume with the same shard files the checkpoint was trained on")
        used = {s for _, s, _, _ in runs} | ({cursor[1]} if cursor else set())
        if not used <= names.keys():
            raise JaxchatError(f"pretraining data state {_short(state)} is malformed: shard_names lacks shard(s) "
                               f"{sorted(used - names.keys())}")
        if cursor is not None and min(cursor) < 0 or any(min(e, s, g, *docs) < 0 for e, s, g, docs in runs):
            raise JaxchatError(f"pretraining data state {_short(state)} has a negative position")
        if cursor is not None and not self._loop and cursor[0] > 0:
            raise JaxchatError("pretraining data state is past the end of this non-looping stream")
        self._reset(cursor)
        for epoch, shard, row_group, docs in runs:
            texts = self._reader.texts(shard, row_group) if row_group < self._reader.num_row_groups(shard) else []
            bad = [d for d in docs if d >= len(texts) or texts[d] is None]
            if bad:
                raise JaxchatError(
                    f"pretraining data state buffers document {bad[0]} of row group {row_group} of {paths[shard].name}, "
                    f"which has no such (non-null) document; resume with the same shards the checkpoint was trained on")
            flat, lengths = self._encoder([texts[d] for d in docs])
            self._append([(epoch, shard, row_group, d) for d in docs], flat, lengths)

    def close(self) -> None:
        """Stop the tokenizer threads (idempotent)."""
        self._encoder.close()
        super().close()


def _short(state: Any, limit: int = 120) -> str:
    text = repr(state)
    return text if len(text) <= limit else text[:limit] + "…"


class BestFitDataset(grain.IterDataset):
    """``grain.IterDataset`` of best-fit packed pretraining batches; see ``pretrain_dataset(packing="bestfit")``."""

    def __init__(self, paths: Sequence[Path], tokenizer, rows: int, seq_len: int, *, loop: bool,
                 tokenizer_threads: int | None = None, buffer_size: int = BUFFER_SIZE,
                 tokenizer_batch_size: int = TOKENIZER_BATCH_SIZE):
        super().__init__()
        self._paths = check_pipeline(paths, tokenizer_threads, rows=rows, seq_len=seq_len, buffer_size=buffer_size,
                                     tokenizer_batch_size=tokenizer_batch_size)
        self._tokenizer = tokenizer
        self._rows, self._seq_len, self._loop = int(rows), int(seq_len), loop
        self._threads = tokenizer_threads
        self._buffer_size, self._batch_docs = int(buffer_size), int(tokenizer_batch_size)

    def __iter__(self) -> BestFitIterator:
        return BestFitIterator(self._paths, self._tokenizer, self._rows, self._seq_len, self._loop, self._threads,
                               self._buffer_size, self._batch_docs)

    def __str__(self) -> str:
        return (f"BestFitDataset({len(self._paths)} shards, rows={self._rows}, seq_len={self._seq_len}, "
                f"loop={self._loop}, buffer_size={self._buffer_size}, tokenizer_batch_size={self._batch_docs})")


def bestfit_val_batches(paths: Sequence[Path], tokenizer, rows: int, seq_len: int, num_batches: int, *,
                        tokenizer_threads: int | None = None, buffer_size: int = BUFFER_SIZE,
                        tokenizer_batch_size: int = TOKENIZER_BATCH_SIZE) -> list[dict[str, np.ndarray]]:
    """The first ``num_batches`` best-fit batches of the val shard(s) ``paths``: nanochat's val loader's.

    Read as a non-looping stream: until the shards end that is the same as nanochat's looping one (a
    real val shard holds far more than a few batches), and a small val set then packs what is left
    in the buffer instead of wrapping around into repeated documents. JaxchatError when the shards
    hold fewer than ``num_batches`` batches."""
    ds = BestFitDataset(paths, tokenizer, rows, seq_len, loop=False, tokenizer_threads=tokenizer_threads,
                        buffer_size=buffer_size, tokenizer_batch_size=tokenizer_batch_size)
    it = iter(ds)
    try:
        batches = list(itertools.islice(it, num_batches))
    finally:
        it.close()
    if len(batches) < num_batches:
        names = ", ".join(Path(p).name for p in paths)
        raise JaxchatError(f"{names} hold(s) only {len(batches)} best-fit batch(es) of {rows}×{seq_len + 1} tokens, "
                           f"{num_batches} requested; lower the number of val tokens")
    return batches
