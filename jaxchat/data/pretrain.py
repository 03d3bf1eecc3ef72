"""The pretraining input pipeline: FineWeb-Edu shards → tokens → fixed ``(rows, seq_len)`` batches.

Reading order (deterministic, docs/DESIGN.md §5): the shards in the order given (``list_shards`` sorts them by
name), each shard's parquet row groups in order, each row group's documents in order. Every document
is tokenised as ``<|bos|>`` + its tokens; the documents are concatenated into one stream, and each
batch takes the next ``rows × (seq_len + 1)`` tokens of that stream: row ``r`` is a window of
``seq_len + 1`` consecutive tokens, ``inputs = window[:-1]``, ``targets = window[1:]``. Windows do not
overlap, so every token is read exactly once (the first token of each window is an input only). Null
texts are skipped. A training dataset is infinite: after the last shard it starts again at the first
(the state's ``epoch`` counts the passes).

We do not use ``grain.experimental.ParquetIterDataset`` + ``ConcatThenSplitIterDataset``: the former
interleaves files (cycle length 16) instead of reading them in order, the latter reorders rows and
pads the tail, and both work one document at a time in Python. Here a whole slice of a row group is
tokenised in one ``encode_ordinary_batch`` call and windows are cut with numpy, which is what makes the
pipeline fast (``benchmarks/dataloader.py``).

State (``iter(ds).get_state()``, JSON-able) is the stream position of the next unread token:
``{"epoch", "shard", "shard_name", "row_group", "doc", "token"}`` (``token`` counts the ``<|bos|>``).
It does not depend on ``rows``/``seq_len``, and ``set_state`` resumes at exactly that token, also in
the middle of a shard, a row group or a document: the batches that follow are identical to those of an
uninterrupted run.

That is ``packing="stream"``, the default. ``packing="bestfit"`` is nanochat's current loader instead
(every row starts with ``<|bos|>``, documents placed by best fit, cropped to fill a row): see
``jaxchat.data.bestfit``.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.data.bestfit import BestFitDataset, bestfit_val_batches
from jaxchat.data.documents import DocumentEncoder, ShardReader, check_pipeline

# Documents tokenised per encode call: big enough to amortise the call, small enough that the first
# batch after a (re)start does not wait for a whole row group (~1024 FineWeb documents, ~1M tokens).
DOCS_PER_CHUNK = 256
PACKINGS = ("stream", "bestfit")  # stream: consecutive windows of the token stream; bestfit: jaxchat.data.bestfit


@dataclass
class _Chunk:
    """Tokens of documents ``first_doc …`` of one row group, with where each document starts."""

    epoch: int
    shard: int
    row_group: int
    first_doc: int
    tokens: np.ndarray  # int32, the documents' tokens (each with its <|bos|>) concatenated
    starts: np.ndarray  # int64, len = n_docs + 1: starts[i] = offset of document first_doc + i
    offset: int = 0  # tokens already consumed

    @property
    def left(self) -> int:
        return len(self.tokens) - self.offset


class PretrainIterator(grain.DatasetIterator):
    """Iterator of :class:`PretrainDataset` (see the module docstring for order and state)."""

    def __init__(self, paths: Sequence[Path], tokenizer, rows: int, seq_len: int, loop: bool,
                 threads: int | None):
        super().__init__()
        self._reader = ShardReader(paths)
        self._rows, self._window = rows, seq_len + 1
        self._loop = loop
        self._encoder = DocumentEncoder(tokenizer, threads)
        self._set_position(0, 0, 0, 0, 0)

    # ---- position / state -----------------------------------------------------------------------

    def _set_position(self, epoch: int, shard: int, row_group: int, doc: int, token: int) -> None:
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._buffered = 0  # tokens available in self._chunks
        self._seen_tokens, self._empty_passes = False, 0  # guards an endless loop over empty shards
        # Where the next chunk is read from (None: end of a non-looping stream); `_skip` tokens of its
        # first document were consumed before.
        self._cursor = self._first_row_group_from(epoch, shard, row_group, doc)
        self._skip = token
        self._pos = (epoch, shard, row_group, doc, token)

    def get_state(self) -> dict[str, Any]:
        """The stream position of the next unread token (JSON-able)."""
        epoch, shard, row_group, doc, token = self._pos
        name = self._reader.paths[shard].name
        return {"epoch": epoch, "shard": shard, "shard_name": name, "row_group": row_group, "doc": doc,
                "token": token}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume at the position ``state`` (from :meth:`get_state`) describes."""
        if isinstance(state, dict) and state.get("packing", "stream") != "stream":
            raise JaxchatError(f"pretraining data state has packing={state['packing']!r}, but this pipeline packs "
                               "packing='stream'; resume with the packing the checkpoint was trained with")
        try:
            epoch, shard, row_group, doc, token = (int(state[k]) for k in ("epoch", "shard", "row_group", "doc",
                                                                          "token"))
            name = state["shard_name"]
        except (KeyError, TypeError, ValueError):
            raise JaxchatError(f"pretraining data state {state!r} is malformed; expected the dict of "
                               "epoch, shard, shard_name, row_group, doc, token that get_state() returns") from None
        paths = self._reader.paths
        if not 0 <= shard < len(paths) or paths[shard].name != name:
            here = paths[shard].name if 0 <= shard < len(paths) else f"missing (there are {len(paths)} shards)"
            raise JaxchatError(f"pretraining data state points at shard {shard} = {name}, but here shard {shard} is "
                               f"{here}; resume with the same shard files the checkpoint was trained on")
        if min(epoch, row_group, doc, token) < 0:
            raise JaxchatError(f"pretraining data state {state!r} has a negative position")
        self._set_position(epoch, shard, row_group, doc, token)

    # ---- reading --------------------------------------------------------------------------------

    def _first_row_group_from(self, epoch: int, shard: int, row_group: int, doc: int):
        """(epoch, shard, row_group, doc) of the first existing row group at or after the given one,
        wrapping to the next epoch when looping; None at the end of a non-looping stream."""
        n_shards = len(self._reader.paths)
        for _ in range(2 * n_shards + 1):  # enough to find a row group if any shard has one
            while shard < n_shards and row_group >= self._reader.num_row_groups(shard):
                shard, row_group, doc = shard + 1, 0, 0
            if shard < n_shards:
                return epoch, shard, row_group, doc
            if not self._loop:
                return None
            self._empty_passes = 0 if self._seen_tokens else self._empty_passes + 1
            if self._empty_passes >= 2:  # a whole pass over the shards without a single token
                raise JaxchatError(f"the shards {[p.name for p in self._reader.paths]} hold no non-empty documents")
            self._seen_tokens = False
            epoch, shard, row_group, doc = epoch + 1, 0, 0, 0
        raise JaxchatError(f"the shards {[p.name for p in self._reader.paths]} hold no row groups")

    def _load_chunk(self) -> bool:
        """Tokenise the next slice of documents into a chunk; False at the end of the stream."""
        if self._cursor is None:
            return False
        epoch, shard, row_group, doc = self._cursor
        texts = self._reader.texts(shard, row_group)
        stop = min(doc + DOCS_PER_CHUNK, len(texts))
        flat, lengths = self._encoder(texts[doc:stop])
        chunk = _Chunk(epoch, shard, row_group, doc, flat, np.concatenate([[0], np.cumsum(lengths)]))
        if self._skip:
            # Resuming inside document `doc`: its first `_skip` tokens were consumed before the save.
            have = int(lengths[0]) if len(lengths) else 0
            if self._skip >= have:
                raise JaxchatError(
                    f"pretraining data state points at token {self._skip} of document {doc} in row group "
                    f"{row_group} of {self._reader.paths[shard].name}, which has {have} tokens; resume with "
                    "the same shards and tokenizer the checkpoint was trained on")
            chunk.offset, self._skip = self._skip, 0
        if stop < len(texts):
            self._cursor = (epoch, shard, row_group, stop)
        else:
            self._seen_tokens = self._seen_tokens or bool(flat.size)
            self._cursor = self._first_row_group_from(epoch, shard, row_group + 1, 0)
        if chunk.left:
            self._chunks.append(chunk)
            self._buffered += chunk.left
        return True

    def __next__(self) -> dict[str, np.ndarray]:
        need = self._rows * self._window
        while self._buffered < need:
            if not self._load_chunk():
                raise StopIteration
        out = np.empty(need, dtype=np.int32)
        filled = 0
        while filled < need:
            chunk = self._chunks[0]
            take = min(chunk.left, need - filled)
            out[filled:filled + take] = chunk.tokens[chunk.offset:chunk.offset + take]
            chunk.offset += take
            filled += take
            if not chunk.left and (len(self._chunks) > 1 or filled < need):
                self._chunks.popleft()
        self._buffered -= need
        head = self._chunks[0]
        if head.left:
            local = int(np.searchsorted(head.starts, head.offset, side="right")) - 1
            self._pos = (head.epoch, head.shard, head.row_group, head.first_doc + local,
                         head.offset - int(head.starts[local]))
        else:  # the chunk is used up: the next token is the first one of the chunk that follows it
            self._chunks.popleft()
            self._pos = self._next_chunk_position(head)
        windows = out.reshape(self._rows, self._window)
        # Separate contiguous arrays: no shared memory between the two, and a plain copy to the device.
        return {"inputs": np.ascontiguousarray(windows[:, :-1]), "targets": np.ascontiguousarray(windows[:, 1:])}

    def close(self) -> None:
        """Stop the tokenizer threads (idempotent)."""
        self._encoder.close()
        super().close()

    def _next_chunk_position(self, chunk: _Chunk) -> tuple[int, int, int, int, int]:
        """The position right after ``chunk``'s documents (as (epoch, shard, row_group, doc, 0))."""
        end_doc = chunk.first_doc + len(chunk.starts) - 1
        # Restoring (shard, row_group, end_doc) reads an empty slice when the row group ends there, then
        # moves on: no need to look the next row group up here.
        return chunk.epoch, chunk.shard, chunk.row_group, end_doc, 0


