"""Typed run configuration: frozen dataclasses, TOML presets (``configs/``) and ``--key=value`` overrides.

A run is described by one :class:`RunConfig` with a section per concern. Defaults are nanochat's d20
recipe on one 80 GB GPU (docs/DESIGN.md §5–§7); presets in ``configs/*.toml`` change only what differs, and
the command line changes single fields::

    python train.py --stage=base --config configs/d12.toml --base.num_iterations=100 --tag=test

Keys are ``section.field`` (``model.depth``, ``base.device_batch_size``, ``checkpoint.save_every``...);
the run-level fields (``tag``, ``seed``, ``resume``, ``wandb_run``, ``source_tag``, ``source_step``)
have no section. Unknown keys and values of the wrong type are refused with a one-line JaxchatError.
Command-line values are text and are parsed (``1_000``, ``1e6``; booleans only ``true``/``false``);
TOML presets and checkpoint metadata hold typed values, which must already have the field's type.
Floats must be finite everywhere. ``validate(config, stage)`` checks the settings of the stages that
``stage`` runs, and only those.

The reading and overriding functions work on any frozen config dataclass (top-level fields and one
level of sections): every entry point's config goes through them (``jaxchat.cli``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from jaxchat import stages, targets
from jaxchat.common import JaxchatError

# A field that takes a number or the word "auto" (decided at run time: jaxchat/fit.py).
Auto = Literal["auto"]

# ---- sections ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The GPT's shape (docs/DESIGN.md §3) and how it runs."""

    depth: int = 20  # n_layer = depth, n_embd = 64·depth, head_dim 128
    sequence_len: int = 2048
    dtype: str = "auto"  # compute dtype: auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16
    attention: str = "auto"  # auto (cudnn on GPU with bf16, else blocked) | blocked | xla | cudnn
    remat: bool | Auto = False  # recompute block activations in the backward pass (less memory, ~30 % more compute); auto: only when the step would not fit
    window_pattern: str = "L"  # attention per layer, tiled, last layer always L: L = full context, S = a quarter of it (2026: SSSL)


@dataclasses.dataclass(frozen=True)
class TokenizerSection:
    """The tokenizer stage (docs/DESIGN.md §1)."""

    vocab_size: int = 65536
    max_chars: int = 2_000_000_000  # characters of the train shards to train on
    doc_cap: int = 10_000  # each document cut to this many characters
    replace: bool = False  # retrain even if checkpoints use the current tokenizer (it is moved to tokenizer.old-<fp>/)


@dataclasses.dataclass(frozen=True)
class OptimSection:
    """Optimizer (docs/DESIGN.md §4); shared by the stages (SFT scales every LR by ``sft.init_lr_frac``)."""

    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5  # 2026 recipe: the per-layer resid/x0 lambdas (AdamW)
    weight_decay: float = 0.0  # 2026 recipe: Muon's cautious weight decay at d12, scaled by depth and batch, cosine to 0
    grad_clip: float = 1.0  # base training; 0 disables (mid and SFT never clip, as nanochat)


@dataclasses.dataclass(frozen=True)
class BaseSection:
    """Base pretraining on FineWeb-Edu (docs/DESIGN.md §5). Horizon: the first of num_iterations,
    target_flops, target_param_data_ratio that is set (> 0)."""

    device_batch_size: int | Auto = 32  # rows per micro-batch; auto: the most that fit the GPU (jaxchat/fit.py)
    total_batch_size: int | Auto = 524_288  # tokens per optimizer step; accumulation makes it up; auto: nanochat 92d63d4's optimum for the horizon
    num_iterations: int = -1
    target_flops: float = -1.0
    target_param_data_ratio: float = 20.0  # Chinchilla
    packing: str = "stream"  # stream: windows of the token stream | bestfit: nanochat 92d63d4's BOS-aligned best-fit rows
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # LR warmup as a number of steps instead of a ratio (2026: 40)
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    eval_every: int = 250  # val bpb
    eval_tokens: int = 20 * 524_288
    core_every: int = 2000  # CORE + samples; -1 = only at the end; 0 = never
    core_max_per_task: int = 500


