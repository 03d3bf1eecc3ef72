"""The tokenizer stage: train BPE on the first characters of the TRAIN shards, save it, report.

    python -m jaxchat.tokenizer.train [--max-chars 2000000000] [--doc-cap 10000] [--vocab-size 65536]

The validation shard (the last one) is never read. The result goes to ``$JAXCHAT_HOME/tokenizer``;
the save is atomic, so an interrupted run never leaves a tokenizer that loads half-written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxchat.common import JaxchatError
from jaxchat.data.shards import iter_texts, list_shards, split_shards
from jaxchat.report import write_section
from jaxchat.tokenizer import default_tokenizer_dir
from jaxchat.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer


def train_tokenizer(
    max_chars: int = 2_000_000_000,
    doc_cap: int = 10_000,
    vocab_size: int = 65536,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> Tokenizer:
    """Train on up to ``max_chars`` characters of the train shards (documents cut to ``doc_cap``).

    Saves to ``out_dir`` (default ``$JAXCHAT_HOME/tokenizer``), writes the "Tokenizer training"
    report section, prints a summary and returns the tokenizer.
    """
    for name, value in (("max_chars", max_chars), ("doc_cap", doc_cap)):
        if value < 1:
            raise JaxchatError(f"{name} is {value}, expected a positive number")
    train_paths, val_paths = split_shards(list_shards(data_dir))
    out = Path(out_dir) if out_dir is not None else default_tokenizer_dir()
    print(
        f"tokenizer: vocab {vocab_size:,} from up to {max_chars:,} chars of {len(train_paths)} train shard(s) "
        f"(docs cut to {doc_cap:,} chars; {val_paths[0].name} held out)"
    )
    seen = {"chars": 0, "docs": 0}
    with tqdm(total=max_chars, unit="char", unit_scale=True, desc="tokenizer", file=sys.stderr) as bar:

        def texts() -> Iterator[str]:
            for text in iter_texts(train_paths, max_chars=max_chars, doc_cap=doc_cap):
                seen["chars"] += len(text)
                seen["docs"] += 1
                bar.update(len(text))
                yield text

        t0 = time.perf_counter()
        tokenizer = Tokenizer.train_from_iterator(texts(), vocab_size)
        train_s = time.perf_counter() - t0
        bar.total = seen["chars"]  # the shards may hold fewer characters than asked for
        bar.refresh()

    tokenizer.save(out)
    if Tokenizer.from_directory(out) != tokenizer:  # cheap end-to-end check of what others will load
        raise JaxchatError(f"{out}: the saved tokenizer does not load back identically")
    summary = _summary(tokenizer, out, train_s, seen["chars"], seen["docs"], max_chars, doc_cap)
    print(summary)
    write_section("tokenizer", "Tokenizer training", summary, fresh=True)
    return tokenizer


def _summary(tok: Tokenizer, out: Path, seconds: float, chars: int, docs: int, max_chars: int, doc_cap: int) -> str:
    lengths = np.asarray(tok.token_bytes[: tok.n_merge_tokens], dtype=np.float64)
    n_special = len(SPECIAL_TOKENS)
    rows = [
        ("max_chars", f"{max_chars:,}"),
        ("doc_cap", f"{doc_cap:,}"),
        ("characters trained on", f"{chars:,} ({docs:,} documents)"),
        ("training time", f"{seconds:.1f} s"),
        ("vocab size", f"{tok.get_vocab_size():,} ({tok.n_merge_tokens:,} merge tokens + {n_special} special)"),
        ("special ids", f"{tok.n_merge_tokens}-{tok.get_vocab_size() - 1} ({SPECIAL_TOKENS[0]} = {tok.bos_token_id})"),
        ("token bytes min / max / mean", f"{lengths.min():.0f} / {lengths.max():.0f} / {lengths.mean():.2f}"),
        ("fingerprint", tok.fingerprint()),
        ("saved to", str(out)),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point. Exits with status 2 and a one-line ``error: ...`` on bad input or data."""
    parser = argparse.ArgumentParser(prog="python -m jaxchat.tokenizer.train", description=__doc__.split("\n")[0])
    parser.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters to train on")
    parser.add_argument("--doc-cap", type=int, default=10_000, help="cut each document to this many characters")
    parser.add_argument("--vocab-size", type=int, default=65536, help="vocabulary size, 9 special tokens included")
    parser.add_argument("--data-dir", type=Path, default=None, help="shard directory (default $JAXCHAT_HOME/base_data)")
    parser.add_argument("--out-dir", type=Path, default=None, help="output (default $JAXCHAT_HOME/tokenizer)")
    args = parser.parse_args(argv)
    try:
        train_tokenizer(args.max_chars, args.doc_cap, args.vocab_size, args.data_dir, args.out_dir)
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted before the new tokenizer was completely saved", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
