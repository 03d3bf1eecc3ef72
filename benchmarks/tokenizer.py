"""Tokenizer speed on this machine: rustbpe training time and tiktoken batch-encode throughput.

    python benchmarks/tokenizer.py --mb 8 --vocab-size 65536

Text (``--source``): the train shards under ``$JAXCHAT_HOME/base_data`` when there are any; else
``synthetic`` English-like documents with a Zipfian vocabulary of ~60K pseudo-words (many distinct
words, a long tail, so BPE training does realistic work); or ``stdlib``, the Python standard
library's own ``.py`` files (real text, code-heavy). Prints a markdown table row.
"""

from __future__ import annotations

import argparse
import os
import random
import sysconfig
import time
from pathlib import Path

from jaxchat.common import JaxchatError
from jaxchat.data.shards import iter_texts, list_shards, split_shards
from jaxchat.tokenizer import Tokenizer

_ONSETS = "b c d f g h j k l m n p r s t v w y z br cr dr fr gr pr tr bl cl fl gl pl sl st sp sh ch th wh qu".split()
_VOWELS = "a e i o u ai ea ee oo ou ie io".split()
_CODAS = [""] * 6 + "n r s t l m nd st ng ck rt ss ll nt".split()
_SUFFIXES = [""] * 10 + "s ed ing ly er ion ment ness able ity".split()


def synthetic_documents(n_chars: int, seed: int = 0) -> list[str]:
    """English-looking documents totalling about ``n_chars`` characters (deterministic)."""
    rng = random.Random(seed)

    def word() -> str:
        syllables = rng.choice((1, 1, 2, 2, 3, 4))
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))

    lexicon = list(dict.fromkeys(word() for _ in range(60_000)))
    cum, acc = [], 0.0
    for rank in range(len(lexicon)):  # Zipf: a few very common words, a long tail of rare ones
        acc += 1.0 / (rank + 1)
        cum.append(acc)
    docs, total = [], 0
    while total < n_chars:
        sentences = []
        for _ in range(rng.randint(3, 40)):
            words = rng.choices(lexicon, cum_weights=cum, k=rng.randint(4, 25))
            words = [w + rng.choice(_SUFFIXES) for w in words]
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**rng.randint(1, 5))))
            if rng.random() < 0.2:
                words[rng.randrange(len(words))] += ","
            sentences.append(" ".join(words).capitalize() + rng.choice(".....?!"))
        doc = " ".join(sentences)
        docs.append(doc)
        total += len(doc)
    return docs


def stdlib_documents(n_chars: int) -> list[str]:
    """The standard library's .py files, in sorted order, up to ``n_chars`` characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or total >= n_chars:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")[:10_000][: n_chars - total]
        docs.append(text)
        total += len(text)
    return docs


def shard_documents(n_chars: int) -> list[str]:
    train, _ = split_shards(list_shards())
    return list(iter_texts(train, max_chars=n_chars, doc_cap=10_000))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=8.0, help="megabytes (1e6 chars) of text to train on")
    parser.add_argument("--vocab-size", type=int, default=65536)
    parser.add_argument("--source", choices=("auto", "shards", "synthetic", "stdlib"), default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="encode threads (besides 1)")
    args = parser.parse_args(argv)

    n_chars = int(args.mb * 1e6)
    source = args.source
    docs: list[str] = []
    if source in ("auto", "shards"):
        try:
            docs, source = shard_documents(n_chars), "shards"
        except JaxchatError:
            if source == "shards":
                raise
    if source == "stdlib":
        docs = stdlib_documents(n_chars)
    elif not docs:
        docs, source = synthetic_documents(n_chars), "synthetic"
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)

    t0 = time.perf_counter()
    tok = Tokenizer.train_from_iterator(docs, args.vocab_size)
    train_s = time.perf_counter() - t0

    rates = {}
    for threads in sorted({1, args.threads}):
        tok.encode(docs[:100], num_threads=threads)  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            ids = tok.encode(docs, num_threads=threads)
            best = min(best, time.perf_counter() - t0)
        rates[threads] = n_bytes / best / 1e6
    n_tokens = sum(len(x) for x in ids)

    print("| text | MB | vocab | train s | bytes/token | " + " | ".join(f"encode MB/s ({t} thr)" for t in rates) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(rates))
    print(
        f"| {source} | {n_bytes / 1e6:.1f} | {tok.get_vocab_size():,} | {train_s:.1f} | {n_bytes / n_tokens:.2f} | "
        + " | ".join(f"{r:.1f}" for r in rates.values())
        + " |"
    )
    print(f"\n({os.cpu_count()} CPU cores; {len(docs):,} documents)")


if __name__ == "__main__":
    main()