class PretrainDataset(grain.IterDataset):
    """``grain.IterDataset`` of pretraining batches; see :func:`pretrain_dataset`."""

    def __init__(self, paths: Sequence[Path], tokenizer, rows: int, seq_len: int, *, loop: bool,
                 tokenizer_threads: int | None = None):
        super().__init__()
        self._paths = check_pipeline(paths, tokenizer_threads, rows=rows, seq_len=seq_len)
        self._tokenizer = tokenizer
        self._rows, self._seq_len, self._loop = int(rows), int(seq_len), loop
        self._threads = tokenizer_threads

    def __iter__(self) -> PretrainIterator:
        return PretrainIterator(self._paths, self._tokenizer, self._rows, self._seq_len, self._loop,
                                self._threads)

    def __str__(self) -> str:
        return (f"PretrainDataset({len(self._paths)} shards, rows={self._rows}, seq_len={self._seq_len}, "
                f"loop={self._loop})")


def _check_packing(packing: str) -> None:
    if packing not in PACKINGS:
        raise JaxchatError(f"pretraining pipeline: packing={packing!r}, expected one of {', '.join(PACKINGS)}")


def pretrain_dataset(paths: Sequence[Path], tokenizer, rows: int, seq_len: int, *,
                     tokenizer_threads: int | None = None, packing: str = "stream") -> grain.IterDataset:
    """Infinite dataset of ``{"inputs", "targets"}`` int32 ``(rows, seq_len)`` batches from ``paths``.

    ``paths`` are the train shards (``split_shards(list_shards())[0]``), read in the given order and
    looped over forever; see the module docstring for the exact order, windows and state.
    ``tokenizer_threads``: threads that tokenise (default ``jaxchat.data.documents.default_tokenizer_threads``).
    ``packing``: ``"stream"`` (a :class:`PretrainDataset`) or ``"bestfit"`` (nanochat's BOS-aligned
    best-fit rows, a ``jaxchat.data.bestfit.BestFitDataset``).
    ``iter(ds)`` gives a grain ``DatasetIterator``: ``get_state()`` / ``set_state()`` resume exactly.
    """
    _check_packing(packing)
    if packing == "bestfit":
        return BestFitDataset(paths, tokenizer, rows, seq_len, loop=True, tokenizer_threads=tokenizer_threads)
    return PretrainDataset(paths, tokenizer, rows, seq_len, loop=True, tokenizer_threads=tokenizer_threads)


