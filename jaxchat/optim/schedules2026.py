"""Schedules and hyper-parameter scaling of nanochat 92d63d4's ``scripts/base_train.py`` (and ``chat_sft.py``).

They differ from the seed recipe's (``jaxchat/optim/schedules.py``): warmup is a number of steps,
the Muon momentum warms up to 0.97 over 400 steps and warms down to 0.90 with the LR, and the Muon
weight decay follows a cosine from its peak to 0. Each schedule factory returns a pure function of the
optimizer step built from ``jnp`` ops (float32 scalar array; works on a Python int for logging and on
a traced int32 inside ``jax.jit``, e.g. as an optax schedule of the update count). Branches on the
factory's arguments are resolved in Python, branches on the step with ``jnp.where``.

The scaling helpers are nanochat's muP-style transfer from its d12 reference (B_REF = 2¹⁹ tokens):
batch-size LR scale √(B/B_ref), weight decay λ·√(B/B_ref)·(D_ref/D), and the optimal batch size
B_ref·(D/D_ref)^0.383 rounded to a power of two. They are plain Python floats.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import jax
import jax.numpy as jnp

from jaxchat.optim.schedules import base_lr_multiplier

Step = Union[int, jax.Array]
Schedule = Callable[[Step], jax.Array]

B_REF = 2 ** 19  # nanochat's reference batch size (tokens) at d12


def _f32(x: Step) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def base_lr_multiplier_2026(num_iterations: int, warmup_steps: int = 40, warmdown_ratio: float = 0.65,
                            final_lr_frac: float = 0.05) -> Schedule:
    """``base_train.get_lr_multiplier`` with 92d63d4's defaults: the seed's shape
    (``schedules.base_lr_multiplier``) with a warmup counted in steps."""
    return base_lr_multiplier(num_iterations, warmdown_ratio=warmdown_ratio, final_lr_frac=final_lr_frac,
                              warmup_steps=warmup_steps)


def muon_momentum_2026(num_iterations: int, warmdown_ratio: float = 0.65, warmup_steps: int = 400,
                       start: float = 0.85, peak: float = 0.97, end: float = 0.90) -> Schedule:
    """``base_train.get_muon_momentum``: start → peak linearly over ``warmup_steps`` (this branch wins),
    then peak, then peak → end linearly over the LR warmdown (progress clamped at 1 past N)."""
    warmdown_iters = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown_iters

    def momentum(step: Step) -> jax.Array:
        s = _f32(step)
        m = jnp.full_like(s, peak)
        if warmdown_iters > 0:
            progress = jnp.minimum((s - warmdown_start) / warmdown_iters, 1.0)
            m = jnp.where(s >= warmdown_start, peak * (1.0 - progress) + end * progress, m)
        if warmup_steps > 0:
            frac = s / warmup_steps
            m = jnp.where(s < warmup_steps, (1.0 - frac) * start + frac * peak, m)
        return m

    return momentum


def weight_decay_cosine(weight_decay: float, num_iterations: int) -> Schedule:
    """``base_train.get_weight_decay``: wd·½·(1 + cos(π·step/N)), from ``weight_decay`` to 0 at N
    (the step is clamped to N, so it stays 0 afterwards)."""

    def wd(step: Step) -> jax.Array:
        s = jnp.minimum(_f32(step), num_iterations)
        return weight_decay * 0.5 * (1.0 + jnp.cos(jnp.pi * s / num_iterations))

    return wd


def sft_lr_multiplier_2026(warmup_ratio: float = 0.0, warmdown_ratio: float = 0.5,
                           final_lr_frac: float = 0.0) -> Callable[[float], jax.Array]:
    """``chat_sft.get_lr_multiplier`` of the run's progress p ∈ [0, 1] (not of the step): warmup
    (p + 1e-8)/warmup_ratio, then 1, then linear from 1 to ``final_lr_frac`` over the last
    ``warmdown_ratio``. SFT's Muon momentum is the seed's ``muon_momentum_warmup()`` (0.85 → 0.95 over
    300 steps) and its Muon weight decay is 0."""

    def multiplier(progress: float) -> jax.Array:
        p = _f32(progress)
        decay = (p - (1.0 - warmdown_ratio)) / warmdown_ratio if warmdown_ratio > 0 else jnp.zeros_like(p)
        lrm = jnp.where(p <= 1.0 - warmdown_ratio, 1.0, (1.0 - decay) * 1.0 + decay * final_lr_frac)
        if warmup_ratio > 0:
            lrm = jnp.where(p < warmup_ratio, (p + 1e-8) / warmup_ratio, lrm)
        return lrm

    return multiplier


def batch_lr_scale(total_batch_size: int, reference_batch_size: int = B_REF) -> float:
    """LR scale for a batch of ``total_batch_size`` tokens: √(B/B_ref) (AdamW rule, applied to Muon too)."""
    ratio = total_batch_size / reference_batch_size
    return 1.0 if ratio == 1.0 else ratio ** 0.5


def scaled_weight_decay(weight_decay: float, total_batch_size: int, target_tokens: float,
                        reference_tokens: float, reference_batch_size: int = B_REF) -> float:
    """Muon weight decay for a run of ``target_tokens`` at batch B: λ·√(B/B_ref)·(D_ref/D) (T_epoch rule).

    ``reference_tokens`` is D_ref = target_param_data_ratio · (scaling params of the d12 model)."""
    return weight_decay * math.sqrt(total_batch_size / reference_batch_size) * (reference_tokens / target_tokens)


def optimal_batch_size(target_tokens: float, reference_tokens: float, reference_batch_size: int = B_REF) -> int:
    """nanochat's auto batch size: B_ref·(D/D_ref)^0.383 rounded to the nearest power of two (tokens)."""
    predicted = reference_batch_size * (target_tokens / reference_tokens) ** 0.383
    return 2 ** round(math.log2(predicted))
