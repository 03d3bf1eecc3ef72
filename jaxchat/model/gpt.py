"""The nanochat GPT as a Flax NNX module (docs/DESIGN.md §3).

    x = rmsnorm(wte(idx))
    for each block:  x += attn(rmsnorm(x));  x += mlp(rmsnorm(x))
    logits = 15·tanh(lm_head(rmsnorm(x)) / 15)          (float32)

With nanochat 92d63d4's features on (``GPTConfig.from_depth_2026``; each is a GPTConfig field, off
by default, and the default model is nanochat 16788ee's)::

    x = rmsnorm(wte(idx));  x[t] += smear_lambda·σ(smear_gate(x[t, :24]))·x[t−1]       (smear)
    x0 = x
    for block i:  x = resid_lambdas[i]·x + x0_lambdas[i]·x0                          (layer_lambdas)
                  v += 3·σ(ve_gate(h[:, :12]))·value_embeds[i](idx)   on alternating i (value_embeds)
                  q, k = 1.2·rmsnorm(rotary(q)), 1.2·rmsnorm(rotary(k))              (qk_scale)
                  attention over the last `window` keys on S layers                  (window_pattern)
                  x_mid = x after block n_layer//2
    x = x − backout_lambda·x_mid                                                     (backout)
    logits = 15·tanh(lm_head(rmsnorm(x))[:vocab_size] / 15)   lm_head padded to 64 (pad_vocab_to)

plus rotary base 100000 and 92d63d4's init (``init="2026"``, see ``GPT``). The softcap is 15 in both.
The extra parameters mirror 92d63d4's state_dict (kernels transposed, like the rest of §14):

| jaxchat | nanochat 92d63d4 | jaxchat shape |
|---|---|---|
| ``h/{i}/attn/ve_gate/kernel`` | ``transformer.h.{i}.attn.ve_gate.weight`` | (12, K) |
| ``value_embeds/{i}/embedding`` (key ``str(i)``) | ``value_embeds.{i}.weight`` | (V_pad, K·hd) |
| ``resid_lambdas`` | ``resid_lambdas`` | (n_layer,) |
| ``x0_lambdas`` | ``x0_lambdas`` | (n_layer,) |
| ``smear_gate/kernel`` | ``smear_gate.weight`` | (24, 1) |
| ``smear_lambda`` | ``smear_lambda`` | (1,) |
| ``backout_lambda`` | ``backout_lambda`` | (1,) |

``wte``, ``lm_head`` and ``value_embeds`` have V_pad = vocab_size rounded up to ``pad_vocab_to`` rows.
Dtypes: 92d63d4 stores wte and the value embeddings in the compute dtype (bf16 on GPU) and runs its
residual stream in it; jaxchat keeps every parameter float32 (a master copy, like the matrices) and
its residual stream float32, casting to the compute dtype only for matmuls and attention (§13).

Attention: q, k, v projections, rotary, then QK-norm, causal softmax (GQA allowed), out projection.
MLP: relu(x)² between a 4× up and a down projection. No biases, no learnable norms, untied
embeddings. Parameter names mirror nanochat's state_dict (docs/DESIGN.md §14).

Mixed precision as nanochat under autocast: params are float32; matmuls and attention run in the
runtime plan's compute dtype (bfloat16 on GPU); the residual stream, norms and logits stay float32.
The residual stream is kept flat, (B·T, D), and only attention sees (B, T, heads, hd): weight
gradients of 2-D activations are plain matmuls (contracting over (B, T) made XLA:CPU copy a
transposed cotangent and leave its fast matmul path: 3× slower at d4, measured).

How each piece runs (attention kernel, dense matmul, loss chunking, remat) is the ``runtime``'s
choice (``jaxchat.runtime``); the kernels live in ``jaxchat.kernels``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxchat import sharding
from jaxchat.kernels.attention import cached_attention, causal_attention
from jaxchat.kernels.dense import dense_dot_general
from jaxchat.kernels.head_loss import chunk_rows, head_loss_sum
from jaxchat.model.config import SMEAR_CHANNELS, VE_GATE_CHANNELS, GPTConfig, ve_layers, window_sizes
from jaxchat.runtime import Runtime

SOFTCAP = 15.0  # nanochat 16788ee and 92d63d4 alike
ROTARY_BASE = 10000.0  # GPTConfig.rotary_base's default (16788ee; 92d63d4 uses 100000)
# torch's F.rms_norm(eps=None) uses finfo(dtype).eps; our norms always run in float32.
NORM_EPS = float(jnp.finfo(jnp.float32).eps)


def rms_norm(x: jax.Array) -> jax.Array:
    """Parameter-free RMSNorm over the last axis, computed in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + NORM_EPS)
    return normed.astype(x.dtype)


