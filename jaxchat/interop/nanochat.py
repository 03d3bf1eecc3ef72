"""nanochat checkpoints in and out of jaxchat: its ``.pt`` + ``meta.json`` + ``tokenizer.pkl`` ⇄ an Orbax
checkpoint + a jaxchat tokenizer directory, read without running code from the files (``safe_pickle``).

Where nanochat keeps things (``NANOCHAT_BASE_DIR``, default ``~/.cache/nanochat``)::

    base_checkpoints/<tag>/model_XXXXXX.pt, meta_XXXXXX.json, optim_XXXXXX_rank0.pt
    mid_checkpoints/ chatsft_checkpoints/ chatrl_checkpoints/      (same layout)
    tokenizer/tokenizer.pkl (a pickled tiktoken Encoding), token_bytes.pt (int32 bytes per id)

``import_nanochat(source, stage, tag)``: ``source`` is either that base dir (the checkpoint is
``<source>/<stage dir>/<tag>/``, the tokenizer ``<source>/tokenizer/``), or a checkpoint directory
itself (the one holding ``model_XXXXXX.pt``; then the tokenizer is ``tokenizer_dir`` or, when not
given, the base dir two levels up), or one ``model_XXXXXX.pt`` file. It writes
``$JAXCHAT_HOME/checkpoints/<stage>/<tag>/<step>/`` with ``StageCheckpointer`` (checksummed like a
trained step; params and meta only) and ``$JAXCHAT_HOME/tokenizer/``. nanochat's ``rl`` stage goes to
jaxchat's ``sft`` (jaxchat has no RL stage) unless ``as_stage`` says otherwise. The optimizer file is
not read: nanochat's optimizer state (torch optimizers' per-parameter-index dicts, sharded per rank)
has another layout than jaxchat's optax state, so a stage started from an import builds a fresh one
(2026 recipe: ``--sft.load_optimizer=false``).

``export_nanochat(out, stage, tag, step)``: ``out`` becomes (or joins) a nanochat base dir:
``<out>/<stage dir>/<tag>/model_XXXXXX.pt`` + ``meta_XXXXXX.json`` (float32 weights) and
``<out>/tokenizer/tokenizer.pkl`` + ``token_bytes.pt``. No torch needed.

Model mapping (meta ``model_config`` ⇄ ``GPTConfig``; the state_dict names are
``jaxchat.model.port``'s, docs/DESIGN.md §14)::

    nanochat meta key  GPTConfig field   16788ee (Nov 2025)          92d63d4 (current)
    sequence_len       sequence_len      as is                       as is
    vocab_size         vocab_size        as is                       as is (padded to 64 in the weights)
    n_layer/n_head/    same              as is                       as is
      n_kv_head/n_embd
    window_pattern     window_pattern    absent ("L")                as is (S/L)
    (fixed in code)    value_embeds, layer_lambdas, smear, backout   False  True
    (fixed in code)    qk_scale / rotary_base / pad_vocab_to          1.0 / 10000 / 1   1.2 / 100000 / 64
    (training only)    init              "2025"                      "2026"

The format is told by the weights (``smear_gate.weight`` only in 92d63d4's) and then every meta key,
every state_dict name and every shape must be the one that format has: anything else (a nanochat
version in between, another architecture) is refused with one line naming what differs. The run
config stored with an import is the recipe's (2025 or 2026) with the model's depth, context and
vocab, so later stages (``train.py --stage=... --source_tag=<tag>``) start from it.

Tokenizers: nanochat's special tokens and ids must be jaxchat's (the same 9 names after the merges).
``token_bytes.pt`` is checked against the tokenizer (16788ee's counts decoded text, 92d63d4's raw
bytes; either is accepted) and never used: jaxchat derives its own. Export writes raw bytes
(92d63d4's definition, docs/DESIGN.md §13). An import never deletes a tokenizer: a different one
already in ``$JAXCHAT_HOME/tokenizer`` is moved to ``tokenizer.old-<fingerprint[:12]>/``, and if
checkpoints were trained with it that needs ``replace_tokenizer=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxchat import config as run_config
from jaxchat import runtime as runtime_plan
from jaxchat import stages
from jaxchat.checkpoint import (StageCheckpointer, checkpoint_dir, committed_steps, find_checkpoint, load_params,
                                read_meta, tokenizer_users)
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.interop.safe_pickle import load_pt, read_pt, read_tiktoken_pickle, write_pt, write_tiktoken_pickle
from jaxchat.model.config import GPTConfig, window_sizes
from jaxchat.model.gpt import GPT
from jaxchat.model.load import check_tokenizer, config_from_meta
from jaxchat.model.port import from_nanochat, to_nanochat
from jaxchat.tokenizer import Tokenizer
from jaxchat.tokenizer.storage import expected_special_tokens
from jaxchat.training.build import checkpoint_meta

NANOCHAT_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
                 "rl": "chatrl_checkpoints"}
FORMATS = ("16788ee", "92d63d4")
_SHAPE_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
META_KEYS = {"16788ee": _SHAPE_KEYS, "92d63d4": (*_SHAPE_KEYS, "window_pattern")}
# What each format's GPT class fixes in code (GPTConfig fields beyond the meta keys).
FEATURES = {
    "16788ee": {"window_pattern": "L", "value_embeds": False, "qk_scale": 1.0, "layer_lambdas": False,
                "smear": False, "backout": False, "pad_vocab_to": 1, "rotary_base": 10000.0},
    "92d63d4": {"value_embeds": True, "qk_scale": 1.2, "layer_lambdas": True, "smear": True, "backout": True,
                "pad_vocab_to": 64, "rotary_base": 100000.0},
}
RECIPES = {"16788ee": "2025", "92d63d4": "2026"}  # the jaxchat recipe (and GPTConfig.init) of each format
_MODEL_FILE = re.compile(r"model_(\d+)\.pt$")


# ---- model config ---------------------------------------------------------------------------------


def detect_format(names: set[str]) -> str:
    """Which nanochat model a state_dict is: 92d63d4's has the smear gate, 16788ee's has not."""
    return "92d63d4" if "smear_gate.weight" in names else "16788ee"


def _nanochat_short_window(sequence_len: int) -> int:
    return -(-sequence_len // 4 // 128) * 128  # 92d63d4's GPT._compute_window_sizes, verbatim


def config_from_nanochat(model_config: Any, fmt: str, where: str) -> GPTConfig:
    """The GPTConfig of nanochat's meta ``model_config`` in format ``fmt``; one-line JaxchatError
    naming unsupported keys or values."""
    if not isinstance(model_config, dict):
        raise JaxchatError(f"{where}: model_config is {type(model_config).__name__}, expected a dict")
    keys = META_KEYS[fmt]
    unknown = sorted(set(model_config) - set(keys))
    if unknown:
        other = "92d63d4" if fmt == "16788ee" else "16788ee"
        also = (f"; its weights are nanochat {fmt}'s, whose meta has no such keys (a nanochat version between "
                f"16788ee and 92d63d4?)" if set(unknown) <= set(META_KEYS[other]) else "")
        raise JaxchatError(f"{where}: unsupported model_config keys {unknown} (jaxchat maps nanochat 16788ee's "
                           f"{list(META_KEYS['16788ee'])} and 92d63d4's {list(META_KEYS['92d63d4'])}){also}")
    values = {k: model_config[k] for k in keys if k in model_config}
    values.setdefault("window_pattern", "L")  # 92d63d4's loader patches a missing one to "L" too
    missing = [k for k in _SHAPE_KEYS if k not in values]
    bad = [f"{k}={v!r}" for k, v in values.items()
           if not (isinstance(v, str) if k == "window_pattern" else type(v) is int)]
    if missing or bad:
        what = f"lacks {missing}" if missing else f"has bad values {', '.join(bad)}"
        raise JaxchatError(f"{where}: model_config {what}")
    try:
        config = GPTConfig(**values, **{k: v for k, v in FEATURES[fmt].items() if k not in values},
                           init=RECIPES[fmt])
    except ValueError as e:
        raise JaxchatError(f"{where}: unsupported model_config {values}: {e}") from None
    _check_windows(config, where)
    return config


def _check_windows(config: GPTConfig, where: str) -> None:
    """jaxchat's short window must be the one nanochat computes (they differ for a few odd lengths)."""
    if "S" not in config.window_pattern.upper():
        return
    theirs = _nanochat_short_window(config.sequence_len)
    ours = next(w for w in window_sizes(dataclasses.replace(config, n_layer=2, window_pattern="S")) if w)
    if ours != theirs:
        raise JaxchatError(f"{where}: sequence_len={config.sequence_len} gives nanochat a {theirs}-key short window "
                           f"but jaxchat a {ours}-key one; unsupported")


