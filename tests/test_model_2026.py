"""nanochat 92d63d4's model features (GPTConfig options, all off by default) against nanochat itself.

The golden arrays in tests/fixtures/nanochat_92d63d4/model.npz come from nanochat 92d63d4's own
gpt.py run in torch (float32, CPU) by tools/parity_nanochat.py; these tests need no torch.
"""

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat import GPT, GPTConfig, KVCache, estimate_flops, num_params, runtime
from jaxchat.config import ModelSection
from jaxchat.model import cross_entropy, split_params
from jaxchat.model.config import num_matmul_params, ve_layers, window_sizes
from jaxchat.model.port import from_nanochat, to_nanochat
from jaxchat.runtime import Runtime

FIXTURE = Path(__file__).parent / "fixtures" / "nanochat_92d63d4" / "model.npz"
CPU = runtime.resolve(ModelSection(), "cpu")
ALL_ON = dict(window_pattern="SSSL", value_embeds=True, qk_scale=1.2, layer_lambdas=True, smear=True, backout=True,
              pad_vocab_to=64, rotary_base=100000.0, init="2026")
# Small, with every option on. nanochat's S window is never under 128 tokens: the tests of jaxchat's
# own paths shrink it (small_windows) rather than run sequences longer than 128.
# Two layers cover every feature: layer 0 is S, layer 1 is L, has a value embedding and is the backout layer.
TINY = GPTConfig(sequence_len=16, vocab_size=90, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                 **{**ALL_ON, "window_pattern": "SL"})


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as data:
        return dict(data)


def golden_config(golden):
    return GPTConfig(**json.loads(str(golden["config"])), **{k: v for k, v in ALL_ON.items() if k != "window_pattern"})


def golden_model(golden, plan=Runtime()):
    config = golden_config(golden)
    params = from_nanochat({k[3:]: v.astype(np.float32) for k, v in golden.items() if k.startswith("sd/")})
    graphdef, template = split_params(GPT(config, runtime=plan, rngs=nnx.Rngs(0)))
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, template)  # names and shapes mirror nanochat's
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


# ----- parity with nanochat 92d63d4 (golden arrays) -----


@pytest.mark.parametrize("plan", [Runtime(), CPU], ids=["reference", "cpu"])
def test_logits_and_loss_match_nanochat(golden, plan):
    model = golden_model(golden, plan)
    idx, targets, positions = jnp.asarray(golden["idx"]), jnp.asarray(golden["targets"]), golden["logit_positions"]

    @jax.jit
    def run(idx, targets):
        return model.logits(model.hidden(idx)[:, positions]), model(idx, targets), model(idx, targets, reduction="none")

    logits, loss, per_token = run(idx, targets)
    assert rel(logits, golden["logits_slice"]) <= 1e-4
    assert rel(loss, golden["loss"]) <= 1e-4
    assert rel(per_token, golden["loss_none"]) <= 1e-4
    assert np.abs(golden["logits_slice"]).max() > 3.0  # logits of a few units: the softcap is exercised


def test_kv_cache_decode_matches_nanochat_engine(golden):
    """A prefill of 150 tokens (past the 128-token S window) then 10 decode steps, vs nanochat's
    forward with its KVCache (prev_embedding carries smear)."""
    model = golden_model(golden)
    prefill, steps = (int(n) for n in golden["prefill_decode"])
    idx = jnp.asarray(golden["idx"][:1])
    decode = jax.jit(model.decode)
    logits, cache = decode(idx[:, :prefill], KVCache.create(model.config, 1, model.config.sequence_len))
    out = [logits[0, -1]]
    for t in range(prefill, prefill + steps):
        logits, cache = decode(idx[:, t:t + 1], cache)
        out.append(logits[0, -1])
    assert rel(jnp.stack(out), golden["decode"]) <= 1e-4


def test_counts_match_nanochat(golden):
    """num_params = nanochat's num_scaling_params()['total'], estimate_flops = its estimate_flops()
    (windows count min(window, T)), for the golden model and the 2026 recipe's shapes."""
    counts = json.loads(str(golden["counts"]))
    shapes = {"model": golden_config(golden)}
    shapes.update({f"d{d}": GPTConfig.from_depth_2026(int(d)) for d in golden["recipe_depths"]})
    for name, config in shapes.items():
        assert [num_params(config), estimate_flops(config), num_matmul_params(config)] == counts[name], name


def test_port_round_trip(golden):
    sd = {k[3:]: v.astype(np.float32) for k, v in golden.items() if k.startswith("sd/")}
    back = to_nanochat(from_nanochat(sd))
    assert back.keys() == sd.keys()
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key])


# ----- the options, each off by default -----