def rotary_cos_sin(positions: jax.Array, head_dim: int, base: float = ROTARY_BASE) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables (T, head_dim/2) for the given absolute positions (computed, not stored)."""
    inv_freq = 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(freqs), jnp.sin(freqs)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, T, N, hd) with nanochat's half-split layout, in float32, returned in x's dtype.

    One rounding to bf16 instead of one per op (upstream rotates in bf16 with bf16 tables): the
    same ops in float32, and XLA:CPU emulated each bf16 op of the backward with a pair of converts."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1).astype(x.dtype)


def uniform(low: float, high: float):
    """Initializer drawing from U(low, high) (torch's ``nn.init.uniform_``)."""
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, low, high)


def _matrix_init(config: GPTConfig, scale: float = 1.0):
    """A block matrix's init: 92d63d4's U(±scale·√3/√n_embd) under ``init="2026"``, else None
    (``_linear``'s 16788ee rule)."""
    if config.init != "2026":
        return None
    bound = scale * math.sqrt(3.0 / config.n_embd)  # the std of N(0, 1/√n_embd), without outliers
    return uniform(-bound, bound)


def _linear(fan_in: int, fan_out: int, runtime: Runtime, rngs: nnx.Rngs, zero: bool = False, init=None) -> nnx.Linear:
    """A bias-free matrix initialised by ``init`` if given, else zeros or 16788ee's
    N(0, 1/√fan_in · min(1, √(fan_out/fan_in)))."""
    std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
    if init is None:
        init = nnx.initializers.zeros_init() if zero else nnx.initializers.normal(stddev=std)
    dot_general = dense_dot_general if runtime.dense == "transposed" else jax.lax.dot_general
    return nnx.Linear(fan_in, fan_out, use_bias=False, dtype=runtime.dtype, param_dtype=jnp.float32,
                      kernel_init=init, dot_general=dot_general, rngs=rngs)


class KVCache(NamedTuple):
    """Static-shape decode cache: per layer (B, max_len, n_kv_head, head_dim) keys and values.

    ``pos`` is the number of positions already written (shared by all rows: the engine decodes
    its rows in lockstep). Positions ≥ pos hold garbage and are masked out. With smear,
    ``prev`` (B, n_embd) float32 is the normalised embedding of the token at pos − 1 (zeros at pos 0,
    which smears nothing), nanochat 92d63d4's ``KVCache.prev_embedding``; otherwise None.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos: jax.Array
    prev: jax.Array | None = None

    @classmethod
    def create(cls, config: GPTConfig, batch_size: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch_size, max_len, config.n_kv_head, config.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
        prev = jnp.zeros((batch_size, config.n_embd), jnp.float32) if config.smear else None
        return cls(k=zeros, v=zeros, pos=jnp.zeros((), jnp.int32), prev=prev)

    def repeat_rows(self, n: int) -> "KVCache":
        """Copy a batch-1 cache (one prefilled prompt) to n rows for parallel sampling."""
        tile = lambda a: None if a is None else jnp.repeat(a, n, axis=0)  # noqa: E731
        return KVCache(tuple(map(tile, self.k)), tuple(map(tile, self.v)), self.pos, tile(self.prev))


class CausalSelfAttention(nnx.Module):
    def __init__(self, config: GPTConfig, runtime: Runtime, rngs: nnx.Rngs, layer: int):
        d, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.implementation = runtime.attention
        self.window = window_sizes(config)[layer]  # None: full context
        self.qk_scale = config.qk_scale
        self.c_q = _linear(d, config.n_head * hd, runtime, rngs, init=_matrix_init(config))
        self.c_k = _linear(d, config.n_kv_head * hd, runtime, rngs, init=_matrix_init(config))
        self.c_v = _linear(d, config.n_kv_head * hd, runtime, rngs, init=_matrix_init(config))
        self.c_proj = _linear(d, d, runtime, rngs, zero=True)
        # Value residual (ResFormer): this layer's value embedding is gated in per kv head.
        self.ve_gate = (_linear(VE_GATE_CHANNELS, config.n_kv_head, runtime, rngs, init=uniform(0.0, 0.02))
                        if layer in ve_layers(config) else None)

    def qkv(self, x, cos, sin, ve=None):
        """Projections of x (B·T, D) to (B, T, heads, hd); rotary first, then QK-norm (nanochat's order).
        ``ve`` (B·T, K·hd): this layer's value embedding, added to v through the gate."""
        seq = cos.shape[0]
        batch = x.shape[0] // seq
        q = self.c_q(x).reshape(batch, seq, self.n_head, self.head_dim)
        k = self.c_k(x).reshape(batch, seq, self.n_kv_head, self.head_dim)
        v = self.c_v(x).reshape(batch, seq, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 3 * jax.nn.sigmoid(self.ve_gate(x[:, :VE_GATE_CHANNELS]))  # (B·T, K), in (0, 3)
            v = v + gate.reshape(batch, seq, self.n_kv_head, 1) * ve.astype(v.dtype).reshape(v.shape)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))
        if self.qk_scale != 1.0:
            q, k = q * self.qk_scale, k * self.qk_scale
        return q, k, v

    def __call__(self, x, cos, sin, ve=None):
        """x (B·T, D) → (B·T, D), causal over the T = len(cos) positions of each row."""
        q, k, v = self.qkv(x, cos, sin, ve)
        y = causal_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), implementation=self.implementation,
                             window=self.window)
        return self.c_proj(y.reshape(x.shape[0], -1))

    def decode(self, x, cos, sin, k_cache, v_cache, pos, ve=None):
        """Like ``__call__`` for new positions pos… of each row, attending to the cache as well;
        also returns the cache with the new keys and values written."""
        q, k, v = self.qkv(x, cos, sin, ve)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
        y = cached_attention(q, k_cache, v_cache, pos, scale=1.0 / math.sqrt(self.head_dim), window=self.window)
        return self.c_proj(y.reshape(x.shape[0], -1)), (k_cache, v_cache)


