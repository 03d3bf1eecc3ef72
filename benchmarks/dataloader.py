"""Throughput of the pretraining input pipeline (parquet → tokenise → windows) on this machine.

    python benchmarks/dataloader.py                       # 65,536-vocab tokenizer trained here
    python benchmarks/dataloader.py --tokenizer $JAXCHAT_HOME/tokenizer --mb 64

Writes temporary FineWeb-format shards (one ``text`` column, row groups of 1024 documents) filled
with the English-looking documents of ``tests/fixtures/fineweb.py`` (sentences, paragraphs, numbers,
quotes, lists). Unless ``--tokenizer`` is given, a tokenizer of ``--vocab-size`` (65,536) is trained on
4 MB of those documents (other seeds than the shards') plus 4 MB of the Zipfian synthetic text of
``benchmarks/tokenizer.py``, which gives it enough distinct words to learn 65K tokens; on the shard
text it then reaches ~4.9 bytes/token, FineWeb-Edu's figure for nanochat's tokenizer (docs/DESIGN.md §1).

Prints a markdown table: each stage alone (parquet read, tokenising), then the whole pipeline with 1
and N tokenizer threads, pulled directly and through ``device_prefetch`` (what the trainer sees).
Tokens/s counts training tokens (rows × seq_len per batch). CPU s is this process's CPU time: on a
shared machine, wall-clock rates drop when other jobs compete for the cores, CPU time does not.
The d20 reference consumes ~135K tokens/s per H100 (docs/DESIGN.md §5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures (the document generator) and benchmarks.tokenizer

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from jaxchat.data.prefetch import device_prefetch  # noqa: E402
from jaxchat.data.documents import DocumentEncoder  # noqa: E402
from jaxchat.data.pretrain import DOCS_PER_CHUNK, pretrain_dataset  # noqa: E402
from jaxchat.tokenizer import Tokenizer  # noqa: E402
from tests.fixtures.fineweb import fineweb_documents  # noqa: E402

H100_D20_TOKENS_PER_S = 135_000


def write_shards(directory: Path, mb: float, n_shards: int) -> tuple[list[Path], int]:
    """FineWeb-format shards holding about ``mb`` MB of documents in all; returns (paths, bytes)."""
    per_shard = max(1, int(mb * 1e6 / n_shards / 1000))  # fixture documents average ~1 KB
    paths, n_bytes = [], 0
    for i in range(n_shards):
        docs = fineweb_documents(per_shard, seed=100 + i)
        n_bytes += sum(len(d.encode("utf-8")) for d in docs)
        path = directory / f"shard_{i:05d}.parquet"
        pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), path, row_group_size=1024)
        paths.append(path)
    return paths, n_bytes


def train_tokenizer(vocab_size: int) -> Tokenizer:
    from benchmarks.tokenizer import synthetic_documents

    texts = fineweb_documents(4000, seed=777) + synthetic_documents(4_000_000, seed=1)
    return Tokenizer.train_from_iterator(texts, vocab_size)


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def row(name: str, tokens: int, t: Timer, note: str = "") -> str:
    rate = tokens / t.wall
    return (f"| {name} | {tokens / 1e6:.1f} | {t.wall:.2f} | {t.cpu:.2f} | {rate / 1e6:.2f} | "
            f"{tokens / t.cpu / 1e6:.2f} | {rate / H100_D20_TOKENS_PER_S:.1f}× | {note} |")


def run_pipeline(paths, tok, rows, seq_len, threads, n_batches, prefetch: bool) -> tuple[int, Timer]:
    ds = pretrain_dataset(paths, tok, rows, seq_len, tokenizer_threads=threads)
    it = device_prefetch(ds) if prefetch else iter(ds)
    next(it)  # warm-up: open the shard, start the threads
    with Timer() as t:
        for _ in range(n_batches):
            batch = next(it)
        if prefetch:
            batch["inputs"].block_until_ready()
    it.close()
    return n_batches * rows * seq_len, t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=24.0, help="MB of documents in the temporary shards")
    parser.add_argument("--vocab-size", type=int, default=65536)
    parser.add_argument("--tokenizer", type=Path, help="load this tokenizer directory instead of training one")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="tokenizer threads (besides 1)")
    args = parser.parse_args(argv)

    with Timer() as t_tok:
        tok = Tokenizer.from_directory(args.tokenizer) if args.tokenizer else train_tokenizer(args.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        paths, n_bytes = write_shards(Path(tmp), args.mb, n_shards=2)
        lines = []
        # Stage 1: parquet alone (row group → list of str).
        with Timer() as t:
            texts = []
            for path in paths:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts += pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
        # Stage 2: tokenising alone: the pipeline's encoder (slices of DOCS_PER_CHUNK documents), and
        # tiktoken's encode_ordinary_batch over the same slices for comparison.
        slices = [texts[i:i + DOCS_PER_CHUNK] for i in range(0, len(texts), DOCS_PER_CHUNK)]
        timed = []
        for threads in sorted({1, args.threads}):
            encoder = DocumentEncoder(tok, threads)
            encoder(slices[0])
            with Timer() as t_enc:
                n_tokens = sum(len(encoder(s)[0]) for s in slices)
            encoder.close()
            timed.append((f"tokenise only (pipeline encoder), {threads} thr", t_enc))
        for threads in sorted({1, args.threads}):
            with Timer() as t_enc:
                for s in slices:
                    tok.encode(s, prepend="<|bos|>", num_threads=threads)
            timed.append((f"tokenise only (encode_ordinary_batch), {threads} thr", t_enc))
        lines.append(row("parquet read only", n_tokens, t, f"{n_bytes / 1e6:.0f} MB of text"))
        for name, t_enc in timed:
            lines.append(row(name, n_tokens, t_enc, f"{n_bytes / t_enc.wall / 1e6:.1f} MB/s"))
        # Stage 3: the pipeline, over about 90 % of the stream (it loops, but stay in one pass).
        n_batches = max(1, int(0.9 * n_tokens) // (args.rows * (args.seq_len + 1)) - 2)
        for prefetch in (False, True):
            for threads in sorted({1, args.threads}):
                tokens, t = run_pipeline(paths, tok, args.rows, args.seq_len, threads, n_batches, prefetch)
                name = f"pipeline, {threads} thr" + (" + device_prefetch" if prefetch else "")
                lines.append(row(name, tokens, t, f"{n_batches} batches of {args.rows}×{args.seq_len}"))

    print(f"tokenizer: vocab {tok.get_vocab_size():,} ({'loaded' if args.tokenizer else 'trained'} in "
          f"{t_tok.wall:.1f} s); text: {n_bytes / 1e6:.1f} MB, {n_bytes / n_tokens:.2f} bytes/token; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| stage | M tokens | wall s | CPU s | M tok/s (wall) | M tok/CPU-s | × d20 H100 |  |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
