"""Shared plumbing for the dataset-backed tasks: open a cached split offline, check it, order it.

Malformed rows are found here with vectorised pyarrow/numpy checks, so a bad row is reported
when the task is built, not hours into a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxchat.common import JaxchatError
from jaxchat.data.cache import download_command, hf_cache_dir, require_task_file

SHUFFLE_SEED = 42


def load_split(name: str, config: str | None, split: str, home: str | Path | None = None) -> tuple[Any, Path]:
    """Open the cached parquet copy of one HF split as a ``datasets.Dataset`` (memory-mapped, offline).

    Returns ``(dataset, path)``. Raises JaxchatError with the download command when the file is
    missing or unreadable.
    """
    path = require_task_file(name, config, split, home)
    from datasets import load_dataset  # lazy: slow to import, only reading a task file needs it
    from datasets import utils as hf_utils

    # A local file is converted in a blink: datasets' "Generating train split" bars are only noise
    # in the training logs. Restore the caller's setting afterwards.
    bars_were_on = not hf_utils.are_progress_bars_disabled()
    hf_utils.disable_progress_bars()
    try:
        ds = load_dataset("parquet", data_files={"train": str(path)}, split="train", cache_dir=str(hf_cache_dir(home)))
    except Exception as e:  # datasets/pyarrow raise many types for a damaged file
        raise JaxchatError(
            f"{path}: cannot be read as parquet ({type(e).__name__}: {e}); delete it and re-run "
            f"`{download_command(name)}`"
        ) from None
    finally:
        if bars_were_on:
            hf_utils.enable_progress_bars()
    return ds, path


def arrow_table(ds: Any) -> pa.Table:
    """The pyarrow Table behind a ``datasets.Dataset`` (no copy)."""
    return ds.data.table


TypeCheck = Callable[[pa.DataType], bool]


def check_columns(table: pa.Table, path: Path, label: str, expected: dict[str, tuple[TypeCheck, str]]) -> None:
    """Raise JaxchatError unless ``table`` has each expected column with an accepted type."""
    for column, (accepts, description) in expected.items():
        if column not in table.column_names:
            raise JaxchatError(
                f"{label} ({path}): no column {column!r} (columns: {table.column_names}); expected the HF schema "
                f"with {column!r} as {description} — delete the file and re-download it"
            )
        dtype = table.schema.field(column).type
        if not accepts(dtype):
            raise JaxchatError(f"{label} ({path}): column {column!r} has type {dtype}, expected {description}")


def is_str(t: pa.DataType) -> bool:
    """String column (regular or large)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_int(t: pa.DataType) -> bool:
    """Any integer column (class labels are stored as int64)."""
    return pa.types.is_integer(t)


def is_str_list(t: pa.DataType) -> bool:
    """list<string> (any list flavour)."""
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and is_str(t.value_type)


def struct_with(fields: dict[str, Callable[[pa.DataType], bool]]) -> Callable[[pa.DataType], bool]:
    """A type check for a struct holding at least ``fields`` with those types."""

    def accepts(t: pa.DataType) -> bool:
        if not pa.types.is_struct(t):
            return False
        names = [t.field(i).name for i in range(t.num_fields)]
        return all(n in names and ok(t.field(names.index(n)).type) for n, ok in fields.items())

    return accepts


def messages_type(t: pa.DataType) -> bool:
    """list<struct<role: string, content: string>> (the chat message lists of SmolTalk)."""
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    return is_list and struct_with({"role": is_str, "content": is_str})(t.value_type)


def to_numpy_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean pyarrow array as numpy, nulls as False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def shuffled_order(n: int, seed: int = SHUFFLE_SEED) -> np.ndarray:
    """The row order of ``datasets.Dataset.shuffle(seed=seed)`` (nanochat shuffles every split with 42)."""
    return np.random.default_rng(seed).permutation(n)


def bad_row_error(
    label: str, path: Path, bad: np.ndarray, reason: Callable[[int], str], name: str
) -> JaxchatError:
    """The error for a fixed-schema dataset with malformed rows: first row, its reason, the count."""
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    return JaxchatError(
        f"{label} ({path}) row {first}: {reason(first)} ({len(rows)} malformed row(s) in all); "
        f"the file looks damaged — delete it and re-run `{download_command(name)}`"
    )


def bad_conversations(column: pa.ChunkedArray) -> np.ndarray:
    """Per row of a list<struct<role, content>> column: True where it is not a valid conversation.

    Valid (as ``conversation_problem`` in base.py, vectorised): an optional leading system message,
    then user/assistant alternating from user, at least two messages besides the system one, no
    null message or content.
    """
    out = []
    for chunk in column.chunks:
        n = len(chunk)
        lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = to_numpy_bool(chunk.is_null())
        flat = chunk.flatten()  # honours the chunk's offset and skips the values of null lists
        parents = np.repeat(np.arange(n), lengths)
        roles = flat.field("role")
        is_user = to_numpy_bool(pc.equal(roles, "user"))
        is_asst = to_numpy_bool(pc.equal(roles, "assistant"))
        is_sys = to_numpy_bool(pc.equal(roles, "system"))
        present = to_numpy_bool(pc.and_(flat.is_valid(), flat.field("content").is_valid()))
        starts = np.cumsum(lengths) - lengths
        has_sys = np.zeros(n, dtype=bool)
        nonempty = lengths > 0
        has_sys[nonempty] = is_sys[starts[nonempty]]
        position = np.arange(len(flat)) - starts[parents] - has_sys[parents]  # -1 for the system message
        ok = np.where(position == -1, True, np.where(position % 2 == 0, is_user, is_asst)) & present
        bad |= (lengths - has_sys) < 2
        bad[parents[~ok]] = True
        out.append(bad)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)
