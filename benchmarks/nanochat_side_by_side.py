"""jaxchat's 2026 recipe against nanochat 92d63d4 itself, side by side on CPU, on the same real text.

What it measures
    Three claims, each printed with its numbers (docs/BENCHMARKS.md, "Side by side with nanochat
    92d63d4 on CPU"):
    1. Same steps, same everything else: the training-loss curves of nanochat 92d63d4's own
       ``scripts/base_train.py`` (run unchanged, in torch) and of ``python train.py --stage=base
       --recipe=2026`` match within noise. The two start from different random inits, and at this
       size the init alone moves a curve by tenths of a nat, so each side runs with several seeds
       (``--nanochat-seeds``: 42 is base_train's own, run as it is; another seed runs the same
       script through ``seeded_base_train.py``, which only changes the seed of ``compute_init``'s
       ``torch.manual_seed``; ``--jaxchat-seeds``: ``--seed``). The gap between the two sides' mean
       smoothed curves is set beside the largest gap between two seeds of one side ("within noise"
       when it is no larger). Val bpb at every eval likewise.
    2. Tokens/s: the median over the steady-state steps (after the first ``--skip`` steps, which
       compile) of each side, and their ratio (the target is jaxchat ≥ 1.5× nanochat); also the
       fastest step of each. The long runs last minutes each and the load of a shared machine moves
       between them, so the ratio compared with the target is measured in ``--pairs`` pairs of short
       runs (``--pair-steps``, no evals) back to back, the side that goes first alternating: the
       median of the pairs' ratios.
    3. Equal wall time: the 2026 recipe's val bpb against the seed recipe's (``--recipe=2025``, its
       own LRs, schedules and model, same shape, batch, data and best-fit packing) after the same
       training time. Both recipes' steady step times are measured in two short runs back to back
       (``--calibration-steps``, under the same load: the machine is shared, and a whole run's time
       moves with the other jobs), and the seed recipe trains for the steps that take as long as
       ``--steps`` steps of the 2026 recipe. Its LR schedule is the one of that horizon, so its last
       eval is a finished run, not the middle of a longer one. The summed step times of the full
       runs are reported beside it.

Same data, same tokenizer, same shape
    * Text: Python's own documentation (``jaxchat.data.corpus``, what the offline CPU demo trains
      on), each document cut at blank lines into sections of at most ``--section-chars`` characters,
      written as ClimbMix-format parquet shards (``jaxchat.data.from_text.shards_from_documents``;
      the last ``--val-fraction`` of the sections is the val shard). The sections keep nanochat's
      1000-document best-fit buffer from wrapping around a tiny shard: the script checks that
      nanochat's val loader and jaxchat's give the same val batches, token for token, and stops
      otherwise (the train batches are the same by tools/parity_loader_nanochat.py).
    * One tokenizer, trained by jaxchat (``train.py --stage=tokenizer``); nanochat gets the same one
      as ``tokenizer.pkl`` (a tiktoken Encoding of the same merges, pattern and special tokens) and
      ``token_bytes.pt`` (computed as nanochat's ``scripts/tok_train.py`` does, and checked equal to
      jaxchat's ``token_bytes``).
    * Both sides: depth ``--depth``, sequence 512, 8 rows per micro-batch, ``--total-batch`` tokens
      a step (2 micro-batches), best-fit packing, sliding windows SSSL (nanochat's CPU attention
      fallback honours the window with an explicit mask: checked numerically here), float32 compute
      (nanochat's COMPUTE_DTYPE on a machine without CUDA; its Polar Express casts to bf16 only when
      COMPUTE_DTYPE is bf16, so it runs in float32 too, as jaxchat's does in its compute dtype).
      ``--dtype=bfloat16`` runs both sides in bf16 instead (nanochat's ``NANOCHAT_DTYPE=bfloat16``,
      jaxchat's ``--model.dtype=bfloat16``; master weights float32 on both): for CPUs with bf16
      matmul units (AMX), where that is what a user would pick.
      nanochat scales its LRs by √(B/2¹⁹) and its Muon weight decay by √(B/2¹⁹)·D₁₂/D; the lines
      each side prints for that are compared.
    * nanochat prints a debiased EMA (β = 0.9) of the loss of the LAST micro-batch of each step; the
      per-step losses are recovered from it exactly (to print precision). jaxchat logs the loss of
      the whole step's batch. Both curves are then smoothed with nanochat's EMA.

How to run (the torch venv of tools/parity_*.py: torch CPU + jax + jaxchat's dependencies)
    PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python benchmarks/nanochat_side_by_side.py [--write-md]
    About an hour on 2 CPU cores at the defaults (two seeds a side, each more seed adds ~17 minutes;
    four pairs, ~3.5 minutes each), more when other jobs share them; the total is printed at the
    end. ``--pairs-only`` runs just the pairs and prints their table (~15 minutes). Needs the local
    git mirror of karpathy/nanochat (``--mirror``), no network. ``wandb`` is replaced by a stub
    module (base_train imports it; ``--run=dummy`` never calls it). Writes the raw per-step data
    as JSON to ``--json`` (a /tmp path) and, with ``--write-md``, replaces or appends the section
    in docs/BENCHMARKS.md; ``--from-json=PATH`` renders a saved run again without training. A
    benchmark, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMIT = "92d63d4"
DEFAULT_MIRROR = "/work/.mirror/karpathy+nanochat/repo"
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
SECTION_TITLE = "## Side by side with nanochat 92d63d4 on CPU"
EMA_BETA = 0.9  # nanochat's smoothing of the printed loss (base_train.py)
SEQ_LEN = 512
DEVICE_BATCH = 8
CLI_KEYS = ("steps", "eval_every", "eval_tokens", "depth", "total_batch", "vocab",  # shown in the report's command
            "nanochat_seeds", "jaxchat_seeds")

NANOCHAT_SEED = 42  # torch.manual_seed in nanochat's compute_init
SEEDED_BASE_TRAIN = '''"""nanochat's scripts/base_train.py, unchanged, with torch's seed SEED instead of 42:
    python seeded_base_train.py SEED [base_train's arguments]"""
import runpy
import sys

import torch

seed = int(sys.argv.pop(1))
_manual_seed = torch.manual_seed
torch.manual_seed = lambda _: _manual_seed(seed)  # compute_init's torch.manual_seed(42)
runpy.run_module("scripts.base_train", run_name="__main__")
'''
WANDB_STUB = '''"""Stand-in for wandb (not installed): base_train imports it; with --run=dummy it uses DummyWandb."""


def init(*args, **kwargs):
    raise RuntimeError("wandb is a stub here: run base_train with --run=dummy")
'''


# ---- arguments -------------------------------------------------------------------------------------


def _seeds(text: str) -> tuple[int, ...]:
    seeds = tuple(int(x) for x in text.split(","))
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give two or more different seeds, comma-separated")
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of nanochat and of jaxchat's 2026 runs")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-tokens", type=int, default=40_960, help="val tokens per eval (10 batches of 8 × 512)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--total-batch", type=int, default=8192, help="tokens per step (8 rows × 512 × 2 micro-batches)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--section-chars", type=int, default=600, help="documents are cut into sections of at most this")
    p.add_argument("--val-fraction", type=float, default=0.3, help="of the sections, the val shard")
    p.add_argument("--skip", type=int, default=10, help="first steps left out of the tokens/s median (compiling)")
    p.add_argument("--from-step", type=int, default=20, help="first step of the loss-curve comparison")
    p.add_argument("--calibration-steps", type=int, default=12, help="steps of each recipe's timing run")
    p.add_argument("--pairs", type=int, default=4, help="short nanochat/jaxchat runs back to back for the tokens/s ratio")
    p.add_argument("--pair-steps", type=int, default=40, help="steps of each run of a pair (no evals)")
    p.add_argument("--pairs-only", action="store_true", help="run only the pairs and print their tokens/s ratios")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype of both sides (nanochat's NANOCHAT_DTYPE, jaxchat's --model.dtype)")
    p.add_argument("--nanochat-seeds", type=_seeds, default=(NANOCHAT_SEED, 43),
                   help="torch seeds of the nanochat runs (42 is base_train's own)")
    p.add_argument("--jaxchat-seeds", type=_seeds, default=(0, 1), help="--seed of the jaxchat 2026 runs")
    p.add_argument("--mirror", default=DEFAULT_MIRROR)
    p.add_argument("--commit", default=COMMIT)
    p.add_argument("--workdir", default="", help="keep everything here (default: a temp dir, removed at the end)")
    p.add_argument("--json", default="/tmp/nanochat_side_by_side.json", help="raw per-step data of every run")
    p.add_argument("--from-json", default="", help="only render the report of a run saved with --json")
    p.add_argument("--write-md", action="store_true", help=f"replace/append '{SECTION_TITLE}' in docs/BENCHMARKS.md")
    return p.parse_args(argv)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0))


def children_cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- the corpus and the tokenizer -------------------------------------------------------------------


def sections(text: str, max_chars: int) -> list[str]:
    """``text`` cut at blank lines into consecutive pieces of at most ``max_chars`` characters (a single
    longer paragraph stays whole; a piece after the first starts with the blank line it was cut at)."""
    parts = re.split(r"(\n[ \t]*\n)", text)
    out, current = [], ""
    for part in parts:
        if current.strip() and len(current) + len(part) > max_chars:
            out.append(current)
            current = ""
        current += part
    if current.strip():
        out.append(current)
    return out


def build_corpus(data_dir: Path, max_chars: int, val_fraction: float) -> dict:
    """Python's documentation, cut into sections, as ClimbMix-format shards in ``data_dir``."""
    from jaxchat.data import corpus, offline
    from jaxchat.data.cache import read_corpus_marker
    from jaxchat.data.from_text import shards_from_documents

    docs = corpus.python_docs()
    pieces = [s for d in docs for s in sections(d.text, max_chars)]
    source = f"{corpus.describe_source()}, cut at blank lines into sections of ≤ {max_chars} characters"
    shards_from_documents(pieces, data_dir, source=source, command="benchmarks/nanochat_side_by_side.py",
                          fingerprint=f"{offline.python_docs_fingerprint()}-sections{max_chars}",
                          val_fraction=val_fraction)
    marker = read_corpus_marker(data_dir) or {}
    return {"source": source, "python_documents": len(docs), "sections": len(pieces),
            "characters": sum(len(p) for p in pieces), "shards": marker.get("shards", [])}


def train_tokenizer(home: Path, vocab: int, log_dir: Path) -> None:
    run_logged([sys.executable, str(ROOT / "train.py"), "--stage=tokenizer", "--recipe=2026",
                f"--tokenizer.vocab_size={vocab}", "--data.corpus=climbmix"],
               jaxchat_env(home), ROOT, log_dir / "tokenizer.log", echo_every=0)


# ---- nanochat: its source, its tokenizer, its checks --------------------------------------------------


def extract_nanochat(mirror: str, commit: str, dest: Path) -> Path:
    """``dest/{nanochat,scripts}`` at ``commit`` (unchanged), ``dest/stubs/wandb.py`` and
    ``dest/seeded_base_train.py``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", f"--git-dir={mirror}", "archive", commit, "nanochat", "scripts"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    (dest / "stubs").mkdir(exist_ok=True)
    (dest / "stubs" / "wandb.py").write_text(WANDB_STUB)
    (dest / "seeded_base_train.py").write_text(SEEDED_BASE_TRAIN)
    return dest


def import_nanochat(src: Path, base_dir: Path) -> None:
    """Make ``import nanochat`` find the extracted source, with its base dir (read at import time)."""
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # one process: get_dist_info() -> rank 0 of 1
        os.environ.pop(var, None)
    os.environ["NANOCHAT_BASE_DIR"] = str(base_dir)
    sys.path.insert(0, str(src))


def give_nanochat_tokenizer(tok, tokenizer_dir: Path) -> dict:
    """Write jaxchat's tokenizer as nanochat's ``tokenizer.pkl`` + ``token_bytes.pt``; check that nanochat
    reads it back with the same special tokens, the same token ids on sample text and the same
    token_bytes (computed as nanochat's scripts/tok_train.py does)."""
    import pickle

    import numpy as np
    import tiktoken
    import torch
    from nanochat.tokenizer import SPECIAL_TOKENS, get_token_bytes, get_tokenizer

    ranks = {t: i for i, t in enumerate(tok.mergeable_tokens())}
    special = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert special == tok.special_tokens, (special, tok.special_tokens)
    enc = tiktoken.Encoding(name="rustbpe", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=special)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    with open(tokenizer_dir / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    theirs = get_tokenizer()
    special_ids = {theirs.encode_special(s) for s in theirs.get_special_tokens()}
    token_bytes = [0 if i in special_ids else len(theirs.decode_single_token_bytes(i))
                   for i in range(theirs.get_vocab_size())]  # scripts/tok_train.py
    torch.save(torch.tensor(token_bytes, dtype=torch.int32), tokenizer_dir / "token_bytes.pt")
    same_bytes = np.array_equal(get_token_bytes("cpu").numpy(), np.asarray(tok.token_bytes))
    sample = "def f(x):\n    return x ** 2  # the square\n\nThe Python Language Reference, § 3.1"
    same_ids = theirs.encode(sample, prepend="<|bos|>") == tok.encode(sample, prepend="<|bos|>")
    if not (same_bytes and same_ids and theirs.get_vocab_size() == tok.get_vocab_size()):
        raise SystemExit(f"nanochat does not read the shared tokenizer back: token_bytes equal {same_bytes}, "
                         f"ids equal {same_ids}")
    return {"vocab_size": tok.get_vocab_size(), "token_bytes_equal": True, "ids_equal": True}


def check_same_val_batches(tok, val_paths, num_batches: int) -> bool:
    """nanochat's val loader (looping, 1000-document buffer) and jaxchat's (non-looping) give the same
    first ``num_batches`` batches of 8 × 512 on this val shard."""
    import numpy as np
    from nanochat.dataloader import tokenizing_distributed_data_loader_bos_bestfit
    from nanochat.tokenizer import get_tokenizer

    from jaxchat.data.bestfit import bestfit_val_batches

    try:
        ours = bestfit_val_batches(val_paths, tok, DEVICE_BATCH, SEQ_LEN, num_batches, tokenizer_threads=2)
    except Exception as e:  # JaxchatError: the val shard holds fewer batches
        print(f"  jaxchat's val loader: {e}")
        return False
    gen = tokenizing_distributed_data_loader_bos_bestfit(get_tokenizer(), DEVICE_BATCH, SEQ_LEN, "val", device="cpu")
    for batch in ours:
        x, y = next(gen)
        if not (np.array_equal(x.numpy(), batch["inputs"]) and np.array_equal(y.numpy(), batch["targets"])):
            return False
    return True


def nanochat_cpu_attention() -> dict:
    """What nanochat computes in here: COMPUTE_DTYPE, whether FA3 is used, and whether its attention
    (the SDPA fallback on CPU) honours a sliding window (compared with an explicitly masked reference)."""
    import torch
    from nanochat.common import COMPUTE_DTYPE
    from nanochat.flash_attention import USE_FA3, flash_attn

    g = torch.Generator().manual_seed(0)
    B, T, H, D, window = 1, 16, 2, 8, 4
    q, k, v = (torch.randn(B, T, H, D, generator=g) for _ in range(3))
    windowed = flash_attn.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    full = flash_attn.flash_attn_func(q, k, v, causal=True, window_size=(-1, 0))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & (i - j <= window)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
    honours = bool(torch.allclose(windowed, ref, atol=1e-5)) and not torch.allclose(windowed, full, atol=1e-3)
    return {"compute_dtype": str(COMPUTE_DTYPE), "fa3": bool(USE_FA3), "sliding_window_honoured": honours}


# ---- running the two trainers ----------------------------------------------------------------------


def jaxchat_env(home: Path) -> dict:
    env = dict(os.environ, JAXCHAT_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("NANOCHAT_BASE_DIR", None)
    return env


def run_logged(cmd: list[str], env: dict, cwd: Path, log_path: Path, echo_every: int = 25,
               echo=re.compile(r"(?i)(step 0*(\d+)[/ ])|val|scaling|error|traceback")) -> tuple[str, float, float]:
    """Run ``cmd``; its output goes to ``log_path`` and, for a few lines, to this terminal. Returns
    (output, seconds, share of the cores it used: its CPU time ÷ (seconds × cores)); exits with the
    log's tail when the command fails."""
    print(f"$ {' '.join(cmd)}   (log: {log_path})", flush=True)
    start = time.perf_counter()
    cpu_before = children_cpu_seconds()
    lines = []
    with open(log_path, "w") as log, subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            m = echo.search(line) if echo_every else None
            if m and (not m.group(2) or int(m.group(2)) % echo_every in (0, 1) or "val" in line.lower()):
                print("  " + line.rstrip()[-160:], flush=True)
    seconds = time.perf_counter() - start
    cpu_share = (children_cpu_seconds() - cpu_before) / (seconds * cpu_cores())
    if proc.returncode:
        tail = "".join(lines[-30:])
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return "".join(lines), seconds, cpu_share


NANOCHAT_STEP = re.compile(r"^step (\d+)/(\d+) .*?\| loss: ([\d.]+) \| lrm: ([\d.]+) \| dt: ([\d.]+)ms")
NANOCHAT_VAL = re.compile(r"^Step (\d+) \| Validation bpb: ([\d.]+)")


def raw_losses_from_ema(printed: list[float], beta: float = EMA_BETA) -> list[float]:
    """The per-step losses behind nanochat's printed debiased EMA: s_t = printed_t·(1 − β^(t+1)),
    loss_t = (s_t − β·s_{t−1}) / (1 − β)."""
    smooth = [p * (1 - beta ** (t + 1)) for t, p in enumerate(printed)]
    return [(s - beta * (smooth[t - 1] if t else 0.0)) / (1 - beta) for t, s in enumerate(smooth)]


def parse_nanochat(output: str) -> dict:
    """Per-step loss/dt (steps numbered from 1, as jaxchat's: nanochat's step k is update k+1), val bpb
    by the number of updates done, and the lines that state dtype and scaling."""
    steps, val = [], {}
    for line in output.splitlines():
        if m := NANOCHAT_STEP.match(line):
            steps.append({"step": int(m.group(1)) + 1, "loss_ema_printed": float(m.group(3)),
                          "lrm": float(m.group(4)), "dt": float(m.group(5)) / 1000})
        elif m := NANOCHAT_VAL.match(line):
            val[int(m.group(1))] = float(m.group(2))
    for s, loss in zip(steps, raw_losses_from_ema([s["loss_ema_printed"] for s in steps])):
        s["loss"] = loss
    facts = [line.strip() for line in output.splitlines()
             if line.startswith(("COMPUTE_DTYPE", "Scaling", "Total batch size", "Vocab size", "WARNING: SDPA"))]
    return {"steps": steps, "val_bpb": val, "facts": facts}


def run_nanochat(src: Path, base_dir: Path, args, log_dir: Path, seed: int, steps: int | None = None,
                 eval_every: int | None = None, tag: str = "") -> dict:
    """nanochat's ``scripts/base_train.py``; with its own seed (42, set by ``compute_init``) as it is,
    with another one through ``seeded_base_train.py`` (the same script, torch's seed changed).
    ``steps`` and ``eval_every`` default to ``--steps`` and ``--eval-every`` (−1: no evals)."""
    steps = args.steps if steps is None else steps
    eval_every = args.eval_every if eval_every is None else eval_every
    entry = ["-m", "scripts.base_train"] if seed == NANOCHAT_SEED else [str(src / "seeded_base_train.py"), str(seed)]
    cmd = [sys.executable, *entry, f"--depth={args.depth}", f"--max-seq-len={SEQ_LEN}",
           f"--device-batch-size={DEVICE_BATCH}", f"--total-batch-size={args.total_batch}",
           f"--num-iterations={steps}", f"--eval-every={eval_every}", f"--eval-tokens={args.eval_tokens}",
           "--core-metric-every=-1", "--sample-every=-1", "--run=dummy", "--device-type=cpu"]
    threads = str(cpu_cores())
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), PYTHONPATH=f"{src / 'stubs'}:{src}",
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    output, seconds, cpu_share = run_logged(cmd, env, src, log_dir / f"nanochat_seed{seed}{tag}.log")
    return {"name": f"nanochat {args.commit} seed {seed}", "command": " ".join(cmd[1:]), "seconds": seconds,
            "cpu_share": cpu_share, **parse_nanochat(output)}


def jaxchat_command(args, recipe: str, tag: str, seed: int, steps: int, eval_every: int) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--stage=base", f"--recipe={recipe}", f"--tag={tag}",
            f"--seed={seed}", f"--model.depth={args.depth}", f"--model.sequence_len={SEQ_LEN}",
            f"--model.dtype={args.dtype}", f"--tokenizer.vocab_size={args.vocab}",
            f"--base.device_batch_size={DEVICE_BATCH}", f"--base.total_batch_size={args.total_batch}",
            f"--base.num_iterations={steps}", f"--base.eval_every={eval_every}",
            f"--base.eval_tokens={args.eval_tokens}", "--base.core_every=0",
            "--data.corpus=climbmix", "--base.packing=bestfit"]


def read_jaxchat_log(path: Path) -> tuple[list[dict], dict[int, float]]:
    steps, val = [], {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            steps.append({"step": row["step"], "loss": row["loss"], "lrm": row["lrm"], "dt": row["dt"]})
        if "val_bpb" in row:
            val[row["step"]] = row["val_bpb"]
    return steps, val


def run_jaxchat(home: Path, args, recipe: str, tag: str, seed: int, steps: int, eval_every: int,
                log_dir: Path) -> dict:
    cmd = jaxchat_command(args, recipe, tag, seed, steps, eval_every)
    output, seconds, cpu_share = run_logged(cmd, jaxchat_env(home), ROOT, log_dir / f"jaxchat_{tag}.log")
    step_rows, val = read_jaxchat_log(home / "report" / f"base_{tag}.jsonl")
    facts = [line.strip() for line in output.splitlines()
             if line.strip().startswith(("scaling", "runtime", "batch", "model", "parameters", "recipe", "data "))]
    return {"name": f"jaxchat {recipe} seed {seed}", "command": " ".join(cmd[1:]), "seconds": seconds,
            "cpu_share": cpu_share,
            "steps": step_rows, "val_bpb": val,
            "facts": facts}


def steady_step_seconds(run: dict, skip: int) -> float:
    """Median step time after the first ``skip`` steps (at least the last 3 steps)."""
    dts = [s["dt"] for s in run["steps"]]
    return statistics.median(dts[min(skip, len(dts) - 3):])


def seed_recipe_steps(steps_2026: int, timing_2026: dict, timing_2025: dict, skip: int) -> int:
    """Steps of the seed recipe that take as long as ``steps_2026`` steps of the 2026 recipe: the ratio of
    their steady step times, measured in two short runs back to back (so under the same load)."""
    return max(2, round(steps_2026 * steady_step_seconds(timing_2026, skip) / steady_step_seconds(timing_2025, skip)))


# ---- measures ----------------------------------------------------------------------------------------


def smooth(losses: list[float], beta: float = EMA_BETA) -> list[float]:
    """Debiased EMA (nanochat's printed loss)."""
    out, s = [], 0.0
    for t, x in enumerate(losses):
        s = beta * s + (1 - beta) * x
        out.append(s / (1 - beta ** (t + 1)))
    return out


def smoothed(run: dict) -> dict[int, float]:
    """{step: smoothed loss} of a run."""
    return dict(zip([s["step"] for s in run["steps"]], smooth([s["loss"] for s in run["steps"]])))


def mean_curve(runs: list[dict]) -> dict[int, float]:
    """{step: the mean of the runs' smoothed losses} over the steps all of them have."""
    curves = [smoothed(run) for run in runs]
    return {k: statistics.fmean(c[k] for c in curves) for k in sorted(set.intersection(*map(set, curves)))}


def mean_val(runs: list[dict]) -> dict[int, float]:
    """{step: the mean val bpb of the runs} over the evals all of them made after some training."""
    common = set.intersection(*(set(run["val_bpb"]) for run in runs)) - {0}
    return {k: statistics.fmean(run["val_bpb"][k] for run in runs) for k in sorted(common)}


def curve_gap(a: dict[int, float], b: dict[int, float], from_step: int) -> dict:
    """Max and mean |difference| of two smoothed loss curves ({step: loss}), and the mean signed
    difference (a − b), over the steps ≥ ``from_step`` both have."""
    diffs = [a[k] - b[k] for k in sorted(set(a) & set(b)) if k >= from_step]
    return {"max_abs": max(abs(d) for d in diffs), "mean_abs": statistics.fmean(abs(d) for d in diffs),
            "mean": statistics.fmean(diffs), "steps": len(diffs)}


def val_gap(a: dict[int, float], b: dict[int, float]) -> float:
    """Largest |difference| of two val bpb series ({step: bpb}) at the evals both have after step 0."""
    return max(abs(a[k] - b[k]) for k in set(a) & set(b) if k > 0)


def tokens_per_second(runs: list[dict], tokens_per_step: int, skip: int, best: bool = False) -> float:
    """Median (``best``: highest) tokens/s over the steps after the first ``skip`` of the runs, pooled."""
    dts = [s["dt"] for run in runs for s in run["steps"] if s["step"] > skip]
    return tokens_per_step / (min(dts) if best else statistics.median(dts))


def train_seconds(run: dict) -> float:
    """Training time: the sum of the step times (the first step's compile included, evals excluded)."""
    return sum(s["dt"] for s in run["steps"])


def side(r: dict, name: str) -> list[dict]:
    """The runs of one side ("nanochat" or "jaxchat"), in seed order."""
    return [r["runs"][f"{name}{i}"] for i in range(len(r["args"][f"{name}_seeds"]))]


def table_steps(n: int, eval_every: int) -> list[int]:
    return sorted({1, 10, *range(eval_every, n + 1, eval_every), n})


# ---- the report --------------------------------------------------------------------------------------


def cli_value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def setup_lines(r: dict) -> list[str]:
    """The report's header: command, machine, and what is the same on both sides."""
    a, m, c = r["args"], r["machine"], r["corpus"]
    shares = [run["cpu_share"] for run in r["runs"].values()]
    accum = a["total_batch"] // (DEVICE_BATCH * SEQ_LEN)
    return [
        SECTION_TITLE, "",
        f"nanochat {a['commit']}'s own `scripts/base_train.py` (extracted unchanged from the git mirror, run in torch "
        f"{m['torch']}) against `python train.py --stage=base --recipe=2026` (jax {m['jax']}), on the same text, "
        f"tokenizer, shape, batch and steps, {len(a['nanochat_seeds'])} and {len(a['jaxchat_seeds'])} seeds; then the "
        "2026 recipe against the seed recipe after the "
        "same training time (`benchmarks/nanochat_side_by_side.py`; its docstring has the details):", "",
        "```bash", "PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python benchmarks/nanochat_side_by_side.py "
        + " ".join(f"--{k.replace('_', '-')}={cli_value(a[k])}" for k in CLI_KEYS) + " --write-md", "```", "",
        f"Measured {r['date']} in one run of {r['total_minutes']:.0f} min on {m['cores']} CPU cores ({m['cpu']}), "
        f"shared with other jobs and noisy: each training run got {min(shares):.0%}–{max(shares):.0%} of the "
        f"{m['cores']} cores (its CPU time ÷ (its wall time × cores); the rest went to other jobs, or to "
        "waiting).", "",
        "The same on both sides:",
        f"- text: {c['source']}: {c['sections']:,} sections, {c['characters']:,} characters; the last "
        f"{a['val_fraction']:.0%} of the sections ({c['shards'][-1]['documents']:,}) are the val shard. The train "
        f"shard is read ≈ {r['epochs']:.1f} times in {a['steps']} steps.",
        f"- one tokenizer, vocab {a['vocab']:,}, trained by jaxchat; nanochat reads it as `tokenizer.pkl` + "
        "`token_bytes.pt` (same ids and token bytes: checked).",
        f"- depth {a['depth']}, sequence {SEQ_LEN}, {DEVICE_BATCH} rows × {SEQ_LEN} × {accum} micro-batches = "
        f"{a['total_batch']:,} tokens a step, best-fit packing: the same train batches, and the same "
        f"{a['eval_tokens'] // (DEVICE_BATCH * SEQ_LEN)} val batches (checked token for token: "
        f"{'identical' if r['val_batches_identical'] else 'DIFFERENT'}).",
        "- window pattern SSSL: nanochat's CPU attention (SDPA with an explicit mask) honours the sliding window "
        f"({'checked' if r['nanochat_attention']['sliding_window_honoured'] else 'NOT honoured'}); it computes the "
        "masked-out scores too.",
        f"- {a.get('dtype', 'float32')} compute: nanochat's COMPUTE_DTYPE here is "
        f"`{r['nanochat_attention']['compute_dtype']}`, and its Polar Express runs in it (bf16 only when "
        "COMPUTE_DTYPE is bf16), like jaxchat's (which runs in the compute dtype).",
        f"- LR and weight-decay scaling: nanochat prints `{r['scaling']['nanochat_lr']}` and "
        f"`{r['scaling']['nanochat_wd']}`, jaxchat's plan `{r['scaling']['jaxchat']}` "
        f"({'the same' if r['scaling']['same'] else 'DIFFERENT'}); the per-step LR multipliers agree.",
        "- random inits differ: nanochat's torch seed is " + ", ".join(map(str, a["nanochat_seeds"]))
        + f" ({NANOCHAT_SEED} is base_train's own, run as it is; another seed runs the same script through a "
        "wrapper that changes only that seed); jaxchat's `--seed` is " + ", ".join(map(str, a["jaxchat_seeds"]))
        + ".", "",
    ]


def curve_lines(r: dict) -> list[str]:
    """Loss and val bpb tables, and the gaps against the seed-to-seed noise."""
    a, g = r["args"], r["gaps"]
    nc, jx = side(r, "nanochat"), side(r, "jaxchat")
    names = [f"nanochat {x}" for x in a["nanochat_seeds"]] + [f"jaxchat {x}" for x in a["jaxchat_seeds"]]
    curves = [smoothed(run) for run in nc + jx]
    nc_mean, jx_mean = mean_curve(nc), mean_curve(jx)
    head, rule = "| step | " + " | ".join(names) + " | nanochat − jaxchat (means) |", "|---" * (len(names) + 2) + "|"
    lines = ["Training loss, smoothed with nanochat's debiased EMA (β = 0.9) of the per-step loss (nanochat's "
             "per-step loss is its last micro-batch's, recovered from the EMA it prints; jaxchat's is the whole "
             "step's):", "", head, rule]
    for k in table_steps(a["steps"], a["eval_every"]):
        if all(k in c for c in curves):
            lines.append(f"| {k} | " + " | ".join(f"{c[k]:.3f}" for c in curves)
                         + f" | {nc_mean[k] - jx_mean[k]:+.3f} |")
    vals = [run["val_bpb"] for run in nc + jx]
    nc_val, jx_val = mean_val(nc), mean_val(jx)
    lines += ["", f"Val bpb (the same {a['eval_tokens']:,} val tokens on both sides; nanochat also evaluates "
              "before step 1):", "", head.replace("| step |", "| after step |"), rule]
    for k in sorted(set().union(*vals)):
        diff = f"{nc_val[k] - jx_val[k]:+.4f}" if k in nc_val and k in jx_val else "—"
        lines.append(f"| {k} | " + " | ".join(fmt(v.get(k), 4) for v in vals) + f" | {diff} |")
    lines += ["", f"Gaps between smoothed loss curves from step {g['from_step']} on, and between val bpb at the "
              "evals; the pairs of one implementation's seeds are the noise:", "",
              "| pair | loss: largest abs. Δ | loss: mean abs. Δ | loss: mean Δ (first − second) "
              "| val bpb: largest abs. Δ |", "|---|---|---|---|---|"]
    for label, v in [*g["noise"].items(), ("nanochat mean vs jaxchat mean", g["means"]), *g["cross"].items()]:
        lines.append(f"| {label} | {v['max_abs']:.3f} | {v['mean_abs']:.3f} | {v['mean']:+.3f} | {v['val']:.4f} |")
    return lines + [""]


def throughput_lines(r: dict) -> list[str]:
    a, t = r["args"], r["throughput"]
    lines = [f"Throughput (steps {a['skip'] + 1}–{a['steps']}; {a['total_batch']:,} tokens a step):", "",
             "| run | median step | tokens/s (median) | fastest step | tokens/s (fastest) | whole run (compile, "
             "evals) | share of the cores |", "|---|---|---|---|---|---|---|"]
    for run in side(r, "nanochat") + side(r, "jaxchat"):
        med, best = (tokens_per_second([run], a["total_batch"], a["skip"], b) for b in (False, True))
        lines.append(f"| {run['name']} | {a['total_batch'] / med:.2f} s | {med:,.0f} | {a['total_batch'] / best:.2f} s"
                     f" | {best:,.0f} | {run['seconds'] / 60:.1f} min | {run['cpu_share']:.0%} |")
    lines += ["", f"jaxchat / nanochat over these runs: {t['ratio']:.2f}× in median tokens/s (the runs of each "
              f"side pooled: {t['jaxchat']:,.0f} against {t['nanochat']:,.0f}), {t['ratio_best']:.2f}× in the "
              "fastest steps. These runs last minutes each and the load moves between them, so the ratio is "
              "measured again in pairs of short runs back to back (the side that goes first alternating; nanochat "
              f"seed {NANOCHAT_SEED}, jaxchat seed 0, {a.get('pair_steps')} steps, no evals; median step after step "
              f"{a['skip']}):", ""]
    if not t.get("pairs"):
        return lines + ["(no pairs in this run)", ""]
    return lines + pairs_table(t["pairs"]) + [""]


def pairs_table(pairs: list[dict]) -> list[str]:
    """The pairs' step times and ratios (``pair_ratios``), and their median."""
    return ["| pair | first | nanochat median step | jaxchat median step | jaxchat / nanochat tokens/s |",
            "|---|---|---|---|---|",
            *(f"| {p['pair']} | {p['first']} | {p['nanochat']:.2f} s | {p['jaxchat']:.2f} s | {p['ratio']:.2f}× |"
              for p in pairs),
            "", f"Median over the pairs: **{statistics.median(p['ratio'] for p in pairs):.2f}×**."]


def equal_time_lines(r: dict) -> list[str]:
    a, runs = r["args"], r["runs"]
    s25 = runs["seed2025"]
    lines = ["Equal training time, the 2026 recipe against the seed recipe (`--recipe=2025`: the seed model, Muon, "
             "its own LRs and schedules; the same shape, batch, data and best-fit packing, so the same val batches). "
             f"Steady step times measured in {a['calibration_steps']}-step runs back to back: 2026 "
             f"{r['timing']['2026']:.2f} s, 2025 {r['timing']['2025']:.2f} s, so the seed recipe trained "
             f"{len(s25['steps'])} steps for the 2026 recipe's {a['steps']}. The training times below are each full "
             "run's step times summed (the first step's compile included, evals excluded); they move with the load "
             "of the moment:", "",
             "| recipe | steps | training time | median step | val bpb at the end |", "|---|---|---|---|---|"]
    named = [(f"2026, seed {seed}", run) for seed, run in zip(a["jaxchat_seeds"], side(r, "jaxchat"))]
    for name, run in [*named, ("2025 (seed recipe), seed 0", s25)]:
        lines.append(f"| {name} | {len(run['steps'])} | {train_seconds(run):.0f} s | "
                     f"{steady_step_seconds(run, a['skip']):.2f} s | {run['val_bpb'][max(run['val_bpb'])]:.4f} |")
    return lines + [""]


def note_lines(r: dict) -> list[str]:
    """What to keep in mind reading the numbers (true of every run at this size)."""
    a = r["args"]
    scale = math.sqrt(a["total_batch"] / 2**19)
    return ["How to read them:", "",
            "- The curves are close for the first ~20 steps (the LR is still warming up); then the init largely "
            "decides when a run leaves the early plateau, and one seed can lag the others by most of a nat for "
            "100 steps. A handful of seeds per side can therefore only rule out differences larger than that "
            "spread; a sharp test of the training step is the same init on both sides, not this benchmark.",
            "- nanochat's logged loss is one micro-batch of two, so its raw per-step curve is noisier; the EMA "
            "hides most of that, and val bpb is measured identically on both sides.",
            "- Tokens/s compares whole training steps as each program runs them: nanochat's step includes its "
            "data loading (best-fit packing and tokenising in the training loop), jaxchat's loads the next batch "
            "in the background. The figure moves with the other jobs on the machine (see the share of the cores).",
            "- At this size the equal-time comparison favours the seed recipe's settings: at "
            f"{a['total_batch']:,} tokens a step the 2026 recipe multiplies its LRs by √(B/2¹⁹) = {scale:.3f}, "
            "warms them up over 40 steps and decays them over the last 65 %, while the "
            "seed recipe uses its LRs unscaled from step 1 with a 20 % warmdown. nanochat tuned the 2026 recipe "
            "for batches of 2¹⁹–2²⁰ tokens and runs of thousands of steps; this benchmark does not say how the "
            "two recipes compare there.", ""]


def render_markdown(r: dict) -> str:
    lines = [*setup_lines(r), *curve_lines(r), *throughput_lines(r), *equal_time_lines(r), *note_lines(r),
             "Conclusions (measured in this run):", "", *(f"- {c}" for c in r["conclusions"]), ""]
    return "\n".join(lines)


def conclusions(r: dict) -> list[str]:
    """Plain statements of what this run measured against the three targets. 'Within noise': the gap
    between the two sides' mean curves is no larger than the largest gap between two seeds of one side."""
    a, g, t = r["args"], r["gaps"], r["throughput"]
    noise = max(v["max_abs"] for v in g["noise"].values())
    val_noise = max(v["val"] for v in g["noise"].values())

    def finals(name: str) -> str:
        return " / ".join(f"{run['val_bpb'][a['steps']]:.4f}" for run in side(r, name))

    end26 = [run["val_bpb"][a["steps"]] for run in side(r, "jaxchat")]
    s25 = r["runs"]["seed2025"]
    end25 = s25["val_bpb"][max(s25["val_bpb"])]
    verdict = "within noise" if g["means"]["max_abs"] <= noise else "NOT within noise"
    ratio, how = ((t["pairs_ratio"], f"median of {len(t['pairs'])} pairs of runs back to back") if t.get("pairs")
                  else (t["ratio"], "median tokens/s of the long runs"))
    val_verdict = "within noise" if g["means"]["val"] <= val_noise else "NOT within noise"
    return [
        (f"Loss curves: from step {g['from_step']} on, the mean curves of nanochat and jaxchat differ by at most "
         f"{g['means']['max_abs']:.3f} nats (mean Δ {g['means']['mean']:+.3f}); two seeds of one implementation "
         f"differ by up to {noise:.3f} (" + ", ".join(f"{k.split(' (')[0]}: {v['max_abs']:.3f}"
                                                      for k, v in g["noise"].items()) + f"): {verdict}."),
        (f"Val bpb: the two sides' means differ by at most {g['means']['val']:.4f} over the evals, two seeds of one "
         f"side by up to {val_noise:.4f}: {val_verdict}. After {a['steps']} steps: nanochat {finals('nanochat')}, "
         f"jaxchat {finals('jaxchat')}."),
        (f"Tokens/s: jaxchat / nanochat {ratio:.2f}× ({how}; the long runs pooled: {t['ratio']:.2f}×, "
         f"{t['ratio_best']:.2f}× in the fastest steps): "
         + ("at or above the 1.5× target." if ratio >= 1.5 else "BELOW the 1.5× target.")),
        (f"Equal training time ({a['steps']} steps of the 2026 recipe, {len(s25['steps'])} of the seed recipe): val "
         f"bpb 2026 {finals('jaxchat')} against the seed recipe's {end25:.4f}: "
         + ("the 2026 recipe is lower." if max(end26) < end25 else
            "the 2026 recipe is NOT lower." if min(end26) >= end25 else "mixed (some seeds lower).")),
    ]


def write_md_section(markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section (up to the next '## ') in ``path``, or append it at the end."""
    text = path.read_text()
    start = text.find(SECTION_TITLE + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + markdown.rstrip("\n") + "\n"
    else:
        nxt = text.find("\n## ", start + len(SECTION_TITLE))
        text = text[:start] + markdown.rstrip("\n") + "\n" + (text[nxt:] if nxt >= 0 else "")
    path.write_text(text)


# ---- main --------------------------------------------------------------------------------------------


def machine_facts() -> dict:
    import jax
    import torch

    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": cpu_cores(), "cpu": cpu, "torch": torch.__version__, "jax": jax.__version__}


def prepare(args, work: Path) -> dict:
    """Step 1: the text, the shared tokenizer, nanochat's source and copies; the checks that both sides
    see the same val batches and that nanochat's CPU attention honours the window."""
    home, nc_base, logs = work / "jaxchat_home", work / "nanochat_base", work / "logs"
    for d in (home, nc_base, logs):
        d.mkdir(parents=True, exist_ok=True)
    corpus_info = build_corpus(home / "base_data_climbmix", args.section_chars, args.val_fraction)
    shutil.copytree(home / "base_data_climbmix", nc_base / "base_data_climbmix", dirs_exist_ok=True)
    print(f"corpus: {corpus_info['sections']:,} sections of {corpus_info['python_documents']} Python documents, "
          f"{corpus_info['characters']:,} characters, shards {[s['documents'] for s in corpus_info['shards']]}")
    if not (home / "tokenizer" / "tokenizer.json").exists():
        train_tokenizer(home, args.vocab, logs)
    src = extract_nanochat(args.mirror, args.commit, work / "nanochat_src")
    import_nanochat(src, nc_base)
    from jaxchat.data.corpus import characters_per_token
    from jaxchat.data.shards import list_shards, split_shards
    from jaxchat.tokenizer import load_tokenizer

    tok = load_tokenizer(home / "tokenizer")
    tokenizer_info = give_nanochat_tokenizer(tok, nc_base / "tokenizer")
    train_paths, val_paths = split_shards(list_shards(home / "base_data_climbmix"))
    val_same = check_same_val_batches(tok, val_paths, args.eval_tokens // (DEVICE_BATCH * SEQ_LEN))
    attention = nanochat_cpu_attention()
    print(f"tokenizer shared ({tokenizer_info}); val batches identical: {val_same}; nanochat on CPU: {attention}")
    if not val_same:
        raise SystemExit("nanochat's and jaxchat's val batches differ on this val shard (it is too small for "
                         "nanochat's 1000-document buffer): lower --section-chars or --eval-tokens, "
                         "or raise --val-fraction")
    if not attention["sliding_window_honoured"]:
        raise SystemExit("nanochat's CPU attention ignores the sliding window here: "
                         "run both sides with window pattern L")
    train_chars = corpus_info["characters"] - corpus_info["shards"][-1]["characters"]
    train_tokens = train_chars / characters_per_token(train_paths, tok)
    return {"home": home, "nc_base": nc_base, "logs": logs, "src": src, "corpus": corpus_info,
            "epochs": args.steps * args.total_batch / train_tokens, "tokenizer": tokenizer_info,
            "val_batches_identical": val_same, "nanochat_attention": attention}


def run_all(args, setup: dict) -> dict:
    """Steps 2-3: nanochat and jaxchat's 2026 recipe with each seed (alternating, so that the load of the
    moment falls on both sides), the two timing runs, the seed recipe."""
    home, logs = setup["home"], setup["logs"]
    runs = {}
    for i in range(0 if args.pairs_only else max(len(args.nanochat_seeds), len(args.jaxchat_seeds))):
        if i < len(args.nanochat_seeds):
            runs[f"nanochat{i}"] = run_nanochat(setup["src"], setup["nc_base"], args, logs, args.nanochat_seeds[i])
        if i < len(args.jaxchat_seeds):
            seed = args.jaxchat_seeds[i]
            runs[f"jaxchat{i}"] = run_jaxchat(home, args, "2026", f"r2026_s{seed}", seed, args.steps,
                                              args.eval_every, logs)
    for recipe in () if args.pairs_only else ("2026", "2025"):
        runs[f"timing{recipe}"] = run_jaxchat(home, args, recipe, f"r{recipe}_timing", 0,
                                              args.calibration_steps, 0, logs)
    if not args.pairs_only:
        steps25 = seed_recipe_steps(args.steps, runs["timing2026"], runs["timing2025"],
                                    skip=args.calibration_steps // 3)
        print(f"seed recipe: {steps25} steps take as long as {args.steps} of the 2026 recipe", flush=True)
        runs["seed2025"] = run_jaxchat(home, args, "2025", "r2025_s0", 0, steps25, args.eval_every, logs)
    for i in range(args.pairs):  # tokens/s: short runs back to back, the first side alternating
        for name in ("nanochat", "jaxchat") if i % 2 == 0 else ("jaxchat", "nanochat"):
            if name == "nanochat":
                run = run_nanochat(setup["src"], setup["nc_base"], args, logs, NANOCHAT_SEED, args.pair_steps,
                                   -1, tag=f"_pair{i}")
            else:
                run = run_jaxchat(home, args, "2026", f"r2026_pair{i}", 0, args.pair_steps, 0, logs)
            runs[f"pair{i}_{name}"] = run
    return runs


def pair_ratios(r: dict) -> list[dict]:
    """Per pair of short runs: each side's median step time (after ``--skip`` steps) and the ratio of
    their tokens/s (jaxchat / nanochat). Back to back, both runs of a pair see about the same load."""
    a, out = r["args"], []
    for i in range(a.get("pairs", 0)):
        nc, jx = (steady_step_seconds(r["runs"][f"pair{i}_{side_}"], a["skip"]) for side_ in ("nanochat", "jaxchat"))
        out.append({"pair": i + 1, "first": "nanochat" if i % 2 == 0 else "jaxchat", "nanochat": nc, "jaxchat": jx,
                    "ratio": nc / jx})
    return out


def summarize(r: dict) -> dict:
    """Step 4: the measures, from the runs in ``r`` (adds scaling, gaps, throughput, timing, conclusions)."""
    a, runs = r["args"], r["runs"]
    nc, jx = side(r, "nanochat"), side(r, "jaxchat")
    nc_facts = runs["nanochat0"]["facts"]
    scaling = {
        "nanochat_lr": next((f for f in nc_facts if f.startswith("Scaling LRs")), "?"),
        "nanochat_wd": next((f for f in nc_facts if f.startswith("Scaling weight decay")), "?"),
        "jaxchat": re.sub(r"\s+", " ", next((f for f in runs["jaxchat0"]["facts"] if f.startswith("scaling")), "?")),
    }
    lr_n = re.search(r"by ([\d.]+)", scaling["nanochat_lr"])
    wd_n = re.search(r"to ([\d.]+)", scaling["nanochat_wd"])
    scaling["same"] = bool(lr_n and wd_n and f"LRs × {lr_n.group(1)}" in scaling["jaxchat"]
                           and f"decay {wd_n.group(1)}" in scaling["jaxchat"])

    def gap(first: list[dict], second: list[dict]) -> dict:
        return {**curve_gap(mean_curve(first), mean_curve(second), a["from_step"]),
                "val": val_gap(mean_val(first), mean_val(second))}

    pairs = {f"{name} {s1} vs {s0} (noise)": gap([runs_[j]], [runs_[i]])
             for name, runs_, seeds in (("nanochat", nc, a["nanochat_seeds"]), ("jaxchat", jx, a["jaxchat_seeds"]))
             for i, s0 in enumerate(seeds) for j, s1 in enumerate(seeds) if i < j}
    gaps = {"from_step": a["from_step"], "noise": pairs, "means": gap(nc, jx),
            "cross": {f"nanochat {s0} vs jaxchat {s1}": gap([x], [y])
                      for s0, x in zip(a["nanochat_seeds"], nc) for s1, y in zip(a["jaxchat_seeds"], jx)}}
    tps = {"nanochat": tokens_per_second(nc, a["total_batch"], a["skip"]),
           "jaxchat": tokens_per_second(jx, a["total_batch"], a["skip"]),
           "nanochat_best": tokens_per_second(nc, a["total_batch"], a["skip"], best=True),
           "jaxchat_best": tokens_per_second(jx, a["total_batch"], a["skip"], best=True)}
    tps["ratio"], tps["ratio_best"] = tps["jaxchat"] / tps["nanochat"], tps["jaxchat_best"] / tps["nanochat_best"]
    tps["pairs"] = pair_ratios(r)
    if tps["pairs"]:
        tps["pairs_ratio"] = statistics.median(p["ratio"] for p in tps["pairs"])
    r.update({"scaling": scaling, "gaps": gaps, "throughput": tps,
              "timing": {recipe: steady_step_seconds(runs[f"timing{recipe}"], a["calibration_steps"] // 3)
                         for recipe in ("2026", "2025")}})
    r["conclusions"] = conclusions(r)
    return r


def load_json(path: str) -> dict:
    """A saved run (``--json``), with the val steps back to ints."""
    r = json.loads(Path(path).read_text())
    for run in r["runs"].values():
        run["val_bpb"] = {int(k): v for k, v in run["val_bpb"].items()}
    return r


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["NANOCHAT_DTYPE"] = args.dtype  # read by nanochat's common.py, here and in its runs
    if args.pairs_only and (args.write_md or args.from_json or args.pairs < 1):
        raise SystemExit("--pairs-only needs --pairs ≥ 1 and prints its table: it cannot be combined with "
                         "--write-md or --from-json")
    if args.from_json:  # render the report of a saved run again (no training)
        result = summarize(load_json(args.from_json))
    else:
        t_start = time.perf_counter()
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nanochat_sbs_"))
        print(f"working in {work}; {cpu_cores()} CPU cores", flush=True)
        setup = prepare(args, work)
        runs = run_all(args, setup)
        if args.pairs_only:
            Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1, default=str))
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
            print(f"\n{args.dtype} compute on both sides")
            print("\n".join(pairs_table(pair_ratios({"args": vars(args), "runs": runs}))))
            print(f"total time {(time.perf_counter() - t_start) / 60:.1f} min")
            return 0
        result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "args": vars(args),
                  "machine": machine_facts(), "runs": runs,
                  **{k: setup[k] for k in ("corpus", "epochs", "tokenizer", "val_batches_identical",
                                           "nanochat_attention")},
                  "total_minutes": (time.perf_counter() - t_start) / 60}
        result = summarize(result)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        kept = setup["logs"] if args.workdir else "(removed with the temp dir)"
        print(f"raw per-step data: {args.json}; logs: {kept}")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    markdown = render_markdown(result)
    print("\n" + markdown)
    print(f"total time {result['total_minutes']:.1f} min")
    if args.write_md:
        write_md_section(markdown)
        print(f"wrote the section to {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