@dataclasses.dataclass(frozen=True)
class MidSection:
    """Midtraining on the task mixture (docs/DESIGN.md §6): one epoch, progress-based LR."""

    device_batch_size: int | Auto = 32  # rows per micro-batch; auto: the most that fit the GPU
    total_batch_size: int = 524_288
    num_iterations: int = -1  # -1: one full epoch of the mixture
    eval_every: int = 150
    eval_tokens: int = 20 * 524_288
    task_scale: float = 1.0  # multiplies the mixture's synthetic/capped row counts (tests use < 1)


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """Supervised fine-tuning (docs/DESIGN.md §7): one epoch, one conversation per row."""

    device_batch_size: int | Auto = 4  # rows per micro-batch; auto: the most that fit the GPU
    examples_per_step: int | Auto = 32  # rows per step = device_batch_size × accumulation; auto: the source checkpoint's tokens per step ÷ model.sequence_len
    packing: str = "rows"  # rows: one conversation per row | bestfit: nanochat 92d63d4's rows packed with whole conversations
    load_optimizer: bool = False  # start from the source checkpoint's optimizer state (momenta), with SFT's LRs (2026 recipe)
    num_iterations: int = -1  # -1: one epoch
    init_lr_frac: float = 0.02
    eval_every: int = 100  # val loss (2026 recipe: val bpb)
    eval_steps: int = 100  # batches of the val metric
    metrics_every: int = 200  # MMLU / ARC-Easy accuracy (2026 recipe: ChatCORE of ARC, MMLU, GSM8K, HumanEval)
    metrics_max_problems: int = 1024  # per categorical task; -1 = all
    metrics_max_generative: int = 24  # 2026 recipe: per generative task of ChatCORE
    mmlu_epochs: int = 3  # 2026 recipe's mixture: SmolTalk + MMLU auxiliary_train × this + GSM8K × gsm8k_epochs
    gsm8k_epochs: int = 4
    task_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class ChatEvalSection:
    """Chat evaluation of a checkpoint (docs/DESIGN.md §9): ``--stage=chat_eval``, ``all`` (after mid and sft)
    and ``python -m jaxchat.eval.chat``."""

    source: str = "sft"  # the stage whose checkpoint is evaluated: mid | sft (the eval CLI also takes base)
    tasks: str = "all"  # all, or comma-separated: ARC-Easy,ARC-Challenge,MMLU,GSM8K,HumanEval,SpellingBee
    max_problems: int = -1  # per task; -1 = all
    max_new_tokens: int = 512  # per completion of a generative task
    batch_size: int = 8  # prompts per device in a batch of a categorical task
    num_samples: int = 1  # completions per generative problem; it passes when any does (pass@k)
    temperature: float = 0.0  # generative tasks; 0 = greedy
    top_k: int = 50  # generative tasks: sample from the k likeliest tokens; 0 = the whole vocabulary


@dataclasses.dataclass(frozen=True)
class SamplingSection:
    """How the chat tools sample a reply (``python -m jaxchat.chat``, ``python -m jaxchat.web``)."""

    temperature: float = 0.6  # 0 = greedy
    top_k: int = 50  # sample from the k likeliest tokens; 0 = the whole vocabulary
    max_tokens: int = 512  # longest reply
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    save_every: int = -1  # also save every N steps (-1: only at the end of the stage)
    keep_last: int = 3


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """How the devices share the work (jaxchat/sharding.py): every device takes its own rows of a batch."""

    fsdp: int = 1  # devices that split each parameter and its optimizer state (ZeRO-3); 1: plain data parallelism


