"""jaxchat.kernels.attention against plain masked softmax attention (values and gradients)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat.kernels import attention
from jaxchat.kernels.attention import blocked_causal_attention

# Jitted: run op by op, the blocked kernel compiles each block's slices on its own (minutes of the suite).
causal_attention = jax.jit(attention.causal_attention, static_argnames=("scale", "implementation", "window"))
cached_attention = jax.jit(attention.cached_attention, static_argnames=("scale", "window"))


@functools.partial(jax.jit, static_argnames=("scale", "window"))
def masked_attention(q, k, v, scale, window=None):
    """The reference: full (T, T) scores, causal mask (query i sees keys i − window … i with a
    window: flash-attn's window_size=(window, 0)), softmax, GQA by repeating kv heads."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    seq = q.shape[1]
    mask = jnp.tril(jnp.ones((seq, seq), bool))
    if window is not None:
        mask &= jnp.triu(jnp.ones((seq, seq), bool), -window)
    scores = jnp.where(mask, scores, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v.astype(jnp.float32))


@pytest.mark.parametrize("seq,block,n_kv", [(16, 4, 2), (12, 5, 4), (8, 8, 1)])
def test_blocked_causal_attention_equals_masked_attention(seq, block, n_kv):
    keys = jax.random.split(jax.random.key(seq), 3)
    q = jax.random.normal(keys[0], (2, seq, 4, 8))
    k, v = (jax.random.normal(key, (2, seq, n_kv, 8)) for key in keys[1:])
    dense = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=0.35, implementation="xla"))
    blocked = jax.jit(lambda q, k, v: blocked_causal_attention(q, k, v, 0.35, block))
    np.testing.assert_allclose(blocked(q, k, v), dense(q, k, v), atol=2e-6)
    np.testing.assert_allclose(blocked(q, k, v), masked_attention(q, k, v, 0.35), atol=2e-6)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    grads = [jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(q, k, v) for f in (blocked, dense)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_blocked_attention_is_stable_for_large_scores_and_keeps_bfloat16():
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(key, (2, 16, 4, 8)) for key in keys)
    q = 40.0 * q  # scores in the hundreds: exp overflows without the row max
    dense = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=1.0, implementation="xla"))
    blocked = jax.jit(lambda q, k, v: blocked_causal_attention(q, k, v, 1.0, 4))
    out = blocked(q, k, v)
    assert bool(jnp.isfinite(out).all())
    np.testing.assert_allclose(out, dense(q, k, v), atol=1e-5)
    q16, k16, v16 = (x.astype(jnp.bfloat16) / 40.0 for x in (q, k, v))
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(blocked(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2)))(q16, k16, v16)
    ref = jax.jit(jax.grad(lambda *a: jnp.sum(dense(*a) ** 2), argnums=(0, 1, 2)))(*(x.astype(jnp.float32) for x in (q16, k16, v16)))
    for g, r in zip(grads, ref):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(jnp.float32), r, atol=0.05 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("implementation", ["blocked", "xla"])
def test_dispatch_runs_the_named_implementation(implementation):
    keys = jax.random.split(jax.random.key(4), 3)
    q = jax.random.normal(keys[0], (1, 8, 4, 8))
    k, v = (jax.random.normal(key, (1, 8, 2, 8)) for key in keys[1:])
    out = causal_attention(q, k, v, scale=0.3, implementation=implementation)
    np.testing.assert_allclose(out, masked_attention(q, k, v, 0.3), atol=2e-6)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: attention.causal_attention(q, k, v, scale=0.3, implementation=implementation))(q, k, v))
    assert ("custom_vjp_call" in jaxpr) == (implementation == "blocked")


def test_dispatch_refuses_an_unknown_implementation():
    x = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="flash"):
        causal_attention(x, x, x, scale=1.0, implementation="flash")


def test_cached_attention_equals_causal_attention_on_the_written_prefix():
    """New queries at positions pos… see the cache up to themselves; garbage past pos+T is masked."""
    keys = jax.random.split(jax.random.key(5), 3)
    seq, pos, length = 10, 6, 16
    q = jax.random.normal(keys[0], (2, seq, 4, 8))
    k, v = (jax.random.normal(key, (2, seq, 2, 8)) for key in keys[1:])
    garbage = jnp.full((2, length - seq, 2, 8), 1e3)
    k_cache, v_cache = (jnp.concatenate([x, garbage], axis=1) for x in (k, v))
    out = cached_attention(q[:, pos:], k_cache, v_cache, jnp.int32(pos), scale=0.3)
    np.testing.assert_allclose(out, masked_attention(q, k, v, 0.3)[:, pos:], atol=2e-6)