def nanochat_model_config(config: GPTConfig, where: str) -> tuple[str, dict[str, Any]]:
    """``(format, meta model_config)`` of the nanochat model equal to ``config``; JaxchatError naming
    the fields when neither 16788ee's nor 92d63d4's GPT can be it (``init`` does not matter)."""
    mismatches = {}
    for fmt in FORMATS:
        wrong = [f"{k}={getattr(config, k)!r}" for k, v in FEATURES[fmt].items() if getattr(config, k) != v]
        if not wrong:
            _check_windows(config, where)
            return fmt, {k: getattr(config, k) for k in META_KEYS[fmt]}
        mismatches[fmt] = wrong
    raise JaxchatError(f"{where}: the model matches no nanochat GPT (for 16788ee's, "
                       f"{', '.join(mismatches['16788ee'])} differ; for 92d63d4's, {', '.join(mismatches['92d63d4'])})")


# ---- parameters -----------------------------------------------------------------------------------


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def _nanochat_name(path: str) -> str:
    """``h/0/attn/c_q/kernel`` → ``transformer.h.0.attn.c_q.weight`` (for messages)."""
    parts = path.split("/")
    if parts[-1] in ("kernel", "embedding"):
        parts[-1] = "weight"
    if parts[0] in ("wte", "h"):
        parts.insert(0, "transformer")
    return ".".join(parts)