@dataclasses.dataclass(frozen=True)
class DistSection:
    """Several processes (hosts) training one model on JAX's distributed runtime (jaxchat/distributed.py)."""

    coordinator: str = ""  # host:port of process 0; empty: one process (unless auto)
    num_processes: int = 1  # with coordinator: how many processes take part
    process_id: int = 0  # with coordinator: this process's number, 0 … num_processes − 1
    auto: bool = False  # let JAX detect the cluster (SLURM, Open MPI, …) and start jax.distributed from it


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where the data comes from (jaxchat/data/offline.py, jaxchat/tasks/mixtures.py)."""

    corpus: str = "fineweb"  # pretraining shards: fineweb (base_data/) | climbmix (base_data_climbmix/, nanochat 92d63d4's data)
    offline: bool = False  # use what this machine has: tasks, CORE and chat evals that need the network are skipped (one line each)
    custom_json: str = ""  # .jsonl files of conversations (comma-separated) added to the mid and SFT train mixtures


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything ``train.py`` needs. ``tag`` defaults to ``d<depth>``."""

    recipe: str = "2025"  # 2025: nanochat Nov 2025 (base → mid → SFT) | 2026: nanochat 92d63d4 (base → SFT); changes the defaults (RECIPE_DEFAULTS)
    tag: str = ""
    seed: int = 0
    resume: bool = False  # continue the interrupted run of this stage/tag from its latest checkpoint
    source_tag: str = ""  # mid/sft: the previous stage's tag (default: this run's tag)
    source_step: int = -1  # mid/sft: the previous stage's step (default: its latest)
    wandb_run: str = ""  # log to Weights & Biases under this run name (default: local JSONL only)
    target: str = ""  # the GPU a preset is sized for (jaxchat/targets); python -m jaxchat.plan plans for it
    model: ModelSection = ModelSection()
    tokenizer: TokenizerSection = TokenizerSection()
    optim: OptimSection = OptimSection()
    base: BaseSection = BaseSection()
    mid: MidSection = MidSection()
    sft: SFTSection = SFTSection()
    chat_eval: ChatEvalSection = ChatEvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    data: DataSection = DataSection()
    mesh: MeshSection = MeshSection()
    dist: DistSection = DistSection()

    @property
    def run_tag(self) -> str:
        return self.tag or f"d{self.model.depth}"


# What ``recipe = "2026"`` changes before a preset and the command line apply (nanochat 92d63d4's
# scripts/base_train.py and chat_sft.py defaults; docs/DESIGN.md §15). Which model, optimizer and
# schedules a stage builds follows from ``recipe`` itself.
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "2025": {},
    "2026": {
        "tokenizer.vocab_size": 32768,
        "model.window_pattern": "SSSL",
        "optim.embedding_lr": 0.3, "optim.unembedding_lr": 0.008, "optim.matrix_lr": 0.02, "optim.scalar_lr": 0.5,
        "optim.weight_decay": 0.28, "optim.grad_clip": 0.0,
        "base.total_batch_size": "auto", "base.target_param_data_ratio": 12.0, "base.warmup_steps": 40,
        "base.warmdown_ratio": 0.65, "base.final_lr_frac": 0.05, "base.packing": "bestfit",
        "base.eval_tokens": 80 * 524_288,
        "sft.device_batch_size": 32, "sft.examples_per_step": "auto", "sft.packing": "bestfit",
        "sft.load_optimizer": True, "sft.init_lr_frac": 0.8, "sft.eval_every": 200, "sft.eval_steps": 320,
        "sft.metrics_every": 200, "sft.metrics_max_problems": -1,
        "data.corpus": "climbmix",
    },
}


def initial(recipe: str = "2025") -> RunConfig:
    """The defaults of ``recipe``: ``RunConfig()`` with ``RECIPE_DEFAULTS[recipe]`` applied."""
    if recipe not in stages.RECIPES:
        raise JaxchatError(f"recipe={recipe!r}: expected one of {', '.join(stages.RECIPES)}")
    return override(RunConfig(recipe=recipe), RECIPE_DEFAULTS[recipe], source=f"recipe {recipe}", typed=True)


