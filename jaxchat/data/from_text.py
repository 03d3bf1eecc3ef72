"""Turn a user's own text files into FineWeb-format shards, to pretrain on one's own corpus.

Input: a directory (searched recursively, files in sorted path order) or a single file.
``.txt`` and ``.md`` files are one document each; ``.jsonl`` files hold one JSON object per line
with a string field ``text`` (one document per line). Empty documents are skipped.

Output: ``shard_00000.parquet …`` with one string column ``text`` and row groups of 1024 documents,
a new shard started once the current one holds ``chars_per_shard`` characters. The last shard is
the validation shard (docs/DESIGN.md §0); when the corpus fits in one shard it is split in two, the last ~10 %
of its documents (at least one) becoming the validation shard. Shards are written into a staging
directory and moved into place only when all of them are complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jaxchat.common import JaxchatError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
ROW_GROUP_SIZE = 1024
CHARS_PER_SHARD = 250_000_000  # like a FineWeb-Edu shard
STAGING_NAME = ".from-text.tmp"
SCHEMA = pa.schema([("text", pa.string())])


def _source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise JaxchatError(f"--from_text={source}: no such file or directory")
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise JaxchatError(f"--from_text={source}: no .txt, .md or .jsonl files found")
    return files


def iter_documents(source: str | Path) -> Iterator[str]:
    """Yield the documents of ``source`` (see the module docstring); malformed input raises JaxchatError."""
    for path in _source_files(Path(source)):
        try:
            if path.suffix.lower() in TEXT_SUFFIXES:
                text = path.read_text(encoding="utf-8")
                if text.strip():
                    yield text
                continue
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise JaxchatError(
                            f"{path}:{lineno}: invalid JSON ({e.msg}); expected an object with a 'text' string"
                        ) from None
                    text = obj.get("text") if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise JaxchatError(
                            f"{path}:{lineno}: expected a JSON object with a string field 'text', "
                            f"got {line.strip()[:60]!r}"
                        )
                    if text.strip():
                        yield text
        except UnicodeDecodeError as e:
            raise JaxchatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


class _ShardWriter:
    """Streams documents into numbered shards in one directory, one row group per 1024 documents."""

    def __init__(self, directory: Path, chars_per_shard: int, row_group_size: int):
        self.directory = directory
        self.chars_per_shard = chars_per_shard
        self.row_group_size = row_group_size
        self.paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._batch: list[str] = []
        self._chars = 0

    def add(self, text: str) -> None:
        if self._writer is None:
            path = self.directory / f"shard_{len(self.paths):05d}.parquet"
            self._writer = pq.ParquetWriter(path, SCHEMA)
            self.paths.append(path)
        self._batch.append(text)
        self._chars += len(text)
        if len(self._batch) >= self.row_group_size:
            self._flush_batch()
        if self._chars >= self.chars_per_shard:
            self.close_shard()

    def _flush_batch(self) -> None:
        if self._batch and self._writer is not None:
            table = pa.table({"text": pa.array(self._batch, type=pa.string())})
            self._writer.write_table(table, row_group_size=self.row_group_size)
        self._batch = []

    def close_shard(self) -> None:
        self._flush_batch()
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._chars = 0


def _split_single_shard(path: Path, row_group_size: int) -> list[Path]:
    """Split the only shard into train (first ~90 % of documents) and validation (the rest)."""
    texts = pq.read_table(path).column("text").to_pylist()
    if len(texts) < 2:
        raise JaxchatError(
            f"the corpus has {len(texts)} document(s); at least 2 are needed (the last shard is for validation)"
        )
    n_val = max(1, len(texts) // 10)
    second = path.with_name("shard_00001.parquet")
    for p, part in ((path, texts[:-n_val]), (second, texts[-n_val:])):
        pq.write_table(pa.table({"text": pa.array(part, type=pa.string())}), p, row_group_size=row_group_size)
    return [path, second]


def shards_from_text(
    source: str | Path,
    out_dir: str | Path,
    chars_per_shard: int = CHARS_PER_SHARD,
    row_group_size: int = ROW_GROUP_SIZE,
) -> list[Path]:
    """Write the documents of ``source`` as FineWeb-format shards into ``out_dir``; return their paths.

    Refuses (JaxchatError) when ``out_dir`` already holds ``shard_*.parquet`` files, since mixing
    corpora would make the validation shard ambiguous.
    """
    if chars_per_shard < 1 or row_group_size < 1:
        raise JaxchatError(
            f"chars_per_shard ({chars_per_shard}) and row_group_size ({row_group_size}) must be positive"
        )
    out_dir = Path(out_dir)
    existing = sorted(out_dir.glob("shard_*.parquet")) if out_dir.is_dir() else []
    if existing:
        raise JaxchatError(
            f"{out_dir} already holds {len(existing)} shard_*.parquet file(s); move them away first "
            "or write elsewhere with --out=DIR"
        )
    staging = out_dir / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)  # left over by an interrupted run
    staging.mkdir(parents=True)
    try:
        writer = _ShardWriter(staging, chars_per_shard, row_group_size)
        for text in iter_documents(source):
            writer.add(text)
        writer.close_shard()
        paths = writer.paths
        if not paths:
            raise JaxchatError(f"--from_text={source}: all documents are empty")
        if len(paths) == 1:
            paths = _split_single_shard(paths[0], row_group_size)
        final = []
        for path in paths:
            target = out_dir / path.name
            os.replace(path, target)
            final.append(target)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
