"""Training parity with nanochat 92d63d4: the same initial weights and the same batches, step by step.

What it checks
    nanochat's own GPT (``init_weights``, seeded), its ``setup_optimizer`` (MuonAdamW) and
    base_train's LR, momentum and weight-decay schedules are run in torch on CPU in float32 next to
    jaxchat's 2026 recipe: the same weights (copied with ``jaxchat.model.port``), jaxchat's
    ``build_optimizer`` and jitted ``make_train_step`` with the same horizon, batch LR scale and Muon
    weight decay. Both see the same batches, sampled from a fixed random bigram language. It prints
    both losses and the largest relative parameter difference every 10 steps, per seed.

What it shows (2026-11-30, depth 4, width 256, T = 256 with 128-key windows, 8 rows, LR scale 1/8,
weight decay 0.6, 60 steps):
    The losses agree to ~1e-7 for the first ~17 steps. Then both runs hit the same loss spike
    (this small batch is at the edge of stability), which amplifies float noise, and the runs
    part. From step 0 the resid/x0 lambdas and backout_lambda differ by ~3e-3 relative (backout_lambda
    by 2.3e-2 on an Intel Xeon, 2026-12-02: the noise differs by machine). The loss
    is invariant to the scale of the final residual (it is RMS-normalised), and at init every
    block outputs zero, so those gradients are analytically zero; each framework's is float
    noise, which AdamW's first steps normalise to full-size updates. After the spike, which side
    ends lower depends on the seed: at step 59, jaxchat − nanochat was −0.110 (seed 0), −0.626
    (seed 1), +0.132 (seed 2), +0.002 (seed 3). The gap is noise, not bias.

How to run (needs torch; never imported by jaxchat)
    PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python tools/parity_train_nanochat.py [--steps 60] [--seeds 0,1,2,3]
    About 2 minutes per seed on 2 CPU cores.

Real text instead of the bigram language: ``--nanochat-base DIR`` takes the batches from nanochat's own
best-fit train loader over ``DIR/base_data_climbmix`` with ``DIR/tokenizer`` (what
benchmarks/nanochat_side_by_side.py leaves in ``--workdir/nanochat_base``; jaxchat's loader gives the
same batches, tools/parity_loader_nanochat.py), at ``--seq`` tokens and ``--accum`` micro-batches a
step of 8 rows (512 and 2: the side-by-side's shape). The vocabulary is the tokenizer's.

Options: --mirror PATH (git dir of the nanochat mirror), --lr-scale, --weight-decay.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COMMIT = "92d63d4"
DEFAULT_MIRROR = "/work/.mirror/karpathy+nanochat/repo"
D, LAYERS, VOCAB, T, ROWS = 256, 4, 512, 256, 8  # the bigram run's shape
WARMUP, WARMDOWN, FINAL_LR = 40, 0.65, 0.05  # base_train's defaults


def extract_nanochat(mirror: str) -> Path:
    """nanochat/{gpt,flash_attention,common,optim}.py at COMMIT in a temp dir (on sys.path after)."""
    root = Path(tempfile.mkdtemp(prefix="nanochat_train_"))
    (root / "nanochat").mkdir()
    (root / "nanochat" / "__init__.py").write_text("")
    for name in ("gpt", "flash_attention", "common", "optim", "dataloader", "dataset", "tokenizer"):
        source = subprocess.run(["git", f"--git-dir={mirror}", "show", f"{COMMIT}:nanochat/{name}.py"],
                                check=True, capture_output=True, text=True).stdout
        (root / "nanochat" / f"{name}.py").write_text(source)
    return root


def base_train_schedules(steps: int, weight_decay: float):
    """base_train.py's get_lr_multiplier, get_muon_momentum, get_weight_decay at 92d63d4."""
    warmdown = round(WARMDOWN * steps)

    def lrm(it):
        if it < WARMUP:
            return (it + 1) / WARMUP
        if it <= steps - warmdown:
            return 1.0
        progress = (steps - it) / warmdown
        return progress + (1 - progress) * FINAL_LR

    def momentum(it):
        if it < 400:
            return (1 - it / 400) * 0.85 + it / 400 * 0.97
        if it >= steps - warmdown:
            progress = (it - (steps - warmdown)) / warmdown
            return 0.97 * (1 - progress) + 0.90 * progress
        return 0.97

    def wd(it):
        return weight_decay * 0.5 * (1 + math.cos(math.pi * it / steps))

    return lrm, momentum, wd


def bigram_batches(steps: int):
    """Rows of T+1 tokens from a fixed random bigram language (a learnable, deterministic stream), as
    (inputs, targets) of shape (1 micro-batch, ROWS, T)."""
    transitions = np.random.default_rng(0).dirichlet(np.full(VOCAB, 0.05), size=VOCAB).cumsum(1)
    for it in range(steps):
        rng = np.random.default_rng(1000 + it)
        rows = np.zeros((ROWS, T + 1), np.int64)
        rows[:, 0] = rng.integers(0, VOCAB, ROWS)
        for t in range(T):
            rows[:, t + 1] = (transitions[rows[:, t]] < rng.random((ROWS, 1))).sum(1).clip(0, VOCAB - 1)
        yield rows[None, :, :-1], rows[None, :, 1:]