# ----- sliding windows (nanochat 92d63d4): query i sees keys i − window … i -----


def _qkv(seed, seq, n_kv=2, n_head=4, batch=2):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, seq, n_head, 8))
    k, v = (jax.random.normal(key, (batch, seq, n_kv, 8)) for key in keys[1:])
    return q, k, v


def test_window_reference_mask_is_flash_attention_semantics():
    """window 2 at T 5: query i gives weight to keys max(0, i − 2) … i exactly."""
    q, k, _ = _qkv(0, 5, n_kv=4)
    one_hot = jnp.broadcast_to(jnp.eye(5)[None, :, None, :], (2, 5, 4, 5))  # v of key j = e_j
    seen = np.asarray(masked_attention(q, k, one_hot, 1.0, window=2)[0, :, 0] > 0)
    np.testing.assert_array_equal(seen, [[i - 2 <= j <= i for j in range(5)] for i in range(5)])


@pytest.mark.parametrize("seq,block,window,n_kv", [(16, 4, 5, 2), (16, 4, 4, 1), (12, 5, 3, 4), (16, 4, 0, 2),
                                                   (16, 4, 15, 2), (16, 16, 6, 2), (20, 4, 8, 2)])
def test_blocked_window_attention_equals_masked_attention_with_grads(seq, block, window, n_kv):
    q, k, v = _qkv(seq + window, seq, n_kv)
    reference = lambda q, k, v: masked_attention(q, k, v, 0.35, window)  # noqa: E731
    blocked = jax.jit(lambda q, k, v: blocked_causal_attention(q, k, v, 0.35, block, window=window))
    np.testing.assert_allclose(blocked(q, k, v), reference(q, k, v), atol=2e-6)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    grads = [jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(q, k, v) for f in (blocked, reference)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_blocked_window_skips_key_blocks_outside_the_window():
    """T 64, blocks of 16, window 16: each query block's scores span at most 32 keys (64 without)."""
    q, k, v = _qkv(1, 64)
    widths = lambda window: {int(w) for w in re.findall(r"f32\[2,2,2,16,(\d+)\]", str(jax.make_jaxpr(  # noqa: E731
        lambda q, k, v: blocked_causal_attention(q, k, v, 0.3, 16, window=window))(q, k, v)))}
    assert max(widths(16)) == 32 and max(widths(None)) == 64


@pytest.mark.parametrize("implementation", ["blocked", "xla"])
@pytest.mark.parametrize("window", [None, 3, 7, 100])
def test_dispatch_passes_the_window(implementation, window):
    q, k, v = _qkv(2, 16)
    out = causal_attention(q, k, v, scale=0.3, implementation=implementation, window=window)
    np.testing.assert_allclose(out, masked_attention(q, k, v, 0.3, window), atol=2e-6)


def test_cudnn_gets_flash_attention_window(monkeypatch):
    """cuDNN needs a GPU: check the call instead. jax.nn.dot_product_attention's local_window_size
    (left, right) keeps keys i − left … i + right (cuDNN: sliding_window_length = left + 1), so
    (window, 0) is flash-attn's window_size=(window, 0); a window that holds the whole sequence is
    passed as plain causal attention."""
    calls = []
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw) or a[0])
    q, k, v = _qkv(3, 16)
    for window in (5, None, 15):
        attention.causal_attention(q, k, v, scale=0.3, implementation="cudnn", window=window)
    assert [c["local_window_size"] for c in calls] == [(5, 0), None, None]
    assert all(c["implementation"] == "cudnn" and c["is_causal"] for c in calls)


@pytest.mark.parametrize("window", [2, 5])
def test_cached_attention_with_window(window):
    q, k, v = _qkv(4, 10)
    pos, length = 6, 16
    garbage = jnp.full((2, length - 10, 2, 8), 1e3)
    k_cache, v_cache = (jnp.concatenate([x, garbage], axis=1) for x in (k, v))
    out = cached_attention(q[:, pos:], k_cache, v_cache, jnp.int32(pos), scale=0.3, window=window)
    np.testing.assert_allclose(out, masked_attention(q, k, v, 0.3, window)[:, pos:], atol=2e-6)
    one = cached_attention(q[:, 9:], k_cache, v_cache, jnp.int32(9), scale=0.3, window=window)  # a decode step
    np.testing.assert_allclose(one, masked_attention(q, k, v, 0.3, window)[:, 9:], atol=2e-6)
