"""jaxchat.kernels.head_loss against cross-entropy of the materialised softcapped logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat.kernels.head_loss import chunk_rows, head_loss_sum
from jaxchat.model.gpt import cross_entropy
from tests.kernels.hlo import dot_operand_dtypes, skip_unless_bf16_products_stay_bf16

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


def test_bf16_transposed_copies_give_the_same_loss_and_gradients_in_bf16_products():
    """The CPU runtime's bf16 variant: the same values as without the copies, and (where the backend
    runs plain bf16 products in bf16 at all) no product of the gradients upcast to float32."""
    h = jax.random.normal(jax.random.key(0), (64, 32))
    kernel = jax.random.normal(jax.random.key(1), (32, 96))
    targets = jax.random.randint(jax.random.key(2), (64,), 0, 96).at[5:9].set(-1)
    bf16 = jnp.dtype(jnp.bfloat16)
    fused = lambda copies: lambda h, k: head_loss_sum(h, k, targets, 16, bf16, 15.0, copies)  # noqa: E731
    (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(fused(c), argnums=(0, 1)))(h, kernel) for c in (True, False))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    skip_unless_bf16_products_stay_bf16()
    text = jax.jit(jax.grad(fused(True), argnums=(0, 1))).lower(h, kernel).compile().as_text()
    assert set(dot_operand_dtypes(text)) == {("bf16", "bf16")}
