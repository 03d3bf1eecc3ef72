"""The recipe's non-training stages (download, tokenizer, chat_eval, report) and ``--stage=all``.

``train.py --stage=NAME`` runs the stage registered as NAME in ``jaxchat.stages``; ``all`` runs the
registry in order (see ``run_all``). ``all`` leaves out ``download`` (the only stage that uses the
network: run it first, as ``runs/speedrun_1gpu.sh`` does).
"""

from __future__ import annotations

import dataclasses
import functools
import math

from jaxchat import distributed, stages
from jaxchat.checkpoint import checkpoint_dir, committed_steps, read_meta
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.config import RunConfig
from jaxchat.data import download as downloader
from jaxchat.data.offline import resolve_config
from jaxchat.data.shards import default_data_dir
from jaxchat.eval import chat as chat_evaluator
from jaxchat.report import assemble
from jaxchat.tokenizer import default_tokenizer_dir
from jaxchat.tokenizer import train as tokenizer_trainer
from jaxchat.training.horizon import model_config, plan

CHARS_PER_TOKEN = 4.8  # FineWeb-Edu with the 65K tokenizer (docs/DESIGN.md §1: 4.86 bytes/token)
CHARS_PER_SHARD = 250e6
# Tokens one shard of each corpus yields: FineWeb-Edu's 250M characters at 4.8 a token; ClimbMix as
# nanochat 92d63d4's speedrun counts it (about 150 shards for its 5.84B tokens).
TOKENS_PER_SHARD = {"fineweb": CHARS_PER_SHARD / CHARS_PER_TOKEN, "climbmix": 5.84e9 / 150}


def shards_needed(cfg: RunConfig) -> int:
    """Pretraining shards for the tokenizer and base horizon of ``cfg`` (+10 % margin, + 1 val shard)."""
    base = plan(cfg, model_config(cfg, cfg.tokenizer.vocab_size))
    per_shard = TOKENS_PER_SHARD[cfg.data.corpus]
    base_shards = base.num_steps * base.total_batch_size * 1.1 / per_shard
    tokenizer_shards = cfg.tokenizer.max_chars / (per_shard * CHARS_PER_TOKEN)
    return math.ceil(max(tokenizer_shards, base_shards)) + 1


def download(cfg: RunConfig) -> None:
    """The pretraining shards ``cfg`` needs (``data.corpus``), the task datasets and the eval bundle
    (``jaxchat.data.download``). ClimbMix's val shard comes on top of its train shards."""
    n = shards_needed(cfg)
    corpus = cfg.data.corpus
    print(f"download: {n} {corpus} shards for this config, the task datasets and the eval bundle")
    count = n - 1 if corpus == "climbmix" else n
    if downloader.run(downloader.DownloadConfig(num_shards=count, corpus=corpus)).missing:
        raise JaxchatError("download incomplete (see the lines above); re-run the same command to resume")


def tokenizer(cfg: RunConfig) -> None:
    """Train the tokenizer of ``cfg.tokenizer`` (``jaxchat.tokenizer.train``)."""
    data_dir = "" if cfg.data.corpus == "fineweb" else str(default_data_dir(cfg.data.corpus))
    tokenizer_trainer.run(tokenizer_trainer.TokenizerTrainConfig(data_dir=data_dir, tokenizer=cfg.tokenizer))


def chat_eval(cfg: RunConfig, source: str | None = None) -> None:
    """Evaluate the latest checkpoint of ``source`` (default ``cfg.chat_eval.source``) of the run's tag
    on the chat tasks, as ``cfg.chat_eval`` says (``jaxchat.eval.chat``, docs/DESIGN.md §9). The eval
    shares its problems among every device of every process (the params whole on each: generation
    needs them so), whatever ``mesh.fsdp`` the training used."""
    section = dataclasses.replace(cfg.chat_eval, source=source or cfg.chat_eval.source)
    chat_evaluator.run(chat_evaluator.ChatEvalConfig(tag=cfg.run_tag, chat_eval=section))


def report(cfg: RunConfig) -> None:
    """Assemble the report card (``jaxchat.report``)."""
    print(f"report: {assemble()}")


def run_stage(stage: str, cfg: RunConfig) -> None:
    """Run ``stage`` (a name from ``jaxchat.stages``, or ``all``) with ``cfg``."""
    cfg = resolve_config(cfg)  # data.offline: CORE and the chat-eval tasks that need the network are skipped
    if stage == "all":
        run_all(cfg)
    else:
        stages.get(stage).run(cfg)


def stage_status(stage: str, tag: str) -> str:
    """'done' (final checkpoint written), 'partial' (interrupted) or 'none' for ``stage``/``tag``."""
    if not committed_steps(checkpoint_dir(stage, tag)):
        return "none"
    try:  # the latest intact step (a newer damaged one: a warning line, and the stage resumes before it)
        return "done" if read_meta(stage, tag).get("final") else "partial"
    except JaxchatError:  # no intact step: the stage's --resume says so, in one line
        return "partial"


def run_all(cfg: RunConfig) -> None:
    """Every stage of ``jaxchat.stages`` with ``in_all`` that the recipe has, in order, with chat_eval
    after each ``chat_evaluated`` one: tokenizer → base → mid → chat_eval(mid) → sft → chat_eval(sft) →
    report (the 2026 recipe has no mid).

    An existing tokenizer is kept (retraining it under checkpoints trained with it would orphan
    them). With several processes, a stage that writes shared files once (the tokenizer, the report)
    runs in process 0 while the others wait for it. With ``--resume``, finished stages are skipped,
    the interrupted one continues from its latest checkpoint and the rest start fresh, so re-running
    the same command after a crash loses nothing.
    """
    # Later stages start from this run's checkpoints, never from an older one with another tag.
    cfg = dataclasses.replace(cfg, source_tag="", source_step=-1)
    for stage in stages.STAGES:
        if not stage.in_all or cfg.recipe not in stage.recipes:
            continue
        if stage.name == "tokenizer" and (default_tokenizer_dir() / "tokenizer.json").is_file():
            print(f"tokenizer: using the one in {default_tokenizer_dir()} (train a new one with --stage=tokenizer)")
            continue
        stage_cfg = cfg
        if stage.checkpointed and cfg.resume:
            status = stage_status(stage.name, cfg.run_tag)
            if status == "done":
                print(f"{stage.name}: already finished for tag {cfg.run_tag}, skipping")
                continue
            stage_cfg = dataclasses.replace(cfg, resume=status == "partial")
        if stage.sections is None or "dist" in stage.sections:  # every process takes part (None: reads all)
            stage.run(stage_cfg)
        else:  # files written once, on the shared $JAXCHAT_HOME (the tokenizer, the report)
            distributed.on_primary(stage.name, functools.partial(stage.run, stage_cfg))
        if stage.chat_evaluated:
            chat_eval(cfg, stage.name)
    print(f"done: everything is in {jaxchat_home()}")
