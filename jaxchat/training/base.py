"""Stage 1, base pretraining on FineWeb-Edu (docs/DESIGN.md §5): ``python train.py --stage=base``.

Horizon: ``base.num_iterations``, else ``base.target_flops``, else ``target_param_data_ratio`` × params
tokens (Chinchilla 20×). Every ``eval_every`` steps val bpb on the last shard, every ``core_every``
CORE and samples from the fixed prompts; checkpoints every ``checkpoint.save_every`` and at the end.
"""

from __future__ import annotations

from typing import Any

from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig
from jaxchat.data.corpus import describe_shards, repetition_warning
from jaxchat.data.pretrain import pretrain_dataset, val_batches
from jaxchat.data.shards import list_shards, split_shards
from jaxchat.model import GPTConfig, estimate_flops, num_params
from jaxchat.optim import base_lr_multiplier
from jaxchat.tokenizer import load_tokenizer
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


def horizon(cfg: RunConfig, model_config: GPTConfig) -> tuple[int, str]:
    """(number of optimizer steps, how it was chosen) — docs/DESIGN.md §5."""
    section = cfg.base
    if section.num_iterations > 0:
        return section.num_iterations, "base.num_iterations"
    if section.target_flops > 0:
        steps = round(section.target_flops / (estimate_flops(model_config) * section.total_batch_size))
        return max(1, steps), f"target_flops {section.target_flops:.2e}"
    if section.target_param_data_ratio > 0:
        tokens = section.target_param_data_ratio * num_params(model_config)
        return max(1, int(tokens // section.total_batch_size)), f"{section.target_param_data_ratio:g}× params tokens"
    raise JaxchatError("base: set one of base.num_iterations, base.target_flops, base.target_param_data_ratio > 0")


def train_base(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) base pretraining; returns the final metrics."""
    tokenizer = load_tokenizer()
    train_paths, val_paths = split_shards(list_shards(corpus=cfg.data.corpus))
    model_config = GPTConfig.from_depth(cfg.model.depth, vocab_size=tokenizer.get_vocab_size(),
                                        sequence_len=cfg.model.sequence_len)
    section, seq = cfg.base, cfg.model.sequence_len
    num_steps, horizon_source = horizon(cfg, model_config)
    if warning := repetition_warning(train_paths, num_steps * section.total_batch_size, tokenizer):
        print(warning, flush=True)  # a tiny corpus repeated many times

    stage = Stage("base", cfg, model_config, tokenizer)
    stage.check_eval_bundle(section.core_every != 0)
    stage.init_fresh()
    rows = stage.fit_to_device()
    accum = section.total_batch_size // (rows * seq)
    data = pretrain_dataset(train_paths, tokenizer, rows=rows * accum, seq_len=seq, packing=section.packing)
    val = list(val_batches(val_paths, tokenizer, rows=rows, seq_len=seq,
                           num_batches=max(1, section.eval_tokens // (rows * seq)), packing=section.packing))

    stage.add_eval(section.eval_every, lambda state: {"val_bpb": stage.bpb(state, val)})
    if section.core_every != 0:
        stage.add_eval(section.core_every, lambda state: stage.core(state, section.core_max_per_task))
        stage.add_eval(section.core_every, lambda state: stage.samples(state, SAMPLE_PROMPTS))
    schedule = base_lr_multiplier(num_steps, section.warmup_ratio, section.warmdown_ratio, section.final_lr_frac)
    tokens = num_steps * section.total_batch_size
    plan = [
        ("horizon", f"{num_steps:,} steps ({horizon_source})"),
        ("tokens", f"{tokens:,} ({tokens / num_params(model_config):.1f} per parameter)"),
        ("batch", f"{section.total_batch_size:,} tokens = {rows} rows × {seq} × {accum} micro-batches"),
        ("data", f"{len(train_paths)} {cfg.data.corpus} train shard(s), val = {val_paths[0].name}; "
                 f"{section.packing} packing"),
        ("corpus", describe_shards(train_paths)),
    ]
    return stage.run(data, num_steps=num_steps, lr_multiplier=lambda step, _: float(schedule(step)),
                     accum=accum, plan=plan,
                     total_flops=estimate_flops(model_config) * tokens)
