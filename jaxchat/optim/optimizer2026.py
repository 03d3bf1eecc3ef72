"""nanochat 92d63d4's optimizer (``GPT.setup_optimizer`` + ``MuonAdamW``) for the 2026 model, in optax.

Parameters are routed by path (the model mirrors nanochat's state_dict names) with
``optax.multi_transform`` to seven groups, each wrapped in ``optax.inject_hyperparams`` so that its
current hyper-parameters are in the optimizer state:

| group         | parameters                                           | AdamW betas, wd  | LR                 |
|---------------|------------------------------------------------------|------------------|--------------------|
| lm_head       | ``lm_head``                                          | (0.8, 0.96), 0.01   | unembedding_lr·k·s |
| wte           | ``[transformer.]wte``                                | (0.8, 0.995), 0.001 | embedding_lr·k·s   |
| value_embeds  | ``value_embeds.<i>``                                 | (0.8, 0.995), 0.01  | embedding_lr·k·s·½ |
| resid_lambdas | ``resid_lambdas``                                    | (0.8, 0.95), 0.05   | scalar_lr·k·0.01   |
| x0_lambdas    | ``x0_lambdas``                                       | (0.96, 0.95), 0     | scalar_lr·k        |
| smear         | ``smear_gate``, ``smear_lambda``, ``backout_lambda`` | (0.8, 0.95), 0      | smear_lr (0.2)     |
| muon          | every matrix under ``[transformer.]h`` (ve_gate too) | NorMuon, cautious wd | matrix_lr·k       |

Paths are matched on their dotted name without the final kernel/embedding/weight (and nnx ``value``);
the ``transformer.`` prefix of nanochat's names is optional (jaxchat's GPT keeps ``wte`` and ``h`` at
the top, as the seed model does). s = (model_dim/768)^−0.5, k = ``batch_lr_scale``; every LR is also
multiplied by ``init_lr_frac`` (SFT / RL) and by the per-step LR multiplier. AdamW eps is 1e-10
everywhere. The Muon group has momentum 0.95 (a schedule in base training), β₂ 0.9, 5 Polar Express
steps and the (scheduled) weight decay; its LR is further scaled by √max(1, fan_out/fan_in) per
matrix. nanochat groups Muon matrices by shape only to stack them; no step couples two matrices, so
one group is the same rule.
There is no gradient clipping in 92d63d4 (``grad_clip`` None).

The LR multiplier. Every update is linear in its group's LR (AdamW: −lr·(adam + wd·p); Muon:
−lr'·(X + wd·mask⊙p), X and mask independent of lr), so the train step may keep building the
optimizer at multiplier 1 and multiply the updates by ``lrm`` (jaxchat/training/step.py): that is
exactly nanochat's ``group["lr"] = initial_lr·lrm``. What it cannot fold into ``lrm`` is the Muon
momentum and weight decay schedules: pass them to ``make_optimizer_2026`` as schedules of the
optimizer step (``schedules2026.muon_momentum_2026``, ``weight_decay_cosine``), evaluated inside
the optimizer at the step being taken — or as floats, then overwrite ``hyperparams`` in the state
per step (``set_muon_hyperparams``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from jaxchat.optim.adamw2026 import adamw_nanochat
from jaxchat.optim.muon2026 import normuon

ScalarOrSchedule = Union[float, Callable[[Any], Any]]

ADAMW_GROUPS = ("lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "smear")
GROUPS = ADAMW_GROUPS + ("muon",)

# Final path components that name the array inside a module (Flax ``kernel``/``embedding``, torch
# ``weight``); they are dropped before matching.
_LEAF_NAMES = ("kernel", "embedding", "weight")


@dataclass(frozen=True)
class AdamWGroup:
    """Fixed per-group AdamW settings (nanochat ``setup_optimizer``)."""

    betas: tuple[float, float]
    eps: float = 1e-10
    weight_decay: float = 0.0


@dataclass(frozen=True)
class OptimConfig2026:
    """Hyper-parameters of nanochat 92d63d4's optimizer; defaults are ``scripts/base_train.py``'s.

    - LRs at model_dim 768 and batch 2¹⁹ tokens: ``embedding_lr`` 0.3, ``unembedding_lr`` 0.008,
      ``matrix_lr`` 0.02, ``scalar_lr`` 0.5 (base_train's CLI defaults; ``GPT.setup_optimizer``'s own
      signature defaults, used by chat_rl, are 0.2 / 0.004 / 0.02 / 0.5). ``smear_lr`` 0.2 is fixed in
      setup_optimizer and not scaled by ``batch_lr_scale``.
    - ``batch_lr_scale``: √(B/B_ref) (``schedules2026.batch_lr_scale``), applied to every LR but smear.
    - ``init_lr_frac``: multiplies every LR (SFT 0.8, RL 0.05; 1.0 in base training).
    - ``weight_decay`` 0.28: the Muon cautious weight decay λ before depth/batch scaling
      (``schedules2026.scaled_weight_decay``) and before its cosine schedule. It is the value used
      when ``make_optimizer_2026`` gets no ``muon_weight_decay`` schedule (SFT passes 0).
    - Muon: ``muon_momentum`` 0.95 (used when no schedule is given), ``muon_beta2`` 0.9,
      ``ns_steps`` 5 Polar Express steps in ``ortho_dtype`` (bfloat16 as nanochat on GPU; float32 for
      exact comparisons), ``muon_eq`` / ``muon_plus`` (row equilibration / renormalisation, on).
    - Per-AdamW-group betas, eps and weight decay in ``lm_head`` … ``smear``.
    - ``grad_clip``: optional global-norm clipping before the split (None: nanochat 92d63d4 has none).
    """

    embedding_lr: float = 0.3
    unembedding_lr: float = 0.008
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    smear_lr: float = 0.2
    batch_lr_scale: float = 1.0
    init_lr_frac: float = 1.0
    weight_decay: float = 0.28
    muon_momentum: float = 0.95
    muon_beta2: float = 0.9
    ns_steps: int = 5
    ortho_dtype: Any = jnp.bfloat16
    muon_eq: bool = True
    muon_plus: bool = True
    lm_head: AdamWGroup = field(default_factory=lambda: AdamWGroup((0.8, 0.96), 1e-10, 0.01))
    wte: AdamWGroup = field(default_factory=lambda: AdamWGroup((0.8, 0.995), 1e-10, 0.001))
    value_embeds: AdamWGroup = field(default_factory=lambda: AdamWGroup((0.8, 0.995), 1e-10, 0.01))
    resid_lambdas: AdamWGroup = field(default_factory=lambda: AdamWGroup((0.8, 0.95), 1e-10, 0.05))
    x0_lambdas: AdamWGroup = field(default_factory=lambda: AdamWGroup((0.96, 0.95), 1e-10, 0.0))
    smear: AdamWGroup = field(default_factory=lambda: AdamWGroup((0.8, 0.95), 1e-10, 0.0))
    grad_clip: float | None = None


def _key_name(entry: Any) -> str:
    """The plain key of a jax key-path entry (DictKey.key, GetAttrKey.name, SequenceKey.idx) as a str."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def param_name(path: Sequence[Any]) -> str:
    """nanochat's dotted name of a parameter path: ('transformer', 'h', 0, 'attn', 'c_q', 'kernel') →
    'transformer.h.0.attn.c_q'. Trailing kernel/embedding/weight components are dropped, and the
    ``.value`` that an nnx State (not made pure with ``nnx.to_pure_dict``) adds after each Variable."""
    names = [_key_name(entry) for entry in path]
    if len(names) > 1 and names[-1] == "value":
        names = names[:-1]
    if len(names) > 1 and names[-1] in _LEAF_NAMES:
        names = names[:-1]
    return ".".join(names)


