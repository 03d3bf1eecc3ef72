"""nanochat's Muon (docs/DESIGN.md §4) as an optax ``GradientTransformation``.

Not ``optax.contrib.muon``: that one bias-corrects the momentum, normalises with eps 1e-8 in the
param dtype and routes every 2-D leaf (embeddings too) to Muon itself; step 2 already differs by
~9 % from nanochat's rule. This is nanochat's ``muon.Muon.step`` rule:

    buf ← m·buf + (1−m)·g                      (torch: buf.lerp_(g, 1−m))
    g'  ← (1−m)·g + m·buf   if nesterov else buf (torch: g.lerp_(buf, m))
    update = −lr · √max(1, fan_out/fan_in) · NS(g')

Layout: a Flax kernel is (in, out) = (fan_in, fan_out), the transpose of torch's (out, in) weight,
so nanochat's ``p.size(-2)/p.size(-1)`` (= out/in) is ``shape[-1]/shape[-2]`` here (c_fc (d, 4d) → 2).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jaxchat import sharding

# Quintic Newton–Schulz coefficients (Keller Jordan / modded-nanogpt, as in nanochat).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7  # nanochat: X / (‖X‖_F + 1e-7)

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


class MuonState(NamedTuple):
    """Optimizer state: the step count (schedules read it) and a float32 momentum buffer per leaf."""

    count: jax.Array  # int32 scalar
    momentum_buffer: Any  # float32 pytree shaped like the params


def _einsum(spec: str, x: jax.Array, y: jax.Array, dtype: Any) -> jax.Array:
    """``einsum(spec, x, y)`` in ``dtype`` the way torch computes a matmul: products accumulated in
    float32, result rounded once to ``dtype``.

    For 16-bit inputs we ask XLA for a float32 result and round it ourselves: the same numbers a
    16-bit-output matmul gives, but XLA:CPU then uses the native bf16 dot-product instructions
    (AVX512-BF16: ≈ 2× the float32 matmul rate, measured), whereas a bf16-output dot is emulated at
    ≈ ½ the float32 rate. The Gram matrix X·Xᵀ is written as one dot_general contracting the last
    axes: spelled ``X @ swapaxes(X)``, XLA:CPU turned the transpose into a float32 dot (≈ ½ the
    bf16 rate, measured). float32 matmuls on GPU default to TF32, so float32 asks for full precision.
    """
    if jnp.dtype(dtype).itemsize < 4:
        return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32).astype(dtype)
    return jnp.einsum(spec, x, y, precision=jax.lax.Precision.HIGHEST)


def newton_schulz(G: jax.Array, steps: int = 5, dtype: Any = jnp.bfloat16) -> jax.Array:
    """Approximately orthogonalise ``G`` (nanochat ``zeropower_via_newtonschulz5``), in ``dtype``.

    Works on the last two axes (leading axes are a batch). Transposes when rows > cols so that
    A = X·Xᵀ is the small Gram matrix, divides by (‖X‖_F + 1e-7) so the spectral norm is ≤ 1,
    then runs ``steps`` quintic iterations X ← a·X + (b·A + c·A·A)·X. Returns an array of ``dtype``.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs an array with ndim >= 2, got shape {G.shape}")
    a, b, c = NS_COEFFS
    X = G.astype(dtype)
    transposed = G.shape[-2] > G.shape[-1]
    if transposed:
        X = jnp.swapaxes(X, -1, -2)
    # torch's bf16 norm accumulates in float32 and rounds the result to bf16; do the same.
    norm = jnp.sqrt(jnp.sum(jnp.square(X.astype(jnp.float32)), axis=(-2, -1), keepdims=True))
    X = X / (norm.astype(dtype) + NS_EPS)
    if jnp.dtype(dtype).itemsize < 4:
        # XLA:CPU runs 16-bit × 16-bit → float32 dots only when both operands are row-major; it
        # would otherwise fold the transposes above (and the caller's) into the first dot and
        # then fail at run time ("Unsupported element type for DotThunk"). The barrier makes X a
        # materialised row-major array (one small copy) that the dots below read as it is.
        X = jax.lax.optimization_barrier(X)
    mm = functools.partial(_einsum, "...ij,...jk->...ik", dtype=dtype)
    gram = functools.partial(_einsum, "...ij,...kj->...ik", dtype=dtype)
    # A Python float times a bf16 array is a bf16 multiply in JAX (weak typing), which would round
    # the coefficients themselves (3.4445 → 3.4375) and double the error vs float64. torch multiplies
    # by the scalar in float32 and rounds the product; do the same.
    compute = jnp.promote_types(dtype, jnp.float32)
    scale = lambda s, x: (s * x.astype(compute)).astype(dtype)  # noqa: E731
    for _ in range(steps):
        A = gram(X, X)
        B = scale(b, A) + mm(scale(c, A), A)  # torch evaluates `c * A @ A` as (c·A)@A
        X = scale(a, X) + mm(B, X)
    if transposed:
        X = jnp.swapaxes(X, -1, -2)
    return X


