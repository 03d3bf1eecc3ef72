"""A trained model back from its checkpoint, for notebooks, evaluation and the chat tools.

    from jaxchat.model.load import load_model
    model, tokenizer, meta = load_model("sft")          # latest sft checkpoint of the latest tag

The checkpoint's ``meta`` says the model's shape; the params are restored onto a GPT of that shape
and the tokenizer in ``$JAXCHAT_HOME/tokenizer`` must be the one the checkpoint was trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flax import nnx

from jaxchat import runtime as runtime_plan
from jaxchat.checkpoint import find_checkpoint, load_params, read_meta
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.model.config import GPTConfig
from jaxchat.model.gpt import GPT
from jaxchat.tokenizer import Tokenizer

# GPTConfig fields that decide parameter shapes (sequence_len does not: rotary is computed on the fly).
SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                "value_embeds", "layer_lambdas", "smear", "backout", "pad_vocab_to")  # what the parameter tree has


def config_from_meta(meta: dict) -> GPTConfig:
    """The GPTConfig stored in a checkpoint's meta; JaxchatError naming the checkpoint if it is bad."""
    where = meta.get("checkpoint", "checkpoint")
    config = meta.get("model_config")
    if not isinstance(config, dict):
        raise JaxchatError(f"{where}: meta has no model_config dict")
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise JaxchatError(f"{where}: model_config has unknown fields {unknown}; expected {sorted(fields)}")
    try:
        return GPTConfig(**config)
    except (TypeError, ValueError) as e:
        raise JaxchatError(f"{where}: bad model_config {config}: {e}") from e


def check_tokenizer(meta: dict, tokenizer: Any, remedy: str = "retrain from that stage or restore the "
                                                                 "matching tokenizer") -> None:
    """JaxchatError (one line naming both fingerprints) when ``meta``'s checkpoint was trained with
    another tokenizer than ``tokenizer``. A tokenizer replaced with ``tokenizer.replace=true`` is kept
    as ``$JAXCHAT_HOME/tokenizer.old-<fingerprint[:12]>/``."""
    where = meta.get("checkpoint", f"{meta.get('stage', '?')} checkpoint step {meta.get('step', '?')}")
    fingerprint = tokenizer.fingerprint()
    saved = str(meta.get("tokenizer_fingerprint"))
    if saved != fingerprint:
        raise JaxchatError(f"{where} was trained with tokenizer {saved[:12]} but the current tokenizer is "
                           f"{fingerprint[:12]}; {remedy} (a replaced tokenizer is kept as "
                           f"tokenizer.old-{saved[:12]}/ next to tokenizer/)")


def check_compatible(meta: dict, model_config: GPTConfig | dict, tokenizer: Any) -> None:
    """JaxchatError when a source checkpoint cannot seed a model of ``model_config`` with ``tokenizer``.

    Checks the parameter-shaping fields of the configs (sequence_len may differ: no parameter depends
    on it), the tokenizer's fingerprint and its vocab size. Call it before building anything.
    """
    where = meta.get("checkpoint", f"{meta.get('stage', '?')} checkpoint step {meta.get('step', '?')}")
    defaults = dataclasses.asdict(GPTConfig())  # a checkpoint written before a field existed has its default
    saved = {**defaults, **(meta.get("model_config") or {})}
    wanted = {**defaults, **(dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config)
                             else dict(model_config))}
    diffs = [f"{k}={saved.get(k)!r} (model wants {wanted.get(k)!r})" for k in SHAPE_FIELDS if saved.get(k) != wanted.get(k)]
    if diffs:
        raise JaxchatError(f"{where} has a different model shape: {', '.join(diffs)}")
    check_tokenizer(meta, tokenizer)
    if tokenizer.get_vocab_size() != wanted.get("vocab_size"):
        raise JaxchatError(f"tokenizer vocab size {tokenizer.get_vocab_size()} does not match model vocab_size "
                           f"{wanted.get('vocab_size')}")


def load_model(stage: str, tag: str | None = None, step: int | None = None, *,
               runtime: runtime_plan.Runtime | None = None,
               home: str | Path | None = None) -> tuple[GPT, Tokenizer, dict]:
    """``(model, tokenizer, meta)`` from a checkpoint (latest tag and step unless given).

    Builds the GPT from ``meta["model_config"]`` under ``runtime`` (default: the plan for this
    machine, e.g. bfloat16 and cuDNN attention on a GPU), restores its params, and loads
    ``$JAXCHAT_HOME/tokenizer``; refuses (JaxchatError) when that tokenizer is not the one the
    checkpoint was trained with.
    """
    directory, step = find_checkpoint(stage, tag, step, home)  # resolve once: a later save may add one
    meta = read_meta(stage, directory.name, step, home)
    config = config_from_meta(meta)
    tokenizer = Tokenizer.from_directory((Path(home) if home is not None else jaxchat_home()) / "tokenizer")
    check_compatible(meta, config, tokenizer)
    runtime = runtime or runtime_plan.for_this_machine()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: GPT(config, runtime=runtime, rngs=nnx.Rngs(0))))
    params, meta = load_params(stage, directory.name, step, abstract_params=nnx.to_pure_dict(abstract_state),
                               home=home)
    return nnx.merge(graphdef, params), tokenizer, meta