def build(preset: str | Path | None, options: dict[str, str], prog: str = "python train.py") -> RunConfig:
    """An entry point's config: the recipe's defaults (``--recipe``, else the preset's ``recipe``, else
    2025), then the preset, then the command line's ``options`` ({dotted key: text})."""
    data = _flatten(_read_toml(preset)) if preset else {}
    recipe = options.get("recipe") or data.get("recipe") or "2025"
    if not isinstance(recipe, str):
        raise JaxchatError(f"{preset}: recipe={recipe!r}: expected a string, one of {', '.join(stages.RECIPES)}")
    config = initial(recipe.strip())
    if preset:
        config = override(config, data, source=str(preset), typed=True)
    return override(config, options, prog=prog)


# ---- validation ----------------------------------------------------------------------------------

_POSITIVE = {
    "model.depth", "model.sequence_len", "tokenizer.vocab_size", "tokenizer.max_chars", "tokenizer.doc_cap",
    "base.device_batch_size", "base.total_batch_size", "base.eval_tokens", "base.core_max_per_task",
    "mid.device_batch_size", "mid.total_batch_size", "mid.eval_tokens", "mid.task_scale",
    "sft.device_batch_size", "sft.examples_per_step", "sft.init_lr_frac", "sft.eval_steps",
    "sft.metrics_max_generative", "sft.mmlu_epochs", "sft.gsm8k_epochs", "sft.task_scale", "checkpoint.keep_last", "chat_eval.max_new_tokens",
    "chat_eval.batch_size", "chat_eval.num_samples", "mesh.fsdp", "dist.num_processes",
}
_NON_NEGATIVE = {"chat_eval.temperature", "chat_eval.top_k", "optim.embedding_lr", "optim.unembedding_lr",
                 "optim.matrix_lr", "optim.scalar_lr", "optim.weight_decay", "optim.grad_clip", "base.warmup_steps",
                 "dist.process_id"}
_UNIT_INTERVAL = {"base.warmup_ratio", "base.warmdown_ratio", "base.final_lr_frac"}
_CHOICES = {"model.dtype": ("auto", "float32", "bfloat16"), "model.attention": ("auto", "blocked", "xla", "cudnn"),
            "base.packing": ("stream", "bestfit"), "sft.packing": ("rows", "bestfit"),
            "data.corpus": ("fineweb", "climbmix"), "recipe": stages.RECIPES,
            "chat_eval.source": tuple(stage.name for stage in stages.STAGES if stage.chat_evaluated)}


def stages_run(stage: str, recipe: str = "2025") -> tuple[str, ...]:
    """The registered stages ``train.py --stage=STAGE`` runs in ``recipe``: ``all`` is every stage of
    the recipe with ``in_all``, plus chat_eval when one of them is chat-evaluated (docs/DESIGN.md: the
    order of ``all``). JaxchatError for a stage the recipe does not have."""
    if stage != "all":
        stages.check_in_recipe(stage, recipe)  # JaxchatError naming the choices
        return (stage,)
    specs = [spec for spec in stages.STAGES if spec.in_all and recipe in spec.recipes]
    run = [spec.name for spec in specs]
    if any(spec.chat_evaluated for spec in specs):
        run.append("chat_eval")
    return tuple(run)


def sections_read(stage: str, recipe: str = "2025") -> tuple[str, ...]:
    """The config sections ``stage`` (a registered stage or ``all``) reads, in RunConfig's order."""
    every = tuple(f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.default))
    read = set()
    for name in stages_run(stage, recipe):
        sections = stages.get(name).sections
        read.update(every if sections is None else sections)
    return tuple(name for name in every if name in read)


