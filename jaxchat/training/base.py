"""Stage 1, base pretraining on FineWeb-Edu (docs/DESIGN.md §5): ``python train.py --stage=base``.

Horizon: ``base.num_iterations``, else ``base.target_flops``, else ``target_param_data_ratio`` × params
tokens (Chinchilla 20×). Every ``eval_every`` steps val bpb on the last shard, every ``core_every``
CORE and samples from the fixed prompts; checkpoints every ``checkpoint.save_every`` and at the end.

The horizon, the batch and (2026 recipe) the optimizer's scaling are worked out in
``jaxchat.training.horizon``.
"""

from __future__ import annotations

from typing import Any

from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig
from jaxchat.data.corpus import describe_shards, repetition_warning
from jaxchat.data.pretrain import pretrain_dataset, val_batches
from jaxchat.data.shards import list_shards, split_shards
from jaxchat.model import estimate_flops
from jaxchat.optim import base_lr_multiplier
from jaxchat.tokenizer import load_tokenizer
from jaxchat.training.horizon import model_config, plan
from jaxchat.training.stage import Stage

SAMPLE_PROMPTS = (  # nanochat's base_train prompts
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
)


def train_base(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) base pretraining; returns the final metrics."""
    tokenizer = load_tokenizer()
    train_paths, val_paths = split_shards(list_shards(corpus=cfg.data.corpus))
    model = model_config(cfg, tokenizer.get_vocab_size())
    section, seq = cfg.base, cfg.model.sequence_len
    base_plan = plan(cfg, model)
    num_steps, total_batch = base_plan.num_steps, base_plan.total_batch_size
    if warning := repetition_warning(train_paths, num_steps * total_batch, tokenizer):
        print(warning, flush=True)  # a tiny corpus repeated many times

    stage = Stage("base", cfg, model, tokenizer)
    stage.check_eval_bundle(section.core_every != 0)
    stage.init_fresh(base_plan.scaling)
    rows = stage.fit_to_device()  # per device
    if total_batch % seq:
        raise JaxchatError(f"base.total_batch_size={total_batch} is not a multiple of model.sequence_len {seq}")
    accum = stage.micro_batches(total_batch // seq, rows,
                                f"base.total_batch_size={total_batch:,} tokens ({total_batch // seq:,} rows of {seq})")
    global_rows = rows * stage.devices  # one micro-batch over every device
    data = pretrain_dataset(train_paths, tokenizer, rows=global_rows * accum, seq_len=seq, packing=section.packing)
    val = list(val_batches(val_paths, tokenizer, rows=global_rows, seq_len=seq,
                           num_batches=max(1, section.eval_tokens // (global_rows * seq)), packing=section.packing))

    stage.add_eval(section.eval_every, lambda state: {"val_bpb": stage.bpb(state, val)})
    if section.core_every != 0:
        stage.add_eval(section.core_every, lambda state: stage.core(state, section.core_max_per_task))
        stage.add_eval(section.core_every, lambda state: stage.samples(state, SAMPLE_PROMPTS))
    schedule = base_lr_multiplier(num_steps, section.warmup_ratio, section.warmdown_ratio, section.final_lr_frac,
                                  warmup_steps=section.warmup_steps)
    tokens = num_steps * total_batch
    counted = "scaling parameter" if cfg.recipe == "2026" else "parameter"
    rows_out = [
        ("recipe", cfg.recipe),
        ("horizon", f"{num_steps:,} steps ({base_plan.horizon_source})"),
        ("tokens", f"{tokens:,} ({tokens / base_plan.counted_params:.1f} per {counted})"),
        ("batch", f"{total_batch:,} tokens{' (auto)' if section.total_batch_size == 'auto' else ''} = "
                  f"{rows} rows × {seq} × {accum} micro-batches{stage.per_device_text()}"),
        ("data", f"{len(train_paths)} {cfg.data.corpus} train shard(s), val = {val_paths[0].name}; "
                 f"{section.packing} packing"),
        ("corpus", describe_shards(train_paths)),
    ]
    if cfg.recipe == "2026":
        sc = base_plan.scaling
        rows_out.append(("scaling", f"LRs × {sc.lr_scale:.4f} (batch), Muon weight decay "
                                    f"{sc.weight_decay if sc.weight_decay is not None else cfg.optim.weight_decay:.6f}"
                                    f" → 0 (cosine)"))
    return stage.run(data, num_steps=num_steps, lr_multiplier=lambda step, _: float(schedule(step)),
                     accum=accum, plan=rows_out, total_flops=estimate_flops(model) * tokens,
                     meta={"total_batch_size": total_batch})
