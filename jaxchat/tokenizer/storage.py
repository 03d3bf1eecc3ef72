"""On-disk format of a tokenizer directory (no pickle), written atomically and validated on load.

``tokenizer.tiktoken``  tiktoken's own layout: one line per ordinary token, ``base64(bytes) rank``,
                        ranks 0, 1, 2, … in order.
``token_bytes.npy``     int32 raw byte length per id (0 for specials); derived, for other tools.
``tokenizer.json``      ``{format_version, pattern, special_tokens, vocab_size, n_merge_tokens,
                        tiktoken_sha256, fingerprint}``. Written LAST: it marks a complete save, and
                        its checksum ties it to the ``.tiktoken`` file beside it.

A save first removes the old ``tokenizer.json``, then replaces each file via ``.tmp`` +
``os.replace``, so an interrupted save leaves a directory that refuses to load (missing marker)
instead of a half-old, half-new tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxchat.common import JaxchatError
from jaxchat.tokenizer.constants import SPECIAL_TOKENS

FORMAT_VERSION = 1
TIKTOKEN_FILE = "tokenizer.tiktoken"
JSON_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
_TRAIN_HINT = "train one with `python -m jaxchat.tokenizer.train`"


def tiktoken_file_bytes(tokens: Sequence[bytes]) -> bytes:
    """The exact content of ``tokenizer.tiktoken`` for tokens in rank order."""
    return b"".join(base64.b64encode(tok) + b" %d\n" % rank for rank, tok in enumerate(tokens))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on every platform; the renames are still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fingerprint(tiktoken_data: bytes, pattern: str, special_tokens: dict[str, int]) -> str:
    """sha256 (hex) over the ``.tiktoken`` content and the canonical JSON of pattern + specials."""
    h = hashlib.sha256(tiktoken_data)
    meta = {"pattern": pattern, "special_tokens": special_tokens}
    h.update(json.dumps(meta, sort_keys=True, ensure_ascii=True).encode())
    return h.hexdigest()


def expected_special_tokens(n_merge_tokens: int) -> dict[str, int]:
    """The special-token table of a vocabulary with ``n_merge_tokens`` ordinary tokens."""
    return {name: n_merge_tokens + i for i, name in enumerate(SPECIAL_TOKENS)}


def write_tokenizer_dir(directory: Path, tokens: Sequence[bytes], pattern: str, token_bytes: np.ndarray) -> Path:
    """Save a tokenizer into ``directory`` (created if needed); other files there are left alone."""
    directory.mkdir(parents=True, exist_ok=True)
    tiktoken_data = tiktoken_file_bytes(tokens)
    specials = expected_special_tokens(len(tokens))
    meta = {
        "format_version": FORMAT_VERSION,
        "pattern": pattern,
        "special_tokens": specials,
        "vocab_size": len(tokens) + len(specials),
        "n_merge_tokens": len(tokens),
        "tiktoken_sha256": hashlib.sha256(tiktoken_data).hexdigest(),
        "fingerprint": fingerprint(tiktoken_data, pattern, specials),
    }
    # Remove the completeness marker first: from here until the new one lands, the dir won't load.
    (directory / JSON_FILE).unlink(missing_ok=True)
    _atomic_write(directory / TIKTOKEN_FILE, tiktoken_data)
    npy_tmp = directory / (TOKEN_BYTES_FILE + ".tmp")
    with open(npy_tmp, "wb") as f:
        np.save(f, np.asarray(token_bytes, dtype=np.int32), allow_pickle=False)
    os.replace(npy_tmp, directory / TOKEN_BYTES_FILE)
    _atomic_write(directory / JSON_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    _fsync_dir(directory)
    return directory


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxchatError(f"{path}: not valid JSON ({e}); expected a jaxchat tokenizer.json") from None
    if not isinstance(meta, dict):
        raise JaxchatError(f"{path}: top level is a {type(meta).__name__}, expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise JaxchatError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
    kinds = {"pattern": str, "special_tokens": dict, "vocab_size": int, "tiktoken_sha256": str}
    for field, kind in kinds.items():
        if not isinstance(meta.get(field), kind) or isinstance(meta.get(field), bool):
            raise JaxchatError(f"{path}: field {field!r} is {meta.get(field)!r}, expected a {kind.__name__}")
    return meta


def _parse_tiktoken(path: Path, data: bytes) -> list[bytes]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise JaxchatError(f"{path}: non-ASCII byte at offset {e.start}; expected lines '<base64> <rank>'") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    tokens: list[bytes] = []
    seen: dict[bytes, int] = {}
    for i, line in enumerate(lines):
        parts = line.split(" ")
        if len(parts) != 2 or not parts[1].isdigit():
            raise JaxchatError(f"{path} line {i + 1}: {line[:60]!r} is malformed; expected '<base64 token> <rank>'")
        try:
            tok = base64.b64decode(parts[0], validate=True)
        except binascii.Error:
            raise JaxchatError(f"{path} line {i + 1}: {parts[0][:40]!r} is not valid base64") from None
        rank = int(parts[1])
        if rank != i:
            raise JaxchatError(f"{path} line {i + 1}: rank {rank}, expected {i} (ranks must be contiguous from 0)")
        if tok in seen:
            raise JaxchatError(
                f"{path} line {i + 1}: token {tok!r} repeats line {seen[tok] + 1}; tokens must be unique"
            )
        seen[tok] = i
        tokens.append(tok)
    if not tokens:
        raise JaxchatError(f"{path}: no tokens; expected one '<base64 token> <rank>' line per token")
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise JaxchatError(f"{path}: no single-byte token for byte(s) {missing[:8]}; expected all 256 bytes")
    return tokens


def read_tokenizer_dir(directory: Path) -> tuple[list[bytes], str]:
    """Read and validate a tokenizer directory; return (tokens in rank order, split pattern)."""
    if not directory.is_dir():
        raise JaxchatError(f"tokenizer directory {directory} does not exist; {_TRAIN_HINT}")
    json_path, tik_path = directory / JSON_FILE, directory / TIKTOKEN_FILE
    if not json_path.is_file():
        if (directory / "tokenizer.pkl").exists():
            raise JaxchatError(
                f"{directory} holds a pickled (nanochat) tokenizer.pkl; jaxchat reads {TIKTOKEN_FILE} + {JSON_FILE}: "
                f"{_TRAIN_HINT}"
            )
        state = "an interrupted save" if tik_path.exists() else "no tokenizer"
        raise JaxchatError(f"{json_path} is missing ({state}); {_TRAIN_HINT}")
    meta = _read_meta(json_path)
    if not tik_path.is_file():
        raise JaxchatError(f"{tik_path} is missing (it goes with {json_path}); {_TRAIN_HINT}")
    data = tik_path.read_bytes()
    tokens = _parse_tiktoken(tik_path, data)
    if hashlib.sha256(data).hexdigest() != meta["tiktoken_sha256"]:
        raise JaxchatError(
            f"{tik_path} does not match the tiktoken_sha256 in {json_path} (mixed or edited files); {_TRAIN_HINT}"
        )
    specials = expected_special_tokens(len(tokens))
    if meta["special_tokens"] != specials:
        raise JaxchatError(
            f"{json_path}: special_tokens {meta['special_tokens']} do not follow the {len(tokens)} merge tokens; "
            f"expected {specials}"
        )
    if meta["vocab_size"] != len(tokens) + len(specials):
        raise JaxchatError(
            f"{json_path}: vocab_size {meta['vocab_size']}, expected {len(tokens) + len(specials)} "
            f"({len(tokens)} tokens in {TIKTOKEN_FILE} + {len(specials)} special)"
        )
    npy_path = directory / TOKEN_BYTES_FILE
    if npy_path.is_file():  # derived data; if present it must agree
        try:
            saved = np.load(npy_path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise JaxchatError(f"{npy_path}: unreadable ({e}); expected an int32 .npy array") from None
        expected = [len(t) for t in tokens] + [0] * len(specials)
        if saved.dtype != np.int32 or saved.tolist() != expected:
            raise JaxchatError(f"{npy_path} disagrees with {TIKTOKEN_FILE}; expected int32 byte lengths per id")
    return tokens, meta["pattern"]
