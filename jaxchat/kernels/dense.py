"""x·W for XLA:CPU: the same product, with a weight gradient that runs on the fast matmul path.

XLA:CPU hands a matmul to its fast library (YNNPACK) only when the contracted axis is the last axis
of the left operand, so it ran the weight gradient xᵀ·g (contracting over rows) on its generic path,
at ~130 instead of ~200 GFLOP/s (d4, measured). Transposing the smaller of x and g in memory first
costs less than that saves (~4 % of a d4 train step, measured); the optimization barriers keep XLA
from folding the transposes back into the matmuls. On a GPU the plain product is already best.

In bfloat16 (CPUs with bf16 matmul units, e.g. AMX: ~3-4x the float32 speed) XLA:CPU keeps a
product in bf16 only if it asks for float32 results and both operands are row-major, untransposed
(YNNPACK's condition); any other bf16 product is upcast to float32 before it runs. A transposed
array stays "column-major" through barriers and converts until layout assignment, so the
transposed copies in bf16 go through a reshape, which starts a fresh row-major layout
(:func:`transposed_copy`). Results are rounded to bf16 here, as XLA would round them anyway.
In float32 nothing changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def transposed_copy(x: jax.Array) -> jax.Array:
    """xᵀ (2-D) in memory, row-major: a matmul operand XLA:CPU's fast path takes in any dtype."""
    barrier = jax.lax.optimization_barrier
    if x.dtype == jnp.float32:
        return barrier(x.T)
    return barrier(x.T.reshape(-1)).reshape(x.shape[1], x.shape[0])


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b in a's dtype; narrower than float32, through float32 results (the fast path)."""
    if a.dtype == jnp.float32:
        return jnp.dot(a, b)
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (N, in) @ kernel (in, out), with the transposed-copy weight gradient."""
    return matmul(x, kernel)


def _dense_fwd(x, kernel):
    return matmul(x, kernel), (x, kernel)


def _dense_bwd(residuals, g):
    x, kernel = residuals
    if g.dtype == jnp.float32:
        dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))  # g·kernelᵀ: a fast-path matmul in f32
    else:
        dx = matmul(g, transposed_copy(kernel))
    if x.shape[1] <= g.shape[1]:
        dkernel = matmul(transposed_copy(x), g)
    else:
        dkernel = jax.lax.optimization_barrier(matmul(transposed_copy(g), x)).T
    return dx, dkernel


dense.defvjp(_dense_fwd, _dense_bwd)

_PLAIN_MATMUL = (((1,), (0,)), ((), ()))


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """A ``jax.lax.dot_general`` for ``nnx.Linear(dot_general=...)``: a plain 2-D x·kernel goes
    through :func:`dense`; anything else (batched, other precision or output type) is left as it is."""
    if (lhs.ndim == 2 and dimension_numbers == _PLAIN_MATMUL and precision is None
            and preferred_element_type is None and out_sharding is None):
        return dense(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, out_sharding=out_sharding)
