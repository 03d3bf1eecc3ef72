"""jaxchat models as Hugging Face transformers' ``NanoChatForCausalLM`` directories, and back.

An exported directory loads OFFLINE with ``AutoModelForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)``, so transformers pipelines, lm-eval and other HF tooling run
jaxchat models. ``import_hf`` reads such a directory (ours or another nanochat conversion) back into
jaxchat params, GPTConfig and tokenizer; jaxchat → HF → jaxchat is bit-exact.

Files: ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32, written with
``safetensors.numpy``: the optional ``interop`` dependency, imported only here, inside the functions;
torch and transformers are never imported), and the tokenizer files of ``hf_tokenizer``.

Weights (D = n_embd, K·hd = kv_dim, V = vocab_size; a Flax kernel is (in, out), torch's Linear weight
(out, in), so every kernel is transposed and the embedding copied):

| jaxchat | NanoChatForCausalLM | layout |
|---|---|---|
| ``wte/embedding`` (V, D) | ``model.embed_tokens.weight`` | same |
| ``h/{i}/attn/c_q/kernel`` (D, D) | ``model.layers.{i}.self_attn.q_proj.weight`` | transposed |
| ``h/{i}/attn/c_k/kernel`` (D, K·hd) | ``model.layers.{i}.self_attn.k_proj.weight`` | transposed |
| ``h/{i}/attn/c_v/kernel`` (D, K·hd) | ``model.layers.{i}.self_attn.v_proj.weight`` | transposed |
| ``h/{i}/attn/c_proj/kernel`` (D, D) | ``model.layers.{i}.self_attn.o_proj.weight`` | transposed |
| ``h/{i}/mlp/c_fc/kernel`` (D, 4D) | ``model.layers.{i}.mlp.fc1.weight`` | transposed |
| ``h/{i}/mlp/c_proj/kernel`` (4D, D) | ``model.layers.{i}.mlp.fc2.weight`` | transposed |
| ``lm_head/kernel`` (D, V) | ``lm_head.weight`` | transposed |

Config (``GPTConfig`` → ``config.json``): vocab_size → vocab_size, n_embd → hidden_size (and
intermediate_size = 4·n_embd), n_layer → num_hidden_layers, n_head → num_attention_heads, n_kv_head →
num_key_value_heads, sequence_len → max_position_embeddings, rotary_base → rope_parameters.rope_theta
(and rope_theta, transformers 4's key). Fixed: hidden_act relu2, rms_norm_eps = float32's epsilon
(jaxchat's norms, torch's ``F.rms_norm(eps=None)``), final_logit_softcapping 15, attention_bias false,
tie_word_embeddings false; bos ``<|bos|>``, eos ``<|assistant_end|>``, pad ``<|bos|>``. The
architecture otherwise matches as is: the norm after the embedding, rotary before QK-norm, the
half-split rotary layout, GQA's kv head h // (n_head/n_kv_head), relu², softcap after lm_head.
``init``, ``pad_vocab_to`` and ``window_pattern`` (no effect on the function when exportable) ride
in a ``jaxchat`` entry of config.json, which HF ignores and import reads, so the GPTConfig comes back
equal.

HF's class cannot express nanochat 92d63d4's features: value embeddings, resid/x0 lambdas, smear,
backout, sliding windows, a QK scale ≠ 1 and a padded vocabulary (lm_head columns beyond the
tokenizer). ``export_hf`` refuses such a model with one JaxchatError line naming the fields.

Import reads float32, float16 or bfloat16 weights (HF's own nanochat conversions are bf16), one file
or shards (``model.safetensors.index.json``), tied or untied embeddings, and refuses with one line
what jaxchat's GPT computes differently (another activation, biases, another softcap or rope type,
an explicit head_dim). A ``rms_norm_eps`` other than float32's is a warning: jaxchat's eps is fixed.

Using an export::

    model = AutoModelForCausalLM.from_pretrained(OUT)      # float32, as stored
    tok = AutoTokenizer.from_pretrained(OUT)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)  # = render_for_completion
    out = model.generate(torch.tensor([ids]))              # greedy; stops at <|assistant_end|> or <|bos|>
    lm_eval --model hf --model_args pretrained=OUT,add_bos_token=True,dtype=float32,device=cpu ...

Plain text needs ``<|bos|>`` in front, as every jaxchat document has: ``tok(text)`` adds it
(``add_special_tokens=True``), lm-eval only with ``add_bos_token=True``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.interop import hf_tokenizer
from jaxchat.model.config import GPTConfig, window_sizes
from jaxchat.model.gpt import NORM_EPS, SOFTCAP, split_params
from jaxchat.runtime import Runtime
from jaxchat.tokenizer.bpe import Tokenizer
from jaxchat.tokenizer.constants import SPECIAL_TOKENS

WEIGHTS_FILE = "model.safetensors"
EXPORT_FILES = ("config.json", "generation_config.json", WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json")
INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint (large HF models), read on import
JAXCHAT_KEY = "jaxchat"  # config.json entry with the GPTConfig fields HF has no place for
_EXTRA_FIELDS = ("init", "pad_vocab_to", "window_pattern")
# (jaxchat path inside h/{i}, HF name inside model.layers.{i})
_LAYER_NAMES = (
    (("attn", "c_q"), "self_attn.q_proj"),
    (("attn", "c_k"), "self_attn.k_proj"),
    (("attn", "c_v"), "self_attn.v_proj"),
    (("attn", "c_proj"), "self_attn.o_proj"),
    (("mlp", "c_fc"), "mlp.fc1"),
    (("mlp", "c_proj"), "mlp.fc2"),
)


class HFModel(NamedTuple):
    """What ``import_hf`` returns: jaxchat params (nested dict of float32 NumPy arrays), the GPTConfig,
    and the jaxchat Tokenizer (None when the directory has no tokenizer.json)."""

    params: dict
    config: GPTConfig
    tokenizer: Any


# ---- config -----------------------------------------------------------------------------------------


def inexpressible(config: GPTConfig) -> list[str]:
    """The GPTConfig settings NanoChatForCausalLM has no equivalent for (empty: exportable)."""
    bad = [f"{name}=True" for name in ("value_embeds", "layer_lambdas", "smear", "backout") if getattr(config, name)]
    if any(w is not None for w in window_sizes(config)):
        bad.append(f"window_pattern={config.window_pattern!r}")
    if config.qk_scale != 1.0:
        bad.append(f"qk_scale={config.qk_scale}")
    if config.padded_vocab_size != config.vocab_size:
        bad.append(f"pad_vocab_to={config.pad_vocab_to} "
                   f"(vocab {config.vocab_size} padded to {config.padded_vocab_size})")
    return bad


def check_exportable(config: GPTConfig, tokenizer: Any) -> None:
    """JaxchatError (one line) when the model or its tokenizer cannot be written as NanoChatForCausalLM."""
    bad = inexpressible(config)
    if bad:
        raise JaxchatError(f"HF NanoChatForCausalLM cannot express {', '.join(bad)} (nanochat 92d63d4 features); "
                           "only models with them off (the 2025 recipe's) can be exported")
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise JaxchatError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab_size is "
                           f"{config.vocab_size}; export the model with the tokenizer it was trained with")


def _special_ids(tokenizer: Any) -> dict[str, int]:
    return {name: tokenizer.encode_special(name) for name in SPECIAL_TOKENS}


def hf_config(config: GPTConfig, tokenizer: Any) -> dict[str, Any]:
    """config.json for NanoChatForCausalLM (see the module docstring's table)."""
    ids = _special_ids(tokenizer)
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": "nanochat",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "max_position_embeddings": config.sequence_len,
        "hidden_act": "relu2",
        "attention_dropout": 0.0,
        "attention_bias": False,
        "rms_norm_eps": NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rotary_base)},
        "rope_theta": float(config.rotary_base),
        "final_logit_softcapping": SOFTCAP,
        "tie_word_embeddings": False,
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": ids[hf_tokenizer.BOS],
        "eos_token_id": ids[hf_tokenizer.EOS],
        "pad_token_id": ids[hf_tokenizer.PAD],
        "dtype": "float32",
        JAXCHAT_KEY: {name: getattr(config, name) for name in _EXTRA_FIELDS},
    }