class MLP(nnx.Module):
    def __init__(self, config: GPTConfig, runtime: Runtime, rngs: nnx.Rngs):
        self.c_fc = _linear(config.n_embd, 4 * config.n_embd, runtime, rngs, init=_matrix_init(config, 0.4))
        self.c_proj = _linear(4 * config.n_embd, config.n_embd, runtime, rngs, zero=True)

    def __call__(self, x):
        return self.c_proj(jnp.square(jax.nn.relu(self.c_fc(x))))


class Block(nnx.Module):
    def __init__(self, config: GPTConfig, runtime: Runtime, rngs: nnx.Rngs, layer: int):
        self.attn = CausalSelfAttention(config, runtime, rngs, layer)
        self.mlp = MLP(config, runtime, rngs)

    def __call__(self, x, cos, sin, ve=None):
        x = x + self.attn(rms_norm(x), cos, sin, ve)
        return x + self.mlp(rms_norm(x))

    def decode(self, x, cos, sin, k_cache, v_cache, pos, ve=None):
        y, new_kv = self.attn.decode(rms_norm(x), cos, sin, k_cache, v_cache, pos, ve)
        x = x + y
        return x + self.mlp(rms_norm(x)), new_kv


def cross_entropy(logits: jax.Array, targets: jax.Array, reduction: str = "mean") -> jax.Array:
    """Cross-entropy in float32 ignoring targets == -1. reduction: 'mean' | 'sum' | 'none'."""
    valid = targets != -1
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    nll = jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - target_logit, 0.0)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.sum() / jnp.maximum(valid.sum(), 1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class GPT(nnx.Module):
    """nanochat's GPT. ``model(idx)`` → float32 softcapped logits; ``model(idx, targets)`` → loss.

    Args:
      config: the shape, and which of nanochat 92d63d4's features are on (``GPTConfig``).
      runtime: how it runs (``jaxchat.runtime``: compute dtype, attention and dense kernels, loss
        chunking, remat). The default is the portable reference program; training and the tools
        use ``runtime.for_this_machine()`` (or the stage's plan).
      rngs: initialisation randomness.

    Init: ``config.init="2025"`` is 16788ee's (wte N(0, 1), lm_head 0, block matrices
    N(0, 1/√fan_in·min(1, √(fan_out/fan_in))), projections 0); ``"2026"`` is 92d63d4's (wte N(0, 0.8),
    lm_head N(0, 0.001), c_q/c_k/c_v U(±√3/√n_embd), c_fc 0.4× that, projections 0). The 2026
    features' own parameters always start as 92d63d4 starts them: value embeds U(±√3/√n_embd),
    ve_gate and smear_gate U(0, 0.02), smear_lambda 0, backout_lambda 0.2, resid_lambdas
    1.15 → 1.05 and x0_lambdas 0.20 → 0.05 linearly over the layers.
    """

    def __init__(self, config: GPTConfig, *, runtime: Runtime = Runtime(), rngs: nnx.Rngs):
        self.config = config
        self.runtime = runtime
        d, vocab, n_layer = config.n_embd, config.padded_vocab_size, config.n_layer
        new = config.init == "2026"
        self.wte = nnx.Embed(vocab, d, param_dtype=jnp.float32,
                             embedding_init=nnx.initializers.normal(stddev=0.8 if new else 1.0), rngs=rngs)
        self.h = nnx.List([Block(config, runtime, rngs, i) for i in range(n_layer)])
        # float32 logits straight out of the matmul (no bf16 rounding before the softcap).
        lm_head_init = nnx.initializers.normal(stddev=0.001) if new else nnx.initializers.zeros_init()
        self.lm_head = nnx.Linear(d, vocab, use_bias=False, dtype=runtime.dtype, param_dtype=jnp.float32,
                                  kernel_init=lm_head_init, preferred_element_type=jnp.float32, rngs=rngs)
        # ----- nanochat 92d63d4's extras (None when off: the parameter tree is then 16788ee's) -----
        depth = jnp.arange(n_layer, dtype=jnp.float32) / max(n_layer - 1, 1)  # 0 → 1 over the layers
        # Per-layer residual and x0 mixing: stronger residual and more x0 at early layers.
        self.resid_lambdas = nnx.Param(1.15 - 0.10 * depth) if config.layer_lambdas else None
        self.x0_lambdas = nnx.Param(0.20 - 0.15 * depth) if config.layer_lambdas else None
        # Smear: mix the previous token's embedding into each position.
        self.smear_gate = (_linear(SMEAR_CHANNELS, 1, runtime, rngs, init=uniform(0.0, 0.02))
                           if config.smear else None)
        self.smear_lambda = nnx.Param(jnp.zeros((1,), jnp.float32)) if config.smear else None
        # Backout: subtract the mid-layer residual before the final norm.
        self.backout_lambda = nnx.Param(jnp.full((1,), 0.2, jnp.float32)) if config.backout else None
        # Value embeddings of the alternating layers (ResFormer), initialised like c_v under the 2026 init.
        bound = math.sqrt(3.0 / d)
        self.value_embeds = nnx.Dict({
            str(i): nnx.Embed(vocab, config.n_kv_head * config.head_dim, param_dtype=jnp.float32,
                              embedding_init=uniform(-bound, bound), rngs=rngs)
            for i in ve_layers(config)}) if config.value_embeds else None

    def __call__(self, idx: jax.Array, targets: jax.Array | None = None, *, reduction: str = "mean"):
        batch, seq = idx.shape
        x = self.hidden(idx).reshape(batch * seq, -1)
        if targets is not None and reduction in ("sum", "mean"):
            return self._loss(x, targets.reshape(-1), reduction)
        logits = self.logits(x).reshape(batch, seq, -1)
        return logits if targets is None else cross_entropy(logits, targets, reduction)

    def hidden(self, idx: jax.Array) -> jax.Array:
        """The residual stream after the last block (and backout), (B, T, D), before the final norm
        and lm_head.

        ``model.logits(model.hidden(idx)[rows, positions])`` gives the logits of a few positions
        without computing (B, T, V) of them (evaluation at answer positions).
        """
        batch, seq = idx.shape
        # Positions are static here: evaluate the tables now, so they enter the program as
        # constants; computed in-graph, XLA fused cos/sin into every rotary fusion that reads them
        # (recomputed per element, for q and k of every layer, forward and backward).
        with jax.ensure_compile_time_eval():
            cos, sin = rotary_cos_sin(jnp.arange(seq), self.config.head_dim, self.config.rotary_base)
        x, _ = self.embed(idx)

        def run_block(block, x, ve):
            if self.runtime.remat:
                return nnx.remat(lambda blk, x, cos, sin, ve: blk(x, cos, sin, ve))(block, x, cos, sin, ve)
            return block(x, cos, sin, ve)

        return self.trunk(x, idx, run_block).reshape(batch, seq, -1)

    def embed(self, idx: jax.Array, prev: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Normalised token embeddings, flat (B·T, D), smeared when ``config.smear``; and the unsmeared
        (B, T, D) ones (the decode cache keeps the last). ``prev`` (B, D): the embedding before
        position 0 (the cache's; zeros, i.e. nothing to smear, at the start of a sequence)."""
        batch, seq = idx.shape
        x = rms_norm(self.wte(idx))
        if self.smear_gate is None:
            return x.reshape(batch * seq, -1), x
        # Smear: x[t] += λ·σ(gate(x[t, :24]))·x[t−1], cheap bigram information.
        before = jnp.zeros_like(x[:, :1]) if prev is None else prev[:, None].astype(x.dtype)
        gate = self.smear_lambda[...] * jax.nn.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))
        smeared = x + gate * jnp.concatenate([before, x[:, :-1]], axis=1)
        return smeared.reshape(batch * seq, -1), x

    def trunk(self, x: jax.Array, idx: jax.Array, run_block) -> jax.Array:
        """The blocks over the flat residual stream x (B·T, D); ``run_block(block, x, ve)`` runs one
        block (training, remat or cached decoding). With 92d63d4's features: each block's input mixes
        in the embeddings x0, value embeddings feed the attention of alternating layers, and the
        residual after layer n_layer//2 is backed out at the end."""
        x0, x_mid = x, None
        for i, block in enumerate(self.h):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[...][i] * x + self.x0_lambdas[...][i] * x0
            ve = self.value_embeds[str(i)](idx.reshape(-1)) if block.attn.ve_gate is not None else None
            x = run_block(block, x, ve)
            if i == self.config.n_layer // 2:
                x_mid = x
        if self.backout_lambda is not None:
            x = x - self.backout_lambda[...] * x_mid
        return x

    def decode(self, idx: jax.Array, cache: KVCache, length: jax.Array | int | None = None):
        """Run (B, T) new tokens against the cache: prefill (T = prompt) or one decode step (T = 1).

        Returns float32 logits (B, T, V) and the cache advanced by ``length`` positions (default T;
        a right-padded prompt passes its real length so later tokens overwrite the padding).
        With smear, position 0 of the chunk smears in ``cache.prev`` (nothing at pos 0), so a chunk
        prefilled after others equals the full forward (nanochat 92d63d4 skips position 0 of any
        T > 1 chunk; its engine only prefills at pos 0, where the two agree).
        """
        batch, seq = idx.shape
        advance = seq if length is None else length
        cos, sin = rotary_cos_sin(cache.pos + jnp.arange(seq), self.config.head_dim, self.config.rotary_base)
        x, embedded = self.embed(idx, cache.prev)
        prev = None if cache.prev is None else jax.lax.dynamic_index_in_dim(embedded, advance - 1, 1, keepdims=False)
        layer_caches = iter(zip(cache.k, cache.v))
        new_k, new_v = [], []

        def run_block(block, x, ve):
            k, v = next(layer_caches)
            x, (k, v) = block.decode(x, cos, sin, k, v, cache.pos, ve)
            new_k.append(k)
            new_v.append(v)
            return x

        x = self.trunk(x, idx, run_block)
        logits = self.logits(x).reshape(batch, seq, -1)
        return logits, KVCache(tuple(new_k), tuple(new_v), cache.pos + advance, prev)

    def logits(self, x: jax.Array) -> jax.Array:
        """Float32 softcapped logits (..., V) of residual-stream vectors x (..., D)."""
        logits = self.lm_head(rms_norm(x)).astype(jnp.float32)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., :self.config.vocab_size]
        return SOFTCAP * jnp.tanh(logits / SOFTCAP)

    def _loss(self, x: jax.Array, targets: jax.Array, reduction: str) -> jax.Array:
        """``cross_entropy(self.logits(x), targets, reduction)`` through the fused head+loss kernel,
        which never holds the (N, V) float32 logits at once."""
        kernel = self.lm_head.kernel[...][:, :self.config.vocab_size]  # without the padding columns
        def loss_sum(h, kernel, targets):  # on each device's own rows (sharding.sum_over_rows)
            rows = chunk_rows(h.shape[0], kernel.shape[1], self.runtime.loss_chunk_bytes)
            return head_loss_sum(h, kernel, targets, rows, self.runtime.dtype, SOFTCAP,
                                 self.runtime.dense == "transposed")

        total = sharding.sum_over_rows(loss_sum, rms_norm(x), kernel, targets, whole=(1,))
        if reduction == "sum":
            return total
        return total / jnp.maximum((targets != -1).sum(), 1)


def split_params(model: GPT) -> tuple[nnx.GraphDef, dict]:
    """Split once for the hot loop: the static graph and the params as a plain nested dict.

    Rebuild a module view with ``nnx.merge(graphdef, params)`` (inside or outside jit). After a
    donated step the original module's arrays are gone, so do not keep using ``model`` itself.
    """
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)
