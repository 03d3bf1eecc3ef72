"""The nanochat GPT as a Flax NNX module (docs/DESIGN.md §3).

    x = rmsnorm(wte(idx))
    for each block:  x += attn(rmsnorm(x));  x += mlp(rmsnorm(x))
    logits = 15·tanh(lm_head(rmsnorm(x)) / 15)          (float32)

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

from jaxchat.kernels.attention import cached_attention, causal_attention
from jaxchat.kernels.dense import dense_dot_general
from jaxchat.kernels.head_loss import chunk_rows, head_loss_sum
from jaxchat.model.config import GPTConfig
from jaxchat.runtime import Runtime

SOFTCAP = 15.0
ROTARY_BASE = 10000.0
# torch's F.rms_norm(eps=None) uses finfo(dtype).eps; our norms always run in float32.
NORM_EPS = float(jnp.finfo(jnp.float32).eps)


def rms_norm(x: jax.Array) -> jax.Array:
    """Parameter-free RMSNorm over the last axis, computed in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + NORM_EPS)
    return normed.astype(x.dtype)


def rotary_cos_sin(positions: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables (T, head_dim/2) for the given absolute positions (computed, not stored)."""
    inv_freq = 1.0 / ROTARY_BASE ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(freqs), jnp.sin(freqs)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, T, N, hd) with nanochat's half-split layout; cos/sin are cast to x's dtype like upstream."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos[None, :, None, :].astype(x.dtype)
    sin = sin[None, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


def _linear(fan_in: int, fan_out: int, runtime: Runtime, rngs: nnx.Rngs, zero: bool = False) -> nnx.Linear:
    """A block matrix: bias-free, nanochat's init N(0, 1/√fan_in · min(1, √(fan_out/fan_in))) or zeros."""
    std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.normal(stddev=std)
    dot_general = dense_dot_general if runtime.dense == "transposed" else jax.lax.dot_general
    return nnx.Linear(fan_in, fan_out, use_bias=False, dtype=runtime.dtype, param_dtype=jnp.float32,
                      kernel_init=init, dot_general=dot_general, rngs=rngs)


class KVCache(NamedTuple):
    """Static-shape decode cache: per layer (B, max_len, n_kv_head, head_dim) keys and values.

    ``pos`` is the number of positions already written (shared by all rows: the engine decodes
    its rows in lockstep). Positions ≥ pos hold garbage and are masked out.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos: jax.Array

    @classmethod
    def create(cls, config: GPTConfig, batch_size: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch_size, max_len, config.n_kv_head, config.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(k=zeros, v=zeros, pos=jnp.zeros((), jnp.int32))

    def repeat_rows(self, n: int) -> "KVCache":
        """Copy a batch-1 cache (one prefilled prompt) to n rows for parallel sampling."""
        tile = lambda a: jnp.repeat(a, n, axis=0)  # noqa: E731
        return KVCache(tuple(map(tile, self.k)), tuple(map(tile, self.v)), self.pos)


class CausalSelfAttention(nnx.Module):
    def __init__(self, config: GPTConfig, runtime: Runtime, rngs: nnx.Rngs):
        d, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.implementation = runtime.attention
        self.c_q = _linear(d, config.n_head * hd, runtime, rngs)
        self.c_k = _linear(d, config.n_kv_head * hd, runtime, rngs)
        self.c_v = _linear(d, config.n_kv_head * hd, runtime, rngs)
        self.c_proj = _linear(d, d, runtime, rngs, zero=True)

    def qkv(self, x, cos, sin):
        """Projections of x (B·T, D) to (B, T, heads, hd); rotary first, then QK-norm (nanochat's order)."""
        seq = cos.shape[0]
        batch = x.shape[0] // seq
        q = self.c_q(x).reshape(batch, seq, self.n_head, self.head_dim)
        k = self.c_k(x).reshape(batch, seq, self.n_kv_head, self.head_dim)
        v = self.c_v(x).reshape(batch, seq, self.n_kv_head, self.head_dim)
        return rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin)), v

    def __call__(self, x, cos, sin):
        """x (B·T, D) → (B·T, D), causal over the T = len(cos) positions of each row."""
        q, k, v = self.qkv(x, cos, sin)
        y = causal_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), implementation=self.implementation)
        return self.c_proj(y.reshape(x.shape[0], -1))

    def decode(self, x, cos, sin, k_cache, v_cache, pos):
        """Like ``__call__`` for new positions pos… of each row, attending to the cache as well;
        also returns the cache with the new keys and values written."""
        q, k, v = self.qkv(x, cos, sin)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
        y = cached_attention(q, k_cache, v_cache, pos, scale=1.0 / math.sqrt(self.head_dim))
        return self.c_proj(y.reshape(x.shape[0], -1)), (k_cache, v_cache)


class MLP(nnx.Module):
    def __init__(self, config: GPTConfig, runtime: Runtime, rngs: nnx.Rngs):
        self.c_fc = _linear(config.n_embd, 4 * config.n_embd, runtime, rngs)
        self.c_proj = _linear(4 * config.n_embd, config.n_embd, runtime, rngs, zero=True)

    def __call__(self, x):
        return self.c_proj(jnp.square(jax.nn.relu(self.c_fc(x))))


