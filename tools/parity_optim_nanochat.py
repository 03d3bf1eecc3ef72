"""Parity check: jaxchat's 2026 optimizer port against nanochat 92d63d4's ``MuonAdamW``, step by step.

What it checks
    Extracts ``nanochat/{optim,gpt,common,flash_attention}.py`` at commit 92d63d4 from the local git
    mirror of karpathy/nanochat into a temp dir, builds nanochat's own tiny GPT (2 layers, n_embd 64,
    4 heads, 2 kv heads, vocab 128) and its optimizer via ``GPT.setup_optimizer`` (so the parameter
    grouping is nanochat's), overwrites the parameters with deterministic values, and runs 5 steps
    with deterministic gradients while changing the LR multiplier, the Muon momentum and the Muon
    weight decay every step as ``scripts/base_train.py`` does (its schedule functions are copied
    verbatim below, sampled at 5 iterations of a 1000-step run). The same inputs go through
    ``jaxchat.optim.make_optimizer_2026`` the way jaxchat's train step uses it (built at LR multiplier
    1, updates scaled by lrm, momentum / weight decay as schedules of the step count). After every step
    it compares every parameter: relative Frobenius difference of the params and of their change since
    step 0 (must be ≤ 1e-5 in float32). It also checks that our labels put every parameter in the
    group nanochat puts it in, and that ``jaxchat.optim.schedules2026`` reproduces the three
    base_train schedules over a whole 1000-step run.

    torch.compile is replaced by the identity and nanochat's compute dtype is forced to float32
    (NANOCHAT_DTYPE=float32), so its Polar Express runs in float32; ours gets ortho_dtype float32.
    ``--dtype bfloat16`` runs both orthogonalisations in bfloat16 instead, with the same tolerance:
    our bf16 arithmetic rounds like torch's, provided XLA does not keep bf16 intermediates in float32
    (its default ``--xla_allow_excess_precision=true`` does, inside fusions, which moves the Muon
    updates by ~5 % relative after 5 Polar Express steps: a more precise, equally valid result). The
    tool therefore adds ``--xla_allow_excess_precision=false`` to XLA_FLAGS in bf16 mode.

Golden fixture
    With ``--write-fixture`` it saves ``tests/fixtures/nanochat_92d63d4/optim.npz`` (float32 run):
    the schedule values, nanochat's params after the last step (torch layout, all of them), a fixed
    sample of ≤ 256 entries of every param after each step, checksums of the inputs, and the 1000-step
    schedule tables. The inputs themselves are not stored (they would be ~2.6 MB): they come from
    ``portable_uniform``, an integer hash (splitmix64) that gives the same float32 values on any
    machine and NumPy version; ``tests/test_optim_2026.py`` has a copy and checks the checksums.

How to run (needs torch; never imported by jaxchat)
    python -m venv /tmp/torchvenv_opt && /tmp/torchvenv_opt/bin/pip install torch numpy
    PYTHONPATH=$PWD /tmp/torchvenv_opt/bin/python tools/parity_optim_nanochat.py [--write-fixture]
    The venv also needs jaxchat's own deps: ``/tmp/torchvenv_opt/bin/pip install jax==0.10.2
    optax==0.2.8 flax==0.12.8`` (the versions of pyproject.toml's environment). ~1 min on 2 CPU cores.

Options: --mirror PATH (git dir of the nanochat mirror), --commit SHA, --dtype float32|bfloat16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its test fixtures
from tests.fixtures import optim_inputs as inputs  # noqa: E402

COMMIT = "92d63d4"
DEFAULT_MIRROR = "/work/.mirror/karpathy+nanochat/repo"
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "nanochat_92d63d4" / "optim.npz"

# Tiny model (nanochat GPTConfig) and run.
N_LAYER, N_HEAD, N_KV_HEAD, N_EMBD, VOCAB = 2, 4, 2, 64, 128
SEED = 2026
STEPS = 5
RUN_ITERATIONS = 1000  # the base_train run whose schedules we sample
SAMPLE_ITS = (0, 30, 400, 700, 990)  # iterations of that run used for the 5 optimizer steps
SAMPLE_SIZE = 256
TOLERANCE = 1e-5  # relative Frobenius difference of every param after every step

# base_train.py arguments used by the schedules and setup_optimizer (its CLI defaults, warmup 40).
ARGS = dict(warmup_steps=40, warmdown_ratio=0.65, final_lr_frac=0.05, embedding_lr=0.3, unembedding_lr=0.008,
            matrix_lr=0.02, scalar_lr=0.5, weight_decay=0.28)
BATCH_LR_SCALE = 0.5 ** 0.5  # total batch 2**18 tokens vs B_REF 2**19: exercises the LR scaling
INIT_LR_FRAC = 0.8  # chat_sft's multiplier of every group's LR, smear included


# ----------------------------------------------------------------------------------------------------
# Deterministic inputs (tests/fixtures/optim_inputs.py, shared with tests/test_optim_2026.py)

def torch_shapes() -> dict[str, tuple[int, ...]]:
    """nanochat 92d63d4's parameter names and torch shapes for the tiny model."""
    head_dim = N_EMBD // N_HEAD
    kv_dim = N_KV_HEAD * head_dim
    has_ve = lambda i: i % 2 == (N_LAYER - 1) % 2  # noqa: E731
    shapes = {"transformer.wte.weight": (VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        shapes.update({p + "attn.c_q.weight": (N_HEAD * head_dim, N_EMBD), p + "attn.c_k.weight": (kv_dim, N_EMBD),
                       p + "attn.c_v.weight": (kv_dim, N_EMBD), p + "attn.c_proj.weight": (N_EMBD, N_EMBD)})
        if has_ve(i):
            shapes[p + "attn.ve_gate.weight"] = (N_KV_HEAD, 12)
        shapes.update({p + "mlp.c_fc.weight": (4 * N_EMBD, N_EMBD), p + "mlp.c_proj.weight": (N_EMBD, 4 * N_EMBD)})
    shapes.update({"lm_head.weight": (VOCAB, N_EMBD), "resid_lambdas": (N_LAYER,), "x0_lambdas": (N_LAYER,),
                   "smear_gate.weight": (1, 24), "smear_lambda": (1,), "backout_lambda": (1,)})
    shapes.update({f"value_embeds.{i}.weight": (VOCAB, kv_dim) for i in range(N_LAYER) if has_ve(i)})
    return shapes


def initial_params() -> dict[str, np.ndarray]:
    return inputs.initial_params(torch_shapes(), SEED)


def gradients(step: int) -> dict[str, np.ndarray]:
    return inputs.gradients(torch_shapes(), step, SEED)


def sample_indices(n: int) -> np.ndarray:
    k = min(n, SAMPLE_SIZE)
    return ((np.arange(k, dtype=np.int64) * 7919) % n).astype(np.int32)  # 7919 is prime: spread, no repeats


# ----------------------------------------------------------------------------------------------------
# base_train.py schedules at 92d63d4, verbatim but for `args.x` → ARGS["x"]

def make_base_train_schedules(num_iterations: int, weight_decay_scaled: float):
    class args:  # noqa: N801
        warmup_steps = ARGS["warmup_steps"]
        warmdown_ratio = ARGS["warmdown_ratio"]
        final_lr_frac = ARGS["final_lr_frac"]

    def get_lr_multiplier(it):
        warmup_iters = args.warmup_steps
        warmdown_iters = round(args.warmdown_ratio * num_iterations)
        if it < warmup_iters:
            return (it + 1) / warmup_iters
        elif it <= num_iterations - warmdown_iters:
            return 1.0
        else:
            progress = (num_iterations - it) / warmdown_iters
            return progress * 1.0 + (1 - progress) * args.final_lr_frac

    def get_muon_momentum(it):
        warmdown_iters = round(args.warmdown_ratio * num_iterations)
        warmdown_start = num_iterations - warmdown_iters
        if it < 400:
            frac = it / 400
            return (1 - frac) * 0.85 + frac * 0.97
        elif it >= warmdown_start:
            progress = (it - warmdown_start) / warmdown_iters
            return 0.97 * (1 - progress) + 0.90 * progress
        else:
            return 0.97

    def get_weight_decay(it):
        return weight_decay_scaled * 0.5 * (1 + math.cos(math.pi * it / num_iterations))

    return get_lr_multiplier, get_muon_momentum, get_weight_decay


# ----------------------------------------------------------------------------------------------------
# nanochat side (torch)

def extract_nanochat(mirror: str, commit: str, dest: Path) -> None:
    pkg = dest / "nanochat"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name in ("optim.py", "gpt.py", "common.py", "flash_attention.py"):
        src = subprocess.run(["git", f"--git-dir={mirror}", "show", f"{commit}:nanochat/{name}"], check=True,
                             capture_output=True, text=True).stdout
        (pkg / name).write_text(src)


def run_nanochat(mirror: str, commit: str, dtype: str, schedule: dict[str, list[float]]) -> dict:
    os.environ["NANOCHAT_DTYPE"] = dtype  # nanochat's own override of its compute dtype
    import torch

    def identity_compile(fn=None, **_kwargs):  # torch.compile(...) as a decorator factory or a decorator
        return fn if fn is not None else (lambda f: f)

    torch.compile = identity_compile
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="nanochat_92d63d4_")
    extract_nanochat(mirror, commit, Path(tmp))
    sys.path.insert(0, tmp)
    from nanochat.gpt import GPT, GPTConfig  # noqa: E402

    config = GPTConfig(sequence_len=32, vocab_size=VOCAB, n_layer=N_LAYER, n_head=N_HEAD, n_kv_head=N_KV_HEAD,
                       n_embd=N_EMBD, window_pattern="L")
    model = GPT(config)
    named = dict(model.named_parameters())
    expected = torch_shapes()
    assert {k: tuple(v.shape) for k, v in named.items()} == expected, "tiny model shapes differ from torch_shapes()"
    init = initial_params()
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(torch.from_numpy(init[name]))  # float32 everywhere (CPU: nanochat keeps wte fp32)
    optimizer = model.setup_optimizer(unembedding_lr=ARGS["unembedding_lr"] * BATCH_LR_SCALE,
                                      embedding_lr=ARGS["embedding_lr"] * BATCH_LR_SCALE,
                                      scalar_lr=ARGS["scalar_lr"] * BATCH_LR_SCALE,
                                      matrix_lr=ARGS["matrix_lr"] * BATCH_LR_SCALE,
                                      weight_decay=ARGS["weight_decay"])
    for group in optimizer.param_groups:  # chat_sft's init_lr_frac
        group["lr"] = group["lr"] * INIT_LR_FRAC
        group["initial_lr"] = group["lr"]
    ids = {id(p): n for n, p in named.items()}
    groups = []
    for group in optimizer.param_groups:
        groups.append(dict(kind=group["kind"], names=[ids[id(p)] for p in group["params"]], lr=group["initial_lr"],
                           **({"betas": list(group["betas"]), "eps": group["eps"],
                               "weight_decay": group["weight_decay"]} if group["kind"] == "adamw" else
                              {"beta2": group["beta2"], "ns_steps": group["ns_steps"]})))
    history = []
    for step in range(STEPS):
        grads = gradients(step)
        for name, p in named.items():
            p.grad = torch.from_numpy(grads[name]).clone()
        lrm, momentum, wd = schedule["lrm"][step], schedule["momentum"][step], schedule["weight_decay"][step]
        for group in optimizer.param_groups:  # base_train's per-step update of the groups
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = momentum
                group["weight_decay"] = wd
        optimizer.step()
        model.zero_grad(set_to_none=True)
        history.append({n: p.detach().float().numpy().copy() for n, p in named.items()})
    return dict(groups=groups, history=history, torch_version=torch.__version__)


# ----------------------------------------------------------------------------------------------------
# jaxchat side

def flax_tree(arrays: dict[str, np.ndarray]) -> dict:
    """torch name → nested dict in Flax layout (Linear weight (out, in) → kernel (in, out))."""
    tree: dict = {}
    for name, a in arrays.items():
        parts = name.split(".")
        if parts[-1] == "weight":
            leaf = "embedding" if ("wte" in name or "value_embeds" in name) else "kernel"
            parts[-1] = leaf
            a = a if leaf == "embedding" else a.T
        node = tree
        for key in parts[:-1]:
            node = node.setdefault(key, {})
        node[parts[-1]] = np.ascontiguousarray(a)
    return tree


def from_flax(tree: dict, names) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        parts = name.split(".")
        node = tree
        for key in parts[:-1]:
            node = node[key]
        if parts[-1] == "weight":
            leaf = "embedding" if ("wte" in name or "value_embeds" in name) else "kernel"
            a = np.asarray(node[leaf])
            out[name] = a if leaf == "embedding" else a.T
        else:
            out[name] = np.asarray(node[parts[-1]])
    return out


def run_jaxchat(dtype: str, schedule: dict[str, list[float]]) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxchat.optim import OptimConfig2026, make_optimizer_2026, param_group_2026

    jax.config.update("jax_default_matmul_precision", "highest")
    names = list(torch_shapes())
    params = jax.tree.map(jnp.asarray, flax_tree(initial_params()))
    config = OptimConfig2026(ortho_dtype=jnp.float32 if dtype == "float32" else jnp.bfloat16,
                             batch_lr_scale=BATCH_LR_SCALE, init_lr_frac=INIT_LR_FRAC,
                             embedding_lr=ARGS["embedding_lr"], unembedding_lr=ARGS["unembedding_lr"],
                             matrix_lr=ARGS["matrix_lr"], scalar_lr=ARGS["scalar_lr"])
    mom_table = jnp.asarray(schedule["momentum"], jnp.float32)
    wd_table = jnp.asarray(schedule["weight_decay"], jnp.float32)
    tx = make_optimizer_2026(params, N_EMBD, config, lr_multiplier=1.0,
                             muon_momentum=lambda count: mom_table[count],
                             muon_weight_decay=lambda count: wd_table[count])

    @jax.jit
    def step(params, opt_state, grads, lrm):  # what jaxchat/training/step.py does after the gradients
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: (u * lrm).astype(u.dtype), updates)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    history = []
    for s in range(STEPS):
        grads = jax.tree.map(jnp.asarray, flax_tree(gradients(s)))
        params, opt_state = step(params, opt_state, grads, jnp.float32(schedule["lrm"][s]))
        history.append(from_flax(jax.device_get(params), names))
    by_name = {}  # our group of each torch name, through its Flax path
    for name in names:
        parts = name.split(".")
        if parts[-1] == "weight":
            parts[-1] = "embedding" if ("wte" in name or "value_embeds" in name) else "kernel"
        by_name[name] = param_group_2026(parts)
    return dict(history=history, labels=by_name)