def generation_config(config: GPTConfig, tokenizer: Any) -> dict[str, Any]:
    """Greedy by default; stops where jaxchat's Engine stops: ``<|assistant_end|>`` or ``<|bos|>``."""
    ids = _special_ids(tokenizer)
    return {
        "bos_token_id": ids[hf_tokenizer.BOS],
        "eos_token_id": [ids["<|assistant_end|>"], ids["<|bos|>"]],
        "pad_token_id": ids[hf_tokenizer.PAD],
        "do_sample": False,
    }


def _rope_theta(data: dict, where: str) -> float:
    rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else None
    if kind != "default":
        raise JaxchatError(f"{where}: rope type {kind!r}; jaxchat has plain rotary embeddings (rope_type default)")
    return float(rope.get("rope_theta", data.get("rope_theta", 10000.0)))


def gpt_config_from_hf(data: dict, where: str = "config.json") -> GPTConfig:
    """The GPTConfig of a NanoChatForCausalLM config.json; JaxchatError (one line naming the fields) for
    a model jaxchat's GPT computes differently."""
    if data.get("model_type") != "nanochat":
        raise JaxchatError(f"{where}: model_type {data.get('model_type')!r}; expected 'nanochat' (NanoChatForCausalLM)")
    hidden, heads = data.get("hidden_size"), data.get("num_attention_heads")
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
        raise JaxchatError(f"{where}: hidden_size {hidden!r} / num_attention_heads {heads!r} must be positive ints")
    head_dim = data.get("head_dim") or hidden // heads
    checks = {
        "hidden_act": (data.get("hidden_act", "relu2"), "relu2"),
        "intermediate_size": (data.get("intermediate_size"), 4 * hidden),
        "attention_bias": (bool(data.get("attention_bias", False)), False),
        "mlp_bias": (bool(data.get("mlp_bias", False)), False),
        "final_logit_softcapping": (data.get("final_logit_softcapping", SOFTCAP), SOFTCAP),
        "head_dim": (head_dim, hidden // heads),
    }
    bad = [f"{name}={got!r} (jaxchat: {want!r})" for name, (got, want) in checks.items() if got != want]
    if bad:
        raise JaxchatError(f"{where}: jaxchat's GPT cannot run this model: {', '.join(bad)}")
    eps = data.get("rms_norm_eps", NORM_EPS)
    if eps != NORM_EPS:
        warnings.warn(f"{where}: rms_norm_eps={eps}; jaxchat's norms use float32's epsilon {NORM_EPS:.3g}, so "
                      "its logits differ from HF's in the last digits", stacklevel=2)
    extra = data.get(JAXCHAT_KEY) if isinstance(data.get(JAXCHAT_KEY), dict) else {}
    fields = {
        "vocab_size": data.get("vocab_size"),
        "n_embd": hidden,
        "n_layer": data.get("num_hidden_layers"),
        "n_head": heads,
        "n_kv_head": data.get("num_key_value_heads") or heads,
        "sequence_len": data.get("max_position_embeddings", 2048),
        "rotary_base": _rope_theta(data, where),
        **{name: extra[name] for name in _EXTRA_FIELDS if name in extra},
    }
    try:
        config = GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise JaxchatError(f"{where}: {e}") from None
    if inexpressible(config):  # a hand-edited jaxchat entry
        raise JaxchatError(f"{where}: its {JAXCHAT_KEY} entry asks for {', '.join(inexpressible(config))}, "
                           "which NanoChatForCausalLM's weights cannot hold")
    return config


# ---- weights ----------------------------------------------------------------------------------------


def to_hf_state(params: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """jaxchat params → NanoChatForCausalLM state dict (contiguous float32 NumPy arrays)."""
    f32 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32))  # noqa: E731
    state = {"model.embed_tokens.weight": f32(params["wte"]["embedding"]),
             "lm_head.weight": f32(np.asarray(params["lm_head"]["kernel"]).T)}
    for i in range(config.n_layer):
        block = params["h"][i]
        for (group, name), hf_name in _LAYER_NAMES:
            state[f"model.layers.{i}.{hf_name}.weight"] = f32(np.asarray(block[group][name]["kernel"]).T)
    return state