def abstract_params(config: GPTConfig) -> Any:
    """ShapeDtypeStructs of the jaxchat GPT of ``config`` (nothing initialised)."""
    runtime = runtime_plan.for_this_machine()
    _, state = nnx.split(nnx.eval_shape(lambda: GPT(config, runtime=runtime, rngs=nnx.Rngs(0))))
    return nnx.to_pure_dict(state)


def params_from_state_dict(state_dict: dict[str, np.ndarray], config: GPTConfig, where: str) -> dict:
    """jaxchat's params (float32 NumPy) from a nanochat state_dict, after checking that its names and
    shapes are exactly those of ``config``'s model (JaxchatError naming the first differences)."""
    params = from_nanochat(state_dict)
    wanted = {_path_str(p): tuple(leaf.shape) for p, leaf in
              jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]}
    got = {_path_str(p): tuple(np.shape(leaf)) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    problems = [f"{_nanochat_name(k)} is {tuple(reversed(got[k])) if k.endswith('kernel') else got[k]}, the model "
                f"needs {tuple(reversed(wanted[k])) if k.endswith('kernel') else wanted[k]}"
                for k in sorted(got.keys() & wanted.keys()) if got[k] != wanted[k]]
    problems += [f"unexpected {_nanochat_name(k)}" for k in sorted(got.keys() - wanted.keys())]
    problems += [f"missing {_nanochat_name(k)}" for k in sorted(wanted.keys() - got.keys())]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise JaxchatError(f"{where}: the weights do not fit the model its meta describes: "
                           f"{'; '.join(problems[:3])}{more}")
    return params


# ---- tokenizer ------------------------------------------------------------------------------------


def token_bytes_decoded(tokenizer: Tokenizer) -> np.ndarray:
    """nanochat 16788ee's ``token_bytes``: UTF-8 length of each token DECODED to text (a partial
    character counts 3 bytes as U+FFFD); 0 for the special tokens."""
    n = tokenizer.n_merge_tokens
    lengths = [len(tokenizer.decode([i]).encode("utf-8")) for i in range(n)]
    return np.asarray(lengths + [0] * (tokenizer.get_vocab_size() - n), np.int32)


def tokenizer_from_nanochat(directory: Path) -> Tokenizer:
    """jaxchat's Tokenizer of a nanochat ``tokenizer/`` directory (``tokenizer.pkl`` read safely; its
    ``token_bytes.pt``, when there, must belong to it). JaxchatError naming the file otherwise."""
    directory = Path(directory)
    pkl = directory / "tokenizer.pkl"
    if not pkl.is_file():
        raise JaxchatError(f"{pkl} does not exist; expected nanochat's tokenizer (written by scripts/tok_train.py)")
    ranks, pattern, specials, _name = read_tiktoken_pickle(pkl)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise JaxchatError(f"{pkl}: mergeable ranks are not 0…{len(ranks) - 1}; not a rustbpe-trained tokenizer")
    tokens = [b""] * len(ranks)
    for token, rank in ranks.items():
        tokens[rank] = token
    expected = expected_special_tokens(len(tokens))
    if specials != expected:
        raise JaxchatError(f"{pkl}: special tokens {specials} are not jaxchat's {expected} (same names, ids after "
                           f"the {len(tokens)} merges)")
    try:
        tokenizer = Tokenizer(tokens, pattern)
    except JaxchatError as e:
        raise JaxchatError(f"{pkl}: {e}") from None
    path = directory / "token_bytes.pt"
    if path.exists():
        saved = load_pt(path)
        if not (isinstance(saved, np.ndarray) and saved.shape == (tokenizer.get_vocab_size(),)
                and any(np.array_equal(saved, ok) for ok in (tokenizer.token_bytes, token_bytes_decoded(tokenizer)))):
            raise JaxchatError(f"{path} does not belong to {pkl} (expected the byte length of each of its "
                               f"{tokenizer.get_vocab_size()} tokens)")
    return tokenizer


def _same_tokenizer(pkl: Path, tokenizer: Tokenizer) -> bool:
    ranks, pattern, specials, _ = read_tiktoken_pickle(pkl)
    return (pattern == tokenizer.pattern and specials == tokenizer.special_tokens
            and ranks == {t: i for i, t in enumerate(tokenizer.mergeable_tokens())})


def tokenizer_to_nanochat(tokenizer: Tokenizer, directory: Path) -> Path:
    """Write ``tokenizer.pkl`` and ``token_bytes.pt`` (raw bytes) into ``directory`` as nanochat's
    tok_train does; an identical tokenizer already there is kept, a different one refused (a nanochat
    base dir holds one tokenizer for all its checkpoints)."""
    directory = Path(directory)
    pkl = directory / "tokenizer.pkl"
    if pkl.exists():
        if _same_tokenizer(pkl, tokenizer):
            if not (directory / "token_bytes.pt").exists():
                write_pt(directory / "token_bytes.pt", np.asarray(tokenizer.token_bytes, np.int32))
            return directory
        raise JaxchatError(f"{pkl} holds another tokenizer, which the checkpoints of that nanochat dir use; export "
                           f"into another directory")
    ranks = {token: i for i, token in enumerate(tokenizer.mergeable_tokens())}
    write_pt(directory / "token_bytes.pt", np.asarray(tokenizer.token_bytes, np.int32))
    write_tiktoken_pickle(pkl, ranks, tokenizer.pattern, tokenizer.special_tokens)
    return directory


def install_tokenizer(tokenizer: Tokenizer, home: Path, replace: bool) -> str:
    """Make ``tokenizer`` the one in ``home/tokenizer``: kept if it is already there; a different one is
    moved aside to ``tokenizer.old-<fp[:12]>/`` (never deleted), which needs ``replace`` when
    checkpoints were trained with it. Returns what was done (one line)."""
    from jaxchat.tokenizer.train import _aside, saved_fingerprint  # the tokenizer stage's own rules

    out = home / "tokenizer"
    existing = saved_fingerprint(out)
    if existing == tokenizer.fingerprint():
        return f"tokenizer {existing[:12]} already in {out}"
    note = ""
    if existing is not None:
        users = tokenizer_users(existing, home)
        if users and not replace:
            raise JaxchatError(f"refusing to replace {out}: {len(users)} checkpoint(s) were trained with it "
                               f"({existing[:12]}), e.g. {users[-1]}; import with replace_tokenizer=True "
                               f"(--replace-tokenizer) to move it to {_aside(out, existing)}/ (never deleted)")
        aside = _aside(out, existing)
        os.replace(out, aside)
        note = f"; the previous one ({existing[:12]}) moved to {aside}"
    tokenizer.save(out)
    return f"tokenizer {tokenizer.fingerprint()[:12]} written to {out}{note}"


# ---- import ---------------------------------------------------------------------------------------


def _steps(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _MODEL_FILE.fullmatch(p.name)))


