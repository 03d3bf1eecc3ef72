"""nanochat's current Muon (commit 92d63d4, ``nanochat/optim.py: muon_step_fused``) as an optax transformation.

The seed Muon (``jaxchat/optim/muon.py``, Newton–Schulz) stays as it is; this is the newer rule that
nanochat's ``MuonAdamW`` applies to every matrix of the transformer blocks. Per matrix, in torch
layout W (rows = fan_out, cols = fan_in), with momentum m, second-moment decay β₂, learning rate lr
and weight decay wd:

1. Nesterov momentum: buf ← lerp(buf, g, 1−m); g ← lerp(g, buf, m) (torch ``lerp_``).
2. MuonEq row equilibration: X ← X · (‖X‖_F/√rows) / max(‖X_row‖, 1e-6), per row.
3. Polar Express: X ← X / (1.01·‖X‖_F + 1e-6), then ``ns_steps`` iterations with the fixed
   coefficients (a, b, c) of the paper: A = X·Xᵀ, B = b·A + c·A·A, X ← a·X + B·X on the wide
   orientation (XᵀX / X·B for tall matrices), in ``ortho_dtype`` (nanochat: bfloat16 on GPUs that
   support it, the param dtype otherwise).
4. Muon+ renormalisation: X ← X · √min(rows, cols) / max(‖X‖_F, 1e-6).
5. NorMuon variance normalisation: v = mean(X², over cols if rows ≥ cols else over rows);
   buf₂ ← lerp(buf₂, v, 1−β₂); X ← X · rsqrt(max(buf₂, 1e-10)) rescaled so that ‖X‖_F is unchanged.
6. Cautious weight decay: with lr' = lr·√max(1, rows/cols), the update is
   −(lr'·X + lr'·wd·W·[X·W ≥ 0]) (decay only where the update and the weight agree in sign).

Layout: a Flax kernel K is (..., fan_in, fan_out) = Wᵀ (leading axes are a batch of matrices). Steps
1, 4, 6 are elementwise; step 2 normalises over K's axis −2 (W's rows are K's columns); step 5
reduces over K's axis −2 when fan_out ≥ fan_in, else over axis −1, and its buffer is stored in K's
orientation ((..., 1, fan_out) or (..., fan_in, 1)); step 3 is given the wide orientation of W
(K itself when W is tall, Kᵀ otherwise, square included), which is exactly nanochat's arithmetic,
and matrices of the same wide shape are orthogonalised as one batched call (nanochat stacks each
shape too; no step couples two matrices).

Updates are linear in lr (step 6 given wd): a train step that multiplies the updates by a per-step
LR multiplier is exactly nanochat's ``group["lr"] = initial_lr · lrm``, as long as wd is the
scheduled weight decay itself, not multiplied by the LR multiplier.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jaxchat import sharding

# Polar Express coefficients (num_iters=5, safety_factor=2e-2, cushion=2), arXiv:2505.16932, as in nanochat.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


class NorMuonState(NamedTuple):
    """Per-leaf float32 buffers: the momentum (shaped like the param) and NorMuon's factored second
    moment ((..., 1, fan_out) if fan_out ≥ fan_in else (..., fan_in, 1), Flax orientation)."""

    count: jax.Array  # int32 scalar: updates taken
    momentum_buffer: Any
    second_momentum_buffer: Any


def torch_lerp(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """torch ``lerp``: start + w·(end − start) if |w| < 0.5 else end − (end − start)·(1 − w)."""
    diff = end - start
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * diff, end - diff * (1.0 - weight))


def _matmul(spec: str, x: jax.Array, y: jax.Array, dtype: Any) -> jax.Array:
    """einsum in ``dtype`` the way torch multiplies: float32 accumulation, one rounding to ``dtype``."""
    if jnp.dtype(dtype).itemsize < 4:
        return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32).astype(dtype)
    # float32 on GPU would default to TF32: ask for full precision.
    return jnp.einsum(spec, x, y, precision=jax.lax.Precision.HIGHEST)


def _frobenius(x: jax.Array) -> jax.Array:
    """‖x‖_F over the last two axes (keepdims), accumulated in float32, returned as float32."""
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True))


def polar_express(X: jax.Array, steps: int = 5, dtype: Any = jnp.bfloat16) -> jax.Array:
    """Approximately orthogonalise ``X`` (last two axes; leading axes are a batch) in ``dtype``.

    nanochat 92d63d4: X ← X / (1.01·‖X‖_F + 1e-6), then ``steps`` Polar Express iterations with the
    coefficients of ``POLAR_EXPRESS_COEFFS`` (``steps`` ≤ 5). A tall matrix is iterated as XᵀX
    (nanochat's tall branch); the result is ≈ U·Vᵀ of X = U·S·Vᵀ. Returns an array of ``dtype``.
    16-bit arithmetic follows torch: matmuls accumulate in float32 and round once, the norm
    accumulates in float32 and rounds to ``dtype``, a scalar multiplies in float32 then rounds.
    """
    if X.ndim < 2:
        raise ValueError(f"polar_express needs an array with ndim >= 2, got shape {X.shape}")
    if not 0 <= steps <= len(POLAR_EXPRESS_COEFFS):
        raise ValueError(f"polar_express has coefficients for at most {len(POLAR_EXPRESS_COEFFS)} steps, "
                         f"got {steps}")
    X = X.astype(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # iterate on Xᵀ: (Xᵀ)(Xᵀ)ᵀ = XᵀX, (a·Xᵀ + B·Xᵀ)ᵀ = a·X + X·B: nanochat's tall branch
        X = jnp.swapaxes(X, -1, -2)
    compute = jnp.promote_types(dtype, jnp.float32)
    scale = lambda s, x: (s * x.astype(compute)).astype(dtype)  # noqa: E731  (torch: scalar·tensor)
    norm = _frobenius(X).astype(dtype)
    denom = (scale(1.01, norm).astype(compute) + 1e-6).astype(dtype)
    X = (X.astype(compute) / denom.astype(compute)).astype(dtype)
    if jnp.dtype(dtype).itemsize < 4:
        # XLA:CPU runs 16-bit × 16-bit → float32 dots only on row-major operands; without the barrier
        # it folds the transpose above into the first dot and fails at run time (see muon.py).
        X = jax.lax.optimization_barrier(X)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = _matmul("...ij,...kj->...ik", X, X, dtype)  # X·Xᵀ
        B = scale(b, A) + scale(c, _matmul("...ij,...jk->...ik", A, A, dtype))  # b·A + c·(A·A)
        X = scale(a, X) + _matmul("...ij,...jk->...ik", B, X, dtype)
    if tall:
        X = jnp.swapaxes(X, -1, -2)
    return X


def row_equilibrate(X: jax.Array) -> jax.Array:
    """MuonEq (torch layout: rows are the last-but-one axis): scale each row to ‖X‖_F/√rows.

    Norms accumulate in float32; the per-row factor is rounded to X's dtype before multiplying.
    """
    x32 = X.astype(jnp.float32)
    target = _frobenius(x32) / (X.shape[-2] ** 0.5)
    row_norm = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True)), 1e-6)
    return X * (target / row_norm).astype(X.dtype)


def renormalise(X: jax.Array) -> jax.Array:
    """Muon+: scale X so that ‖X‖_F = √min(rows, cols), the norm of a semi-orthogonal matrix."""
    target = min(X.shape[-2], X.shape[-1]) ** 0.5
    current = jnp.maximum(_frobenius(X), 1e-6)
    return X * (target / current).astype(X.dtype)


def orthogonalise(G: jax.Array, steps: int = 5, dtype: Any = jnp.bfloat16, *, equilibrate: bool = True,
                  renorm: bool = True) -> jax.Array:
    """nanochat's orthogonalisation of a torch-layout G (..., rows, cols): MuonEq → Polar Express in
    ``dtype`` → back to G's dtype → Muon+ renormalisation."""
    X = G.astype(dtype)
    if equilibrate:
        X = row_equilibrate(X)
    X = polar_express(X, steps, dtype).astype(G.dtype)
    return renormalise(X) if renorm else X


def _orthogonalise_kernels(kernels: list[jax.Array], steps: int, dtype: Any, equilibrate: bool,
                           renorm: bool) -> list[jax.Array]:
    """``orthogonalise`` of each Flax kernel's torch view, returned in Flax layout, batched by shape.

    MuonEq needs the torch rows (= kernel columns), so it runs per kernel first, in the kernel's
    orientation; then each matrix goes to Polar Express in its wide orientation (a tall torch W is
    Kᵀ-wide, so K itself; otherwise Kᵀ), and matrices of the same wide shape are stacked into one call.
    """
    wide, was_kernel, groups = [], [], {}
    for i, k in enumerate(kernels):
        X = k.astype(dtype)
        if equilibrate:  # rows of W = columns of K: normalise over K's axis −2
            Xt = jnp.swapaxes(X, -1, -2)
            X = jnp.swapaxes(row_equilibrate(Xt), -1, -2)
        fan_in, fan_out = k.shape[-2], k.shape[-1]
        was_kernel.append(fan_out > fan_in)  # torch W tall → iterate on Wᵀ = K
        w = X if was_kernel[i] else jnp.swapaxes(X, -1, -2)
        wide.append(w)
        groups.setdefault(w.shape[-2:], []).append(i)
    out: list[Any] = [None] * len(kernels)
    for shape, members in groups.items():
        stacked = sharding.constrain_stack(jnp.concatenate([wide[i].reshape(-1, *shape) for i in members], axis=0))
        ortho = polar_express(stacked, steps, dtype)
        offset = 0
        for i in members:
            n = math.prod(wide[i].shape[:-2])
            o = ortho[offset:offset + n].reshape(wide[i].shape).astype(kernels[i].dtype)
            offset += n
            o = o if was_kernel[i] else jnp.swapaxes(o, -1, -2)
            out[i] = renormalise(o) if renorm else o  # Frobenius norm: orientation-free
    return out


def second_moment_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """NorMuon buffer shape of a Flax kernel (..., fan_in, fan_out): torch reduces over cols (fan_in)
    when rows ≥ cols, i.e. (..., 1, fan_out); otherwise over rows, i.e. (..., fan_in, 1)."""
    *lead, fan_in, fan_out = shape
    return (*lead, 1, fan_out) if fan_out >= fan_in else (*lead, fan_in, 1)


def variance_normalise(X: jax.Array, buffer: jax.Array, beta2: Any) -> tuple[jax.Array, jax.Array]:
    """NorMuon on a Flax-layout update X with its factored buffer; returns (X', new buffer).

    v = mean(X²) over the reduced axis; buffer ← lerp(buffer, v, 1−β₂); X' = X · s with
    s = rsqrt(max(buffer, 1e-10)), renormalised so ‖X'‖_F = ‖X‖_F (nanochat's order of operations).
    """
    fan_in, fan_out = X.shape[-2], X.shape[-1]
    axis = -2 if fan_out >= fan_in else -1  # torch: over cols (fan_in) if rows ≥ cols, else over rows
    n = X.shape[axis]
    v_mean = jnp.mean(jnp.square(X.astype(jnp.float32)), axis=axis, keepdims=True)
    v_norm = jnp.sqrt(jnp.sum(v_mean, axis=(-2, -1), keepdims=True) * n)
    buffer = torch_lerp(buffer, v_mean.astype(buffer.dtype), 1.0 - beta2)
    step_size = jax.lax.rsqrt(jnp.maximum(buffer, 1e-10))
    scaled_sq_sum = (v_mean * n) * jnp.square(step_size.astype(jnp.float32))
    v_norm_new = jnp.sqrt(jnp.sum(scaled_sq_sum, axis=(-2, -1), keepdims=True))
    final_scale = step_size * (v_norm / jnp.maximum(v_norm_new, 1e-10))
    return X * final_scale.astype(X.dtype), buffer


def _check_leaf(x: Any) -> None:
    if x.ndim < 2:
        raise ValueError(f"normuon only handles matrices (ndim >= 2, leading dims = batch); got a leaf of "
                         f"shape {x.shape}. Route vectors/scalars to AdamW.")


def normuon(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.95,
            weight_decay: ScalarOrSchedule = 0.0, beta2: ScalarOrSchedule = 0.9, ns_steps: int = 5,
            ortho_dtype: Any = jnp.bfloat16, equilibrate: bool = True,
            renorm: bool = True) -> optax.GradientTransformation:
    """nanochat 92d63d4's Muon step for Flax kernels ((..., fan_in, fan_out)); returns full updates.

    ``learning_rate``, ``momentum``, ``weight_decay`` (cautious, scaled by the LR) and ``beta2``
    (NorMuon) are floats or schedules of the update count (wrap with ``optax.inject_hyperparams`` to
    keep them in the state). ``ortho_dtype`` is the Polar Express dtype (bfloat16 as nanochat on
    GPU; float32 for exact comparisons). ``equilibrate`` (MuonEq) and ``renorm`` (Muon+) are on in
    nanochat. ``update`` needs ``params`` (cautious weight decay). Buffers are float32; updates come
    back in the param dtype; apply them with ``optax.apply_updates``.
    """

    def value(x: ScalarOrSchedule, count: jax.Array) -> jax.Array:
        return jnp.asarray(x(count) if callable(x) else x, jnp.float32)

    def init_fn(params: Any) -> NorMuonState:
        jax.tree.map(_check_leaf, params)
        return NorMuonState(
            count=jnp.zeros((), jnp.int32),
            momentum_buffer=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            second_momentum_buffer=jax.tree.map(lambda p: jnp.zeros(second_moment_shape(p.shape), jnp.float32),
                                                params),
        )

    def update_fn(updates: Any, state: NorMuonState, params: Any = None) -> tuple[Any, NorMuonState]:
        if params is None:
            raise ValueError("normuon needs params in update() (cautious weight decay)")
        lr = value(learning_rate, state.count)
        m = value(momentum, state.count)
        wd = value(weight_decay, state.count)
        b2 = value(beta2, state.count)

        grads, treedef = jax.tree.flatten(updates)
        moms = treedef.flatten_up_to(state.momentum_buffer)
        seconds = treedef.flatten_up_to(state.second_momentum_buffer)
        weights = treedef.flatten_up_to(params)
        new_moms, directions = [], []
        for g, buf in zip(grads, moms):
            _check_leaf(g)
            g32 = g.astype(jnp.float32)
            buf = torch_lerp(buf, g32, 1.0 - m)
            new_moms.append(buf)
            directions.append(torch_lerp(g32, buf, m))  # Nesterov
        orthos = _orthogonalise_kernels(directions, ns_steps, ortho_dtype, equilibrate, renorm)
        new_updates, new_seconds = [], []
        for g, X, buf2, p in zip(grads, orthos, seconds, weights):
            X, buf2 = variance_normalise(X, buf2, b2)
            new_seconds.append(buf2)
            fan_in, fan_out = g.shape[-2], g.shape[-1]
            lr_eff = lr * max(1.0, fan_out / fan_in) ** 0.5
            p32 = p.astype(jnp.float32)
            mask = (X * p32) >= 0
            update = -(lr_eff * X + (lr_eff * wd) * p32 * mask)
            new_updates.append(update.astype(g.dtype))
        return treedef.unflatten(new_updates), NorMuonState(
            count=optax.safe_increment(state.count),
            momentum_buffer=treedef.unflatten(new_moms),
            second_momentum_buffer=treedef.unflatten(new_seconds),
        )

    return optax.GradientTransformation(init_fn, update_fn)