def _expected_shapes(config: GPTConfig) -> dict[str, tuple[int, int]]:
    d, kv, v = config.n_embd, config.n_kv_head * config.head_dim, config.vocab_size
    per_layer = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
                 "self_attn.o_proj": (d, d), "mlp.fc1": (4 * d, d), "mlp.fc2": (d, 4 * d)}
    shapes = {"model.embed_tokens.weight": (v, d), "lm_head.weight": (v, d)}
    for i in range(config.n_layer):
        shapes.update({f"model.layers.{i}.{name}.weight": shape for name, shape in per_layer.items()})
    return shapes


def from_hf_state(state: dict[str, np.ndarray], config: GPTConfig, tied: bool = False,
                  where: str = WEIGHTS_FILE) -> dict:
    """NanoChatForCausalLM state dict → jaxchat params (nested dict, float32 NumPy, ``h`` keyed by int).
    ``tied``: lm_head is the embedding (tie_word_embeddings), possibly absent from the file."""
    state = {name.removeprefix("_orig_mod."): value for name, value in state.items()}
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    shapes = _expected_shapes(config)
    missing = sorted(set(shapes) - set(state))
    unknown = sorted(name for name in set(state) - set(shapes) if not name.endswith("rotary_emb.inv_freq"))
    wrong = [f"{n} {tuple(state[n].shape)} (expected {shapes[n]})" for n in shapes
             if n in state and tuple(state[n].shape) != shapes[n]]
    if missing or unknown or wrong:
        problems = [f"missing {missing[:4]}" * bool(missing), f"unexpected {unknown[:4]}" * bool(unknown),
                    f"wrong shapes {wrong[:4]}" * bool(wrong)]
        raise JaxchatError(f"{where}: not a NanoChatForCausalLM of this config.json: "
                           f"{'; '.join(p for p in problems if p)}")
    f32 = lambda name: np.asarray(state[name], dtype=np.float32)  # noqa: E731
    params: dict = {"wte": {"embedding": f32("model.embed_tokens.weight")},
                    "lm_head": {"kernel": np.ascontiguousarray(f32("lm_head.weight").T)}, "h": {}}
    for i in range(config.n_layer):
        block: dict = {"attn": {}, "mlp": {}}
        for (group, name), hf_name in _LAYER_NAMES:
            block[group][name] = {"kernel": np.ascontiguousarray(f32(f"model.layers.{i}.{hf_name}.weight").T)}
        params["h"][i] = block
    return params


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as NumPy (bfloat16 through ml_dtypes, which safetensors'
    NumPy API lacks: HF's nanochat conversions are stored in bf16)."""
    import ml_dtypes  # JAX's dependency: always present with jaxchat
    from safetensors import deserialize  # optional dependency (the `interop` extra)

    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
    out = {}
    for name, info in deserialize(path.read_bytes()):
        if info["dtype"] not in dtypes:
            raise JaxchatError(f"{path}: tensor {name} has dtype {info['dtype']}; expected F32, F16 or BF16")
        out[name] = np.frombuffer(info["data"], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    if (directory / WEIGHTS_FILE).is_file():
        return _read_safetensors(directory / WEIGHTS_FILE)
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text())
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            state.update(_read_safetensors(directory / shard))
        return state
    raise JaxchatError(f"{directory}: no {WEIGHTS_FILE} (or {INDEX_FILE}); expected a safetensors HF model "
                       "(re-save a pytorch_model.bin one with save_pretrained(safe_serialization=True))")


# ---- export / import --------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def export_hf(out: str | os.PathLike, params: dict, model_config: GPTConfig, tokenizer: Any, *,
              overwrite: bool = False) -> Path:
    """Write a NanoChatForCausalLM directory: config.json, generation_config.json, model.safetensors
    (float32), tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json.

    Pure: arrays in, files out (``params`` as ``split_params(model)[1]``, JAX or NumPy arrays).
    JaxchatError for a model HF cannot express (see ``inexpressible``), a tokenizer of another size,
    params of another shape, or an ``out`` that already holds such files (unless ``overwrite``: then
    they are replaced). Other files in ``out`` are left alone.
    """
    from safetensors.numpy import save_file  # optional dependency (the `interop` extra)

    check_exportable(model_config, tokenizer)
    state = to_hf_state(params, model_config)
    wrong = [f"{name} {state[name].shape} (expected {shape})" for name, shape in _expected_shapes(model_config).items()
             if state[name].shape != shape]
    if wrong:
        raise JaxchatError(f"params do not fit the model config: {', '.join(wrong[:4])}")
    out = Path(out)
    existing = [name for name in EXPORT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise JaxchatError(f"{out} already holds {', '.join(existing)}; export elsewhere, or overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS_FILE)
    tokens = tokenizer.mergeable_tokens()
    _write_json(out / "tokenizer.json", hf_tokenizer.tokenizer_json(tokens, tokenizer.pattern))
    _write_json(out / "tokenizer_config.json", hf_tokenizer.tokenizer_config(len(tokens), model_config.sequence_len))
    _write_json(out / "special_tokens_map.json", hf_tokenizer.special_tokens_map())
    _write_json(out / "generation_config.json", generation_config(model_config, tokenizer))
    _write_json(out / "config.json", hf_config(model_config, tokenizer))  # last: the directory is complete
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise JaxchatError(f"{path} is missing; expected a Hugging Face model directory (export_hf writes one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxchatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise JaxchatError(f"{path}: expected a JSON object")
    return data


def import_hf(directory: str | os.PathLike) -> HFModel:
    """Read a NanoChatForCausalLM directory: ``HFModel(params, config, tokenizer)``.

    The params are float32 NumPy in jaxchat's tree; the tokenizer is rebuilt from tokenizer.json
    (None if absent). JaxchatError for a model jaxchat's GPT computes differently (names the fields),
    weights that do not fit config.json, or a tokenizer.json that is not in jaxchat's layout.
    """
    directory = Path(directory)
    data = _read_json(directory / "config.json")
    config = gpt_config_from_hf(data, str(directory / "config.json"))
    params = from_hf_state(_read_weights(directory), config, tied=bool(data.get("tie_word_embeddings")),
                           where=str(directory))
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        where = str(directory / "tokenizer.json")
        tokens, pattern = hf_tokenizer.tokens_from_tokenizer_json(_read_json(directory / "tokenizer.json"), where)
        try:
            tokenizer = Tokenizer(tokens, pattern)
        except JaxchatError as e:
            raise JaxchatError(f"{where}: {e}") from None
        if tokenizer.get_vocab_size() != config.vocab_size:
            raise JaxchatError(f"{where} has {tokenizer.get_vocab_size()} tokens but config.json's vocab_size is "
                               f"{config.vocab_size}")
    return HFModel(params, config, tokenizer)


# ---- checkpoints --------------------------------------------------------------------------------------


def export_hf_checkpoint(out: str | os.PathLike, stage: str, tag: str | None = None, step: int | None = None,
                         home: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """``export_hf`` of a jaxchat checkpoint (latest tag / step unless given) and its tokenizer
    (``$JAXCHAT_HOME/tokenizer``, which must be the one it was trained with). ``overwrite``: as
    ``export_hf``'s."""
    from jaxchat.model.load import load_model  # Orbax: only when reading a checkpoint

    model, tokenizer, _ = load_model(stage, tag, step, runtime=Runtime(), home=home)
    check_exportable(model.config, tokenizer)  # before reading every array out
    return export_hf(out, split_params(model)[1], model.config, tokenizer, overwrite=overwrite)


def import_hf_checkpoint(directory: str | os.PathLike, stage: str, tag: str, *, step: int = 0,
                         replace_tokenizer: bool = False, overwrite: bool = False,
                         home: str | os.PathLike | None = None) -> Path:
    """Import a NanoChatForCausalLM directory as the jaxchat checkpoint ``<stage>/<tag>/<step>`` (params
    and meta, no optimizer state; the 2025 recipe's run config with the model's depth, context and
    vocab), so ``load_model``, chat, web, eval and the next stage all load it.

    Its tokenizer becomes ``$JAXCHAT_HOME/tokenizer`` as a nanochat import's does
    (``jaxchat.interop.nanochat.install_tokenizer``: a different one is moved aside, never deleted,
    and needs ``replace_tokenizer`` when checkpoints were trained with it). Everything is read and
    checked before anything is written; an existing step is refused unless ``overwrite``. Returns the
    step directory.
    """
    # Orbax, the run config and the optimizers: only when writing a checkpoint.
    from jaxchat import config as run_config
    from jaxchat import stages
    from jaxchat.checkpoint import StageCheckpointer, checkpoint_dir, committed_steps
    from jaxchat.interop.nanochat import install_tokenizer
    from jaxchat.training.build import checkpoint_meta

    stages.check_checkpointed(stage, "jaxchat stage")
    source = Path(directory)
    params, config, tokenizer = import_hf(source)
    if tokenizer is None:
        raise JaxchatError(f"{source} has no tokenizer.json; a jaxchat checkpoint needs its tokenizer")
    home = Path(home) if home is not None else jaxchat_home()
    target = checkpoint_dir(stage, tag, home)
    if step in committed_steps(target) and not overwrite:
        raise JaxchatError(f"{target / str(step)} already exists; import with another tag, or overwrite=True")
    cfg = run_config.override(run_config.initial("2025"), {
        "tag": tag, "model.depth": config.n_layer, "model.sequence_len": config.sequence_len,
        "model.window_pattern": config.window_pattern, "tokenizer.vocab_size": config.vocab_size,
    }, source=f"HF import of {source}", typed=True)
    install_tokenizer(tokenizer, home, replace_tokenizer)
    imported = {"format": "hf NanoChatForCausalLM", "directory": str(source.resolve())}
    meta = checkpoint_meta(stage, step, config, cfg, tokenizer, {}, source=f"hf {source.resolve()}", final=True,
                           imported_from=imported)
    with StageCheckpointer(target, max_to_keep=None, async_save=False) as checkpointer:
        checkpointer.save(step, jax.tree.map(jnp.asarray, params), None, None, meta, force=overwrite)
    return target / str(step)
