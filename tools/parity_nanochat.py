"""Parity of jaxchat's GPT with nanochat 92d63d4's own ``nanochat/gpt.py``, run in torch (float32, CPU).

What it checks: a small GPT with EVERY 92d63d4 feature on (sliding windows "SSSL" with S = 128 <
T = 256, value embeddings + gates, q/k scale 1.2, resid/x0 lambdas, smear, backout, vocab 300
padded to 320, rotary base 100000, GQA), initialised by nanochat's ``init_weights`` and then
perturbed (at init the projections are zero and smear is off, which would leave attention, the MLP
and several features untested), its weights copied into jaxchat's GPT, must give the same

- logits (B=2, T=256) and loss (mean, and per token) — under jaxchat's reference runtime (xla
  attention) and its CPU runtime (blocked attention, dense kernel, fused head+loss);
- KV-cache inference: a 150-token prefill then 10 single-token decode steps through nanochat's
  ``KVCache`` (92d63d4's engine.py, with ``prev_embedding`` for smear) vs ``GPT.decode``;
- ``num_params`` / ``estimate_flops`` vs nanochat's ``num_scaling_params()['total']`` /
  ``estimate_flops()`` for this model and the 2026 recipe's d12 / d20 / d26 shapes;

all to ≤ 1e-4 relative (of the largest magnitude). It then writes the golden arrays
(``tests/fixtures/nanochat_92d63d4/model.npz``: nanochat's weights rounded to float16, which the
torch model used exactly, the tokens, a slice of nanochat's logits, its losses, its decode logits,
its counts) that ``tests/test_model_2026.py`` checks jaxchat against WITHOUT torch.

How to run (torch is a development tool only, never a jaxchat dependency; jaxchat never imports
this file)::

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    python tools/parity_nanochat.py --torch-python /tmp/torchvenv/bin/python [--write-fixture]

This process (jaxchat's Python) runs the nanochat side in a subprocess of ``--torch-python``
(default: this interpreter), which extracts 92d63d4's ``nanochat/{gpt,flash_attention,common,optim}.py``
(and the KVCache class of ``engine.py``) from a nanochat git mirror (``--nanochat-git``, or the
``NANOCHAT_GIT`` environment variable) into a temporary directory, with ``NANOCHAT_DTYPE=float32``
(nanochat's COMPUTE_DTYPE; on CPU flash_attention falls back to SDPA).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

COMMIT = "92d63d4"
REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "nanochat_92d63d4" / "model.npz"
CONFIG = dict(sequence_len=256, vocab_size=300, n_layer=4, n_head=2, n_kv_head=1, n_embd=64, window_pattern="SSSL")
BATCH, SEQ = 2, 256
LOGIT_POSITIONS = [0, 1, 2, 127, 128, 129, 200, 255]  # before, at and past the S window's edge
PREFILL, DECODE_STEPS = 150, 10
RECIPE_DEPTHS = (12, 20, 26)  # the 2026 recipe's shapes whose counts are compared (vocab 32768)
TOLERANCE = 1e-4


# ----------------------------------------------------------------------------- nanochat side (torch)

def _extract_nanochat(git_dir: str, into: Path) -> None:
    package = into / "nanochat"
    package.mkdir()
    (package / "__init__.py").write_text("")
    show = lambda path: subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{COMMIT}:{path}"],  # noqa: E731
                                       check=True, capture_output=True, text=True).stdout
    for name in ("gpt", "flash_attention", "common", "optim"):
        (package / f"{name}.py").write_text(show(f"nanochat/{name}.py"))
    # engine.py imports the whole training stack; its KVCache class alone needs only torch.
    engine = show("nanochat/engine.py")
    kv_cache = re.search(r"^class KVCache:.*?(?=^# ---)", engine, re.S | re.M).group(0)
    (package / "kv_cache.py").write_text("import torch\n\n" + kv_cache)


def nanochat_side(git_dir: str, out: str) -> None:
    """Build, init, perturb and run nanochat's GPT; save everything to ``out`` (.npz)."""
    os.environ["NANOCHAT_DTYPE"] = "float32"
    tmp = Path(tempfile.mkdtemp(prefix="nanochat_92d63d4_"))
    _extract_nanochat(git_dir, tmp)
    sys.path.insert(0, str(tmp))
    import torch
    from nanochat.common import COMPUTE_DTYPE
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.kv_cache import KVCache
    assert COMPUTE_DTYPE == torch.float32

    torch.manual_seed(0)
    config = GPTConfig(**CONFIG)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        # Perturb every parameter so each path carries signal, then round to float16 (the fixture's
        # storage) so that the stored weights are exactly the ones this forward used.
        for name, p in model.named_parameters():
            if p.ndim == 2 and "lm_head" not in name:
                p.add_(torch.randn_like(p) * 0.5 / p.shape[1] ** 0.5)
            elif "lm_head" in name:
                p.add_(torch.randn_like(p) * 0.3)  # logits of a few units: the softcap matters
            else:
                p.add_(torch.randn_like(p) * 0.2)  # lambdas
            p.copy_(p.half().float())
    model.eval()
    idx = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(idx, -1, 1)
    targets[:, -1] = -1
    targets[0, 50:60] = -1
    with torch.no_grad():
        logits = model(idx)
        loss = model(idx, targets)
        loss_none = model(idx, targets, loss_reduction="none").view(BATCH, SEQ)
        # KV cache: prefill row 0's first PREFILL tokens, then decode its next DECODE_STEPS one by one.
        m = config
        cache = KVCache(batch_size=1, num_heads=m.n_kv_head, seq_len=m.sequence_len, head_dim=m.n_embd // m.n_head,
                        num_layers=m.n_layer, device="cpu", dtype=torch.float32)
        decode = [model(idx[:1, :PREFILL], kv_cache=cache)[0, -1]]
        for t in range(PREFILL, PREFILL + DECODE_STEPS):
            decode.append(model(idx[:1, t:t + 1], kv_cache=cache)[0, -1])
        decode = torch.stack(decode)

    counts = {"model": [model.num_scaling_params()["total"], model.estimate_flops(), model.num_matmul_params()]}
    for depth in RECIPE_DEPTHS:  # base_train.py's build_model_meta, on the meta device (shapes only)
        n_embd = -(-depth * 64 // 128) * 128
        shape = GPTConfig(sequence_len=2048, vocab_size=32768, n_layer=depth, n_head=n_embd // 128,
                          n_kv_head=n_embd // 128, n_embd=n_embd, window_pattern="SSSL")
        with torch.device("meta"):
            big = GPT(shape)
        counts[f"d{depth}"] = [big.num_scaling_params()["total"], big.estimate_flops(), big.num_matmul_params()]

    state = {f"sd/{k}": v.detach().float().numpy() for k, v in model.state_dict().items()}
    np.savez(out, idx=idx.numpy(), targets=targets.numpy(), logits=logits.numpy(), loss=loss.numpy(),
             loss_none=loss_none.numpy(), decode=decode.numpy(), config=json.dumps(CONFIG),
             counts=json.dumps(counts), **state)


# ----------------------------------------------------------------------------- jaxchat side (JAX)

def config_2026(nanochat_config: dict):
    """jaxchat's GPTConfig of a 92d63d4 GPTConfig: every 2026 feature on."""
    from jaxchat.model.config import GPTConfig
    return GPTConfig(**nanochat_config, value_embeds=True, qk_scale=1.2, layer_lambdas=True, smear=True,
                     backout=True, pad_vocab_to=64, rotary_base=100000.0, init="2026")


def build(config, params: dict, runtime=None):
    """jaxchat's GPT with ``params`` (a nested dict from ``jaxchat.model.port.from_nanochat``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxchat.model.gpt import GPT, split_params
    from jaxchat.runtime import Runtime
    graphdef, template = split_params(GPT(config, runtime=runtime or Runtime(), rngs=nnx.Rngs(0)))
    shapes = jax.tree.map(lambda a: a.shape, template)
    assert jax.tree.map(lambda a: a.shape, params) == shapes, "parameter names/shapes differ from nanochat's"
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def rel(a, b) -> float:
    """max |a − b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def jaxchat_side(golden: dict) -> dict:
    """Every comparison of jaxchat against the nanochat arrays; name → max relative difference."""
    import jax.numpy as jnp

    from jaxchat.model.config import GPTConfig, estimate_flops, num_params
    from jaxchat.model.gpt import KVCache
    from jaxchat.model.port import from_nanochat
    from jaxchat.config import ModelSection
    from jaxchat.runtime import Runtime, resolve

    config = config_2026(json.loads(str(golden["config"])))
    params = from_nanochat({k[3:]: v for k, v in golden.items() if k.startswith("sd/")})
    idx, targets = jnp.asarray(golden["idx"]), jnp.asarray(golden["targets"])
    results = {}
    for plan_name, plan in (("xla", Runtime()), ("cpu", resolve(ModelSection(), "cpu"))):
        model = build(config, params, plan)
        results[f"{plan_name}/logits"] = rel(model(idx)[:, LOGIT_POSITIONS], golden["logits"][:, LOGIT_POSITIONS])
        results[f"{plan_name}/loss"] = rel(model(idx, targets), golden["loss"])
        results[f"{plan_name}/loss_none"] = rel(model(idx, targets, reduction="none"), golden["loss_none"])
    model = build(config, params)
    results["xla/logits_all"] = rel(model(idx), golden["logits"])
    cache = KVCache.create(config, 1, config.sequence_len)
    logits, cache = model.decode(idx[:1, :PREFILL], cache)
    steps = [logits[0, -1]]
    for t in range(PREFILL, PREFILL + DECODE_STEPS):
        logits, cache = model.decode(idx[:1, t:t + 1], cache)
        steps.append(logits[0, -1])
    results["kv_cache/decode"] = rel(jnp.stack(steps), golden["decode"])
    counts = json.loads(str(golden["counts"]))
    shapes = {"model": config}
    shapes.update({f"d{d}": GPTConfig.from_depth_2026(d) for d in RECIPE_DEPTHS})
    for name, shape in shapes.items():
        total, flops, _ = counts[name]
        assert num_params(shape) == total, (name, num_params(shape), total)
        assert estimate_flops(shape) == flops, (name, estimate_flops(shape), flops)
    results["counts"] = 0.0
    return results


def write_fixture(golden: dict, path: Path = FIXTURE) -> None:
    """The golden arrays the torch-free test uses: weights as float16 (exact: the model used them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: (v.astype(np.float16) if k.startswith("sd/") else v) for k, v in golden.items()
            if k not in ("logits",)}
    for k in (k for k in keep if k.startswith("sd/")):
        assert np.array_equal(keep[k].astype(np.float32), golden[k]), f"{k} is not float16-exact"
    keep["logits_slice"] = golden["logits"][:, LOGIT_POSITIONS]
    keep["logit_positions"] = np.asarray(LOGIT_POSITIONS)
    keep["prefill_decode"] = np.asarray([PREFILL, DECODE_STEPS])
    keep["recipe_depths"] = np.asarray(RECIPE_DEPTHS)
    np.savez_compressed(path, **keep)
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch (default: this one)")
    parser.add_argument("--nanochat-git", default=os.environ.get("NANOCHAT_GIT"),
                        help="git dir of a nanochat clone/mirror that has commit " + COMMIT)
    parser.add_argument("--write-fixture", action="store_true", help=f"(re)write {FIXTURE.relative_to(REPO)}")
    parser.add_argument("--nanochat-side", metavar="OUT", help=argparse.SUPPRESS)  # the torch subprocess
    args = parser.parse_args()
    if not args.nanochat_git:
        parser.error("--nanochat-git (or NANOCHAT_GIT) is required")
    if args.nanochat_side:
        nanochat_side(args.nanochat_git, args.nanochat_side)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "nanochat.npz")
        subprocess.run([args.torch_python, __file__, "--nanochat-git", args.nanochat_git, "--nanochat-side", out],
                       check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        with np.load(out) as data:
            golden = dict(data)
    sys.path.insert(0, str(REPO))
    results = jaxchat_side(golden)
    for name, value in results.items():
        print(f"{name:24s} max rel diff {value:.2e}")
    bad = [name for name, value in results.items() if not value <= TOLERANCE]
    if bad:
        sys.exit(f"FAILED (> {TOLERANCE:g}): {', '.join(bad)}")
    print(f"all within {TOLERANCE:g}")
    if args.write_fixture:
        write_fixture(golden)


if __name__ == "__main__":
    main()
