"""jaxchat.kernels.head_loss against cross-entropy of the materialised softcapped logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat.kernels.head_loss import chunk_rows, head_loss_sum
from jaxchat.model.gpt import cross_entropy

CPU_BUDGET = 16 << 20


def _plain_head_loss(h, kernel, targets):
    logits = 15.0 * jnp.tanh((h @ kernel) / 15.0)
    return cross_entropy(logits, targets, "sum")


@pytest.mark.parametrize("rows", [4, 12, 24])
def test_head_loss_sum_matches_materialised_logits(rows):
    h = jax.random.normal(jax.random.key(0), (24, 16))
    kernel = jax.random.normal(jax.random.key(1), (16, 40)) * 2.0  # large logits: the softcap matters
    targets = jax.random.randint(jax.random.key(2), (24,), 0, 40).at[3:7].set(-1)
    fused = lambda h, k: head_loss_sum(h, k, targets, rows, jnp.dtype(jnp.float32), 15.0)  # noqa: E731
    plain = lambda h, k: _plain_head_loss(h, k, targets)  # noqa: E731
    np.testing.assert_allclose(fused(h, kernel), plain(h, kernel), rtol=1e-6)
    (l1, g1), (l2, g2) = (jax.value_and_grad(f, argnums=(0, 1))(h, kernel) for f in (fused, plain))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.any(g1[0][3:7])  # ignored rows get no gradient
    # The cotangent scales the precomputed gradients (the 'mean' reduction relies on it).
    g_half = jax.grad(lambda h: 0.5 * fused(h, kernel))(h)
    np.testing.assert_allclose(g_half, 0.5 * g1[0], rtol=1e-6)


def test_chunk_rows_divides_and_fits_budget():
    assert chunk_rows(4096, 8192, CPU_BUDGET) == 512  # 16 MB of float32 logits on CPU
    assert chunk_rows(4096, 65536, CPU_BUDGET) == 64
    assert 30 % chunk_rows(30, 65536, CPU_BUDGET) == 0
    assert chunk_rows(7, 8, CPU_BUDGET) == 7  # a small problem is one chunk
    assert chunk_rows(65536, 65536, 512 << 20) == 2048  # the GPU budget