def orthogonalise_batched(matrices: list[jax.Array], steps: int = 5, dtype: Any = jnp.bfloat16) -> list[jax.Array]:
    """``[newton_schulz(x, steps, dtype) for x in matrices]``, computed in as few batched calls as possible.

    A tall matrix is handed to NS transposed (NS iterates on the wide orientation anyway, so the
    arithmetic is the same) and every matrix of the same wide shape and dtype goes into one stacked
    NS call: a d4 model's 24 block matrices become two batched iterations instead of 24 small ones,
    which keeps both CPU cores busy with larger matmuls (and launches fewer kernels on GPU).
    """
    wide, tall, groups = [], [], {}
    for i, x in enumerate(matrices):
        if x.ndim < 2:
            raise ValueError(f"newton_schulz needs an array with ndim >= 2, got shape {x.shape}")
        tall.append(x.shape[-2] > x.shape[-1])
        w = jnp.swapaxes(x, -1, -2) if tall[i] else x
        wide.append(w)
        groups.setdefault((w.shape[-2:], w.dtype), []).append(i)
    out: list[Any] = [None] * len(matrices)
    for (shape, _), members in groups.items():
        stacked = sharding.constrain_stack(jnp.concatenate([wide[i].reshape(-1, *shape) for i in members], axis=0))
        ortho = newton_schulz(stacked, steps, dtype)
        offset = 0
        for i in members:
            n = math.prod(wide[i].shape[:-2])
            o = ortho[offset:offset + n].reshape(wide[i].shape)
            offset += n
            out[i] = jnp.swapaxes(o, -1, -2) if tall[i] else o
    return out


def _value(x: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """A float hyperparameter, or a schedule evaluated at the step count (optax convention)."""
    return jnp.asarray(x(count) if callable(x) else x, jnp.float32)


def _check_leaf(x: jax.Array) -> None:
    if x.ndim < 2:
        raise ValueError(f"muon only handles matrices (ndim >= 2, leading dims = batch); got a leaf of "
                         f"shape {x.shape}. Route vectors/scalars to another optimizer.")


def muon(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.95, ns_steps: int = 5,
         nesterov: bool = True, ns_dtype: Any = jnp.bfloat16) -> optax.GradientTransformation:
    """nanochat's Muon for Flax-layout kernels ((..., fan_in, fan_out)); returns full updates.

    ``learning_rate`` and ``momentum`` are floats or schedules of the step count (jit-traceable), so
    the returned updates already include −lr (apply with ``optax.apply_updates``). The momentum
    buffer is float32 whatever the param dtype; the Newton–Schulz iteration runs in ``ns_dtype``
    (bfloat16 like nanochat; float32 for exact tests); updates come back in the param (grad) dtype.
    Leaves must have ndim ≥ 2 (leading dims are treated as a batch of matrices).
    """

    def init_fn(params: Any) -> MuonState:
        jax.tree.map(_check_leaf, params)
        buffer = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        return MuonState(count=jnp.zeros((), jnp.int32), momentum_buffer=buffer)

    def update_fn(updates: Any, state: MuonState, params: Any = None) -> tuple[Any, MuonState]:
        del params
        lr = _value(learning_rate, state.count)
        m = _value(momentum, state.count)

        grads, treedef = jax.tree.flatten(updates)
        buffers = treedef.flatten_up_to(state.momentum_buffer)
        new_buffers, directions = [], []
        for g, buf in zip(grads, buffers):
            _check_leaf(g)
            g32 = g.astype(jnp.float32)
            buf = m * buf + (1.0 - m) * g32
            new_buffers.append(buf)
            directions.append((1.0 - m) * g32 + m * buf if nesterov else buf)
        # Orthogonalisation commutes with transposition (NS(Xᵀ) = NS(X)ᵀ), so the Flax kernel could
        # go to NS as is: its rows > cols rule then iterates the very matrix nanochat iterates on the
        # torch weight, except for square ones (the transpose: same maths, other rounding). Handing
        # NS the torch-layout (out, in) view makes the arithmetic nanochat's for every shape; XLA
        # folds the transposes into the matmuls.
        torch_layout = [jnp.swapaxes(d, -1, -2) for d in directions]
        orthos = orthogonalise_batched(torch_layout, ns_steps, ns_dtype)
        new_updates = []
        for g, ortho in zip(grads, orthos):
            fan_in, fan_out = g.shape[-2], g.shape[-1]
            scale = max(1.0, fan_out / fan_in) ** 0.5
            update = -lr * scale * jnp.swapaxes(ortho, -1, -2).astype(jnp.float32)
            new_updates.append(update.astype(g.dtype))
        new_updates = treedef.unflatten(new_updates)
        new_buffer = treedef.unflatten(new_buffers)
        return new_updates, MuonState(count=optax.safe_increment(state.count), momentum_buffer=new_buffer)

    return optax.GradientTransformation(init_fn, update_fn)
