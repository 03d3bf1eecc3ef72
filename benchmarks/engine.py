"""Decode speed of the Engine's KV cache vs recomputing the full forward for every token.

    python benchmarks/engine.py --depth 4 --vocab 8192 --seq 1024 --prompt 64 --tokens 512

For each batch size (rows sampled in parallel from one prompt):

- Engine (KV cache): ``Engine.generate`` as users call it (host loop, tool-use state machine,
  one sync per step), ``--tokens`` steps. Time to first token (TTFT) = call → first yielded column
  (padded prefill, cache copy to every row, first sample, sync); decode tok/s = rows × (steps − 1) /
  (time after the first column).
- Recompute: a jitted step that runs ``model(idx)`` over the whole sequence, padded to the static
  length prompt + tokens, takes the logits at the last real position, samples and writes the token
  into ``idx``. Its cost per token does not depend on the position (the shape is static), so
  ``--naive-steps`` steps give its rate at ``--tokens`` tokens without running hundreds of them.

Both sample with temperature 1 from the same random model (all weights random: nanochat's zero
init of lm_head would make every logit 0). The tokenizer is synthetic (bytes + byte pairs), since
only its special ids matter here. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxchat import GPT, GPTConfig, num_params, runtime
from jaxchat.config import ModelSection
from jaxchat.engine import Engine, sample_next_token
from jaxchat.model import split_params
from jaxchat.tokenizer import SPECIAL_TOKENS, Tokenizer


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer of exactly ``vocab_size`` ids: the 256 bytes, then byte pairs, then the specials."""
    pairs = (bytes([a, b]) for a, b in itertools.product(range(256), repeat=2))
    n_pairs = vocab_size - 256 - len(SPECIAL_TOKENS)
    return Tokenizer([bytes([b]) for b in range(256)] + list(itertools.islice(pairs, n_pairs)))


def random_model(config: GPTConfig, plan: runtime.Runtime) -> GPT:
    """The GPT with every weight random (zero-initialised ones get a small normal init)."""
    model = GPT(config, runtime=plan, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [a if np.any(a) else jax.random.normal(k, a.shape, a.dtype) * 0.02 for k, a in zip(keys, leaves)]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, leaves))
    return nnx.merge(graphdef, state)


def time_engine(engine: Engine, prompt: list[int], rows: int, tokens: int, seed: int) -> tuple[float, float, int]:
    """(TTFT s, decode s after the first column, columns yielded) for one full generation."""
    start = time.perf_counter()
    steps = engine.generate(prompt, num_samples=rows, max_tokens=tokens, temperature=1.0, seed=seed)
    next(steps)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in steps)
    return first - start, time.perf_counter() - first, count


def bench_engine(engine: Engine, prompt: list[int], rows: int, tokens: int, repeats: int) -> dict:
    """Warm up (compile), then the best TTFT and decode time of ``repeats`` full generations.

    A row stops early only at a stop token; with one row a random model can sample one, so seeds
    whose generation ended early are skipped (they would time fewer tokens).
    """
    warm = engine.generate(prompt, num_samples=rows, max_tokens=tokens, temperature=1.0)
    next(warm), next(warm)  # compiles prefill and step
    warm.close()
    ttft, decode, seeds = float("inf"), float("inf"), itertools.count()
    runs = 0
    while runs < repeats:
        seed = next(seeds)
        if seed >= 10 * repeats:
            raise RuntimeError(f"generation kept stopping before {tokens} tokens; try another --vocab or --prompt")
        first_s, decode_s, count = time_engine(engine, prompt, rows, tokens, seed=seed)
        if count < tokens:
            continue
        runs += 1
        ttft, decode = min(ttft, first_s), min(decode, decode_s)
    return {"ttft": ttft, "decode_tok_s": rows * (tokens - 1) / decode}


def bench_recompute(graphdef, params, prompt: list[int], rows: int, length: int, steps: int) -> float:
    """tokens/s of full-forward recomputation at static length ``length`` (best of 2 runs of ``steps``)."""

    @jax.jit
    def step(params, idx, pos, key):
        logits = nnx.merge(graphdef, params)(idx)  # (rows, length, V): every position, every step
        last = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        token = sample_next_token(last, sub, jnp.float32(1.0), top_k=None, greedy=False)
        idx = jax.lax.dynamic_update_slice(idx, token[:, None], (0, pos))
        return idx, key

    idx = np.zeros((rows, length), np.int32)
    idx[:, :len(prompt)] = prompt
    idx, key = jnp.asarray(idx), jax.random.key(0)
    jax.block_until_ready(step(params, idx, len(prompt), key))  # compile
    best = float("inf")
    for _ in range(2):
        cur, k = idx, key
        start = time.perf_counter()
        for i in range(steps):
            cur, k = step(params, cur, len(prompt) + i, k)
            np.asarray(cur[:, len(prompt) + i])  # the host reads every token, as a generation loop must
        best = min(best, time.perf_counter() - start)
    return rows * steps / best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=1024, help="model sequence_len (caps the KV cache)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--tokens", type=int, default=512, help="generated tokens per row")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="rows sampled in parallel")
    parser.add_argument("--naive-steps", type=int, default=8, help="timed steps of the recompute baseline")
    parser.add_argument("--repeats", type=int, default=2, help="timed Engine generations per batch size")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="compute dtype (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    plan = runtime.for_this_machine(ModelSection(dtype=args.dtype))
    config = GPTConfig.from_depth(args.depth, vocab_size=args.vocab, sequence_len=args.seq)
    if args.prompt + args.tokens > args.seq:
        parser.error(f"--prompt + --tokens = {args.prompt + args.tokens} exceeds --seq {args.seq}")
    model = random_model(config, plan)
    tokenizer = synthetic_tokenizer(args.vocab)
    engine = Engine(model, tokenizer)
    graphdef, params = split_params(model)
    rng = np.random.default_rng(0)
    prompt = [tokenizer.bos_token_id] + rng.integers(0, tokenizer.n_merge_tokens, args.prompt - 1).tolist()

    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, dtype {plan.compute_dtype}")
    print(f"model: depth {args.depth}, {num_params(config):,} params, vocab {args.vocab}, seq {args.seq}; "
          f"prompt {args.prompt} tokens, {args.tokens} generated, temperature 1")
    print("| batch | TTFT (ms) | KV-cache decode (tok/s) | recompute (tok/s) | speed-up |")
    print("|---|---|---|---|---|")
    results = {}
    for rows in args.batch:
        cached = bench_engine(engine, prompt, rows, args.tokens, args.repeats)
        naive = bench_recompute(graphdef, params, prompt, rows, args.prompt + args.tokens, args.naive_steps)
        print(f"| {rows} | {cached['ttft'] * 1e3:.1f} | {cached['decode_tok_s']:,.0f} | {naive:,.1f} "
              f"| {cached['decode_tok_s'] / naive:.0f}× |", flush=True)
        results[rows] = {**cached, "recompute_tok_s": naive}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
