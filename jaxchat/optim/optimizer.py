"""nanochat's optimizer split (docs/DESIGN.md §4): AdamW for wte / lm_head, Muon for every matrix in the blocks.

Built from optax pieces: ``clip_by_global_norm`` (global over all params, before the split), then
``multi_transform`` over three groups, each wrapped in ``inject_hyperparams`` so the current learning
rate (and Muon momentum) can be read from the optimizer state. The per-group learning rate at a
step is ``base_lr · init_lr_frac · lr_multiplier(step)`` — nanochat's ``group["lr"] =
group["initial_lr"] · lrm`` — where wte / lm_head base LRs are scaled by s = (model_dim/768)^−0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from jaxchat.optim.muon import muon

ScalarOrSchedule = Union[float, Callable[[Any], Any]]

GROUPS = ("embedding", "unembedding", "matrix")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer hyperparameters; defaults are nanochat's base training (docs/DESIGN.md §4).

    - ``embedding_lr`` 0.2, ``unembedding_lr`` 0.004: AdamW LRs of wte / lm_head at model_dim 768;
      multiplied by s = (model_dim/768)^−0.5 (nanochat ``GPT.setup_optimizers``, dmodel_lr_scale).
    - ``matrix_lr`` 0.02: Muon LR of every block matrix, not scaled by s.
    - ``adam_betas`` (0.8, 0.95), ``adam_eps`` 1e-10: nanochat's AdamW settings.
    - ``weight_decay`` 0.0: AdamW (decoupled, torch semantics: p −= lr·wd·p); nanochat's Muon has none.
    - ``init_lr_frac``: multiplies every base LR (1.0 in base/mid; SFT uses 0.02, docs/DESIGN.md §7).
    - ``grad_clip``: global-norm clipping threshold, 1.0 in base training (docs/DESIGN.md §4); None = no
      clipping (mid and SFT, docs/DESIGN.md §6–§7).
    - ``ns_steps`` 5 Newton–Schulz iterations in ``ns_dtype`` (bfloat16 as in nanochat; float32 only
      for exact comparisons in tests).
    """

    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-10
    weight_decay: float = 0.0
    init_lr_frac: float = 1.0
    grad_clip: float | None = 1.0
    ns_steps: int = 5
    ns_dtype: Any = jnp.bfloat16


def _key_name(entry: Any) -> Any:
    """The plain key of a jax key-path entry (DictKey.key, GetAttrKey.name, SequenceKey.idx)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def param_group(path: Sequence[Any]) -> str:
    """Optimizer group of a parameter, from its path in the params dict (jax key path or plain keys).

    ``wte/embedding`` → "embedding", ``lm_head/kernel`` → "unembedding", ``h/<layer>/.../kernel`` →
    "matrix". Anything else raises ValueError: an unknown parameter must be routed on purpose.
    """
    names = tuple(_key_name(entry) for entry in path)
    if names == ("wte", "embedding"):
        return "embedding"
    if names == ("lm_head", "kernel"):
        return "unembedding"
    if len(names) >= 3 and names[0] == "h" and names[-1] == "kernel":
        return "matrix"
    raise ValueError(f"no optimizer group for parameter {'/'.join(map(str, names))!r}: expected "
                     "wte/embedding, lm_head/kernel or h/<layer>/.../kernel")


def param_labels(params: Any) -> Any:
    """The label tree (same structure as ``params``) that ``optax.multi_transform`` routes by."""

    def label(path: Any, leaf: Any) -> str:
        group = param_group(path)
        shape = tuple(getattr(leaf, "shape", ()))  # works for arrays and ShapeDtypeStructs
        if group == "matrix" and len(shape) != 2:
            raise ValueError(f"Muon parameter {jax.tree_util.keystr(path)} must be a 2-D matrix, "
                             f"got shape {shape}")
        return group

    return jax.tree_util.tree_map_with_path(label, params)


def base_lrs(config: OptimConfig, model_dim: int) -> dict[str, float]:
    """Each group's LR before the schedule: base LR · init_lr_frac (· s for the AdamW groups)."""
    s = (model_dim / 768) ** -0.5
    return {
        "embedding": config.embedding_lr * s * config.init_lr_frac,
        "unembedding": config.unembedding_lr * s * config.init_lr_frac,
        "matrix": config.matrix_lr * config.init_lr_frac,
    }


