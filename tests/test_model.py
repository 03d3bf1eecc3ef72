"""The GPT against docs/DESIGN.md §3: sizes, names, init, an independent NumPy forward, KV-cache decoding."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat import GPT, GPTConfig, KVCache, estimate_flops, num_params, runtime
from jaxchat.config import ModelSection
from jaxchat.model import cross_entropy, split_params
from jaxchat.runtime import Runtime

TINY = GPTConfig(sequence_len=16, vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
CPU = runtime.resolve(ModelSection(), "cpu")  # the fast CPU program: blocked attention, dense kernel, 16 MB chunks


# Jitted: run eagerly, each of the model's ops compiles on its own for every new shape (~280 compiles,
# ~20 s on 2 cores, for a prefill and three decode steps); the engine runs these jitted too.
forward = nnx.jit(GPT.__call__)
decode = nnx.jit(GPT.decode)


def params_of(model):
    return split_params(model)[1]


def test_d20_size_matches_spec():
    config = GPTConfig.from_depth(20)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_kv_head, config.head_dim) == (20, 1280, 10, 10, 128)
    assert num_params(config) == 560_988_160
    assert estimate_flops(config) == 6 * (560_988_160 - 65536 * 1280) + 12 * 20 * 10 * 128 * 2048
    assert abs(estimate_flops(config) - 3.49e9) / 3.49e9 < 0.001


def test_from_depth_rounds_heads_up():
    assert GPTConfig.from_depth(3).n_head == 2  # n_embd 192 → ceil(1.5)
    assert GPTConfig.from_depth(26).n_head == 13


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_layer=1, n_head=4, n_kv_head=3, n_embd=64)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(n_layer=0)


def test_param_tree_names_shapes_and_count():
    params = params_of(GPT(TINY, rngs=nnx.Rngs(0)))
    d, v, kv = TINY.n_embd, TINY.vocab_size, TINY.n_kv_head * TINY.head_dim
    expected = {"wte": {"embedding": (v, d)}, "lm_head": {"kernel": (d, v)},
                "h": {i: {"attn": {"c_q": {"kernel": (d, d)}, "c_k": {"kernel": (d, kv)},
                                   "c_v": {"kernel": (d, kv)}, "c_proj": {"kernel": (d, d)}},
                          "mlp": {"c_fc": {"kernel": (d, 4 * d)}, "c_proj": {"kernel": (4 * d, d)}}}
                      for i in range(TINY.n_layer)}}
    assert jax.tree.map(lambda a: a.shape, params) == expected
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    assert sum(a.size for a in jax.tree.leaves(params)) == num_params(TINY)


def test_init_follows_nanochat():
    config = GPTConfig(sequence_len=16, vocab_size=512, n_layer=1, n_head=2, n_kv_head=2, n_embd=256)
    p = params_of(GPT(config, rngs=nnx.Rngs(0)))
    assert np.std(p["wte"]["embedding"]) == pytest.approx(1.0, rel=0.02)
    for zero in (p["lm_head"]["kernel"], p["h"][0]["attn"]["c_proj"]["kernel"], p["h"][0]["mlp"]["c_proj"]["kernel"]):
        assert not np.any(zero)
    assert np.std(p["h"][0]["attn"]["c_q"]["kernel"]) == pytest.approx(1 / math.sqrt(256), rel=0.02)
    # c_fc: fan_out > fan_in, so min(1, ·) keeps σ = 1/√fan_in.
    assert np.std(p["h"][0]["mlp"]["c_fc"]["kernel"]) == pytest.approx(1 / math.sqrt(256), rel=0.02)


def test_loss_at_init_is_log_vocab():
    model = GPT(TINY, rngs=nnx.Rngs(0))
    idx = jax.random.randint(jax.random.key(1), (2, 16), 0, TINY.vocab_size)
    assert float(forward(model, idx, idx)) == pytest.approx(math.log(TINY.vocab_size), rel=1e-6)


def test_cross_entropy_ignores_minus_one():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[1, -1, 4], [-1, -1, 0]])
    per_token = -jax.nn.log_softmax(logits)
    picked = [per_token[0, 0, 1], per_token[0, 2, 4], per_token[1, 2, 0]]
    assert float(cross_entropy(logits, targets, "sum")) == pytest.approx(float(sum(picked)), rel=1e-6)
    assert float(cross_entropy(logits, targets)) == pytest.approx(float(sum(picked)) / 3, rel=1e-6)
    assert float(cross_entropy(logits, jnp.full((2, 3), -1))) == 0.0


# ----- an independent float64 NumPy forward of docs/DESIGN.md §3, in torch layout (weights (out, in)) -----

def _np_rms(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.finfo(np.float32).eps)


def _np_rotary(x, positions):
    hd = x.shape[-1]
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)
    freqs = np.outer(positions, inv_freq)[None, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * np.cos(freqs) + x2 * np.sin(freqs), -x1 * np.sin(freqs) + x2 * np.cos(freqs)], -1)


def numpy_gpt_logits(sd, config, idx):
    """sd: nanochat-style state dict of float64 arrays (torch layout)."""
    B, T = idx.shape
    H, K, hd = config.n_head, config.n_kv_head, config.head_dim
    x = _np_rms(sd["transformer.wte.weight"][idx])
    for i in range(config.n_layer):
        w = lambda name: sd[f"transformer.h.{i}.{name}.weight"]  # noqa: E731
        h = _np_rms(x)
        q = (h @ w("attn.c_q").T).reshape(B, T, H, hd)
        k = (h @ w("attn.c_k").T).reshape(B, T, K, hd)
        v = (h @ w("attn.c_v").T).reshape(B, T, K, hd)
        q, k = _np_rms(_np_rotary(q, np.arange(T))), _np_rms(_np_rotary(k, np.arange(T)))
        k, v = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
        att = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
        att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("bhts,bshd->bthd", att, v).reshape(B, T, H * hd)
        x = x + y @ w("attn.c_proj").T
        h = _np_rms(x)
        x = x + (np.maximum(h @ w("mlp.c_fc").T, 0) ** 2) @ w("mlp.c_proj").T
    logits = _np_rms(x) @ sd["lm_head.weight"].T
    return 15 * np.tanh(logits / 15)


def random_weights(model, seed=0):
    """Replace every parameter (zero-initialised ones too) with random values of a sensible scale."""
    graphdef, params = split_params(model)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [jax.random.normal(k, a.shape) / math.sqrt(a.shape[0] if a.shape[0] < 512 else 1)
              for k, a in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, leaves)
    return nnx.merge(graphdef, params), params


def to_torch_state_dict(params):
    """Our tree → nanochat's state_dict names (kernels transposed back to (out, in))."""
    sd = {"transformer.wte.weight": params["wte"]["embedding"], "lm_head.weight": params["lm_head"]["kernel"].T}
    for i, layer in params["h"].items():
        for group, mods in layer.items():
            for name, leaf in mods.items():
                sd[f"transformer.h.{i}.{group}.{name}.weight"] = leaf["kernel"].T
    return {k: np.asarray(v, np.float64) for k, v in sd.items()}