def text_batches(steps: int, seq: int, accum: int):
    """nanochat's best-fit train loader (NANOCHAT_BASE_DIR's shards and tokenizer): (inputs, targets)
    of shape (accum, ROWS, seq) a step."""
    from nanochat.dataloader import tokenizing_distributed_data_loader_bos_bestfit
    from nanochat.tokenizer import get_tokenizer

    loader = tokenizing_distributed_data_loader_bos_bestfit(get_tokenizer(), ROWS, seq, "train", device="cpu")
    for _ in range(steps):
        micro = [next(loader) for _ in range(accum)]
        yield np.stack([x.numpy() for x, _ in micro]), np.stack([y.numpy() for _, y in micro])


def run_seed(seed: int, steps: int, lr_scale: float, weight_decay: float, text: bool = False, seq: int = T,
             accum: int = 1) -> list[tuple[int, float, float, float]]:
    import jax
    import jax.numpy as jnp
    import torch
    from nanochat.gpt import GPT, GPTConfig

    from jaxchat.config import initial
    from jaxchat.model import GPTConfig as JaxchatConfig
    from jaxchat.model.gpt import GPT as JaxchatGPT, split_params
    from jaxchat.model.port import from_nanochat
    from jaxchat.optim import base_lr_multiplier_2026
    from jaxchat.runtime import Runtime
    from jaxchat.training.build import Scaling, build_optimizer
    from jaxchat.training.step import init_train_state, make_train_step
    from flax import nnx

    if text:
        from nanochat.tokenizer import get_tokenizer
        vocab, batches = get_tokenizer().get_vocab_size(), text_batches(steps, seq, accum)
    else:
        vocab, seq, batches = VOCAB, T, bigram_batches(steps)
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=seq, vocab_size=vocab, n_layer=LAYERS, n_head=D // 128, n_kv_head=D // 128,
                       n_embd=D, window_pattern="SSSL")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    model.float()
    k = lr_scale
    optimizer = model.setup_optimizer(unembedding_lr=0.008 * k, embedding_lr=0.3 * k, scalar_lr=0.5 * k,
                                      matrix_lr=0.02 * k, weight_decay=weight_decay)
    lrm, momentum, wd = base_train_schedules(steps, weight_decay)

    ours = JaxchatConfig.from_depth_2026(LAYERS, vocab_size=vocab, sequence_len=seq)
    graphdef, _ = split_params(JaxchatGPT(ours, runtime=Runtime(), rngs=nnx.Rngs(0)))
    params = jax.tree.map(jnp.asarray, from_nanochat({n: v.detach().numpy() for n, v in model.state_dict().items()}))
    tx = build_optimizer(params, ours, initial("2026"), "base", runtime=Runtime(),
                         scaling=Scaling(num_steps=steps, lr_scale=k, weight_decay=weight_decay))
    state, train_step, schedule = init_train_state(params, tx), make_train_step(graphdef, tx), base_lr_multiplier_2026(steps)

    out = []
    for it, (inputs, targets) in enumerate(batches):
        loss = 0.0
        for x, y in zip(inputs, targets):  # base_train's accumulation: each micro-batch's mean loss / accum
            micro = model(torch.tensor(x), torch.tensor(y)) / len(inputs)
            micro.backward()
            loss += micro.detach()
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm(it)
            if group["kind"] == "muon":
                group["momentum"], group["weight_decay"] = momentum(it), wd(it)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        batch = {"inputs": jnp.asarray(inputs, jnp.int32), "targets": jnp.asarray(targets, jnp.int32)}
        state, metrics = train_step(state, batch, float(schedule(it)))
        if it % 10 == 9 or it == 0:
            theirs = from_nanochat({n: v.detach().numpy() for n, v in model.state_dict().items()})
            diffs = jax.tree_util.tree_flatten_with_path(jax.tree.map(
                lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-12)),
                state.params, theirs))[0]
            where, worst = max(diffs, key=lambda d: d[1])
            out.append((it, loss.item(), float(metrics["loss"]), worst))
            print(f"seed {seed} step {it:3d}: loss nanochat {loss.item():.6f} jaxchat {float(metrics['loss']):.6f} "
                  f"(Δ {float(metrics['loss']) - loss.item():+.6f}); largest relative param difference {worst:.1e} "
                  f"({jax.tree_util.keystr(where)})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--lr-scale", type=float, default=0.125, help="√(B/2¹⁹): 0.125 is an 8,192-token batch")
    parser.add_argument("--weight-decay", type=float, default=0.6, help="Muon's, after base_train's scaling")
    parser.add_argument("--nanochat-base", default="", help="real text: a NANOCHAT_BASE_DIR with base_data_climbmix/ "
                        "and tokenizer/ (default: the bigram language)")
    parser.add_argument("--seq", type=int, default=512, help="with --nanochat-base: tokens a row")
    parser.add_argument("--accum", type=int, default=2, help="with --nanochat-base: micro-batches of 8 rows a step")
    args = parser.parse_args()
    if args.nanochat_base:
        for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # one process: nanochat's rank 0 of 1
            os.environ.pop(var, None)
        os.environ["NANOCHAT_BASE_DIR"] = str(Path(args.nanochat_base).resolve())
    sys.path.insert(0, str(extract_nanochat(args.mirror)))
    sys.path.insert(0, str(REPO))
    final = {seed: run_seed(seed, args.steps, args.lr_scale, args.weight_decay, bool(args.nanochat_base), args.seq,
                            args.accum)[-1]
             for seed in (int(s) for s in args.seeds.split(","))}
    print("\n| seed | loss nanochat | loss jaxchat | jaxchat − nanochat |\n|---|---|---|---|")
    for seed, (it, theirs, ours, _) in final.items():
        print(f"| {seed} | {theirs:.4f} | {ours:.4f} | {ours - theirs:+.4f} |  (step {it})")


if __name__ == "__main__":
    main()