def our_schedule_tables(num_iterations: int, weight_decay: float) -> dict[str, np.ndarray]:
    from jaxchat.optim import base_lr_multiplier_2026, muon_momentum_2026, weight_decay_cosine

    its = np.arange(num_iterations + 1)
    lrm = base_lr_multiplier_2026(num_iterations, ARGS["warmup_steps"], ARGS["warmdown_ratio"], ARGS["final_lr_frac"])
    mom = muon_momentum_2026(num_iterations, ARGS["warmdown_ratio"])
    wd = weight_decay_cosine(weight_decay, num_iterations)
    return {"lrm": np.asarray(lrm(its)), "momentum": np.asarray(mom(its)), "weight_decay": np.asarray(wd(its))}


# ----------------------------------------------------------------------------------------------------

def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a - b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", default=DEFAULT_MIRROR)
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--write-fixture", action="store_true")
    args = ap.parse_args()
    if args.write_fixture and args.dtype != "float32":
        ap.error("--write-fixture needs --dtype float32")

    lrm_fn, mom_fn, wd_fn = make_base_train_schedules(RUN_ITERATIONS, ARGS["weight_decay"])
    schedule = {"lrm": [lrm_fn(it) for it in SAMPLE_ITS], "momentum": [mom_fn(it) for it in SAMPLE_ITS],
                "weight_decay": [wd_fn(it) for it in SAMPLE_ITS]}
    print("schedule (it, lrm, momentum, weight_decay):")
    for i, it in enumerate(SAMPLE_ITS):
        print(f"  {it:4d}  {schedule['lrm'][i]:.6f}  {schedule['momentum'][i]:.6f}  {schedule['weight_decay'][i]:.6f}")

    if args.dtype == "bfloat16" and "xla_allow_excess_precision" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_allow_excess_precision=false").strip()
    ref = run_nanochat(args.mirror, args.commit, args.dtype, schedule)
    ours = run_jaxchat(args.dtype, schedule)
    ok = True

    # 1. Grouping: same partition of the parameters as nanochat's param_groups.
    ours_groups = {}
    for name, group in ours["labels"].items():
        ours_groups.setdefault(group, set()).add(name)
    ref_sets = {}
    for g in ref["groups"]:
        key = "muon" if g["kind"] == "muon" else None
        ref_sets.setdefault(key or f"adamw:{g['lr']:.6g}:{g['betas']}", set()).update(g["names"])
    ref_partition = sorted(sorted(s) for k, s in ref_sets.items())
    our_partition = sorted(sorted(s) for s in ours_groups.values())
    same_partition = ref_partition == our_partition
    print(f"grouping matches nanochat's param_groups: {same_partition}")
    ok &= same_partition

    # 2. Params after each step.
    init = initial_params()
    tol = TOLERANCE
    per_step = []
    # (p − p0) is informational: float32 rounding of p + update alone gives ~ulp(p)/|update| (~3e-5 at
    # step 1, where lrm = 0.025 makes the updates tiny next to the params).
    print(f"step  max rel diff params  max rel diff (p - p0)  worst tensor   [tolerance {tol:g} on params]")
    for s in range(STEPS):
        r = {n: rel(ours["history"][s][n], ref["history"][s][n]) for n in init}
        d = {n: rel(ours["history"][s][n] - init[n], ref["history"][s][n] - init[n]) for n in init}
        worst = max(d, key=d.get)
        per_step.append((max(r.values()), max(d.values())))
        print(f"{s + 1:4d}  {max(r.values()):19.3e}  {max(d.values()):21.3e}  {worst}")
        ok &= max(r.values()) <= tol
    # 3. Schedules over a whole run.
    tables_ref = {k: np.array([f(it) for it in range(RUN_ITERATIONS + 1)])
                  for k, f in (("lrm", lrm_fn), ("momentum", mom_fn), ("weight_decay", wd_fn))}
    tables_ours = our_schedule_tables(RUN_ITERATIONS, ARGS["weight_decay"])
    for k in tables_ref:
        err = float(np.max(np.abs(tables_ours[k] - tables_ref[k])))
        print(f"schedule {k:13s} max abs diff over {RUN_ITERATIONS + 1} its: {err:.2e}")
        ok &= err <= 1e-6

    if args.write_fixture:
        names = list(init)
        data = {
            "meta_json": np.array(json.dumps(dict(
                commit=args.commit, seed=SEED, steps=STEPS, n_layer=N_LAYER, n_head=N_HEAD, n_kv_head=N_KV_HEAD,
                n_embd=N_EMBD, vocab=VOCAB, sample_its=SAMPLE_ITS, run_iterations=RUN_ITERATIONS, args=ARGS,
                batch_lr_scale=BATCH_LR_SCALE, init_lr_frac=INIT_LR_FRAC, torch_version=ref["torch_version"],
                shapes={n: list(v) for n, v in torch_shapes().items()}, groups=ref["groups"],
                measured_max_rel=per_step))),
            "names": np.array(names),
            "lrm": np.array(schedule["lrm"]), "momentum": np.array(schedule["momentum"]),
            "weight_decay": np.array(schedule["weight_decay"]),
            "checksum_init": inputs.checksums(init),
            "checksum_grads": np.stack([inputs.checksums(gradients(s)) for s in range(STEPS)]),
        }
        for k, v in tables_ref.items():
            data[f"table_{k}"] = v
        for n in names:
            idx = sample_indices(init[n].size)
            data[f"sample_idx/{n}"] = idx
            data[f"sample/{n}"] = np.stack([ref["history"][s][n].reshape(-1)[idx] for s in range(STEPS)])
            data[f"final/{n}"] = ref["history"][-1][n]
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIXTURE, **data)
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1024:.0f} KiB)")
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
