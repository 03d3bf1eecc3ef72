"""What every training stage builds before its loop: the model, the optimizer, the state, the mesh.

Stages differ in data, schedule and evals; this module holds what they share, so base, mid and SFT
construct models, optimizers and checkpoints the same way.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxchat import stages
from jaxchat.config import RunConfig, to_dict
from jaxchat.model import GPT, GPTConfig
from jaxchat.optim import (OptimConfig, OptimConfig2026, make_optimizer, make_optimizer_2026, muon_momentum_2026,
                           muon_momentum_warmup, weight_decay_cosine)
from jaxchat.runtime import Runtime
from jaxchat.training.step import TrainState, init_train_state


def build_model(model_config: GPTConfig, cfg: RunConfig, runtime: Runtime, *,
                abstract: bool = False) -> tuple[nnx.GraphDef, Any]:
    """``(graphdef, params)`` of a fresh GPT (seeded by ``cfg.seed``) that runs as ``runtime`` says;
    ``abstract=True`` gives ShapeDtypeStructs instead of arrays (restore targets: nothing is initialised)."""

    def create() -> GPT:
        return GPT(model_config, runtime=runtime, rngs=nnx.Rngs(cfg.seed))

    graphdef, state = nnx.split(nnx.eval_shape(create) if abstract else create())
    return graphdef, nnx.to_pure_dict(state)


@dataclasses.dataclass(frozen=True)
class Scaling:
    """What the 2026 recipe's base-training optimizer takes from the horizon (nanochat 92d63d4's
    ``base_train``; jaxchat/training/horizon.py computes it). The defaults leave the optimizer's structure
    the same, so memory planning (jaxchat.fit, jaxchat.plan) can build it without a horizon."""

    num_steps: int | None = None  # the Muon momentum and weight-decay schedules run over these steps
    lr_scale: float = 1.0  # every LR but smear's × √(B / 2¹⁹)
    weight_decay: float | None = None  # Muon's cautious weight decay at step 0 (None: optim.weight_decay)


def build_optimizer(params: Any, model_config: GPTConfig, cfg: RunConfig, stage: str, *,
                    runtime: Runtime | None = None, scaling: Scaling = Scaling()):
    """The recipe's optimizer with ``stage``'s overrides from the stage registry: nanochat's Muon + AdamW
    (docs/DESIGN.md §4), or for ``recipe = "2026"`` 92d63d4's NorMuon + AdamW groups (§15).
    The LR multiplier is passed per step to the train step, so the optimizer is built at multiplier 1."""
    if cfg.recipe == "2026":
        return _optimizer_2026(params, model_config, cfg, stage, runtime, scaling)
    overrides = stages.get(stage).optimizer
    optim = OptimConfig(
        embedding_lr=cfg.optim.embedding_lr,
        unembedding_lr=cfg.optim.unembedding_lr,
        matrix_lr=cfg.optim.matrix_lr,
        weight_decay=cfg.optim.weight_decay,
        init_lr_frac=overrides.lr_frac(cfg),
        grad_clip=cfg.optim.grad_clip if overrides.clip_gradients and cfg.optim.grad_clip > 0 else None,
    )
    momentum = muon_momentum_warmup() if overrides.muon_momentum is None else overrides.muon_momentum
    return make_optimizer(params, model_config.n_embd, optim, 1.0, momentum)


def _optimizer_2026(params: Any, model_config: GPTConfig, cfg: RunConfig, stage: str, runtime: Runtime | None,
                    scaling: Scaling):
    """92d63d4's MuonAdamW. Base: momentum 0.85 → 0.97 → 0.90 and the weight decay's cosine over the
    horizon. Later stages (SFT): momentum 0.85 → 0.95 over 300 steps, no Muon weight decay (base's
    decayed to 0), the base LRs unscaled by batch size, × ``sft.init_lr_frac``. Polar Express runs in
    the compute dtype (bfloat16 on GPU, as nanochat; float32 on CPU)."""
    section = cfg.optim
    base = stage == "base"
    config = OptimConfig2026(
        embedding_lr=section.embedding_lr, unembedding_lr=section.unembedding_lr, matrix_lr=section.matrix_lr,
        scalar_lr=section.scalar_lr, batch_lr_scale=scaling.lr_scale if base else 1.0,
        init_lr_frac=stages.get(stage).optimizer.lr_frac(cfg),
        weight_decay=(section.weight_decay if scaling.weight_decay is None else scaling.weight_decay) if base else 0.0,
        ortho_dtype=(runtime.dtype if runtime is not None else jnp.float32),
        grad_clip=section.grad_clip if base and section.grad_clip > 0 else None)
    # Both Muon hyper-parameters are always schedules, so every stage's optimizer state has the same
    # structure (SFT restores base's; memory planning builds it without a horizon).
    def constant(value: float):
        return lambda count: jnp.float32(value)

    if not base:
        momentum, weight_decay = muon_momentum_warmup(), constant(0.0)
    elif scaling.num_steps is None:
        momentum, weight_decay = constant(config.muon_momentum), constant(config.weight_decay)
    else:
        momentum = muon_momentum_2026(scaling.num_steps, cfg.base.warmdown_ratio)
        weight_decay = weight_decay_cosine(config.weight_decay, scaling.num_steps)
    return make_optimizer_2026(params, model_config.n_embd, config, muon_momentum=momentum,
                               muon_weight_decay=weight_decay)


def abstract_state(params: Any, tx) -> TrainState:
    """Shapes and dtypes of the train state for ``params``, for Orbax restore targets."""
    return jax.eval_shape(lambda p: init_train_state(p, tx), params)


def checkpoint_meta(stage: str, step: int, model_config: GPTConfig, cfg: RunConfig, tokenizer,
                    metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
    """The JSON metadata stored with every checkpoint (what ``load_model`` and later stages read)."""
    return {
        "stage": stage,
        "step": step,
        "model_config": dataclasses.asdict(model_config),
        "run_config": to_dict(cfg),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }
