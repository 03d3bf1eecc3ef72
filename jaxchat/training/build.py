"""What every training stage builds before its loop: the model, the optimizer, the state, the mesh.

Stages differ in data, schedule and evals; this module holds what they share, so base, mid and SFT
construct models, optimizers and checkpoints the same way.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
from flax import nnx

from jaxchat import stages
from jaxchat.config import RunConfig, to_dict
from jaxchat.model import GPT, GPTConfig
from jaxchat.optim import OptimConfig, make_optimizer, muon_momentum_warmup
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


def build_optimizer(params: Any, model_config: GPTConfig, cfg: RunConfig, stage: str):
    """nanochat's optimizer (docs/DESIGN.md §4) with ``stage``'s overrides from the stage registry.
    The LR multiplier is passed per step to the train step, so the optimizer is built at multiplier 1."""
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