def validate(config: RunConfig, stage: str = "all") -> RunConfig:
    """Check the rules of the settings ``stage`` reads (default ``all``: every stage's); JaxchatError
    naming the key and the value otherwise. Run-level fields are always checked."""
    if config.recipe not in stages.RECIPES:
        raise JaxchatError(f"recipe={config.recipe!r}: expected one of {', '.join(stages.RECIPES)}")
    sections = set(sections_read(stage, config.recipe))

    def checked(key: str) -> bool:
        return "." not in key or key.split(".", 1)[0] in sections

    for key, value, _ in keys(config):
        # Presets and the command line refuse inf/nan already; a config built in code may still hold one.
        if checked(key) and isinstance(value, float) and not math.isfinite(value):
            raise JaxchatError(f"{key}={value}: expected a finite number")
    for key in sorted(filter(checked, _POSITIVE)):
        if key == "sft.metrics_max_problems" and config.sft.metrics_max_problems == -1:
            continue  # -1: all
        if get(config, key) != "auto" and get(config, key) <= 0:
            raise JaxchatError(f"{key}={get(config, key)}: expected a positive number")
    for key in sorted(filter(checked, _NON_NEGATIVE)):
        if get(config, key) < 0:
            what = " (0 disables clipping)" if key == "optim.grad_clip" else ""
            raise JaxchatError(f"{key}={get(config, key)}: expected a number >= 0{what}")
    for key in sorted(filter(checked, _UNIT_INTERVAL)):
        if not 0 <= get(config, key) <= 1:
            raise JaxchatError(f"{key}={get(config, key)}: expected a number in [0, 1]")
    if config.target:
        targets.check_name(config.target)
    pattern = config.model.window_pattern
    if "model" in sections and (not pattern or set(pattern.upper()) - set("SL")):
        raise JaxchatError(f"model.window_pattern={pattern!r}: expected letters S (short window) and L (full context)")
    if "chat_eval" in sections and (config.chat_eval.max_problems == 0 or config.chat_eval.max_problems < -1):
        raise JaxchatError(f"chat_eval.max_problems={config.chat_eval.max_problems}: expected -1 (all) or a positive number")
    for key, choices in _CHOICES.items():
        if checked(key) and get(config, key) not in choices:
            raise JaxchatError(f"{key}={get(config, key)!r}: expected one of {', '.join(choices)}")
    for name in ("base", "mid"):
        if name not in sections:
            continue
        section = getattr(config, name)
        if section.total_batch_size == "auto":
            continue  # decided from the horizon at run time; checked then
        rows = 1 if section.device_batch_size == "auto" else section.device_batch_size  # auto: a divisor
        row_tokens = rows * config.model.sequence_len
        if section.total_batch_size % row_tokens:
            what = "model.sequence_len" if rows == 1 else f"{name}.device_batch_size × model.sequence_len"
            raise JaxchatError(
                f"{name}.total_batch_size={section.total_batch_size} is not a multiple of {what} = {row_tokens}")
    if ("sft" in sections and "auto" not in (config.sft.device_batch_size, config.sft.examples_per_step)
            and config.sft.examples_per_step % config.sft.device_batch_size):
        raise JaxchatError(f"sft.examples_per_step={config.sft.examples_per_step} is not a multiple of "
                           f"sft.device_batch_size={config.sft.device_batch_size}")
    if "dist" in sections:
        _check_dist(config.dist)
    if "base" in sections and config.base.warmup_steps > 0 and config.base.warmup_ratio > 0:
        raise JaxchatError(f"base.warmup_steps={config.base.warmup_steps} and base.warmup_ratio="
                           f"{config.base.warmup_ratio:g} are both set; set one")
    if "base" in sections and not config.base.warmup_ratio + config.base.warmdown_ratio <= 1:
        raise JaxchatError(f"base.warmup_ratio + base.warmdown_ratio = "
                           f"{config.base.warmup_ratio + config.base.warmdown_ratio:g}: must lie in [0, 1]")
    return config


