"""Turn a user's own text files into FineWeb-format shards, to pretrain on one's own corpus.

Input: a directory (searched recursively, files in sorted path order) or a single file.
``.txt`` and ``.md`` files are one document each; ``.jsonl`` files hold one JSON object per line
with a string field ``text`` (one document per line). Empty documents are skipped.

Output: ``shard_00000.parquet …`` with one string column ``text`` and row groups of 1024 documents,
a new shard started once the current one holds ``chars_per_shard`` characters. The last shard is
the validation shard (docs/DESIGN.md §0); when the corpus fits in one shard it is split in two, the last ~10 %
of its documents (at least one) becoming the validation shard. Shards are written into a staging
directory and moved into place only when all of them are complete.

Beside the shards goes ``corpus.json`` (``jaxchat.data.cache.CORPUS_MARKER``): where the text came
from, a fingerprint of it, the documents and characters of each shard, and the command that makes
them again. Messages that tell how to (re)make the shards read that command, so they never point a
user with their own corpus at the FineWeb download (which would mix corpora); the downloader leaves
such a directory alone; and running the same ``--from_text`` command again finds the shards already
made and does nothing (a different or changed source is refused: move the shards away first).
``shards_from_documents`` does the same for any iterable of documents (the offline corpus).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jaxchat.common import JaxchatError
from jaxchat.data.cache import CORPUS_MARKER, DOWNLOAD_MODULE, quote_command, read_corpus_marker

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
ROW_GROUP_SIZE = 1024
CHARS_PER_SHARD = 250_000_000  # like a FineWeb-Edu shard
VAL_FRACTION = 0.1  # of the documents, when the corpus fits in one shard
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


def source_fingerprint(source: str | Path) -> str:
    """A short hash of the files ``iter_documents(source)`` reads: their paths, sizes and mtimes."""
    root = Path(source)
    digest = hashlib.sha256()
    for path in _source_files(root):
        st = path.stat()
        rel = path.name if root.is_file() else str(path.relative_to(root))
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def from_text_command(source: str | Path, chars_per_shard: int = CHARS_PER_SHARD, out: str | Path | None = None) -> str:
    """The download command that makes shards from ``source`` (recorded in ``corpus.json``)."""
    words = [*DOWNLOAD_MODULE.split(), f"--from_text={Path(source).resolve()}"]
    if chars_per_shard != CHARS_PER_SHARD:
        words.append(f"--chars_per_shard={chars_per_shard}")
    if out is not None:
        words.append(f"--out={Path(out).resolve()}")
    return quote_command(*words)


class _ShardWriter:
    """Streams documents into numbered shards in one directory, one row group per 1024 documents."""

    def __init__(self, directory: Path, chars_per_shard: int, row_group_size: int):
        self.directory = directory
        self.chars_per_shard = chars_per_shard
        self.row_group_size = row_group_size
        self.paths: list[Path] = []
        self.counts: list[list[int]] = []  # [documents, characters] per shard
        self._writer: pq.ParquetWriter | None = None
        self._batch: list[str] = []
        self._chars = 0

    def add(self, text: str) -> None:
        if self._writer is None:
            path = self.directory / f"shard_{len(self.paths):05d}.parquet"
            self._writer = pq.ParquetWriter(path, SCHEMA)
            self.paths.append(path)
            self.counts.append([0, 0])
        self._batch.append(text)
        self._chars += len(text)
        self.counts[-1][0] += 1
        self.counts[-1][1] += len(text)
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


def _split_single_shard(path: Path, row_group_size: int, val_fraction: float = VAL_FRACTION
                        ) -> tuple[list[Path], list[list[int]]]:
    """Split the only shard into train (the first documents) and validation (the last ``val_fraction``
    of them, at least one); the two paths and their [documents, characters]."""
    texts = pq.read_table(path).column("text").to_pylist()
    if len(texts) < 2:
        raise JaxchatError(
            f"the corpus has {len(texts)} document(s); at least 2 are needed (the last shard is for validation)"
        )
    n_val = max(1, int(len(texts) * val_fraction))
    second = path.with_name("shard_00001.parquet")
    counts = []
    for p, part in ((path, texts[:-n_val]), (second, texts[-n_val:])):
        pq.write_table(pa.table({"text": pa.array(part, type=pa.string())}), p, row_group_size=row_group_size)
        counts.append([len(part), sum(len(t) for t in part)])
    return [path, second], counts


def existing_corpus(out_dir: str | Path, fingerprint: str, chars_per_shard: int) -> list[Path] | None:
    """The shards of ``out_dir`` when they are exactly what ``shards_from_documents`` would make for
    this source (same fingerprint and shard size, every shard present); None when there are none, or
    when some of this very corpus's shards were deleted (a damaged one, say): the rest are removed,
    to be made again. JaxchatError when ``out_dir`` holds other shards (another source, a changed
    one, or FineWeb)."""
    out_dir = Path(out_dir)
    existing = sorted(out_dir.glob("shard_*.parquet")) if out_dir.is_dir() else []
    if not existing:
        return None
    marker = read_corpus_marker(out_dir)
    names = [s.get("name") for s in (marker or {}).get("shards", []) if isinstance(s, dict)]
    same = (marker is not None and marker.get("fingerprint") == fingerprint
            and marker.get("chars_per_shard") == chars_per_shard)
    if same and names == [p.name for p in existing]:
        return existing
    if same and set(p.name for p in existing) < set(names):
        for path in existing:
            path.unlink()
        (out_dir / CORPUS_MARKER).unlink(missing_ok=True)
        return None
    if marker is None:
        origin = "downloaded FineWeb-Edu shards (or shards of unknown origin)"
    elif marker.get("fingerprint") == fingerprint:
        origin = f"shards of the same source with other settings (made by `{marker['command']}`)"
    else:
        origin = f"shards made from {marker.get('source', '?')} by `{marker['command']}`"
    raise JaxchatError(
        f"{out_dir} already holds {len(existing)} shard_*.parquet file(s): {origin}; move them away first "
        "or write elsewhere with --out=DIR (mixing corpora would make the validation shard ambiguous)"
    )


def shards_from_documents(
    documents: Iterable[str],
    out_dir: str | Path,
    *,
    source: str,
    command: str,
    fingerprint: str,
    chars_per_shard: int = CHARS_PER_SHARD,
    row_group_size: int = ROW_GROUP_SIZE,
    val_fraction: float = VAL_FRACTION,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``documents`` (non-empty strings) as FineWeb-format shards into ``out_dir``, with their
    ``corpus.json`` (``source``: what they came from; ``command``: what makes them again;
    ``fingerprint``: identifies the source's content; ``extra``: more fields); return the shards. A
    corpus that fits in one shard is split in two, the last ``val_fraction`` of its documents
    becoming the validation shard.

    Returns the existing shards untouched when ``out_dir`` already holds this very corpus; refuses
    (JaxchatError) when it holds any other shards.
    """
    if chars_per_shard < 1 or row_group_size < 1:
        raise JaxchatError(
            f"chars_per_shard ({chars_per_shard}) and row_group_size ({row_group_size}) must be positive"
        )
    out_dir = Path(out_dir)
    already = existing_corpus(out_dir, fingerprint, chars_per_shard)
    if already is not None:
        return already
    staging = out_dir / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)  # left over by an interrupted run
    staging.mkdir(parents=True)
    try:
        writer = _ShardWriter(staging, chars_per_shard, row_group_size)
        for text in documents:
            writer.add(text)
        writer.close_shard()
        paths, counts = writer.paths, writer.counts
        if not paths:
            raise JaxchatError(f"{source}: all documents are empty")
        if len(paths) == 1:
            paths, counts = _split_single_shard(paths[0], row_group_size, val_fraction)
        marker = {
            "source": source,
            "command": command,
            "fingerprint": fingerprint,
            "chars_per_shard": chars_per_shard,
            "documents": sum(c[0] for c in counts),
            "characters": sum(c[1] for c in counts),
            "shards": [{"name": p.name, "documents": c[0], "characters": c[1]} for p, c in zip(paths, counts)],
            **(extra or {}),
        }
        (staging / CORPUS_MARKER).write_text(json.dumps(marker, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (out_dir / CORPUS_MARKER).unlink(missing_ok=True)  # a stale marker must never describe the new shards
        final = []
        for path in paths:
            target = out_dir / path.name
            os.replace(path, target)
            final.append(target)
        os.replace(staging / CORPUS_MARKER, out_dir / CORPUS_MARKER)  # last: the shards are all in place
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def shards_from_text(
    source: str | Path,
    out_dir: str | Path,
    chars_per_shard: int = CHARS_PER_SHARD,
    row_group_size: int = ROW_GROUP_SIZE,
    command: str | None = None,
) -> list[Path]:
    """Write the documents of ``source`` as FineWeb-format shards into ``out_dir``; return their paths.

    Does nothing (returns the shards) when ``out_dir`` already holds the shards of this same source,
    unchanged, made with the same ``chars_per_shard``; refuses (JaxchatError) when it holds any
    other ``shard_*.parquet`` files, since mixing corpora would make the validation shard ambiguous.
    ``command`` (recorded in ``corpus.json``) defaults to ``from_text_command(source, chars_per_shard)``.
    """
    _source_files(Path(source))  # a missing or empty source is refused before anything else
    return shards_from_documents(
        iter_documents(source), out_dir, source=str(Path(source).resolve()),
        command=command or from_text_command(source, chars_per_shard), fingerprint=source_fingerprint(source),
        chars_per_shard=chars_per_shard, row_group_size=row_group_size,
    )
