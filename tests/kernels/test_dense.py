"""jaxchat.kernels.dense against the plain matmul (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat.kernels.dense import dense, dense_dot_general
from tests.kernels.hlo import dot_operand_dtypes, skip_unless_bf16_products_stay_bf16


@pytest.mark.parametrize("fan_in,fan_out", [(8, 24), (24, 8)])
def test_dense_gradient_equals_plain_matmul(fan_in, fan_out):
    """Both ways the CPU weight gradient transposes (the narrower of x and g) give xᵀ·g."""
    x = jax.random.normal(jax.random.key(1), (40, fan_in))
    kernel = jax.random.normal(jax.random.key(2), (fan_in, fan_out))
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    ours = jax.jit(jax.value_and_grad(loss(dense), argnums=(0, 1)))(x, kernel)
    plain = jax.value_and_grad(loss(jnp.dot), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(ours[0], plain[0], rtol=1e-6)
    for a, b in zip(ours[1], plain[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dot_general_takes_the_kernel_only_for_a_plain_2d_matmul():
    x, w = jnp.ones((4, 8)), jnp.ones((8, 3))
    plain = (((1,), (0,)), ((), ()))
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda x, w: dense_dot_general(x, w, plain))(x, w))
    assert "custom_vjp_call" not in str(jax.make_jaxpr(
        lambda x, w: dense_dot_general(x, w, plain, preferred_element_type=jnp.float32))(x, w))
    x3 = jnp.ones((2, 4, 8))
    out = dense_dot_general(x3, w, (((2,), (0,)), ((), ())))
    np.testing.assert_allclose(out, x3 @ w)


def test_nnx_linear_with_the_kernel_matches_the_plain_linear():
    plain = nnx.Linear(8, 5, use_bias=False, rngs=nnx.Rngs(0))
    ours = nnx.Linear(8, 5, use_bias=False, dot_general=dense_dot_general, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (6, 8))
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)


def test_bf16_gradients_are_the_bf16_roundings_of_exact_products():
    """Each gradient is its exact product (float32 accumulation of the bf16 values), rounded to bf16."""
    x = jax.random.normal(jax.random.key(1), (64, 32)).astype(jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(2), (32, 48)).astype(jnp.bfloat16)
    weights = jax.random.normal(jax.random.key(3), (64, 48)).astype(jnp.bfloat16)  # the cotangent, exactly
    loss = lambda x, w: jnp.sum(dense(x, w).astype(jnp.float32) * weights.astype(jnp.float32))  # noqa: E731
    dx, dkernel = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, kernel, weights))
    for ours, exact in ((dx, g64 @ k64.T), (dkernel, x64.T @ g64)):
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(ours, np.float64), exact, rtol=2**-8, atol=1e-6)


def test_bf16_backward_products_stay_bf16_where_xla_runs_bf16_products():
    """The transposed copies keep every product of the gradient in bf16 wherever XLA's backend keeps
    a plain bf16 product (XLA:CPU upcasts any product whose operand is transposed, e.g. on AMX)."""
    skip_unless_bf16_products_stay_bf16()
    for fan_in, fan_out in [(32, 48), (48, 32)]:  # both ways the weight gradient transposes
        x, kernel = jnp.ones((64, fan_in)), jnp.ones((fan_in, fan_out))
        loss = lambda x, w: jnp.sum(dense(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).astype(jnp.float32) ** 2)  # noqa: E731
        text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
        dtypes = dot_operand_dtypes(text)
        assert len(dtypes) == 3 and set(dtypes) == {("bf16", "bf16")}, dtypes
