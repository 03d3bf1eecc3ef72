"""Parity check: jaxchat's best-fit SFT loader against nanochat 92d63d4's ``sft_data_generator_bos_bestfit``.

What it checks
    Takes ``scripts/chat_sft.py`` at commit 92d63d4 from the local git mirror of karpathy/nanochat, cuts
    the ``sft_data_generator_bos_bestfit`` function out of it with ``ast`` (unchanged) and execs it in a
    namespace holding what it reads: ``args`` (``device_batch_size``, ``max_seq_len``, ``num_iterations =
    -1``), ``tokenizer``, ``train_dataset`` / ``val_dataset``, ``ddp_rank = 0``, ``ddp_world_size = 1``,
    ``device_type = device = "cpu"``, ``torch`` and the globals it updates (``last_step``,
    ``approx_progress``, ``current_epoch``). The datasets are lists of deterministic conversations
    (``tests/fixtures/sft_loader_parity.py``: very different lengths, system messages, several turns,
    python / python_output parts). The tokenizer is the base loader check's (vocab 1024), handed to
    nanochat twice: (1) jaxchat's ``Tokenizer`` behind the two calls the function makes
    (``get_bos_token_id()``, ``render_conversation(conversation)``), and (2) nanochat's own
    ``RustBPETokenizer`` over a tiktoken ``Encoding`` of the same merges (nanochat's render end to end).
    For each run of ``RUNS`` (nanochat's buffer 100 at 2048 tokens, where some conversations render
    past 2048 and are cut by nanochat's render default; and 160-token rows with a 20-conversation
    buffer) it draws nanochat's micro-batches of ``rows`` rows until ``last_step`` flips and the step of
    ``accum`` micro-batches is complete, and one epoch of ``jaxchat.data.chat_bestfit.sft_bestfit_dataset``
    at ``rows × accum`` rows: every jaxchat batch must be ``accum`` consecutive nanochat micro-batches,
    token for token (inputs and targets), the epochs must end in the same place (jaxchat's last batch
    holds the micro-batch after which ``last_step`` is first True), and jaxchat's ``"progress"`` of
    batch k must be ``min(1, approx_progress)`` after nanochat's micro-batch ``accum·(k+1) − 1``, the
    same point of the stream. Both epochs run past the end of the task: the buffer wraps around first.

    Progress, an off-by-one in nanochat's training loop (not its loader): the loop reads
    ``approx_progress`` right after prefetching the NEXT micro-batch, so the LR of its step s uses the
    progress after micro-batch ``accum·(s+1)``, one micro-batch past the step; and since ``last_step``
    is set by that prefetch, the loop stops before training the micro-batch in which the epoch ends
    when that is the first of a step. jaxchat yields the batch that ends the epoch and its own
    progress; the trainer decides. nanochat's ``approx_progress`` can pass 1 in the last micro-batch
    (``consumed`` counts repeats); jaxchat caps it at 1.0.

    Deviation (checked here too): a conversation longer than the row. nanochat never places one; it
    stays buffered for good, and once the buffer holds only such conversations every row is padding
    and the epoch never ends. The tool shows this on conversations all longer than 64-token rows:
    nanochat's batches are all padding with ``approx_progress`` stuck at 0 and ``last_step`` never set,
    while jaxchat cuts each to the row, counts it in ``"truncated"`` and ends the epoch. Exit status 0
    when everything matches, 1 otherwise (the first differing batch and position are printed).

Golden fixture
    With ``--write-fixture`` it saves ``tests/fixtures/nanochat_92d63d4/sft_loader.npz`` (< 100 KB) from
    NANOCHAT's micro-batches (its own tokenizer): the tokenizer's tokens, the parameters, the first
    micro-batches in full, the SHA-256 of every micro-batch, ``approx_progress`` after each and where
    ``last_step`` flipped. ``tests/test_sft_loader_2026.py`` regenerates the conversations and checks
    jaxchat's loader against it without torch.

How to run (needs torch; never imported by jaxchat)
    Set up the venv as in ``tools/parity_loader_nanochat.py``, then
    PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python tools/parity_sft_loader_nanochat.py [--write-fixture]
    A few seconds on 2 CPU cores.

Options: --mirror PATH (git dir of the nanochat mirror), --commit SHA.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

COMMIT = "92d63d4"
DEFAULT_MIRROR = "/work/.mirror/karpathy+nanochat/repo"
REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTION = "sft_data_generator_bos_bestfit"
MAX_MICRO_BATCHES = 2000  # nanochat's epoch must end well before this (it would loop forever otherwise)


def nanochat_generator_source(mirror: str, commit: str) -> str:
    """The source of ``FUNCTION`` as it is in ``scripts/chat_sft.py`` at ``commit``."""
    source = subprocess.run(["git", f"--git-dir={mirror}", "show", f"{commit}:scripts/chat_sft.py"],
                            check=True, capture_output=True, text=True).stdout
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == FUNCTION]
    return ast.get_source_segment(source, node)


class NanochatSFTLoader:
    """nanochat's generator, exec'd in a namespace of its own (its module globals live there)."""

    def __init__(self, source: str, tokenizer, conversations, rows: int, seq_len: int, buffer_size: int):
        import torch

        self.ns = {"torch": torch, "tokenizer": tokenizer, "train_dataset": conversations,
                   "val_dataset": conversations, "ddp_rank": 0, "ddp_world_size": 1, "device_type": "cpu",
                   "device": "cpu", "last_step": False, "approx_progress": 0.0, "current_epoch": 1,
                   "args": types.SimpleNamespace(device_batch_size=rows, max_seq_len=seq_len, num_iterations=-1)}
        exec(compile(source, f"scripts/chat_sft.py@{COMMIT}", "exec"), self.ns)
        self.gen = self.ns[FUNCTION]("train", buffer_size=buffer_size)

    def __next__(self) -> tuple[np.ndarray, np.ndarray, float, bool]:
        inputs, targets = next(self.gen)
        return inputs.numpy().copy(), targets.numpy().copy(), self.ns["approx_progress"], self.ns["last_step"]


class SharedTokenizer:
    """jaxchat's tokenizer behind the two calls nanochat's SFT loader makes (jaxchat's render default)."""

    def __init__(self, tok):
        self.tok = tok

    def get_bos_token_id(self) -> int:
        return self.tok.bos_token_id

    def render_conversation(self, conversation):
        return self.tok.render_conversation(conversation)


def nanochat_epoch(source, tokenizer, conversations, run: dict) -> dict:
    """nanochat's micro-batches until ``last_step`` and the end of that step of ``accum``."""
    loader = NanochatSFTLoader(source, tokenizer, conversations, run["rows"], run["seq_len"], run["buffer_size"])
    out = {"batches": [], "progress": [], "last_step": None}
    while out["last_step"] is None or len(out["batches"]) % run["accum"]:
        if len(out["batches"]) >= MAX_MICRO_BATCHES:
            raise SystemExit(f"nanochat's epoch did not end within {MAX_MICRO_BATCHES} micro-batches")
        inputs, targets, progress, last = next(loader)
        out["batches"].append((inputs, targets))
        out["progress"].append(progress)
        if last and out["last_step"] is None:
            out["last_step"] = len(out["batches"]) - 1
    return out


def jaxchat_epoch(tok, conversations, run: dict) -> list[dict]:
    from jaxchat.data.chat_bestfit import sft_bestfit_dataset

    ds = sft_bestfit_dataset(conversations, tok, run["rows"] * run["accum"], run["seq_len"], run["buffer_size"])
    return list(iter(ds))


def micro_batches(batches: list[dict], accum: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each jaxchat batch as its ``accum`` consecutive micro-batches (rows in order)."""
    return [(inp, tgt) for b in batches
            for inp, tgt in zip(np.split(b["inputs"], accum), np.split(b["targets"], accum))]


def compare(label: str, ours: list[dict], theirs: dict, accum: int) -> bool:
    mine = micro_batches(ours, accum)
    if len(mine) != len(theirs["batches"]):
        print(f"  {label}: jaxchat's epoch is {len(mine)} micro-batches, nanochat's {len(theirs['batches'])}")
        return False
    for k, ((a_in, a_tg), (b_in, b_tg)) in enumerate(zip(mine, theirs["batches"])):
        for what, a, b in (("inputs", a_in, b_in), ("targets", a_tg, b_tg)):
            if a.shape != b.shape or not np.array_equal(a.astype(np.int64), b.astype(np.int64)):
                diff = np.argwhere(a != b) if a.shape == b.shape else [("shape", a.shape, b.shape)]
                print(f"  {label}: MISMATCH in micro-batch {k} (jaxchat batch {k // accum}) {what}: "
                      f"first difference at {tuple(int(x) if isinstance(x, np.integer) else x for x in diff[0])}")
                return False
    for k, batch in enumerate(ours):
        want = min(1.0, theirs["progress"][accum * (k + 1) - 1])
        if batch["progress"] != want:
            print(f"  {label}: progress of batch {k} is {batch['progress']}, nanochat's {want}")
            return False
    if theirs["last_step"] // accum != len(ours) - 1:
        print(f"  {label}: nanochat's last_step flipped in micro-batch {theirs['last_step']}, "
              f"jaxchat's epoch is {len(ours)} batches of {accum}")
        return False
    return True


def check_too_long(source, tok, ntok) -> bool:
    """The deviation: conversations all longer than the row (see the module docstring)."""
    from jaxchat.data.chat_bestfit import sft_bestfit_dataset
    from tests.fixtures import sft_loader_parity as sp

    seq_len = 64
    convs = [c for c in sp.conversations(5, 60, 60) if len(tok.render_conversation(c)[0]) > seq_len + 1][:6]
    loader = NanochatSFTLoader(source, ntok, convs, 2, seq_len, 4)
    theirs = [next(loader) for _ in range(5)]
    stuck = all((i == tok.bos_token_id).all() and (t == -1).all() and p == 0.0 and not last
                for i, t, p, last in theirs)
    ours = list(iter(sft_bestfit_dataset(convs, tok, 2, seq_len, 4)))
    cut = len(ours) == 3 and ours[-1]["truncated"] == 6 and ours[-1]["progress"] == 1.0
    print(f"  {'AS DOCUMENTED' if stuck and cut else 'UNEXPECTED'}: {len(convs)} conversations all longer than "
          f"{seq_len + 1}-token rows: nanochat's first {len(theirs)} batches are all padding, progress "
          f"{theirs[-1][2]}, last_step {theirs[-1][3]} (it never ends); jaxchat cuts them: {len(ours)} batches, "
          f"truncated {ours[-1]['truncated']}, progress {ours[-1]['progress']}")
    return stuck and cut


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--write-fixture", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import parity_loader_nanochat as base_tool

    try:
        import pytest  # noqa: F401  (tests/fixtures/fineweb.py, the tokenizer's text, imports it for its fixtures)
    except ImportError:  # a stand-in for that import only, as in parity_loader_nanochat.py
        sys.modules["pytest"] = types.SimpleNamespace(
            fixture=lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f))
        import tests.fixtures.fineweb  # noqa: F401
        del sys.modules["pytest"]

    from jaxchat.data.chat_bestfit import RENDER_MAX_TOKENS
    from jaxchat.tokenizer import Tokenizer
    from tests.fixtures import loader_parity as lp
    from tests.fixtures import sft_loader_parity as sp

    source = nanochat_generator_source(args.mirror, args.commit)
    with tempfile.TemporaryDirectory(prefix="parity_sft_loader_") as tmp:
        sys.path.insert(0, str(base_tool.extract_nanochat(args.mirror, args.commit, Path(tmp))))
        from nanochat.tokenizer import RustBPETokenizer

        # nanochat's loader renders with nanochat's default cut; jaxchat relies on the same number.
        for cls in (RustBPETokenizer, Tokenizer):
            default = inspect.signature(cls.render_conversation).parameters["max_tokens"].default
            assert default == RENDER_MAX_TOKENS, (cls, default)
        logging.getLogger("rustbpe").setLevel(logging.WARNING)
        tok = lp.train_parity_tokenizer()
        ntok = base_tool.nanochat_tokenizer(tok)
        tokenizers = {"shared": SharedTokenizer(tok), "nanochat-RustBPETokenizer": ntok}
        print(f"nanochat {args.commit}: {FUNCTION} ({len(source.splitlines())} lines), tokenizer vocab "
              f"{tok.get_vocab_size()}")

        ok, golden = True, {"params": np.asarray(sp.params_json()), **lp.tokenizer_arrays(tok)}
        for name, run in sp.RUNS.items():
            convs = sp.run_conversations(name)
            lengths = [len(tok.render_conversation(c, max_tokens=None)[0]) for c in convs]
            assert max(min(n, RENDER_MAX_TOKENS) for n in lengths) <= run["seq_len"] + 1, "a conversation is too long"
            ours = jaxchat_epoch(tok, convs, run)
            for tname, ntk in tokenizers.items():
                theirs = nanochat_epoch(source, ntk, convs, run)
                label = (f"{name} ({len(convs)} conversations, {sum(n > RENDER_MAX_TOKENS for n in lengths)} cut "
                         f"at {RENDER_MAX_TOKENS}; {len(ours)} batches of {run['rows']}×{run['accum']} rows = "
                         f"{len(theirs['batches'])} of {run['rows']}, T={run['seq_len']}, buffer "
                         f"{run['buffer_size']}; {tname})")
                same = compare(label, ours, theirs, run["accum"])
                ok &= same
                print(f"  {'IDENTICAL' if same else 'DIFFERENT'}: {label}")
                if tname == "nanochat-RustBPETokenizer":
                    packed = [sp.pack_batch(*b) for b in theirs["batches"][:run["full"]]]
                    golden[f"{name}/rows"] = np.stack([r for r, _ in packed])
                    golden[f"{name}/valid"] = np.stack([v for _, v in packed])
                    golden[f"{name}/digests"] = np.stack([lp.digest(*b) for b in theirs["batches"]])
                    golden[f"{name}/progress"] = np.asarray(theirs["progress"], dtype=np.float64)
                    golden[f"{name}/last_step"] = np.asarray(theirs["last_step"])
        ok &= check_too_long(source, tok, ntok)
        print("PARITY OK: every batch identical" if ok else "PARITY FAILED")
        if args.write_fixture:
            if not ok:
                print("not writing the fixture: the loaders differ")
                return 1
            sp.GOLDEN.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(sp.GOLDEN, **golden)
            print(f"wrote {sp.GOLDEN} ({sp.GOLDEN.stat().st_size / 1024:.0f} KB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
