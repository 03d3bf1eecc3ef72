"""Throughput and MFU of the jitted train step (model + nanochat optimizer), for one shape.

    python benchmarks/train_step.py --depth 4 --seq 512 --batch 8 --vocab 8192
    python benchmarks/train_step.py --recipe 2026 --depth 4 --seq 512 --batch 8   # nanochat 92d63d4's model + optimizer

MFU = FLOPs/token (docs/DESIGN.md §3, ``estimate_flops``) × tokens/s ÷ peak. The peak is measured in the same
run on CPU (best of several square matmuls in the compute dtype) and is the bf16 dense datasheet figure on GPU
(H100 SXM: 989 TFLOP/s) — with the measured bf16 matmul shown beside it.

On a shared machine both measurements only ever get slower, so the run alternates ``--rounds``
rounds of (peak, step timing) and reports the best of each: the fastest step against the fastest
matmul seen in the same run (a noisy round can only lower the peak it measures, never raise it, so
taking the maximum keeps MFU honest). Each round's own ratio is printed too.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxchat import GPT, GPTConfig, estimate_flops, fit, num_params, runtime
from jaxchat.config import ModelSection, initial
from jaxchat.host_memory import retain_freed_host_memory
from jaxchat.model import split_params
from jaxchat.training import init_train_state, make_train_step
from jaxchat.training.build import Scaling, build_optimizer


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` (which must block) over ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops_per_second(dtype, n: int, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    # float32 results: XLA:CPU runs a bf16 product in bf16 only when asked for float32 (docs/BENCHMARKS.md).
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    return 2 * n**3 / best_time(lambda: matmul(a, b).block_until_ready(), repeats)


def peak_flops(plan: runtime.Runtime) -> tuple[float, str]:
    """(peak FLOP/s used for MFU, how it was obtained)."""
    kind = jax.devices()[0].device_kind
    if plan.backend == "gpu":
        measured = matmul_flops_per_second(jnp.bfloat16, 8192)
        if plan.peak_flops:
            return plan.peak_flops, f"{kind} bf16 datasheet (measured bf16 matmul {measured / 1e12:.0f} TFLOP/s)"
        return measured, f"{kind} measured bf16 matmul"
    return matmul_flops_per_second(plan.dtype, 2048), f"measured {plan.compute_dtype} 2048² matmul on {kind}"


def main(argv=None):
    retain_freed_host_memory()  # as train.py does, before JAX starts
    runtime.configure_process()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="device batch (rows per micro-batch)")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="compute dtype (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--attention", choices=["auto", "blocked", "xla", "cudnn"], default="auto")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--recipe", choices=["2025", "2026"], default="2025",
                        help="the model and base-training optimizer of this recipe (2026: nanochat 92d63d4's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (after 2 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of peak and step timing")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    plan = runtime.for_this_machine(ModelSection(dtype=args.dtype, attention=args.attention, remat=args.remat))
    cfg = initial(args.recipe)
    config = GPTConfig.for_recipe(args.recipe, args.depth, args.vocab, args.seq, cfg.model.window_pattern)
    graphdef, params = split_params(GPT(config, runtime=plan, rngs=nnx.Rngs(0)))
    tx = build_optimizer(params, config, cfg, "base", runtime=plan, scaling=Scaling(num_steps=1000))
    train_step = make_train_step(graphdef, tx)
    state = init_train_state(params, tx)
    tokens = jax.random.randint(jax.random.key(0), (args.accum, args.batch, args.seq + 1), 0, args.vocab)
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}

    start = time.perf_counter()
    for _ in range(2):  # compile + warm up
        state, metrics = train_step(state, batch, 1.0)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start

    def one_step():
        nonlocal state
        state, m = train_step(state, batch, 1.0)
        jax.block_until_ready(m)

    tokens_per_step = args.accum * args.batch * args.seq
    flops_per_token = estimate_flops(config)
    peak, step_s = 0.0, float("inf")
    for round_ in range(args.rounds):
        round_peak, peak_source = peak_flops(plan)
        round_step = best_time(one_step, args.steps)
        print(f"round {round_ + 1}: step {round_step * 1e3:.0f} ms, peak {round_peak / 1e9:.0f} GFLOP/s, "
              f"MFU {flops_per_token * tokens_per_step / round_step / round_peak:.1%}")
        peak, step_s = max(peak, round_peak), min(step_s, round_step)
    tok_s = tokens_per_step / step_s
    mfu = flops_per_token * tok_s / peak
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; runtime: {plan.describe()}")
    print(f"model: depth {args.depth} ({args.recipe} recipe), {num_params(config):,} params, {flops_per_token / 1e6:.1f} MFLOP/token")
    print(f"peak: {peak / 1e9:.0f} GFLOP/s ({peak_source}, best of {args.rounds} rounds)")
    print(f"compile+2 steps: {compile_s:.1f} s")
    print("| depth | seq | batch×accum | dtype | step (ms) | tok/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.depth} | {args.seq} | {args.batch}×{args.accum} | {plan.compute_dtype} | {step_s * 1e3:.0f} "
          f"| {tok_s:,.0f} | {mfu:.1%} |")
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    planned = fit.Memory.of(train_step.lower(state, batch, 1.0).compile()).peak  # what jaxchat.fit plans with
    print(f"memory: XLA's compiled peak {planned / 2**30:.2f} GiB"
          + (f", measured peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB" if "peak_bytes_in_use" in stats else ""))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"step_ms": step_s * 1e3, "tok_s": tok_s, "mfu": mfu, "peak_source": peak_source,
                       "compile_s": compile_s, "peak_bytes": stats.get("peak_bytes_in_use"), "planned_bytes": planned,
                       "runtime": plan.describe()}, f)


if __name__ == "__main__":
    main()
