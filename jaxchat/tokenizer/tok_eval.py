"""Compression (bytes per token) of our tokenizer vs GPT-2 and GPT-4, as a markdown table.

    python -m jaxchat.tokenizer.tok_eval
    python -m jaxchat.tokenizer.tok_eval --tokenizer_dir=DIR --sample_chars=100000

``--tokenizer_dir=""`` reads ``$JAXCHAT_HOME/tokenizer``, ``--data_dir=""`` ``$JAXCHAT_HOME/base_data``;
``--sample_chars`` characters are taken from each shard. The table is printed and put in the
"Tokenizer evaluation" section of ``$JAXCHAT_HOME/report/tokenizer.md``.

Texts: the built-in samples of ``eval_texts`` plus the start of the first train shard and of the
val shard. GPT-2 / GPT-4 (``cl100k_base``) come from tiktoken, which downloads them on first use
(cached under ``$TIKTOKEN_CACHE_DIR``); offline and uncached they are skipped after a quick check
instead of hanging.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tiktoken

from jaxchat import cli
from jaxchat.common import JaxchatError
from jaxchat.data.shards import iter_texts, list_shards, split_shards
from jaxchat.report import write_section
from jaxchat.tokenizer import Tokenizer, load_tokenizer
from jaxchat.tokenizer.eval_texts import EVAL_TEXTS

PROG = "python -m jaxchat.tokenizer.tok_eval"
HEADING = "Tokenizer evaluation"  # its section of the tokenizer stage's report


@dataclasses.dataclass(frozen=True)
class TokEvalConfig:
    """Which tokenizer ``python -m jaxchat.tokenizer.tok_eval`` evaluates, on which shards."""

    tokenizer_dir: str = ""  # "" = $JAXCHAT_HOME/tokenizer
    data_dir: str = ""  # shard directory; "" = $JAXCHAT_HOME/base_data
    sample_chars: int = 1_000_000  # characters taken from the first train shard and from the val shard


# Reference encodings: display name → (tiktoken name, files tiktoken fetches for it).
_BLOB = "https://openaipublic.blob.core.windows.net"
REFERENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "GPT-2": ("gpt2", (f"{_BLOB}/gpt-2/encodings/main/vocab.bpe", f"{_BLOB}/gpt-2/encodings/main/encoder.json")),
    "GPT-4": ("cl100k_base", (f"{_BLOB}/encodings/cl100k_base.tiktoken",)),
}


def _tiktoken_cached(url: str) -> bool:
    # Mirrors tiktoken.load.read_file_cached's cache location and key.
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return os.path.exists(os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()))


def _with_timeout(fn: Callable[[], Any], seconds: float) -> Any:
    """Run ``fn`` in a daemon thread; return its result, or raise TimeoutError / its exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)  # daemon: a stuck download cannot block exit
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def load_references(probe_s: float = 3.0, download_s: float = 60.0) -> tuple[dict[str, tiktoken.Encoding], str]:
    """Load the GPT-2 / GPT-4 encodings that are cached or downloadable; return (encodings, note)."""
    encodings: dict[str, tiktoken.Encoding] = {}
    missing: list[str] = []
    unreachable: dict[str, Exception] = {}  # host → why, so a dead network is probed only once
    for label, (name, urls) in REFERENCES.items():
        try:
            if not all(_tiktoken_cached(u) for u in urls):
                host = urls[0].split("/")[2]
                if host in unreachable:
                    raise unreachable[host]
                try:
                    # getaddrinfo has no timeout of its own, hence the thread.
                    probe = lambda h=host: socket.create_connection((h, 443), timeout=probe_s).close()  # noqa: E731
                    _with_timeout(probe, probe_s + 0.5)
                except Exception as e:
                    unreachable[host] = e
                    raise
            encodings[label] = _with_timeout(lambda n=name: tiktoken.get_encoding(n), download_s)
        except Exception as e:  # noqa: BLE001 - any failure means "not available"
            missing.append(f"{label} ({type(e).__name__})")
    note = ""
    if missing:
        note = (
            f"Not available (offline and not in the tiktoken cache; set TIKTOKEN_CACHE_DIR to a filled "
            f"cache to compare): {', '.join(missing)}."
        )
    return encodings, note


def shard_samples(data_dir: str | Path | None = None, sample_chars: int = 1_000_000) -> tuple[dict[str, str], str]:
    """The first ``sample_chars`` characters of the first train shard and of the val shard."""
    try:
        train, val = split_shards(list_shards(data_dir))
    except JaxchatError as e:
        return {}, f"No shard rows: {e}"
    samples = {
        f"fineweb-train ({train[0].name})": "\n".join(iter_texts(train[:1], max_chars=sample_chars)),
        f"fineweb-val ({val[0].name})": "\n".join(iter_texts(val, max_chars=sample_chars)),
    }
    return samples, ""


def compression_table(tokenizer: Tokenizer, texts: dict[str, str], references: dict[str, tiktoken.Encoding]) -> str:
    """Markdown table: per text, its UTF-8 bytes and tokens / bytes-per-token for each encoding."""
    names = ["ours", *references]
    header = "| text | bytes | " + " | ".join(f"{n} tokens | {n} bytes/token" for n in names) + " |"
    rule = "|---|---:|" + "---:|---:|" * len(names)
    lines = [header, rule]
    for label, text in texts.items():
        n_bytes = len(text.encode("utf-8"))
        counts = [len(tokenizer.encode(text))] + [len(enc.encode_ordinary(text)) for enc in references.values()]
        cells = " | ".join(f"{c:,} | {n_bytes / max(c, 1):.2f}" for c in counts)
        lines.append(f"| {label} | {n_bytes:,} | {cells} |")
    return "\n".join(lines)


def evaluate(
    tokenizer: Tokenizer | None = None,
    data_dir: str | Path | None = None,
    sample_chars: int = 1_000_000,
    references: dict[str, tiktoken.Encoding] | None = None,
) -> str:
    """The tokenizer evaluation section (markdown): the table plus notes on what was skipped.

    ``references=None`` loads GPT-2 / GPT-4 when possible; pass ``{}`` to compare with nothing.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer()
    notes = []
    if references is None:
        references, note = load_references()
        notes.append(note)
    samples, note = shard_samples(data_dir, sample_chars)
    notes.append(note)
    table = compression_table(tokenizer, {**EVAL_TEXTS, **samples}, references)
    head = (
        f"Tokenizer {tokenizer.fingerprint()[:12]}, vocab {tokenizer.get_vocab_size():,}. "
        "Higher bytes/token = better compression."
    )
    return "\n\n".join([head, table, *[n for n in notes if n]])


def run(config: TokEvalConfig) -> str:
    """Evaluate, print the section and write it to the report; returns the section (markdown)."""
    if config.sample_chars < 1:
        raise JaxchatError(f"--sample_chars={config.sample_chars}: expected a positive number")
    section = evaluate(load_tokenizer(config.tokenizer_dir or None), config.data_dir or None, config.sample_chars)
    print(section)
    path = write_section("tokenizer", HEADING, section)
    print(f"\nwritten to {path}")
    return section


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; the exit status (2 with a one-line ``error: ...`` on bad input)."""
    return cli.main(run, TokEvalConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