def _check_dist(dist: DistSection) -> None:
    """The ``dist.*`` rules (jaxchat/distributed.py): one line naming the key and the value."""
    from jaxchat.distributed import split_address  # the HOST:PORT rule, shared with the runtime

    if dist.process_id >= dist.num_processes:
        raise JaxchatError(f"dist.process_id={dist.process_id}: expected a number below dist.num_processes="
                           f"{dist.num_processes} (0 … {dist.num_processes - 1})")
    if dist.coordinator:
        split_address(dist.coordinator)
        if dist.auto:
            raise JaxchatError(f"dist.coordinator={dist.coordinator} and dist.auto=true are both set; set one")
    elif dist.num_processes > 1 and not dist.auto:
        raise JaxchatError(f"dist.num_processes={dist.num_processes} needs dist.coordinator=HOST:PORT (process 0's "
                           "address, the same on every process) or dist.auto=true")


# ---- reading and overriding ----------------------------------------------------------------------


def get(config: Any, key: str) -> Any:
    """The value of a dotted key (``base.num_iterations``)."""
    obj = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def keys(config: Any = None) -> list[tuple[str, Any, str]]:
    """Every settable key of a config (default ``RunConfig()``) with its value and type name, in order."""
    config = RunConfig() if config is None else config
    out = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                out.append((f"{field.name}.{sub.name}", getattr(value, sub.name), _type_name(value, sub.name)))
        else:
            out.append((field.name, value, _type_name(config, field.name)))
    return out


def _field_type(obj: Any, name: str) -> type:
    return typing.get_type_hints(type(obj))[name]


def _type_name(obj: Any, name: str) -> str:
    return _describe_type(_field_type(obj, name))


def _describe_type(target: Any) -> str:
    """``int``, ``int|auto`` (a union with a Literal), as ``--help`` and errors show it."""
    if typing.get_origin(target) is Literal:
        return "|".join(str(choice) for choice in typing.get_args(target))
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        return "|".join(_describe_type(member) for member in typing.get_args(target))
    return getattr(target, "__name__", str(target))


def _coerce_union(key: str, value: Any, target: Any, *, typed: bool, source: str) -> Any:
    """``value`` as one of the members of a ``X | Literal[...]`` field: a literal word (``auto``) as
    itself, anything else as the first member type that takes it."""
    members = typing.get_args(target)
    words = [word for member in members if typing.get_origin(member) is Literal for word in typing.get_args(member)]
    text = value.strip().lower() if isinstance(value, str) and not typed else value
    if text in words:
        return text
    others = [member for member in members if typing.get_origin(member) is not Literal]
    for member in others:
        try:
            return _coerce(key, value, member, typed=typed, source=source)
        except JaxchatError:
            continue
    where = "" if source == "command line" else f"{source}: "
    kinds = ["bool (true or false)" if member is bool else _describe_type(member) for member in others]
    raise JaxchatError(f"{where}{key}={value!r}: expected {' or '.join(kinds + words)}")


def _coerce(key: str, value: Any, target: type, *, typed: bool, source: str) -> Any:
    """``value`` as ``target``; JaxchatError naming the source (a file), key, value and type otherwise.

    A command-line value (``typed=False``) is text and is parsed: an int as ``12``, ``1_000`` or
    ``1e6``, a float as a finite number, a bool only as ``true`` or ``false`` (any case: ``1``/``0``/
    ``yes``/``no`` are refused as ambiguous; ``--flag`` alone means true). A TOML or checkpoint value
    (``typed=True``) must already have the field's type, an int standing for a float: ``depth = "4"``,
    ``depth = 4.0`` or ``resume = "yes"`` in a preset is refused, not guessed at. Floats must be finite.
    """
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        return _coerce_union(key, value, target, typed=typed, source=source)
    where = "" if source == "command line" else f"{source}: "
    if not typed and isinstance(value, str) and target is not str:
        text = value.strip()
        if target is bool:
            if text.lower() not in ("true", "false"):
                raise JaxchatError(f"{where}{key}={value!r}: expected bool (true or false)")
            return text.lower() == "true"
        try:
            number = float(text.replace("_", ""))  # accepts 1e6 and 1_000
        except ValueError:
            raise JaxchatError(f"{where}{key}={value!r}: expected {target.__name__}") from None
        if target is int:
            if not number.is_integer():
                raise JaxchatError(f"{where}{key}={value!r}: expected int")
            return int(number)
        if not math.isfinite(number):
            raise JaxchatError(f"{where}{key}={value!r}: expected a finite float")
        return number
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        quoted = typed and isinstance(value, str)
        hint = " (TOML values are typed: no quotes around numbers and booleans)" if quoted else ""
        raise JaxchatError(f"{where}{key}={value!r}: expected {target.__name__}, got {type(value).__name__}{hint}")
    if target is float and not math.isfinite(value):
        raise JaxchatError(f"{where}{key}={value!r}: expected a finite float")
    return value


