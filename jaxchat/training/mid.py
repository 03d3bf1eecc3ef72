"""Stage 2, midtraining on the task mixture (docs/DESIGN.md §6): ``python train.py --stage=mid``.

Starts from the latest base checkpoint of the tag (``--source_tag``/``--source_step`` to choose),
with a fresh optimizer and base's LRs. One epoch of the mixture, conversations packed into rows
without being cut; the LR multiplier is 1 until 80 % of the epoch, then linear to 0 (progress-based
like nanochat, or step-based when ``mid.num_iterations`` caps the run). Val bpb every ``eval_every``.
"""

from __future__ import annotations

import itertools
from typing import Any

from jaxchat.config import RunConfig
from jaxchat.data.chat import mid_dataset
from jaxchat.model import estimate_flops
from jaxchat.optim import mid_lr_multiplier
from jaxchat.tasks import mid_train_mixture, mid_val_mixture
from jaxchat.tasks.mixtures import describe
from jaxchat.tokenizer import load_tokenizer
from jaxchat.training.stage import Stage


def val_rows(dataset, num_batches: int) -> list[dict[str, Any]]:
    """The first ``num_batches`` batches of a finite chat dataset, inputs/targets only."""
    return [{"inputs": b["inputs"], "targets": b["targets"]} for b in itertools.islice(iter(dataset), num_batches)]


def train_mid(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) midtraining; returns the final metrics."""
    tokenizer = load_tokenizer()
    stage = Stage("mid", cfg, None, tokenizer)
    stage.init_from_previous_stage()
    section, seq = cfg.mid, cfg.model.sequence_len
    rows = stage.fit_to_device()  # per device
    accum = stage.micro_batches(section.total_batch_size // seq, rows,
                                f"mid.total_batch_size={section.total_batch_size:,} tokens "
                                f"({section.total_batch_size // seq:,} rows of {seq})")
    global_rows = rows * stage.devices  # one micro-batch over every device
    train_task = mid_train_mixture(scale=section.task_scale, offline=cfg.data.offline, custom_json=cfg.data.custom_json)
    val_task = mid_val_mixture(scale=section.task_scale, offline=cfg.data.offline)
    data = mid_dataset(train_task, tokenizer, rows=global_rows * accum, seq_len=seq)
    val = val_rows(mid_dataset(val_task, tokenizer, rows=global_rows, seq_len=seq),
                   max(1, section.eval_tokens // (global_rows * seq)))
    stage.add_eval(section.eval_every, lambda state: {"val_bpb": stage.bpb(state, val)})

    # docs/DESIGN.md §6 on the fraction of the run done: the epoch's progress, or the steps' when
    # mid.num_iterations caps the run earlier — whichever ends first (mid_lr_multiplier(1) maps a
    # fraction in [0, 1] to 1 until 0.8, then linearly to 0).
    schedule = mid_lr_multiplier(1)
    cap = section.num_iterations

    def lr_multiplier(step: int, progress: float) -> float:
        return float(schedule(max(progress, step / cap if cap > 0 else 0.0)))

    steps_text = (f"one epoch or {cap:,} steps, whichever ends first" if cap > 0
                  else "one epoch (LR follows epoch progress)")
    plan = [
        ("horizon", steps_text),
        ("train mixture", describe(train_task)),
        ("val mixture", f"{describe(val_task)}, {len(val)} batches for bpb"),
        ("batch", f"{section.total_batch_size:,} tokens = {rows} rows × {seq} × {accum} micro-batches{stage.per_device_text()}"),
    ]
    total_flops = (estimate_flops(stage.model_config) * section.num_iterations * section.total_batch_size
                   if section.num_iterations > 0 else None)
    return stage.run(data, num_steps=section.num_iterations if section.num_iterations > 0 else None,
                     lr_multiplier=lr_multiplier, accum=accum, plan=plan, total_flops=total_flops)
