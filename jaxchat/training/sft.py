"""Stage 3, supervised fine-tuning (docs/DESIGN.md §7, §15): ``python train.py --stage=sft``.

The seed recipe: starts from the latest mid checkpoint, LRs at 0.02 of base's decaying linearly to
0, Muon momentum 0.95, no clipping, one epoch of the SFT mixture, one conversation per row (padded,
only the assistant's tokens are targets). Val loss every ``eval_every``; MMLU and ARC-Easy accuracy
every ``metrics_every``.

The 2026 recipe (nanochat 92d63d4's chat_sft): starts from base, with base's optimizer moments
(``sft.load_optimizer``) and base's batch (``examples_per_step = "auto"``), LRs at 0.8 of base's,
constant then linearly to 0 over the second half of the epoch's progress, Muon momentum 0.85 → 0.95;
rows packed best-fit with whole conversations (``sft.packing = "bestfit"``); the 2026 mixture. Val
bpb every ``eval_every``; ChatCORE (ARC, MMLU, GSM8K, HumanEval) every ``metrics_every``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from jaxchat.config import RunConfig
from jaxchat.data.chat import sft_dataset
from jaxchat.data.chat_bestfit import sft_bestfit_dataset
from jaxchat.optim import sft_lr_multiplier, sft_lr_multiplier_2026
from jaxchat.tasks import sft_train_mixture, sft_train_mixture_2026, sft_val_mixture_2026, sft_val_tasks
from jaxchat.tasks.mixtures import available_chat_eval_tasks, describe
from jaxchat.tokenizer import load_tokenizer
from jaxchat.training.horizon import rows_per_step
from jaxchat.training.mid import val_rows
from jaxchat.training.stage import CHATCORE_TASKS, Stage


def train_sft(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) SFT; returns the final metrics."""
    tokenizer = load_tokenizer()
    section, seq = cfg.sft, cfg.model.sequence_len
    stage = Stage("sft", cfg, None, tokenizer)
    stage.init_from_previous_stage(load_optimizer=section.load_optimizer)
    rows = stage.fit_to_device()  # per device
    total = rows_per_step("sft", cfg, stage.model_config, stage.source_meta)
    accum = stage.micro_batches(total, rows, f"{total} rows per step (sft.examples_per_step)")
    global_rows = rows * stage.devices  # one micro-batch over every device
    modern = cfg.recipe == "2026"
    if modern:
        train_task = sft_train_mixture_2026(section.mmlu_epochs, section.gsm8k_epochs, section.task_scale,
                                            offline=cfg.data.offline, custom_json=cfg.data.custom_json)
    else:
        train_task = sft_train_mixture(scale=section.task_scale, offline=cfg.data.offline,
                                       custom_json=cfg.data.custom_json)
    packed = section.packing == "bestfit"
    if packed:
        data = sft_bestfit_dataset(train_task, tokenizer, rows=total, seq_len=seq)
    else:
        data = sft_dataset(train_task, tokenizer, rows=total, seq_len=seq)
    cap = section.num_iterations
    if packed or modern:
        # The epoch's length in packed rows is known only once it is read: the LR follows the epoch's
        # progress, or the steps' when sft.num_iterations caps the run earlier (nanochat 92d63d4).
        schedule = sft_lr_multiplier_2026(warmdown_ratio=0.5 if modern else 1.0)
        num_steps = cap if cap > 0 else None

        def lr_multiplier(step: int, progress: float) -> float:
            return float(schedule(max(progress, step / cap if cap > 0 else 0.0)))

        horizon = f"one epoch or {cap:,} steps, whichever ends first" if cap > 0 else "one epoch (LR follows its progress)"
        lr_text = (f"{section.init_lr_frac:g} × base LRs, " +
                   ("constant, then linear to 0 over the second half" if modern else "linear to 0") +
                   (", optimizer moments from the source" if section.load_optimizer else ""))
    else:
        # One epoch; the last, partial batch is padded with masked rows. num_iterations can only cut it short.
        epoch_steps = math.ceil(len(train_task) / total)
        num_steps = min(cap, epoch_steps) if cap > 0 else epoch_steps
        step_schedule = sft_lr_multiplier(num_steps)

        def lr_multiplier(step: int, progress: float) -> float:
            return float(step_schedule(step))

        horizon = f"{num_steps:,} steps (one epoch{', capped by sft.num_iterations' if num_steps < epoch_steps else ''})"
        lr_text = f"{section.init_lr_frac:g} × base LRs, linear to 0; no clipping; Muon momentum 0.95"

    if modern:
        val_task = sft_val_mixture_2026(scale=section.task_scale, offline=cfg.data.offline)
        val = val_rows(sft_bestfit_dataset(val_task, tokenizer, rows=global_rows, seq_len=seq), section.eval_steps)
        stage.add_eval(section.eval_every, lambda state: {"val_bpb": stage.bpb(state, val)})
        names, skipped = available_chat_eval_tasks(CHATCORE_TASKS)
        for name, reason in skipped.items():
            print(f"sft: ChatCORE leaves out {name} ({reason}), so no ChatCORE is reported", file=sys.stderr)
        limit = section.metrics_max_problems
        stage.add_eval(section.metrics_every, lambda state: stage.chat_metrics(
            state, tuple(names), max_categorical=None if limit == -1 else limit,
            max_generative=section.metrics_max_generative, batch_size=rows))
        metrics_text = f"ChatCORE every {section.metrics_every} steps ({', '.join(names) or 'no task in the cache'})"
    else:
        val = sft_val_tasks(scale=section.task_scale, offline=cfg.data.offline)
        val_loss = val_rows(sft_dataset(val["loss"], tokenizer, rows=global_rows, seq_len=seq), section.eval_steps)
        stage.add_eval(section.eval_every, lambda state: {"val_loss": stage.loss(state, val_loss)})
        stage.add_eval(section.metrics_every, lambda state: {  # mmlu_acc, arc_easy_acc (offline: those in the cache)
            f"{name}_acc": stage.categorical_accuracy(state, task, section.metrics_max_problems)
            for name, task in val.items() if name != "loss"})
        metrics_text = f"MMLU / ARC-Easy accuracy every {section.metrics_every} steps"
    plan = [
        ("recipe", cfg.recipe),
        ("horizon", horizon),
        ("train mixture", f"{describe(train_task)}, {total} {'packed rows' if packed else 'conversations'} per step "
                          f"({rows} rows × {accum} micro-batches{stage.per_device_text()})"),
        ("LR", lr_text),
        ("evals", metrics_text),
    ]
    return stage.run(data, num_steps=num_steps, lr_multiplier=lr_multiplier, accum=accum, plan=plan)