def resolve_source(source: Path, stage: str, tag: str, step: int | None,
                   tokenizer_dir: Path | None) -> tuple[Path, int, Path]:
    """``(checkpoint directory, step, tokenizer directory)`` of what ``source`` names (see the module
    docstring); JaxchatError naming the path and what it lacks."""
    source = Path(source).expanduser()
    if source.is_file() and _MODEL_FILE.fullmatch(source.name):
        file_step = int(_MODEL_FILE.fullmatch(source.name).group(1))
        if step is not None and step != file_step:
            raise JaxchatError(f"{source} is step {file_step}, but step {step} was asked for")
        source, step = source.parent, file_step
    if not source.is_dir():
        raise JaxchatError(f"{source} does not exist; expected a nanochat base dir (e.g. ~/.cache/nanochat) or a "
                           f"checkpoint directory holding model_XXXXXX.pt")
    base_dir = None
    if not _steps(source):
        stage_dir = source / NANOCHAT_DIRS[stage]
        if not stage_dir.is_dir():
            raise JaxchatError(f"{source} is neither a nanochat base dir (no {NANOCHAT_DIRS[stage]}/) nor a "
                               f"checkpoint directory (no model_XXXXXX.pt)")
        base_dir, source = source, stage_dir / tag
        if not source.is_dir():
            tags = sorted(p.name for p in stage_dir.iterdir() if p.is_dir())
            raise JaxchatError(f"{source} does not exist; tags in {stage_dir}: {tags or 'none'}")
    steps = _steps(source)
    if not steps:
        raise JaxchatError(f"{source} holds no model_XXXXXX.pt")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise JaxchatError(f"{source} has no model_{step:06d}.pt; steps there: {steps}")
    if tokenizer_dir is None:
        tokenizer_dir = (base_dir or source.parent.parent) / "tokenizer"
        if not (tokenizer_dir / "tokenizer.pkl").is_file():
            raise JaxchatError(f"no nanochat tokenizer at {tokenizer_dir}/tokenizer.pkl; pass the directory holding "
                               f"tokenizer.pkl (tokenizer_dir / --tokenizer)")
    return source, step, Path(tokenizer_dir).expanduser()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise JaxchatError(f"{path} does not exist (nanochat writes it beside model_XXXXXX.pt)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxchatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "model_config" not in data:
        raise JaxchatError(f"{path}: expected nanochat's checkpoint meta (a JSON object with model_config)")
    return data


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def import_nanochat(source: str | Path, stage: str, tag: str, step: int | None = None, *,
                    tokenizer_dir: str | Path | None = None, replace_tokenizer: bool = False,
                    as_stage: str | None = None, overwrite: bool = False,
                    home: str | Path | None = None) -> Path:
    """Import nanochat's ``stage`` checkpoint (base/mid/sft/rl; latest step unless ``step``) as jaxchat's
    ``<as_stage>/<tag>/<step>`` (``as_stage`` default: the same stage, ``sft`` for ``rl``) and its
    tokenizer as ``$JAXCHAT_HOME/tokenizer``. Everything is read and checked before anything is
    written. An existing step is refused unless ``overwrite``. Returns the step directory."""
    if stage not in NANOCHAT_DIRS:
        raise JaxchatError(f"unknown nanochat stage {stage!r}; expected one of {', '.join(NANOCHAT_DIRS)}")
    target = stages.check_checkpointed(as_stage or ("sft" if stage == "rl" else stage), "jaxchat stage")
    home = Path(home) if home is not None else jaxchat_home()
    directory, step, tokenizer_dir = resolve_source(Path(source), stage, tag, step,
                                                    Path(tokenizer_dir) if tokenizer_dir is not None else None)
    model_path, meta_path = directory / f"model_{step:06d}.pt", directory / f"meta_{step:06d}.json"
    nano_meta = _read_json(meta_path)
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in read_pt(model_path).items()}
    fmt = detect_format(set(state_dict))
    config = config_from_nanochat(nano_meta["model_config"], fmt, str(meta_path))
    tokenizer = tokenizer_from_nanochat(tokenizer_dir)
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise JaxchatError(f"{tokenizer_dir}/tokenizer.pkl has {tokenizer.get_vocab_size()} tokens but {meta_path} "
                           f"says vocab_size {config.vocab_size}: another run's tokenizer")
    params = params_from_state_dict(state_dict, config, str(model_path))
    out_dir = checkpoint_dir(target, tag, home)
    if step in committed_steps(out_dir) and not overwrite:
        raise JaxchatError(f"{out_dir / str(step)} already exists; import with another tag, or overwrite=True")

    recipe = RECIPES[fmt]
    cfg = run_config.override(run_config.initial(recipe), {
        "tag": tag, "model.depth": config.n_layer, "model.sequence_len": config.sequence_len,
        "model.window_pattern": config.window_pattern, "tokenizer.vocab_size": config.vocab_size,
    }, source=f"nanochat import of {meta_path}", typed=True)
    if target != stage:
        print(f"nanochat's {stage} checkpoint goes to jaxchat's {target} stage", flush=True)
    print(install_tokenizer(tokenizer, home, replace_tokenizer), flush=True)
    metrics = {"val_bpb": nano_meta["val_bpb"]} if isinstance(_finite(nano_meta.get("val_bpb")), (int, float)) else {}
    batch = nano_meta.get("total_batch_size")
    extra = {"total_batch_size": batch} if isinstance(batch, int) else {}  # 2026 SFT's examples_per_step="auto"
    imported = {"format": f"nanochat {fmt}", "stage": stage, "model": str(model_path.resolve()),
                "tokenizer": str((tokenizer_dir / "tokenizer.pkl").resolve()),
                **{k: _finite(nano_meta[k]) for k in ("step", "val_bpb", "model_config", "user_config",
                                                     "device_batch_size", "max_seq_len") if k in nano_meta}}
    meta = checkpoint_meta(target, step, config, cfg, tokenizer, metrics, source=f"nanochat {fmt} {model_path}",
                           final=True, imported_from=imported, **extra)
    with StageCheckpointer(out_dir, max_to_keep=None, async_save=False) as checkpointer:
        checkpointer.save(step, jax.tree.map(jnp.asarray, params), None, None, meta, force=overwrite)
    return out_dir / str(step)