_RULES = (
    (re.compile(r"lm_head"), "lm_head"),
    (re.compile(r"(transformer\.)?wte"), "wte"),
    (re.compile(r"value_embeds\.\d+"), "value_embeds"),
    (re.compile(r"resid_lambdas"), "resid_lambdas"),
    (re.compile(r"x0_lambdas"), "x0_lambdas"),
    (re.compile(r"smear_gate|smear_lambda|backout_lambda"), "smear"),
    (re.compile(r"(transformer\.)?h\.\d+\..+"), "muon"),
)


def param_group_2026(path: Sequence[Any]) -> str:
    """Optimizer group of a parameter path (jax key path or plain keys); see the module table.

    Anything else raises ValueError: a new parameter must be routed on purpose.
    """
    name = param_name(path)
    for pattern, group in _RULES:
        if pattern.fullmatch(name):
            return group
    raise ValueError(f"no optimizer group for parameter {name!r} (92d63d4 routing: lm_head, [transformer.]wte, "
                     "value_embeds.<i>, resid_lambdas, x0_lambdas, smear_gate, smear_lambda, backout_lambda, "
                     "[transformer.]h.<i>.<...> matrices)")


def param_labels_2026(params: Any) -> Any:
    """The label tree (same structure as ``params``) that ``optax.multi_transform`` routes by."""

    def label(path: Any, leaf: Any) -> str:
        group = param_group_2026(path)
        shape = tuple(getattr(leaf, "shape", ()))  # arrays and ShapeDtypeStructs
        if group == "muon" and len(shape) < 2:
            raise ValueError(f"Muon parameter {param_name(path)!r} must be a matrix, got shape {shape}")
        return group

    return jax.tree_util.tree_map_with_path(label, params)


