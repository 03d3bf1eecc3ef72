"""Parity check: jaxchat's best-fit pretraining loader against nanochat 92d63d4's dataloader, batch by batch.

What it checks
    Extracts ``nanochat/{__init__,common,dataset,tokenizer,dataloader}.py`` at commit 92d63d4 from the
    local git mirror of karpathy/nanochat into a temp dir and imports them unchanged: one process (no
    RANK / LOCAL_RANK / WORLD_SIZE in the environment, so ``get_dist_info()`` says rank 0 of 1) and
    ``NANOCHAT_BASE_DIR`` pointing at the temp dir, whose ``base_data_climbmix/`` gets 3 small
    FineWeb-format shards (``tests/fixtures/loader_parity.py``: 1200 deterministic documents each, row
    groups of 300; the last shard is the val shard on both sides). It trains one small tokenizer
    (jaxchat's rustbpe + tiktoken ``Tokenizer``, vocab 1024) and hands nanochat's loader the SAME
    tokenizer twice: (1) jaxchat's object behind the two calls the loader makes
    (``get_bos_token_id()``, ``encode(texts, prepend=bos, num_threads=...)``), and (2) nanochat's own
    ``RustBPETokenizer`` built on a tiktoken ``Encoding`` of the same merges, split pattern and special
    tokens (nanochat's encode path end to end). Then, for each run of ``RUNS`` (nanochat's defaults,
    buffer_size 1000 / tokenizer_batch_size 128, at 8 × 256; and a 50-document buffer at 4 × 512 over
    two epochs), it takes the first N train batches and the first val batches of
    ``tokenizing_distributed_data_loader_with_state_bos_bestfit(tokenizer, B, T, split, device="cpu",
    ...)`` and of ``jaxchat.data.bestfit`` (``pretrain_dataset(..., packing="bestfit")`` /
    ``val_batches(..., packing="bestfit")`` with the same buffer settings) and compares inputs and
    targets token for token. Exit status 0 when every batch is identical, 1 otherwise (the first
    differing batch, row and column are printed).

Golden fixture
    With ``--write-fixture`` it saves ``tests/fixtures/nanochat_92d63d4/loader.npz`` (< 150 KB) from
    NANOCHAT's batches: the tokenizer's tokens, the parameters, the first batches of each run in full,
    the SHA-256 of every train batch and the val batches in full. ``tests/test_loader_2026.py``
    regenerates the same shards and checks jaxchat's loader against it without torch.

How to run (needs torch; never imported by jaxchat)
    python -m venv /tmp/torchvenv_opt && /tmp/torchvenv_opt/bin/pip install torch numpy filelock requests \\
        pyarrow tiktoken rustbpe grain    # + jax: jaxchat's package imports it (pyproject.toml's versions)
    PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python tools/parity_loader_nanochat.py [--write-fixture]
    About 10 s on 2 CPU cores. pytest is not needed (a stand-in is used for the fixture module's import).

Options: --mirror PATH (git dir of the nanochat mirror), --commit SHA.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

COMMIT = "92d63d4"
DEFAULT_MIRROR = "/work/.mirror/karpathy+nanochat/repo"
REPO_ROOT = Path(__file__).resolve().parents[1]
NANOCHAT_FILES = ("__init__", "common", "dataset", "tokenizer", "dataloader")


def extract_nanochat(mirror: str, commit: str, dest: Path) -> Path:
    """``dest/nanochat/*.py`` of ``commit`` (only the modules the loader imports); returns ``dest``."""
    package = dest / "nanochat"
    package.mkdir(parents=True)
    for name in NANOCHAT_FILES:
        source = subprocess.run(["git", f"--git-dir={mirror}", "show", f"{commit}:nanochat/{name}.py"],
                                check=True, capture_output=True).stdout
        (package / f"{name}.py").write_bytes(source)
    return dest


class SharedTokenizer:
    """jaxchat's tokenizer behind the two calls nanochat's loader makes."""

    def __init__(self, tok):
        self.tok = tok

    def get_bos_token_id(self) -> int:
        return self.tok.bos_token_id

    def encode(self, texts, prepend=None, num_threads=8):
        return self.tok.encode(texts, prepend=prepend, num_threads=num_threads)


def nanochat_tokenizer(tok):
    """nanochat's ``RustBPETokenizer`` over a tiktoken Encoding of the same merges and special tokens."""
    import tiktoken
    from nanochat.tokenizer import SPECIAL_TOKENS, RustBPETokenizer

    ranks = {t: i for i, t in enumerate(tok.mergeable_tokens())}
    special = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert special == tok.special_tokens, (special, tok.special_tokens)
    enc = tiktoken.Encoding(name="rustbpe", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=special)
    return RustBPETokenizer(enc, "<|bos|>")


def nanochat_batches(tokenizer, run: dict, split: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from nanochat.dataloader import tokenizing_distributed_data_loader_with_state_bos_bestfit as loader

    gen = loader(tokenizer, run["rows"], run["seq_len"], split, tokenizer_threads=4,
                 tokenizer_batch_size=run["tokenizer_batch_size"], device="cpu", buffer_size=run["buffer_size"])
    out = []
    for _ in range(n):
        inputs, targets, _state = next(gen)
        out.append((inputs.numpy().copy(), targets.numpy().copy()))  # the loader reuses its buffers
    return out


def jaxchat_batches(paths, tok, run: dict, split: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from jaxchat.data.bestfit import BestFitDataset, bestfit_val_batches

    kw = {"buffer_size": run["buffer_size"], "tokenizer_batch_size": run["tokenizer_batch_size"]}
    if split == "val":
        batches = bestfit_val_batches(paths, tok, run["rows"], run["seq_len"], n, tokenizer_threads=2, **kw)
    else:
        it = iter(BestFitDataset(paths, tok, run["rows"], run["seq_len"], loop=True, tokenizer_threads=2, **kw))
        batches = [next(it) for _ in range(n)]
        it.close()
    return [(b["inputs"], b["targets"]) for b in batches]


def compare(name: str, ours, theirs) -> bool:
    for k, ((a_in, a_tg), (b_in, b_tg)) in enumerate(zip(ours, theirs)):
        for what, a, b in (("inputs", a_in, b_in), ("targets", a_tg, b_tg)):
            if a.shape != b.shape or not np.array_equal(a.astype(np.int64), b.astype(np.int64)):
                diff = np.argwhere(a != b) if a.shape == b.shape else [("shape", a.shape, b.shape)]
                print(f"  {name}: MISMATCH in batch {k} {what}: first difference at {tuple(diff[0])}")
                return False
    assert len(ours) == len(theirs)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--write-fixture", action="store_true")
    args = parser.parse_args(argv)

    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # one process: get_dist_info() -> rank 0 of 1
        os.environ.pop(var, None)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import pytest  # noqa: F401  (tests/fixtures/fineweb.py imports it for its fixtures)
    except ImportError:  # a stand-in for that import only (other libraries check for the real pytest)
        sys.modules["pytest"] = types.SimpleNamespace(
            fixture=lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f))
        import tests.fixtures.fineweb  # noqa: F401
        del sys.modules["pytest"]

    from jaxchat.data.shards import list_shards, split_shards
    from tests.fixtures import loader_parity as lp

    with tempfile.TemporaryDirectory(prefix="parity_loader_") as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(extract_nanochat(args.mirror, args.commit, tmp / "src")))
        os.environ["NANOCHAT_BASE_DIR"] = str(tmp / "base")
        data_dir = tmp / "base" / "base_data_climbmix"  # nanochat.dataset.DATA_DIR
        lp.write_parity_shards(data_dir)
        import nanochat.dataset

        assert Path(nanochat.dataset.DATA_DIR) == data_dir, nanochat.dataset.DATA_DIR
        ours_paths = list_shards(data_dir)
        assert [Path(p) for p in nanochat.dataset.list_parquet_files()] == ours_paths
        train, val = split_shards(ours_paths)
        logging.getLogger("rustbpe").setLevel(logging.WARNING)  # one line per merge otherwise
        tok = lp.train_parity_tokenizer()
        tokenizers = {"shared": SharedTokenizer(tok), "nanochat-RustBPETokenizer": nanochat_tokenizer(tok)}
        print(f"nanochat {args.commit}: {len(ours_paths)} shards ({lp.SHARDS}), tokenizer vocab {tok.get_vocab_size()}")

        ok, golden = True, {"params": np.asarray(lp.params_json()), **lp.tokenizer_arrays(tok)}
        for name, run in lp.RUNS.items():
            ours = {"train": jaxchat_batches(train, tok, run, "train", run["batches"]),
                    "val": jaxchat_batches(val, tok, run, "val", run["val_batches"])}
            for tname, ntok in tokenizers.items():
                theirs = {"train": nanochat_batches(ntok, run, "train", run["batches"]),
                          "val": nanochat_batches(ntok, run, "val", run["val_batches"])}
                for split in ("train", "val"):
                    label = (f"{name} {split} ({len(theirs[split])} batches of {run['rows']}×{run['seq_len']}, "
                             f"buffer {run['buffer_size']}, slices of {run['tokenizer_batch_size']}; {tname})")
                    same = compare(label, ours[split], theirs[split])
                    ok &= same
                    print(f"  {'IDENTICAL' if same else 'DIFFERENT'}: {label}")
                if tname == "shared":
                    golden[f"{name}/rows"] = np.stack([lp.rows_of(*b) for b in theirs["train"][:run["full"]]])
                    golden[f"{name}/digests"] = np.stack([lp.digest(*b) for b in theirs["train"]])
                    golden[f"{name}/val_rows"] = np.stack([lp.rows_of(*b) for b in theirs["val"]])
        print("PARITY OK: every batch identical" if ok else "PARITY FAILED")
        if args.write_fixture:
            if not ok:
                print("not writing the fixture: the loaders differ")
                return 1
            lp.GOLDEN.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(lp.GOLDEN, **golden)
            print(f"wrote {lp.GOLDEN} ({lp.GOLDEN.stat().st_size / 1024:.0f} KB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
