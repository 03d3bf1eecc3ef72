"""jaxchat.kernels.attention against plain masked softmax attention (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat.kernels.attention import blocked_causal_attention, cached_attention, causal_attention


def masked_attention(q, k, v, scale):
    """The reference: full (T, T) scores, causal mask, softmax, GQA by repeating kv heads."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    seq = q.shape[1]
    scores = jnp.where(jnp.tril(jnp.ones((seq, seq), bool)), scores, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v.astype(jnp.float32))


@pytest.mark.parametrize("seq,block,n_kv", [(16, 4, 2), (12, 5, 4), (8, 8, 1)])
def test_blocked_causal_attention_equals_masked_attention(seq, block, n_kv):
    keys = jax.random.split(jax.random.key(seq), 3)
    q = jax.random.normal(keys[0], (2, seq, 4, 8))
    k, v = (jax.random.normal(key, (2, seq, n_kv, 8)) for key in keys[1:])
    dense = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=0.35, implementation="xla")  # noqa: E731
    blocked = lambda q, k, v: blocked_causal_attention(q, k, v, 0.35, block)  # noqa: E731
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
    dense = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=1.0, implementation="xla")  # noqa: E731
    blocked = lambda q, k, v: blocked_causal_attention(q, k, v, 1.0, 4)  # noqa: E731
    out = blocked(q, k, v)
    assert bool(jnp.isfinite(out).all())
    np.testing.assert_allclose(out, dense(q, k, v), atol=1e-5)
    q16, k16, v16 = (x.astype(jnp.bfloat16) / 40.0 for x in (q, k, v))
    grads = jax.grad(lambda *a: jnp.sum(blocked(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2))(q16, k16, v16)
    ref = jax.grad(lambda *a: jnp.sum(dense(*a) ** 2), argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q16, k16, v16)))
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
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: causal_attention(q, k, v, scale=0.3, implementation=implementation))(q, k, v))
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
