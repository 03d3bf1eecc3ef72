"""Learning-rate multipliers and the Muon momentum schedule of the three training stages (docs/DESIGN.md §5–§7).

Each factory returns a pure function of the optimizer step that uses only ``jnp`` ops, so it works
both on a Python int (logging) and on a traced int32 step inside ``jax.jit`` (optax evaluates
schedules on its step count). Branches that depend only on the factory's arguments are resolved in
Python; branches on the step use ``jnp.where``. Every function returns a float32 scalar array.
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp

Step = Union[int, jax.Array]
Schedule = Callable[[Step], jax.Array]


def _as_float(step: Step) -> jax.Array:
    return jnp.asarray(step, jnp.float32)


def base_lr_multiplier(num_iterations: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2,
                       final_lr_frac: float = 0.0, *, warmup_steps: int = 0) -> Schedule:
    """Base training (docs/DESIGN.md §5, nanochat ``base_train.get_lr_multiplier``, both versions).

    ``warmup_iters = warmup_steps`` when > 0 (nanochat 92d63d4), else ``round(warmup_ratio·N)``
    (16788ee); ``warmdown_iters = round(warmdown_ratio·N)``;
    step < warmup → (step+1)/warmup_iters; step ≤ N − warmdown → 1; otherwise
    progress = (N − step)/warmdown_iters and the multiplier is progress + (1 − progress)·final_lr_frac.
    Past N (outside the run) progress is clamped at 0, i.e. the multiplier stays at final_lr_frac.
    """
    warmup_iters = warmup_steps if warmup_steps > 0 else round(warmup_ratio * num_iterations)
    warmdown_iters = round(warmdown_ratio * num_iterations)

    def multiplier(step: Step) -> jax.Array:
        s = _as_float(step)
        lrm = jnp.ones_like(s)
        if warmdown_iters > 0:  # with no warmdown the middle branch covers every step ≤ N
            progress = jnp.maximum((num_iterations - s) / warmdown_iters, 0.0)
            decayed = progress + (1.0 - progress) * final_lr_frac
            lrm = jnp.where(s <= num_iterations - warmdown_iters, lrm, decayed)
        if warmup_iters > 0:  # Python-level guard: (step+1)/0 must never be traced
            lrm = jnp.where(s < warmup_iters, (s + 1.0) / warmup_iters, lrm)
        return lrm

    return multiplier


def mid_lr_multiplier(num_iterations: int) -> Schedule:
    """Midtraining (docs/DESIGN.md §6): 1 until 80 % of the run, then linear to 0 at the end.

    progress = step/num_iterations; 1 if progress < 0.8 else 1 − (progress − 0.8)/0.2, clamped ≥ 0.
    Upstream once had this rising after 80 % (nanochat bug b8076dd); ours decays.
    """

    def multiplier(step: Step) -> jax.Array:
        progress = _as_float(step) / num_iterations
        return jnp.where(progress < 0.8, 1.0, jnp.maximum(1.0 - (progress - 0.8) / 0.2, 0.0))

    return multiplier


def sft_lr_multiplier(num_iterations: int) -> Schedule:
    """SFT (docs/DESIGN.md §7): linear decay from 1 at step 0 to 0 at ``num_iterations`` (clamped ≥ 0).

    The 0.02 ``init_lr_frac`` of SFT lives in ``OptimConfig``, not here.
    """

    def multiplier(step: Step) -> jax.Array:
        return jnp.maximum(1.0 - _as_float(step) / num_iterations, 0.0)

    return multiplier


def muon_momentum_warmup(warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> Schedule:
    """Muon momentum in base and mid training (docs/DESIGN.md §4): linear start → end over ``warmup_steps``.

    nanochat: ``frac = min(step/300, 1); momentum = (1 − frac)·0.85 + frac·0.95``. For SFT's constant
    0.95, pass the float itself to the optimizer instead of a schedule.
    """

    def momentum(step: Step) -> jax.Array:
        frac = jnp.minimum(_as_float(step) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
        return jnp.asarray((1.0 - frac) * start + frac * end, jnp.float32)

    return momentum
