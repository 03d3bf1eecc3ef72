"""Base training's horizon and batch, and the rows per step of every training stage, worked out from the
config before anything is built (base training, ``jaxchat.fit``, ``jaxchat.plan`` and the download
read the same numbers).

The 2026 recipe (nanochat 92d63d4, docs/DESIGN.md §15) counts the horizon in its scaling parameters
(block matrices + lm_head), picks the batch for that horizon when ``base.total_batch_size = "auto"``
(B_ref·(D/D_ref)^0.383, a power of two), and scales the LRs by √(B/B_ref) and Muon's weight decay by
√(B/B_ref)·D_ref/D, the references being its d12 model at 2¹⁹ tokens a step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig
from jaxchat.model.config import GPTConfig, estimate_flops, num_params, num_scaling_params
from jaxchat.optim.schedules2026 import batch_lr_scale, optimal_batch_size, scaled_weight_decay
from jaxchat.training.build import Scaling


@dataclasses.dataclass(frozen=True)
class BasePlan:
    """Base training's horizon and batch, and (2026 recipe) the optimizer's scaling."""

    num_steps: int
    horizon_source: str  # how num_steps was chosen, for the stage plan
    total_batch_size: int  # tokens per optimizer step
    counted_params: int  # the parameters tokens are counted against (2026: scaling parameters)
    scaling: Scaling


def model_config(cfg: RunConfig, vocab_size: int, depth: int | None = None) -> GPTConfig:
    """The model ``cfg``'s recipe trains (at ``depth``, default ``model.depth``)."""
    return GPTConfig.for_recipe(cfg.recipe, cfg.model.depth if depth is None else depth, vocab_size,
                                cfg.model.sequence_len, cfg.model.window_pattern)


def plan(cfg: RunConfig, model: GPTConfig) -> BasePlan:
    """Horizon, batch and scaling of base training (docs/DESIGN.md §5, §15). JaxchatError when no horizon
    is set, or the batch is "auto" without a data:param ratio to derive it from."""
    section = cfg.base
    modern = cfg.recipe == "2026"
    counted = num_scaling_params(model) if modern else num_params(model)
    ratio = section.target_param_data_ratio
    target_tokens = ratio * counted
    reference_tokens = ratio * num_scaling_params(model_config(cfg, model.vocab_size, depth=12))  # nanochat's d12
    batch = section.total_batch_size
    if batch == "auto":
        if ratio <= 0:
            raise JaxchatError("base.total_batch_size=auto is derived from base.target_param_data_ratio; set it > 0 "
                               "or give the batch in tokens")
        batch = optimal_batch_size(target_tokens, reference_tokens)
    scaling = Scaling()
    if modern and ratio > 0:
        scaling = Scaling(lr_scale=batch_lr_scale(batch),
                          weight_decay=scaled_weight_decay(cfg.optim.weight_decay, batch, target_tokens,
                                                           reference_tokens))
    if section.num_iterations > 0:
        steps, source = section.num_iterations, "base.num_iterations"
    elif section.target_flops > 0:
        steps = max(1, round(section.target_flops / (estimate_flops(model) * batch)))
        source = f"target_flops {section.target_flops:.2e}"
    elif ratio > 0:
        steps = max(1, int(target_tokens // batch))
        source = f"{ratio:g}× {'scaling ' if modern else ''}params tokens"
    else:
        raise JaxchatError("base: set one of base.num_iterations, base.target_flops, base.target_param_data_ratio > 0")
    return BasePlan(steps, source, batch, counted, dataclasses.replace(scaling, num_steps=steps))


def horizon(cfg: RunConfig, model: GPTConfig) -> tuple[int, str]:
    """(number of optimizer steps, how it was chosen) — docs/DESIGN.md §5."""
    p = plan(cfg, model)
    return p.num_steps, p.horizon_source



def rows_per_step(stage: str, cfg: RunConfig, model: GPTConfig, source_meta: dict[str, Any] | None = None) -> int:
    """Rows of ``model.sequence_len`` tokens per optimizer step of a training stage. SFT's "auto" is
    its source checkpoint's tokens per step (``source_meta``; nanochat 92d63d4's SFT inherits base's
    batch), or, before that checkpoint exists, what base training will use."""
    seq = cfg.model.sequence_len
    if stage == "base":
        return plan(cfg, model).total_batch_size // seq
    section = getattr(cfg, stage)
    if stage == "mid":
        return section.total_batch_size // seq
    if section.examples_per_step != "auto":
        return section.examples_per_step
    tokens = (source_meta or {}).get("total_batch_size") or plan(cfg, model).total_batch_size
    return max(1, tokens // seq)