def _scaled(base: float, multiplier: ScalarOrSchedule) -> Callable[[jax.Array], jax.Array]:
    """The schedule step ↦ base · multiplier(step) (multiplier may be a constant)."""
    if callable(multiplier):
        return lambda count: base * jnp.asarray(multiplier(count), jnp.float32)
    return lambda count: jnp.asarray(base * multiplier, jnp.float32)


def make_optimizer(params: Any, model_dim: int, config: OptimConfig, lr_multiplier: ScalarOrSchedule,
                   muon_momentum: ScalarOrSchedule) -> optax.GradientTransformation:
    """nanochat's optimizer for a GPT params dict, with LRs following ``lr_multiplier(step)``.

    ``params`` is only used to check the routing now (a foreign parameter raises ValueError here,
    not deep inside ``init``). ``lr_multiplier`` and ``muon_momentum`` are floats or schedules of
    the optimizer step (see ``jaxchat.optim.schedules``). Updates include −lr: apply them with
    ``optax.apply_updates``. The state holds each group's current hyperparameters
    (see ``learning_rates``).
    """
    param_labels(params)  # fail fast on a parameter we do not know how to route
    lrs = base_lrs(config, model_dim)
    b1, b2 = config.adam_betas
    # Static (non-injected) arguments stay Python floats/ints/dtypes; only the LR (and Muon momentum)
    # become state. float32 hyperparams so that update() does not need params to pick a dtype.
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "eps_root", "weight_decay"),
                                     hyperparam_dtype=jnp.float32)
    muon_tx = optax.inject_hyperparams(muon, static_args=("ns_steps", "nesterov", "ns_dtype"),
                                       hyperparam_dtype=jnp.float32)
    # optax's AdamW bias correction, m̂/(√v̂ + eps), is exactly torch's (eps outside the sqrt).
    adam_kwargs = dict(b1=b1, b2=b2, eps=config.adam_eps, weight_decay=config.weight_decay)
    transforms = {
        "embedding": adamw(learning_rate=_scaled(lrs["embedding"], lr_multiplier), **adam_kwargs),
        "unembedding": adamw(learning_rate=_scaled(lrs["unembedding"], lr_multiplier), **adam_kwargs),
        "matrix": muon_tx(learning_rate=_scaled(lrs["matrix"], lr_multiplier), momentum=muon_momentum,
                          ns_steps=config.ns_steps, ns_dtype=config.ns_dtype),
    }
    tx = optax.multi_transform(transforms, param_labels)
    if config.grad_clip is None:
        return tx
    # Clip on the global norm over ALL params, before the split (torch clip_grad_norm_ on the model;
    # torch divides by norm + 1e-6, optax by norm: a relative difference of ~1e-6 / norm).
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)


def learning_rates(opt_state: Any) -> dict[str, jax.Array]:
    """Current LR of each group, read from a ``make_optimizer`` state (the LR used by the last update;
    after ``init`` the LR of step 0)."""
    states = opt_state if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields") else (opt_state,)
    multi = next(s for s in states if isinstance(s, optax.MultiTransformState))
    out = {}
    for name, state in multi.inner_states.items():
        inner = getattr(state, "inner_state", state)  # multi_transform wraps each group in a MaskedState
        out[name] = inner.hyperparams["learning_rate"]
    return out


def current_lrs(config: OptimConfig, model_dim: int, lr_multiplier: ScalarOrSchedule,
                step: int) -> dict[str, float]:
    """Each group's LR at ``step`` as Python floats (for logging without touching the state)."""
    multiplier = float(lr_multiplier(step)) if callable(lr_multiplier) else float(lr_multiplier)
    return {name: lr * multiplier for name, lr in base_lrs(config, model_dim).items()}