def test_defaults_are_the_seed_model():
    config = GPTConfig()
    assert (config.window_pattern, config.value_embeds, config.qk_scale, config.layer_lambdas, config.smear,
            config.backout, config.pad_vocab_to, config.rotary_base, config.init) == \
        ("L", False, 1.0, False, False, False, 1, 10000.0, "2025")
    assert window_sizes(config) == (None,) * 20 and ve_layers(config) == ()
    assert config.padded_vocab_size == config.vocab_size
    assert num_params(GPTConfig.from_depth(20)) == 560_988_160
    seed = GPTConfig(sequence_len=16, vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    params = split_params(GPT(seed, rngs=nnx.Rngs(0)))[1]
    assert set(params) == {"wte", "h", "lm_head"}
    assert set(params["h"][0]["attn"]) == {"c_q", "c_k", "c_v", "c_proj"}
    assert sum(a.size for a in jax.tree.leaves(params)) == num_params(seed)
    assert KVCache.create(seed, 1, 8).prev is None


def test_param_names_and_count_with_every_option():
    params = split_params(GPT(TINY, rngs=nnx.Rngs(0)))[1]
    shapes = jax.tree.map(np.shape, params)
    vpad, kv = 128, 2 * 8
    assert shapes["wte"]["embedding"] == (vpad, 32) and shapes["lm_head"]["kernel"] == (32, vpad)
    assert shapes["value_embeds"] == {"1": {"embedding": (vpad, kv)}}
    assert [("ve_gate" in shapes["h"][i]["attn"]) for i in range(2)] == [False, True]
    assert shapes["h"][1]["attn"]["ve_gate"]["kernel"] == (12, 2)
    assert (shapes["resid_lambdas"], shapes["x0_lambdas"], shapes["smear_lambda"], shapes["backout_lambda"]) == \
        ((2,), (2,), (1,), (1,))
    assert shapes["smear_gate"]["kernel"] == (24, 1)
    assert sum(a.size for a in jax.tree.leaves(params)) == num_params(TINY)
    assert set(to_nanochat(params)) >= {"transformer.h.1.attn.ve_gate.weight", "value_embeds.1.weight",
                                        "resid_lambdas", "x0_lambdas", "smear_gate.weight", "smear_lambda",
                                        "backout_lambda", "transformer.wte.weight", "lm_head.weight"}


def test_window_sizes_follow_nanochat():
    config = GPTConfig(sequence_len=2048, n_layer=6, window_pattern="SSSL")
    assert window_sizes(config) == (512, 512, 512, None, 512, None)  # tiled; the last layer always full
    assert window_sizes(dataclasses.replace(config, sequence_len=256, window_pattern="sl")) == (128, None) * 3
    assert window_sizes(dataclasses.replace(config, sequence_len=1000))[0] == 256  # 250 rounded up to 128s
    with pytest.raises(ValueError, match="window_pattern"):
        GPTConfig(window_pattern="SXL")


def test_from_depth_2026_follows_base_train():
    d20 = GPTConfig.from_depth_2026(20)
    assert (d20.n_embd, d20.n_head, d20.head_dim, d20.padded_vocab_size) == (1280, 10, 128, 32768)
    d3 = GPTConfig.from_depth_2026(3, vocab_size=1000)
    assert (d3.n_embd, d3.n_head, d3.head_dim, d3.padded_vocab_size) == (256, 2, 128, 1024)  # 192 rounded up
    assert GPTConfig.from_depth_2026(4, head_dim=64).n_head == 4
    assert dict((k, getattr(d20, k)) for k in ALL_ON) == ALL_ON


def test_init_2026_follows_nanochat():
    config = GPTConfig(sequence_len=16, vocab_size=500, n_layer=3, n_head=2, n_kv_head=2, n_embd=256, **ALL_ON)
    p = split_params(GPT(config, rngs=nnx.Rngs(0)))[1]
    s = math.sqrt(3 / 256)
    assert np.std(p["wte"]["embedding"]) == pytest.approx(0.8, rel=0.02)
    assert np.std(p["lm_head"]["kernel"]) == pytest.approx(0.001, rel=0.02)
    for kernel, bound in ((p["h"][0]["attn"]["c_q"]["kernel"], s), (p["h"][1]["mlp"]["c_fc"]["kernel"], 0.4 * s),
                          (p["value_embeds"]["2"]["embedding"], s)):
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert not np.any(p["h"][0]["attn"]["c_proj"]["kernel"]) and not np.any(p["h"][2]["mlp"]["c_proj"]["kernel"])
    for gate in (p["smear_gate"]["kernel"], p["h"][0]["attn"]["ve_gate"]["kernel"]):
        assert gate.min() >= 0 and gate.max() <= 0.02
    np.testing.assert_allclose(p["resid_lambdas"], [1.15, 1.10, 1.05], rtol=1e-6)
    np.testing.assert_allclose(p["x0_lambdas"], [0.20, 0.125, 0.05], rtol=1e-6)
    assert float(p["smear_lambda"][0]) == 0.0 and float(p["backout_lambda"][0]) == pytest.approx(0.2)


# ----- the options in jaxchat's own paths (random weights, small windows) -----


def random_model(config, plan=Runtime(), seed=0):
    graphdef, params = split_params(GPT(config, runtime=plan, rngs=nnx.Rngs(0)))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [jax.random.normal(k, a.shape) / math.sqrt(a.shape[0] if a.ndim == 2 and a.shape[0] < 512 else 4)
              for k, a in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, leaves)
    return nnx.merge(graphdef, params), params


def small_windows(config, window=3):
    """TINY's S layers with a window of `window` (its sequence_len is too short for nanochat's rule)."""
    model, params = random_model(config)
    for block in model.h:
        if block.attn.window is not None:
            block.attn.window = window
    return model, params


def test_kv_cache_prefill_and_decode_match_full_forward_with_every_option():
    model, _ = small_windows(TINY)
    idx = jax.random.randint(jax.random.key(4), (2, 12), 0, TINY.vocab_size)
    full, decode = jax.jit(model)(idx), jax.jit(model.decode)
    cache = KVCache.create(TINY, batch_size=2, max_len=16)
    logits, cache = decode(idx[:, :4], cache)
    np.testing.assert_allclose(logits, full[:, :4], atol=1e-5)
    for t in range(4, 8):  # past the window of 3
        logits, cache = decode(idx[:, t:t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)
    logits, cache = decode(idx[:, 8:12], cache)  # a second prefill chunk continues the smear too
    np.testing.assert_allclose(logits, full[:, 8:12], atol=1e-5)
    assert int(cache.pos) == 12 and cache.prev.shape == (2, TINY.n_embd)


def test_padded_prefill_and_repeat_rows_carry_the_smear_state():
    model, _ = small_windows(TINY)
    idx = jax.random.randint(jax.random.key(5), (1, 9), 0, TINY.vocab_size)
    full, decode = jax.jit(model)(idx), jax.jit(model.decode)
    padded = jnp.concatenate([idx[:, :6], jnp.zeros((1, 4), idx.dtype)], axis=1)
    _, cache = decode(padded, KVCache.create(TINY, 1, 16), 6)
    cache = cache.repeat_rows(2)
    for t in range(6, 9):
        logits, cache = decode(jnp.repeat(idx[:, t:t + 1], 2, 0), cache)
        np.testing.assert_allclose(logits[:, 0], jnp.repeat(full[:, t], 2, 0), atol=1e-5)


def test_every_option_is_causal_and_windowed():
    model, _ = small_windows(TINY, window=2)
    idx = jax.random.randint(jax.random.key(3), (1, 16), 0, TINY.vocab_size)
    changed = idx.at[0, 10].set((idx[0, 10] + 1) % TINY.vocab_size)
    a, b = jax.jit(model)(idx), jax.jit(model)(changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_blocked_and_xla_attention_agree_in_the_model_with_grads():
    model, params = small_windows(TINY)
    idx = jax.random.randint(jax.random.key(10), (2, 16), 0, TINY.vocab_size)
    results = []
    for plan in (Runtime(), dataclasses.replace(CPU, remat=True)):
        graphdef, _ = split_params(GPT(TINY, runtime=plan, rngs=nnx.Rngs(0)))
        merged = nnx.merge(graphdef, params)
        for a, b in zip(merged.h, model.h):
            a.attn.window = b.attn.window
        graphdef, _ = split_params(merged)
        results.append(jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p)(idx, idx)))(params))
    (l0, g0), (l1, g1) = results
    assert float(l0) == pytest.approx(float(l1), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), g0, g1)