# ---- export ---------------------------------------------------------------------------------------


def _nanochat_meta(meta: dict, fmt: str, model_config: dict, step: int) -> dict:
    """nanochat's checkpoint meta for a jaxchat checkpoint: what its loaders and chat_sft read."""
    cfg = meta.get("run_config") or {}
    optim = cfg.get("optim") or {}
    seq = model_config["sequence_len"]
    out = {"step": step, "val_bpb": _finite((meta.get("metrics") or {}).get("val_bpb")),
           "model_config": model_config,
           "user_config": {"depth": model_config["n_layer"], "max_seq_len": seq, "model_tag": cfg.get("tag") or None,
                           **{k: optim[k] for k in ("embedding_lr", "unembedding_lr", "matrix_lr") if k in optim}},
           "max_seq_len": seq}
    rows = ((cfg.get(meta.get("stage", "")) or {}).get("device_batch_size"))
    total = meta.get("total_batch_size")
    if isinstance(rows, int) and isinstance(total, int) and total % (rows * seq) == 0:
        out.update(device_batch_size=rows, total_batch_size=total)  # chat_sft inherits both, if they divide
    out["jaxchat"] = {"checkpoint": meta.get("checkpoint"), "format": f"nanochat {fmt}",
                      "tokenizer_fingerprint": meta.get("tokenizer_fingerprint")}
    return out


