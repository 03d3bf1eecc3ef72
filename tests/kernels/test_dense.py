"""jaxchat.kernels.dense against the plain matmul (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat.kernels.dense import dense, dense_dot_general


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
