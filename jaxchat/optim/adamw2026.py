"""nanochat 92d63d4's AdamW step (``nanochat/optim.py: adamw_step_fused``) as an optax transformation.

Per tensor, at step t (1-based), in float32 whatever the param dtype:

    m ← lerp(m, g, 1−β₁);  v ← lerp(v, g², 1−β₂)           (torch ``lerp_``)
    update = −lr·wd·p − (lr / (1−β₁ᵗ)) · m / (√(v / (1−β₂ᵗ)) + eps)

nanochat decays the param first (p ← p·(1 − lr·wd)) and then adds the Adam step to the decayed
param; returning both terms as one update is the same rule (equal up to float rounding). Unlike
``optax.adamw`` this uses torch's ``lerp`` for the moments and eps outside the bias-corrected square
root, exactly as nanochat. The update is linear in lr. Moments are float32 (nanochat keeps them in the
param dtype, bfloat16 for its bf16 embeddings on GPU); updates come back in the param dtype.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jaxchat.optim.muon2026 import torch_lerp

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


class AdamW2026State(NamedTuple):
    count: jax.Array  # int32 scalar: updates taken
    exp_avg: Any  # float32, shaped like the params
    exp_avg_sq: Any


def adamw_nanochat(learning_rate: ScalarOrSchedule, b1: float = 0.8, b2: float = 0.95, eps: float = 1e-10,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """nanochat's fused AdamW (decoupled weight decay scaled by lr); returns full updates (with −lr).

    ``learning_rate`` is a float or a schedule of the update count. ``update`` needs ``params`` when
    ``weight_decay`` ≠ 0.
    """

    def init_fn(params: Any) -> AdamW2026State:
        zeros = lambda p: jnp.zeros(p.shape, jnp.float32)  # noqa: E731
        return AdamW2026State(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update_fn(updates: Any, state: AdamW2026State, params: Any = None) -> tuple[Any, AdamW2026State]:
        if params is None and weight_decay != 0.0:
            raise ValueError("adamw_nanochat needs params in update() when weight_decay != 0")
        count = optax.safe_increment(state.count)
        lr = jnp.asarray(learning_rate(state.count) if callable(learning_rate) else learning_rate, jnp.float32)
        beta1, beta2 = jnp.float32(b1), jnp.float32(b2)
        t = count.astype(jnp.float32)
        bias1 = 1.0 - beta1 ** t
        bias2 = 1.0 - beta2 ** t
        step_size = lr / bias1
        decay = lr * jnp.float32(weight_decay)

        def leaf(g, m, v, p):
            g32 = g.astype(jnp.float32)
            m = torch_lerp(m, g32, 1.0 - beta1)
            v = torch_lerp(v, jnp.square(g32), 1.0 - beta2)
            denom = jnp.sqrt(v / bias2) + jnp.float32(eps)
            u = -step_size * (m / denom)
            if weight_decay != 0.0:
                u = u - decay * p.astype(jnp.float32)
            return u.astype(g.dtype), m, v

        ps = params if params is not None else updates
        out = jax.tree.map(leaf, updates, state.exp_avg, state.exp_avg_sq, ps)
        treedef = jax.tree.structure(updates)
        flat = treedef.flatten_up_to(out)
        new_updates = treedef.unflatten([o[0] for o in flat])
        new_m = treedef.unflatten([o[1] for o in flat])
        new_v = treedef.unflatten([o[2] for o in flat])
        return new_updates, AdamW2026State(count, new_m, new_v)

    return optax.GradientTransformation(init_fn, update_fn)
