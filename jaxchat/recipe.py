"""The recipe: which stage runs what, and the order of ``--stage=all`` (what ``train.py`` dispatches to).

    download → tokenizer → base → mid → chat_eval(mid) → sft → chat_eval(sft) → report

``all`` leaves out ``download`` (the only stage that uses the network: run it first, as
``runs/speedrun_1gpu.sh`` does) and keeps an existing tokenizer rather than retraining it under
checkpoints that were trained with it.
"""

from __future__ import annotations

import dataclasses
import math

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.config import RunConfig

CHARS_PER_TOKEN = 4.8  # FineWeb-Edu with the 65K tokenizer (SPEC §1: 4.86 bytes/token)
CHARS_PER_SHARD = 250e6


def shards_needed(cfg: RunConfig) -> int:
    """FineWeb shards for the tokenizer and base horizon of ``cfg`` (+10 % margin, + 1 val shard)."""
    from jaxchat.model import GPTConfig
    from jaxchat.training.base import horizon

    model_config = GPTConfig.from_depth(cfg.model.depth, vocab_size=cfg.tokenizer.vocab_size,
                                        sequence_len=cfg.model.sequence_len)
    steps, _ = horizon(cfg, model_config)
    base_chars = steps * cfg.base.total_batch_size * CHARS_PER_TOKEN * 1.1
    return math.ceil(max(cfg.tokenizer.max_chars, base_chars) / CHARS_PER_SHARD) + 1


def download(cfg: RunConfig) -> None:
    from jaxchat.data.download import main as download_main

    n = shards_needed(cfg)
    print(f"download: {n} FineWeb-Edu shards for this config, the task datasets and the eval bundle")
    if download_main(["-n", str(n)]) != 0:
        raise JaxchatError("download incomplete (see the lines above); re-run the same command to resume")


def tokenizer(cfg: RunConfig) -> None:
    from jaxchat.tokenizer.train import train_tokenizer

    train_tokenizer(max_chars=cfg.tokenizer.max_chars, doc_cap=cfg.tokenizer.doc_cap,
                    vocab_size=cfg.tokenizer.vocab_size)


def chat_eval(cfg: RunConfig, source: str | None = None) -> None:
    """Evaluate the latest ``source`` (mid/sft) checkpoint of the tag on the chat tasks (SPEC §9)."""
    from jaxchat.eval.chat import main as chat_eval_main

    section = cfg.chat_eval
    argv = ["-i", source or section.source, "-g", cfg.run_tag, "-a", section.tasks.replace(",", "|"),
            "-m", str(section.max_new_tokens), "-b", str(section.batch_size)]
    if section.max_problems > 0:
        argv += ["-x", str(section.max_problems)]
    if chat_eval_main(argv) != 0:
        raise JaxchatError(f"chat evaluation of {source or section.source}/{cfg.run_tag} failed (see above)")


def report(cfg: RunConfig) -> None:
    from jaxchat.report import assemble

    print(f"report: {assemble()}")


def base(cfg: RunConfig) -> None:
    from jaxchat.training.base import train_base

    train_base(cfg)


def mid(cfg: RunConfig) -> None:
    from jaxchat.training.mid import train_mid

    train_mid(cfg)


def sft(cfg: RunConfig) -> None:
    from jaxchat.training.sft import train_sft

    train_sft(cfg)


def run_stage(stage: str, cfg: RunConfig) -> None:
    """Run ``stage`` (a name from ``STAGES``) with ``cfg``."""
    STAGES[stage](cfg)


def stage_status(stage: str, tag: str) -> str:
    """'done' (final checkpoint written), 'partial' (interrupted) or 'none' for ``stage``/``tag``."""
    from jaxchat.checkpoint import checkpoint_dir, read_meta

    directory = checkpoint_dir(stage, tag)
    if not directory.is_dir():
        return "none"
    try:
        return "done" if read_meta(stage, tag).get("final") else "partial"
    except JaxchatError:
        return "none"


def run_all(cfg: RunConfig) -> None:
    """tokenizer → base → mid → chat_eval(mid) → sft → chat_eval(sft) → report.

    With ``--resume``, finished stages are skipped, the interrupted one continues from its latest
    checkpoint and the rest start fresh, so re-running the same command after a crash loses nothing.
    """
    from jaxchat.tokenizer import default_tokenizer_dir

    if (default_tokenizer_dir() / "tokenizer.json").is_file():
        print(f"tokenizer: using the one in {default_tokenizer_dir()} (train a new one with --stage=tokenizer)")
    else:
        tokenizer(cfg)
    # Later stages start from this run's checkpoints, never from an older one with another tag.
    cfg = dataclasses.replace(cfg, source_tag="", source_step=-1)
    for stage in ("base", "mid", "sft"):
        stage_cfg = cfg
        if cfg.resume:
            status = stage_status(stage, cfg.run_tag)
            if status == "done":
                print(f"{stage}: already finished for tag {cfg.run_tag}, skipping")
                continue
            stage_cfg = dataclasses.replace(cfg, resume=status == "partial")
        run_stage(stage, stage_cfg)
        if stage in ("mid", "sft"):
            chat_eval(cfg, stage)
    report(cfg)
    print(f"done: everything is in {jaxchat_home()}")


# Stage name → what runs it (train.py's --stage), in pipeline order.
STAGES = {"download": download, "tokenizer": tokenizer, "base": base, "mid": mid, "sft": sft,
          "chat_eval": chat_eval, "report": report, "all": run_all}