def override(config: Any, updates: dict[str, Any], source: str = "command line",
             prog: str = "python train.py", *, typed: bool = False) -> Any:
    """A new config with ``updates`` ({dotted key: value}) applied; unknown keys are refused
    (naming ``prog --help``, which lists them). ``typed``: the values come from a TOML file or
    checkpoint metadata (``source``) and must have each field's type; otherwise strings are parsed
    as the command line's are (see ``_coerce``)."""
    known = {key for key, _, _ in keys(config)}
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in known:
            close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise JaxchatError(f"{source}: unknown config key {key!r}{hint}; `{prog} --help` lists them")
        if "." in key:
            section, name = key.split(".", 1)
            sub = getattr(config, section)
            sections.setdefault(section, {})[name] = _coerce(key, value, _field_type(sub, name), typed=typed,
                                                             source=source)
        else:
            top[key] = _coerce(key, value, _field_type(config, key), typed=typed, source=source)
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **top)


def load_toml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Apply a TOML preset (sections as tables, run-level keys at the top) on top of ``base`` (default:
    the defaults of the preset's ``recipe``)."""
    if base is None:
        return build(path, {})
    return override(base, _flatten(_read_toml(path)), source=str(path), typed=True)


def _read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JaxchatError(f"{path}: config file not found (presets live in configs/)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise JaxchatError(f"{path}: not valid TOML ({e})") from None


def explicit_keys(argv: list[str]) -> frozenset[str]:
    """The dotted keys ``train.py``'s command line ``argv`` sets: its ``--key=value`` overrides and
    every key of its ``--config`` preset (not ``stage`` and ``config`` themselves).

    A check that must tell a value the user chose from a default reads this (``jaxchat.preflight``:
    ``tokenizer.vocab_size`` is refused only when set and different from the tokenizer's).
    """
    options = parse_overrides(list(argv))
    options.pop("stage", None)
    preset = options.pop("config", None)
    return frozenset(options) | (frozenset(_flatten(_read_toml(preset))) if preset else frozenset())


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """{"base": {"num_iterations": 5}, "tag": "x"} → {"base.num_iterations": 5, "tag": "x"}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": sub_value for sub, sub_value in value.items()})
        else:
            flat[key] = value
    return flat


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--base.num_iterations=10", "--tag", "x"]`` → {"base.num_iterations": "10", "tag": "x"}.

    ``--flag`` alone means ``--flag=true`` (for booleans such as ``--resume``). Dashes in names are
    accepted for underscores (``--base.device-batch-size``).
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise JaxchatError(f"unexpected argument {arg!r}; expected --key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = body, args[i + 1]
            i += 1
        else:
            key, value = body, "true"
        out[key.replace("-", "_")] = value
        i += 1
    return out


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (JSON/TOML-friendly) for checkpoints' metadata and the report."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`to_dict` (unknown keys refused, like a preset)."""
    return override(RunConfig(), _flatten(data), source="checkpoint metadata", typed=True)
