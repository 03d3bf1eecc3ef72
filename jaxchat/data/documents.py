"""What both pretraining packings share: reading shards row group by row group, tokenising documents
(``<|bos|>`` + tokens) on a persistent thread pool, and checking a pipeline's arguments.

``jaxchat.data.pretrain`` (the token stream) and ``jaxchat.data.bestfit`` (nanochat's best-fit rows)
build on this module.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.data.shards import open_shard, read_row_group_texts


def check_pipeline(paths: Sequence[Path], tokenizer_threads: int | None, **sizes: Any) -> list[Path]:
    """The shard paths as a list, after checking them (each opens: a bad shard is named now, not in
    the middle of training), the positive integer ``sizes`` and the thread count; JaxchatError otherwise."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise JaxchatError("pretraining pipeline got no shard paths; expected at least one shard_*.parquet")
    for field, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise JaxchatError(f"pretraining pipeline: {field}={value!r}, expected a positive integer")
    if tokenizer_threads is not None and tokenizer_threads < 1:
        raise JaxchatError(f"tokenizer_threads={tokenizer_threads}, expected a positive integer or None")
    for path in paths:
        open_shard(path)
    return paths


class ShardReader:
    """Open shards lazily, keep the current row group's texts (one parquet read per row group)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self._files: dict[int, Any] = {}
        self._texts_key: tuple[int, int] | None = None
        self._texts: list[str | None] = []

    def num_row_groups(self, shard: int) -> int:
        return self._file(shard).num_row_groups

    def texts(self, shard: int, row_group: int) -> list[str | None]:
        if self._texts_key != (shard, row_group):
            self._texts = read_row_group_texts(self._file(shard), self.paths[shard], row_group)
            self._texts_key = (shard, row_group)
        return self._texts

    def _file(self, shard: int):
        pf = self._files.get(shard)
        if pf is None:
            if len(self._files) > 4:  # the stream moves forward: drop handles of older shards
                self._files.clear()
            pf = self._files[shard] = open_shard(self.paths[shard])
        return pf


def default_tokenizer_threads() -> int:
    """Threads that tokenise documents: up to 4, no more than the machine's cores."""
    return max(1, min(4, os.cpu_count() or 1))


class DocumentEncoder:
    """Texts → (``<|bos|>`` + tokens of each text, concatenated as int32; per-text lengths).

    With several threads the slice is split into contiguous parts, one per thread of a PERSISTENT
    pool (tiktoken releases the GIL while encoding). tiktoken's ``encode_ordinary_batch`` is not used:
    it starts a new thread pool on every call and submits one future per document, which measured
    about 2× the CPU time per token here (``benchmarks/dataloader.py``). A null text gives length 0
    (no ``<|bos|>`` either): it is skipped, but keeps its slot so document indices stay those of the
    row group.
    """

    def __init__(self, tokenizer, threads: int | None):
        self._tokenizer = tokenizer
        self._bos = tokenizer.bos_token_id
        self._threads = default_tokenizer_threads() if threads is None else threads
        self._pool: ThreadPoolExecutor | None = None

    def _encode_part(self, texts: Sequence[str | None]) -> list[list[int]]:
        encode = self._tokenizer.encode
        return [[] if t is None else encode(t) for t in texts]

    def __call__(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        n = len(texts)
        if self._threads > 1 and n > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="jaxchat-tokenize")
            k = -(-n // self._threads)
            ids = [x for part in self._pool.map(self._encode_part, [texts[i:i + k] for i in range(0, n, k)])
                   for x in part]
        else:
            ids = self._encode_part(texts)
        body = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
        present = np.fromiter((t is not None for t in texts), dtype=bool, count=n)
        # <|bos|> goes in front of each present document: np.insert does all of them in one pass.
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[present]
        return np.insert(body, starts, self._bos), lengths + present

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