def export_nanochat(out: str | Path, stage: str, tag: str | None = None, step: int | None = None, *,
                    overwrite: bool = False, home: str | Path | None = None) -> Path:
    """Write jaxchat's ``stage`` checkpoint (latest tag / step unless given) into the nanochat base dir
    ``out``: weights (float32) + meta in nanochat 16788ee's format for a 2025 model, 92d63d4's for a
    2026 one, and the tokenizer. Refuses a model neither nanochat can build, an existing model file
    (unless ``overwrite``) and another tokenizer already in ``out``. Returns the checkpoint directory."""
    stages.check_checkpointed(stage, "checkpoint stage")
    home = Path(home) if home is not None else jaxchat_home()
    directory, step = find_checkpoint(stage, tag, step, home)
    tag = directory.name
    meta = read_meta(stage, tag, step, home)
    config = config_from_meta(meta)
    fmt, model_config = nanochat_model_config(config, meta["checkpoint"])
    if fmt == "92d63d4" and stage == "mid":
        raise JaxchatError(f"{meta['checkpoint']}: nanochat 92d63d4 has no mid stage to load it from")
    tokenizer = Tokenizer.from_directory(home / "tokenizer")
    check_tokenizer(meta, tokenizer, remedy="restore the tokenizer it was trained with before exporting")
    target = Path(out).expanduser() / NANOCHAT_DIRS[stage] / tag
    model_path = target / f"model_{step:06d}.pt"
    if model_path.exists() and not overwrite:
        raise JaxchatError(f"{model_path} already exists; export elsewhere or with overwrite=True")
    tokenizer_to_nanochat(tokenizer, Path(out).expanduser() / "tokenizer")
    params, _ = load_params(stage, tag, step, abstract_params=abstract_params(config), home=home)
    state_dict = {k: np.asarray(v, np.float32) for k, v in to_nanochat(jax.device_get(params)).items()}
    write_pt(model_path, state_dict)
    meta_path = target / f"meta_{step:06d}.json"
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(_nanochat_meta(meta, fmt, model_config, step), indent=2), encoding="utf-8")
    os.replace(tmp, meta_path)
    return target
