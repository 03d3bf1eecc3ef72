"""Pretraining shards on disk: find them, split train/val, stream their documents in order.

Shards are ``$JAXCHAT_HOME/base_data/shard_XXXXX.parquet`` (FineWeb-Edu, the default corpus) or
``$JAXCHAT_HOME/base_data_climbmix/shard_XXXXX.parquet`` (ClimbMix, ``corpus="climbmix"``), with one
string column ``text``; the LAST shard (in name order) is the validation shard (docs/DESIGN.md §0;
ClimbMix's val shard, shard_06542, is downloaded with any number of train shards).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.data.cache import corpus_dir, fineweb_command


def default_data_dir(corpus: str = "fineweb") -> Path:
    """``$JAXCHAT_HOME/base_data`` (``corpus="climbmix"``: ``$JAXCHAT_HOME/base_data_climbmix``)."""
    return corpus_dir(corpus, jaxchat_home())


def list_shards(data_dir: str | Path | None = None, *, corpus: str = "fineweb") -> list[Path]:
    """All ``shard_*.parquet`` files in ``data_dir`` (default: the directory of ``corpus``,
    ``$JAXCHAT_HOME/base_data`` for FineWeb-Edu), sorted by name."""
    directory = Path(data_dir) if data_dir is not None else default_data_dir(corpus)
    paths = sorted(directory.glob("shard_*.parquet")) if directory.is_dir() else []
    if not paths:
        raise JaxchatError(f"no shard_*.parquet files in {directory}; download some with `{fineweb_command(directory)}`")
    return paths


def split_shards(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(train, val)``: val is the last shard alone, train all the others (at least 2 shards needed)."""
    paths = list(paths)
    if len(paths) < 2:
        raise JaxchatError(
            f"found {len(paths)} shard(s); expected at least 2 (the last one is held out for validation): "
            f"`{fineweb_command(paths[0].parent if paths else None)}`"
        )
    return paths[:-1], paths[-1:]


def open_shard(path: Path) -> pq.ParquetFile:
    """Open a FineWeb-format shard; JaxchatError naming the file if it is unreadable or has no string `text`."""
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise JaxchatError(f"{path}: cannot read as parquet ({_one_line(e)}); delete the file and download it "
                           f"again with `{fineweb_command(Path(path).parent)}`") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise JaxchatError(f"{path}: no 'text' column (columns: {names}); expected a FineWeb-Edu shard")
    if not pa.types.is_string(pf.schema_arrow.field("text").type) and not pa.types.is_large_string(
        pf.schema_arrow.field("text").type
    ):
        raise JaxchatError(f"{path}: column 'text' has type {pf.schema_arrow.field('text').type}, expected string")
    return pf


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (pyarrow's span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_row_group_texts(pf: pq.ParquetFile, path: Path, row_group: int) -> list[str | None]:
    """The ``text`` column of one row group of an opened shard (:func:`open_shard`).

    The footer was read when the file was opened; a row group's pages are only read (decompressed,
    decoded) here. A corrupt one (a damaged download, a disk error) is a JaxchatError naming the file
    and the row group, raised wherever the pipeline reads it (a prefetch thread re-raises it in the
    trainer), instead of pyarrow's multi-line OSError.
    """
    try:
        return pf.read_row_group(row_group, columns=["text"]).column("text").to_pylist()
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        raise JaxchatError(
            f"{path}: row group {row_group} (of {pf.num_row_groups}) is corrupt ({_one_line(e)}); delete the "
            f"file and download it again with `{fineweb_command(Path(path).parent)}`") from None


def iter_texts(paths: Sequence[Path], max_chars: int | None = None, doc_cap: int | None = None) -> Iterator[str]:
    """Yield document texts from ``paths`` in order, reading one parquet row group at a time.

    Each document is cut to ``doc_cap`` characters; the stream stops after exactly ``max_chars``
    characters in all (the last document is cut to fit). Null texts are skipped.
    """
    remaining = max_chars
    for path in paths:
        if remaining is not None and remaining <= 0:
            return
        pf = open_shard(Path(path))
        for rg in range(pf.num_row_groups):
            for text in read_row_group_texts(pf, Path(path), rg):
                if text is None:
                    continue
                if doc_cap is not None:
                    text = text[:doc_cap]
                if remaining is not None:
                    if remaining <= 0:
                        return
                    text = text[:remaining]
                    remaining -= len(text)
                yield text
            if remaining is not None and remaining <= 0:
                return
