"""Stage 3, supervised fine-tuning (docs/DESIGN.md §7): ``python train.py --stage=sft``.

Starts from the latest mid checkpoint, LRs at 0.02 of base's decaying linearly to 0, Muon momentum
0.95, no clipping, one epoch of the SFT mixture, one conversation per row (padded, only the
assistant's tokens are targets). Val loss every ``eval_every``; MMLU and ARC-Easy accuracy every
``metrics_every``.
"""

from __future__ import annotations

import math
from typing import Any

from jaxchat.config import RunConfig
from jaxchat.data.chat import sft_dataset
from jaxchat.optim import sft_lr_multiplier
from jaxchat.tasks import sft_train_mixture, sft_val_tasks
from jaxchat.tasks.mixtures import describe
from jaxchat.tokenizer import load_tokenizer
from jaxchat.training.mid import val_rows
from jaxchat.training.stage import Stage


def train_sft(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) SFT; returns the final metrics."""
    tokenizer = load_tokenizer()
    stage = Stage("sft", cfg, None, tokenizer)
    stage.init_from_previous_stage()
    section, seq = cfg.sft, cfg.model.sequence_len
    rows = stage.fit_to_device()
    accum = section.examples_per_step // rows
    train_task = sft_train_mixture(scale=section.task_scale, offline=cfg.data.offline, custom_json=cfg.data.custom_json)
    val = sft_val_tasks(scale=section.task_scale, offline=cfg.data.offline)
    data = sft_dataset(train_task, tokenizer, rows=section.examples_per_step, seq_len=seq)
    # One epoch; the last, partial batch is padded with masked rows. num_iterations can only cut it short.
    epoch_steps = math.ceil(len(train_task) / section.examples_per_step)
    num_steps = min(section.num_iterations, epoch_steps) if section.num_iterations > 0 else epoch_steps
    schedule = sft_lr_multiplier(num_steps)

    val_loss = val_rows(sft_dataset(val["loss"], tokenizer, rows=rows, seq_len=seq),
                        section.eval_steps)
    stage.add_eval(section.eval_every, lambda state: {"val_loss": stage.loss(state, val_loss)})
    stage.add_eval(section.metrics_every, lambda state: {  # mmlu_acc, arc_easy_acc (offline: those in the cache)
        f"{name}_acc": stage.categorical_accuracy(state, task, section.metrics_max_problems)
        for name, task in val.items() if name != "loss"})
    plan = [
        ("horizon", f"{num_steps:,} steps (one epoch{', capped by sft.num_iterations' if num_steps < epoch_steps else ''})"),
        ("train mixture", f"{describe(train_task)}, {section.examples_per_step} per step "
                          f"({rows} rows × {accum} micro-batches)"),
        ("LR", f"{section.init_lr_frac:g} × base LRs, linear to 0; no clipping; Muon momentum 0.95"),
    ]
    return stage.run(data, num_steps=num_steps, lr_multiplier=lambda step, _: float(schedule(step)),
                     accum=accum, plan=plan)
