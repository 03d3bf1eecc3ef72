"""The stages of the recipe, in pipeline order: the one list every module that names stages reads.

``python train.py --stage=NAME`` runs ``get(NAME).run(cfg)``; ``--stage=all`` runs every stage with
``in_all`` in this order, evaluating each ``chat_evaluated`` checkpoint right after its stage. The
checkpoint directories (``checkpoints/<name>/<tag>/``), the ``--source`` choices of the eval / chat /
web tools, the report card's order and columns all come from here.

Adding a stage: write its module with a runner ``fn(cfg: RunConfig)``, add one ``StageSpec`` below.
Runners are named as ``"module:function"`` and imported when the stage runs, so reading this list
(``--help``, checkpoint paths) never imports JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Callable

from jaxchat.common import JaxchatError

# The recipes (``RunConfig.recipe``): nanochat as of Nov 2025 (commit 16788ee, the default) and nanochat
# 92d63d4 (Jul 2026), which drops midtraining: its SFT starts from base (docs/DESIGN.md §15).
RECIPES = ("2025", "2026")

if TYPE_CHECKING:
    from jaxchat.config import RunConfig


def _full_lr(cfg: RunConfig) -> float:
    return 1.0


def _sft_lr(cfg: RunConfig) -> float:
    return cfg.sft.init_lr_frac


@dataclasses.dataclass(frozen=True)
class OptimizerOverrides:
    """How a training stage departs from the shared ``optim`` section (docs/DESIGN.md §4–§7)."""

    lr_frac: Callable[[RunConfig], float] = _full_lr  # every group's LR × this
    clip_gradients: bool = True  # global-norm clipping at optim.grad_clip
    muon_momentum: float | None = None  # a constant; None: the 0.85 → 0.95 warmup over 300 steps


@dataclasses.dataclass(frozen=True)
class StageSpec:
    name: str  # --stage=NAME, checkpoints/NAME/<tag>/, report/NAME.md
    title: str  # the heading of its report card section
    runner: str  # "module:function" taking the RunConfig
    starts_from: str | None = None  # the stage whose latest checkpoint seeds this one's params
    checkpointed: bool = False  # writes checkpoints/NAME/<tag>/<step>/ (a training stage)
    optimizer: OptimizerOverrides = OptimizerOverrides()
    chat_evaluated: bool = False  # --stage=all runs chat_eval on its checkpoint right after it
    in_all: bool = True  # part of --stage=all
    recipes: tuple[str, ...] = RECIPES  # the recipes that have this stage
    # The config sections it reads: `validate` checks only those, so a run is never refused for the
    # settings of a stage it does not run. None: every section.
    sections: tuple[str, ...] | None = None

    def source(self, recipe: str) -> str | None:
        """The stage whose checkpoint seeds this one in ``recipe``: ``starts_from``, or, when the recipe
        lacks that stage, the stage it would have started from (2026: SFT starts from base)."""
        source = self.starts_from
        while source is not None and recipe not in get(source).recipes:
            source = get(source).starts_from
        return source

    def run(self, cfg: RunConfig) -> Any:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)(cfg)


_TRAINING = ("model", "tokenizer", "optim", "mesh", "dist")  # + the stage's own section and checkpoint (vocab_size: jaxchat.preflight)

STAGES: tuple[StageSpec, ...] = (
    # The only stage that uses the network: the shards for the tokenizer's characters and base's horizon.
    StageSpec("download", "Download", "jaxchat.recipe:download", in_all=False,
              sections=("model", "tokenizer", "base", "data")),
    StageSpec("tokenizer", "Tokenizer training", "jaxchat.recipe:tokenizer", sections=("tokenizer", "data")),
    StageSpec("base", "Base training", "jaxchat.training.base:train_base", checkpointed=True,
              sections=(*_TRAINING, "base", "checkpoint", "data")),
    StageSpec("mid", "Mid training", "jaxchat.training.mid:train_mid", starts_from="base", checkpointed=True,
              chat_evaluated=True, optimizer=OptimizerOverrides(clip_gradients=False),  # as nanochat: base only
              recipes=("2025",),
              sections=(*_TRAINING, "mid", "checkpoint", "data")),
    StageSpec("sft", "SFT training", "jaxchat.training.sft:train_sft", starts_from="mid", checkpointed=True,
              chat_evaluated=True,
              optimizer=OptimizerOverrides(lr_frac=_sft_lr, clip_gradients=False, muon_momentum=0.95),
              sections=(*_TRAINING, "sft", "checkpoint", "data")),
    StageSpec("chat_eval", "Chat evaluation", "jaxchat.recipe:chat_eval", in_all=False,  # all: after each stage
              sections=("chat_eval", "data", "mesh", "dist")),
    StageSpec("report", "Report", "jaxchat.recipe:report", sections=()),
)


def names() -> list[str]:
    return [stage.name for stage in STAGES]


def get(name: str) -> StageSpec:
    """The stage called ``name``; JaxchatError naming the choices otherwise."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise JaxchatError(f"unknown stage {name!r}; expected one of {', '.join(names())}")


def check_in_recipe(name: str, recipe: str) -> StageSpec:
    """The stage ``name`` if ``recipe`` has it; a JaxchatError saying what to run instead otherwise."""
    spec = get(name)
    if recipe not in spec.recipes:
        have = ", ".join(s.name for s in STAGES if recipe in s.recipes)
        raise JaxchatError(f"--stage={name}: the {recipe} recipe has no {name} stage (its stages: {have}); "
                           f"run it with --recipe={spec.recipes[0]}")
    return spec


def choices() -> list[str]:
    """What ``train.py --stage`` accepts: every stage, and ``all`` (the recipe: ``jaxchat.recipe.run_all``)."""
    return [*names(), "all"]


def checkpointed() -> list[str]:
    """Names of the stages that write checkpoints (what eval / chat / web can load), in order."""
    return [stage.name for stage in STAGES if stage.checkpointed]


def check_checkpointed(name: str, what: str = "stage") -> str:
    """``name`` if it is a checkpointed stage; JaxchatError naming the choices otherwise."""
    if name not in checkpointed():
        raise JaxchatError(f"unknown {what} {name!r}; expected a stage with checkpoints: {', '.join(checkpointed())}")
    return name