def val_batches(paths: Sequence[Path], tokenizer, rows: int, seq_len: int, num_batches: int,
                *, tokenizer_threads: int | None = None, packing: str = "stream") -> list[dict[str, np.ndarray]]:
    """The first ``num_batches`` batches of the val shard(s) ``paths`` (same layout, no looping).

    Always the same batches, so val bpb is comparable across evaluations; the list can be kept and
    reused (``num_batches × rows × seq_len × 8`` bytes). Raises JaxchatError when the shards hold
    fewer tokens than that. ``packing="bestfit"``: nanochat's val batches (best-fit rows); JaxchatError
    when they would repeat a document.
    """
    if not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
        raise JaxchatError(f"val_batches: num_batches={num_batches!r}, expected a positive integer")
    _check_packing(packing)
    if packing == "bestfit":
        return bestfit_val_batches(paths, tokenizer, rows, seq_len, num_batches, tokenizer_threads=tokenizer_threads)
    ds = PretrainDataset(paths, tokenizer, rows, seq_len, loop=False, tokenizer_threads=tokenizer_threads)
    it = iter(ds)
    batches = list(itertools.islice(it, num_batches))
    if len(batches) < num_batches:
        names = ", ".join(Path(p).name for p in paths)
        raise JaxchatError(f"{names} hold(s) only {len(batches)} batch(es) of {rows}×{seq_len + 1} tokens, "
                           f"{num_batches} requested; lower the number of val tokens")
    return batches