class Block(nnx.Module):
    def __init__(self, config: GPTConfig, runtime: Runtime, rngs: nnx.Rngs):
        self.attn = CausalSelfAttention(config, runtime, rngs)
        self.mlp = MLP(config, runtime, rngs)

    def __call__(self, x, cos, sin):
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))

    def decode(self, x, cos, sin, k_cache, v_cache, pos):
        y, new_kv = self.attn.decode(rms_norm(x), cos, sin, k_cache, v_cache, pos)
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
      config: the shape.
      runtime: how it runs (``jaxchat.runtime``: compute dtype, attention and dense kernels, loss
        chunking, remat). The default is the portable reference program; training and the tools
        use ``runtime.for_this_machine()`` (or the stage's plan).
      rngs: initialisation randomness.
    """

    def __init__(self, config: GPTConfig, *, runtime: Runtime = Runtime(), rngs: nnx.Rngs):
        self.config = config
        self.runtime = runtime
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, param_dtype=jnp.float32,
                             embedding_init=nnx.initializers.normal(stddev=1.0), rngs=rngs)
        self.h = nnx.List([Block(config, runtime, rngs) for _ in range(config.n_layer)])
        # float32 logits straight out of the matmul (no bf16 rounding before the softcap).
        self.lm_head = nnx.Linear(config.n_embd, config.vocab_size, use_bias=False, dtype=runtime.dtype,
                                  param_dtype=jnp.float32, kernel_init=nnx.initializers.zeros_init(),
                                  preferred_element_type=jnp.float32, rngs=rngs)

    def __call__(self, idx: jax.Array, targets: jax.Array | None = None, *, reduction: str = "mean"):
        batch, seq = idx.shape
        x = self.hidden(idx).reshape(batch * seq, -1)
        if targets is not None and reduction in ("sum", "mean"):
            return self._loss(x, targets.reshape(-1), reduction)
        logits = self.logits(x).reshape(batch, seq, -1)
        return logits if targets is None else cross_entropy(logits, targets, reduction)

    def hidden(self, idx: jax.Array) -> jax.Array:
        """The residual stream after the last block, (B, T, D), before the final norm and lm_head.

        ``model.logits(model.hidden(idx)[rows, positions])`` gives the logits of a few positions
        without computing (B, T, V) of them (evaluation at answer positions).
        """
        batch, seq = idx.shape
        # Positions are static here: evaluate the tables now, so they enter the program as
        # constants; computed in-graph, XLA fused cos/sin into every rotary fusion that reads them
        # (recomputed per element, for q and k of every layer, forward and backward).
        with jax.ensure_compile_time_eval():
            cos, sin = rotary_cos_sin(jnp.arange(seq), self.config.head_dim)
        x = rms_norm(self.wte(idx.reshape(-1)))
        for block in self.h:
            if self.runtime.remat:
                x = nnx.remat(lambda blk, x, cos, sin: blk(x, cos, sin))(block, x, cos, sin)
            else:
                x = block(x, cos, sin)
        return x.reshape(batch, seq, -1)

    def decode(self, idx: jax.Array, cache: KVCache, length: jax.Array | int | None = None):
        """Run (B, T) new tokens against the cache: prefill (T = prompt) or one decode step (T = 1).

        Returns float32 logits (B, T, V) and the cache advanced by ``length`` positions (default T;
        a right-padded prompt passes its real length so later tokens overwrite the padding).
        """
        batch, seq = idx.shape
        cos, sin = rotary_cos_sin(cache.pos + jnp.arange(seq), self.config.head_dim)
        x = rms_norm(self.wte(idx.reshape(-1)))
        new_k, new_v = [], []
        for block, k, v in zip(self.h, cache.k, cache.v):
            x, (k, v) = block.decode(x, cos, sin, k, v, cache.pos)
            new_k.append(k)
            new_v.append(v)
        advance = seq if length is None else length
        logits = self.logits(x).reshape(batch, seq, -1)
        return logits, KVCache(tuple(new_k), tuple(new_v), cache.pos + advance)

    def logits(self, x: jax.Array) -> jax.Array:
        """Float32 softcapped logits (..., V) of residual-stream vectors x (..., D)."""
        logits = self.lm_head(rms_norm(x)).astype(jnp.float32)
        return SOFTCAP * jnp.tanh(logits / SOFTCAP)

    def _loss(self, x: jax.Array, targets: jax.Array, reduction: str) -> jax.Array:
        """``cross_entropy(self.logits(x), targets, reduction)`` through the fused head+loss kernel,
        which never holds the (N, V) float32 logits at once."""
        kernel = self.lm_head.kernel[...]
        rows = chunk_rows(x.shape[0], kernel.shape[1], self.runtime.loss_chunk_bytes)
        total = head_loss_sum(rms_norm(x), kernel, targets, rows, self.runtime.dtype, SOFTCAP)
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