def base_lrs_2026(config: OptimConfig2026, model_dim: int) -> dict[str, float]:
    """Each group's LR before the per-step multiplier (nanochat's ``initial_lr``)."""
    s = (model_dim / 768) ** -0.5
    k, f = config.batch_lr_scale, config.init_lr_frac
    return {
        "lm_head": config.unembedding_lr * k * s * f,
        "wte": config.embedding_lr * k * s * f,
        "value_embeds": config.embedding_lr * k * s * 0.5 * f,
        "resid_lambdas": config.scalar_lr * k * 0.01 * f,
        "x0_lambdas": config.scalar_lr * k * f,
        "smear": config.smear_lr * f,
        "muon": config.matrix_lr * k * f,
    }


def _scaled(base: float, multiplier: ScalarOrSchedule) -> ScalarOrSchedule:
    if callable(multiplier):
        return lambda count: base * jnp.asarray(multiplier(count), jnp.float32)
    return base * float(multiplier)


def make_optimizer_2026(params: Any, model_dim: int, config: OptimConfig2026 = OptimConfig2026(), *,
                        lr_multiplier: ScalarOrSchedule = 1.0, muon_momentum: ScalarOrSchedule | None = None,
                        muon_weight_decay: ScalarOrSchedule | None = None) -> optax.GradientTransformation:
    """nanochat 92d63d4's MuonAdamW for a 2026-model params tree (nested dicts / nnx State).

    ``params`` is only used to check the routing now (an unknown parameter raises ValueError here).
    ``lr_multiplier``, ``muon_momentum`` and ``muon_weight_decay`` are floats or schedules of the
    optimizer step (``jaxchat.optim.schedules2026``); the last two default to the config's constants.
    Build with ``lr_multiplier=1.0`` when the train step scales the updates by ``lrm`` itself.
    Updates include −lr (apply with ``optax.apply_updates``); ``update`` needs ``params``.
    """
    param_labels_2026(params)
    lrs = base_lrs_2026(config, model_dim)
    momentum = config.muon_momentum if muon_momentum is None else muon_momentum
    weight_decay = config.weight_decay if muon_weight_decay is None else muon_weight_decay
    adamw = optax.inject_hyperparams(adamw_nanochat, static_args=("b1", "b2", "eps", "weight_decay"),
                                     hyperparam_dtype=jnp.float32)
    muon_tx = optax.inject_hyperparams(normuon, static_args=("ns_steps", "ortho_dtype", "equilibrate", "renorm"),
                                       hyperparam_dtype=jnp.float32)
    transforms = {}
    for name in ADAMW_GROUPS:
        group: AdamWGroup = getattr(config, name)
        transforms[name] = adamw(learning_rate=_scaled(lrs[name], lr_multiplier), b1=group.betas[0],
                                 b2=group.betas[1], eps=group.eps, weight_decay=group.weight_decay)
    transforms["muon"] = muon_tx(learning_rate=_scaled(lrs["muon"], lr_multiplier), momentum=momentum,
                                 weight_decay=weight_decay, beta2=config.muon_beta2, ns_steps=config.ns_steps,
                                 ortho_dtype=config.ortho_dtype, equilibrate=config.muon_eq,
                                 renorm=config.muon_plus)
    tx = optax.multi_transform(transforms, param_labels_2026)
    if config.grad_clip is None:
        return tx
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)