def test_fused_loss_ignores_the_vocab_padding():
    model, params = random_model(TINY, CPU)
    graphdef, _ = split_params(model)
    idx = jax.random.randint(jax.random.key(9), (2, 16), 0, TINY.vocab_size)
    fused = lambda p: nnx.merge(graphdef, p)(idx, idx)  # noqa: E731
    plain = lambda p: cross_entropy(nnx.merge(graphdef, p)(idx), idx)  # noqa: E731
    (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(f))(params) for f in (fused, plain))
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)
    assert g1["lm_head"]["kernel"].shape == (32, 128)
    assert not np.any(g1["lm_head"]["kernel"][:, TINY.vocab_size:])  # padding columns get no gradient


def test_bfloat16_compute_with_every_option():
    model32, params = small_windows(TINY)
    graphdef16, _ = split_params(GPT(TINY, runtime=Runtime(compute_dtype="bfloat16"), rngs=nnx.Rngs(0)))
    model16 = nnx.merge(graphdef16, params)
    for a, b in zip(model16.h, model32.h):
        a.attn.window = b.attn.window
    idx = jax.random.randint(jax.random.key(7), (2, 16), 0, TINY.vocab_size)
    logits16, logits32 = jax.jit(model16)(idx), jax.jit(model32)(idx)
    assert logits16.dtype == jnp.float32
    assert float(jnp.abs(logits16 - logits32).max()) < 0.05 * float(jnp.abs(logits32).max())
    logits, cache = jax.jit(model16.decode)(idx[:, :5], KVCache.create(TINY, 2, 16, jnp.bfloat16))
    assert cache.prev.dtype == jnp.float32 and cache.k[0].dtype == jnp.bfloat16
    assert float(jnp.abs(logits - logits32[:, :5]).max()) < 0.05 * float(jnp.abs(logits32).max())