@pytest.mark.parametrize("plan", [Runtime(), CPU], ids=["reference", "cpu"])
def test_forward_matches_numpy_reference(plan):
    model, params = random_weights(GPT(TINY, runtime=plan, rngs=nnx.Rngs(0)))
    idx = np.asarray(jax.random.randint(jax.random.key(2), (2, 16), 0, TINY.vocab_size))
    ours = np.asarray(model(jnp.asarray(idx)))
    reference = numpy_gpt_logits(to_torch_state_dict(params), TINY, idx)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=2e-4)
    assert np.abs(reference).max() > 1.0  # the comparison is not between near-zero tensors


@pytest.mark.parametrize("plan", [Runtime(), CPU], ids=["reference", "cpu"])
def test_causal(plan):
    model, _ = random_weights(GPT(TINY, runtime=plan, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(3), (1, 16), 0, TINY.vocab_size)
    changed = idx.at[0, 10].set((idx[0, 10] + 1) % TINY.vocab_size)
    a, b = forward(model, idx), forward(model, changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert not np.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("plan", [Runtime(), CPU], ids=["reference", "cpu"])
def test_kv_cache_prefill_and_decode_match_full_forward(plan):
    model, _ = random_weights(GPT(TINY, runtime=plan, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(4), (2, 12), 0, TINY.vocab_size)
    full = forward(model, idx)
    cache = KVCache.create(TINY, batch_size=2, max_len=16)
    logits, cache = decode(model, idx[:, :5], cache)  # prefill 5
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    for t in range(5, 12):  # then one token at a time
        logits, cache = decode(model, idx[:, t:t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)
    assert int(cache.pos) == 12


def test_padded_prefill_then_decode():
    """A right-padded prompt with its real length: the padding is masked and later overwritten."""
    model, _ = random_weights(GPT(TINY, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(5), (1, 9), 0, TINY.vocab_size)
    full = forward(model, idx)
    padded = jnp.concatenate([idx[:, :6], jnp.zeros((1, 4), idx.dtype)], axis=1)  # 6 real + 4 pad
    logits, cache = decode(model, padded, KVCache.create(TINY, 1, 16), 6)
    np.testing.assert_allclose(logits[:, :6], full[:, :6], atol=1e-5)
    for t in range(6, 9):
        logits, cache = decode(model, idx[:, t:t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_repeat_rows_copies_the_prompt_cache():
    model, _ = random_weights(GPT(TINY, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(6), (1, 4), 0, TINY.vocab_size)
    _, cache = decode(model, idx, KVCache.create(TINY, 1, 8))
    wide = cache.repeat_rows(3)
    assert wide.k[0].shape[0] == 3 and int(wide.pos) == 4
    nxt = jnp.array([[1], [2], [3]])
    logits, _ = decode(model, nxt, wide)
    for row in range(3):
        single, _ = decode(model, nxt[row:row + 1], cache)
        np.testing.assert_allclose(logits[row], single[0], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model32, params = random_weights(GPT(TINY, rngs=nnx.Rngs(0)))
    graphdef16, _ = split_params(GPT(TINY, runtime=Runtime(compute_dtype="bfloat16"), rngs=nnx.Rngs(0)))
    model16 = nnx.merge(graphdef16, params)
    idx = jax.random.randint(jax.random.key(7), (2, 16), 0, TINY.vocab_size)
    logits16, logits32 = model16(idx), model32(idx)
    assert logits16.dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params_of(model16)))
    # bf16 has ~3 significant digits; the logits must still agree to within a few percent of scale.
    assert float(jnp.abs(logits16 - logits32).max()) < 0.05 * float(jnp.abs(logits32).max())


def test_remat_gives_identical_loss_and_grads():
    _, params = random_weights(GPT(TINY, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(8), (2, 16), 0, TINY.vocab_size)

    def loss_grad(remat):
        graphdef, _ = split_params(GPT(TINY, runtime=dataclasses.replace(CPU, remat=remat), rngs=nnx.Rngs(0)))
        f = lambda p: nnx.merge(graphdef, p)(idx, idx)  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0), (l1, g1) = loss_grad(False), loss_grad(True)
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)


# ----- the model under each runtime plan (the kernels' own tests are in tests/kernels/) -----


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("plan", [Runtime(), CPU], ids=["reference", "cpu"])
def test_model_loss_and_grads_equal_the_logits_path(reduction, plan):
    _, params = random_weights(GPT(TINY, rngs=nnx.Rngs(0)))
    graphdef, _ = split_params(GPT(TINY, runtime=plan, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(9), (2, 16), 0, TINY.vocab_size)
    targets = jnp.roll(idx, -1, axis=1).at[:, -3:].set(-1)
    fused = lambda p: nnx.merge(graphdef, p)(idx, targets, reduction=reduction)  # noqa: E731
    plain = lambda p: cross_entropy(nnx.merge(graphdef, p)(idx), targets, reduction)  # noqa: E731
    (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(f))(params) for f in (fused, plain))
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    # float32 sums in another order: an entry's error scales with its summands, not its value, so the
    # absolute tolerance follows each gradient's largest entry (on an Intel CPU an entry of 8.5e-4 was
    # off by 1.1e-6, while no entry is off by more than 7e-7 of its gradient's largest).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max())), g1, g2)
    assert float(fused(params)) == pytest.approx(float(l2), rel=1e-6)  # the undifferentiated path too


def test_the_runtime_picks_the_kernels():
    """The CPU plan's block matrices go through the dense kernel, its attention through the blocked
    one; the reference plan's through neither; lm_head never (it wants float32 outputs)."""
    x = jnp.ones((4, TINY.n_embd))
    for plan, custom in ((CPU, True), (Runtime(), False)):
        model = GPT(TINY, runtime=plan, rngs=nnx.Rngs(0))
        assert ("custom_vjp_call" in str(jax.make_jaxpr(lambda x: model.h[0].mlp.c_fc(x))(x))) is custom
        assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda x: model.lm_head(x))(x))
        assert model.h[0].attn.implementation == ("blocked" if custom else "xla")


def test_attention_implementations_agree_in_the_model():
    _, params = random_weights(GPT(TINY, rngs=nnx.Rngs(0)))
    idx = jax.random.randint(jax.random.key(10), (2, 16), 0, TINY.vocab_size)
    outs = [nnx.merge(split_params(GPT(TINY, runtime=Runtime(attention=impl), rngs=nnx.Rngs(0)))[0], params)(idx)
            for impl in ("blocked", "xla")]
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-5)


def test_logits_at_chosen_positions_from_the_hidden_stream():
    """Evaluation computes lm_head only where it needs logits: same numbers as the full forward."""
    model = GPT(TINY, rngs=nnx.Rngs(7))
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(8), a.shape), params_of(model))
    graphdef, _ = split_params(model)
    model = nnx.merge(graphdef, params)
    idx = jax.random.randint(jax.random.key(9), (3, 10), 0, TINY.vocab_size)
    positions = jnp.array([9, 0, 4])
    hidden = nnx.jit(GPT.hidden)(model, idx)
    assert hidden.shape == (3, 10, TINY.n_embd)
    picked = nnx.jit(GPT.logits)(model, hidden[jnp.arange(3), positions])
    np.testing.assert_allclose(picked, forward(model, idx)[jnp.arange(3), positions], rtol=1e-5, atol=1e-6)


def test_bf16_rotary_is_the_float32_rotation_rounded_once():
    """In bf16 the rotation runs in float32 on the float32 tables and rounds once (DESIGN §13, entry 20)."""
    from jaxchat.model.gpt import apply_rotary, rotary_cos_sin

    x = jax.random.normal(jax.random.key(0), (2, 16, 3, 8)).astype(jnp.bfloat16)
    cos, sin = rotary_cos_sin(jnp.arange(100, 116), 8)
    ours = jax.jit(apply_rotary)(x, cos, sin)
    assert ours.dtype == jnp.bfloat16
    x64, c64, s64 = np.asarray(x, np.float64), np.asarray(cos, np.float64)[None, :, None], np.asarray(sin, np.float64)[None, :, None]
    x1, x2 = x64[..., :4], x64[..., 4:]
    exact = np.concatenate([x1 * c64 + x2 * s64, x2 * c64 - x1 * s64], axis=-1)
    np.testing.assert_array_equal(np.asarray(ours), exact.astype(jnp.bfloat16))  # float32's error is far below a bf16 ulp
    float32 = jax.jit(apply_rotary)(x.astype(jnp.float32), cos, sin)
    assert float32.dtype == jnp.float32
    np.testing.assert_allclose(float32, exact, rtol=1e-6, atol=1e-6)