def _multi_state(opt_state: Any) -> optax.MultiTransformState:
    states = opt_state if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields") else (opt_state,)
    return next(s for s in states if isinstance(s, optax.MultiTransformState))


def hyperparams_2026(opt_state: Any) -> dict[str, dict[str, jax.Array]]:
    """Each group's injected hyper-parameters (learning_rate; Muon also momentum, weight_decay, beta2)
    as used by the last update (after ``init``: those of step 0)."""
    out = {}
    for name, state in _multi_state(opt_state).inner_states.items():
        inner = getattr(state, "inner_state", state)  # multi_transform wraps each group in a MaskedState
        out[name] = dict(inner.hyperparams)
    return out


def set_muon_hyperparams(opt_state: Any, **values: Any) -> Any:
    """A copy of ``opt_state`` with the Muon group's constant hyper-parameters replaced (e.g.
    ``momentum=…, weight_decay=…`` computed on the host for this step; jit-friendly). Only for
    hyper-parameters given to ``make_optimizer_2026`` as floats: a schedule recomputes its value."""
    multi = _multi_state(opt_state)
    masked = multi.inner_states["muon"]
    inner = getattr(masked, "inner_state", masked)
    unknown = set(values) - set(inner.hyperparams)
    if unknown:
        raise KeyError(f"unknown Muon hyper-parameters {sorted(unknown)}; have {sorted(inner.hyperparams)}")
    hp = dict(inner.hyperparams)
    hp.update({k: jnp.asarray(v, jnp.float32) for k, v in values.items()})
    inner = inner._replace(hyperparams=hp)
    masked = masked._replace(inner_state=inner) if hasattr(masked, "inner_state") else inner
    new_multi = multi._replace(inner_states={**multi.inner_states, "muon": masked})
    if isinstance(opt_state, optax.MultiTransformState):
        return new_multi
    return tuple(new_multi if s is multi else s for s in opt_state)


def warm_start_2026(fresh: Any, loaded: Any) -> Any:
    """``fresh`` (a new optimizer's state) with every group's moments and update counts taken from
    ``loaded`` (the previous stage's state of the same structure): chat_sft's ``--load-optimizer``.
    The injected hyper-parameters and their step counter stay ``fresh``'s, so the new stage's LRs and
    momentum schedule start from its own step 0, as nanochat resets the LRs after loading."""
    def graft(new: Any, old: Any) -> Any:
        if isinstance(new, optax.MultiTransformState):
            return new._replace(inner_states={k: graft(v, old.inner_states[k]) for k, v in new.inner_states.items()})
        if hasattr(new, "inner_state") and hasattr(new, "hyperparams"):  # inject_hyperparams
            return new._replace(inner_state=old.inner_state)
        if hasattr(new, "inner_state"):  # multi_transform's MaskedState
            return new._replace(inner_state=graft(new.inner_state, old.inner_state))
        if isinstance(new, tuple) and not hasattr(new, "_fields"):  # optax.chain
            return tuple(graft(a, b) for a, b in zip(new, old))
        return new  # e.g. clipping: no state worth carrying

    return graft(fresh, loaded)
