"""The nanochat GPT as a Flax NNX module (SPEC §3).

Parameter tree (``split_params(model)[1]``) and its nanochat state_dict names; a Flax
kernel is (in, out), the transpose of torch's (out, in) weight:

    wte/embedding                 transformer.wte.weight            (V, D)   same layout
    h/{i}/attn/c_q/kernel         transformer.h.{i}.attn.c_q.weight  (D, H·hd) transposed
    h/{i}/attn/c_k/kernel         transformer.h.{i}.attn.c_k.weight  (D, K·hd) transposed
    h/{i}/attn/c_v/kernel         transformer.h.{i}.attn.c_v.weight  (D, K·hd) transposed
    h/{i}/attn/c_proj/kernel      transformer.h.{i}.attn.c_proj.weight (D, D) transposed
    h/{i}/mlp/c_fc/kernel         transformer.h.{i}.mlp.c_fc.weight  (D, 4D)  transposed
    h/{i}/mlp/c_proj/kernel       transformer.h.{i}.mlp.c_proj.weight (4D, D) transposed
    lm_head/kernel                lm_head.weight                    (D, V)   transposed

Mixed precision mirrors nanochat under autocast: params are float32; matmuls and attention run in
``dtype`` (bfloat16 on GPU); the residual stream, norms and logits stay float32.

The residual stream is kept flat, (B·T, D), and only attention sees (B, T, heads, hd): weight
gradients of 2-D activations are plain matmuls, while contracting over (B, T) made XLA:CPU copy a
transposed cotangent and leave its fast matmul path (3× slower at d4, measured).
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxchat.model.config import GPTConfig

SOFTCAP = 15.0
ROTARY_BASE = 10000.0
# torch's F.rms_norm(eps=None) uses finfo(dtype).eps; our norms always run in float32.
NORM_EPS = float(jnp.finfo(jnp.float32).eps)

AttentionImpl = Literal["auto", "blocked", "xla", "cudnn"]
ATTENTION_BLOCK = 128  # query rows per block of blocked_causal_attention


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


@jax.custom_vjp
def _dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (N, in) @ kernel (in, out) for XLA:CPU: the weight gradient runs on its fast matmul path.

    XLA:CPU hands a matmul to its fast library (YNNPACK) only when the contracted axis is the last
    axis of the left operand, so it ran the weight gradient xᵀ·g (contracting over rows) on its
    generic path, at ~130 instead of ~200 GFLOP/s (d4, measured). Transposing the smaller of x and
    g in memory first costs less than that saves (~4 % of a d4 train step, measured); the
    optimization barriers keep XLA from folding the transposes back into the matmuls.
    """
    return jnp.dot(x, kernel)


def _dense_fwd(x, kernel):
    return jnp.dot(x, kernel), (x, kernel)


def _dense_bwd(residuals, g):
    x, kernel = residuals
    barrier = jax.lax.optimization_barrier
    dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))  # g·kernelᵀ: already a fast-path matmul
    if x.shape[1] <= g.shape[1]:
        dkernel = jnp.dot(barrier(x.T), g)
    else:
        dkernel = barrier(jnp.dot(barrier(g.T), x)).T
    return dx, dkernel


_dense.defvjp(_dense_fwd, _dense_bwd)


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """``jax.lax.dot_general`` for the block matrices' ``nnx.Linear``: on the CPU, x·kernel is ``_dense``."""
    if (jax.default_backend() == "cpu" and lhs.ndim == 2 and precision is None and preferred_element_type is None
            and out_sharding is None and dimension_numbers == (((1,), (0,)), ((), ()))):
        return _dense(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def _linear(fan_in: int, fan_out: int, dtype, rngs: nnx.Rngs, zero: bool = False, **kwargs) -> nnx.Linear:
    """Bias-free linear with nanochat's init: N(0, 1/√fan_in · min(1, √(fan_out/fan_in))), or zeros."""
    std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.normal(stddev=std)
    return nnx.Linear(fan_in, fan_out, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=init, dot_general=_dot_general, rngs=rngs, **kwargs)


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
                             block: int = ATTENTION_BLOCK) -> jax.Array:
    """Causal softmax attention that skips the key blocks every query of a block is masked from.

    q (B, T, H, hd), k/v (B, T, K, hd) with H a multiple of K (GQA: query head h reads kv head
    h // (H/K), nanochat's repeat_interleave). Query block i (rows [i·block, (i+1)·block)) only
    sees keys [0, (i+1)·block), so its scores are computed against those keys alone and only the
    diagonal block is masked: the same result as full masked attention with (n+1)/2n of its FLOPs
    for n blocks. Scores and softmax in float32. The backward pass is FlashAttention's
    (``_blocked_attention_bwd``).
    """
    batch, seq, n_head, head_dim = q.shape
    n_kv = k.shape[2]
    if seq % block:
        block = seq
    # Heads-major once, (B, K, G, T, hd) and (B, K, T, hd): the batched matmuls want their batch
    # axes leading, so slicing (B, T, ...) per block made XLA copy a transposed slice of q/k/v
    # (and of every gradient) for each block; one transpose in, one out (measured ~2 % of a d4 step).
    q = q.reshape(batch, seq, n_kv, n_head // n_kv, head_dim).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    y = _blocked_attention(q, k, v, scale, block)
    return y.transpose(0, 3, 1, 2, 4).reshape(batch, seq, n_head, head_dim)


def _query_blocks(seq: int, block: int):
    """(start, end, causal mask of the block's queries over keys [0, end)) for each query block."""
    for start in range(0, seq, block):
        end = start + block
        yield start, end, jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]


def _blocked_attention_fwd(q, k, v, scale, block):
    """Heads-major forward; also returns each query's log-sum-exp (what the backward needs)."""
    outputs, lses = [], []
    for start, end, causal in _query_blocks(q.shape[3], block):
        scores = jnp.einsum("bkgqd,bksd->bkgqs", q[:, :, :, start:end], k[:, :, :end],
                            preferred_element_type=jnp.float32) * scale
        scores = jnp.where(causal, scores, -jnp.inf)  # every row keeps its diagonal: no all −inf rows
        row_max = scores.max(-1, keepdims=True)
        exp = jnp.exp(scores - row_max)
        total = exp.sum(-1, keepdims=True)
        # Normalise the (queries, hd) output rather than the (queries, keys) probabilities.
        y = jnp.einsum("bkgqs,bksd->bkgqd", exp.astype(v.dtype), v[:, :, :end], preferred_element_type=jnp.float32)
        outputs.append((y / total).astype(q.dtype))
        lses.append(row_max + jnp.log(total))
    return jnp.concatenate(outputs, axis=3), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _blocked_attention(q, k, v, scale, block):
    return _blocked_attention_fwd(q, k, v, scale, block)[0]


def _blocked_attention_vjp_fwd(q, k, v, scale, block):
    y, lse = _blocked_attention_fwd(q, k, v, scale, block)
    return y, (q, k, v, y, lse)


def _blocked_attention_bwd(scale, block, residuals, dy):
    """FlashAttention's backward: probabilities recomputed from the saved log-sum-exp, and the
    softmax term Σ_s P·dP taken as Σ_d dY·Y, one (T, hd) reduction instead of one per block."""
    q, k, v, y, lse = residuals
    delta = jnp.sum(dy.astype(jnp.float32) * y.astype(jnp.float32), -1, keepdims=True)
    dq_blocks, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    for start, end, causal in _query_blocks(q.shape[3], block):
        q_block, dy_block = q[:, :, :, start:end], dy[:, :, :, start:end]
        scores = jnp.einsum("bkgqd,bksd->bkgqs", q_block, k[:, :, :end], preferred_element_type=jnp.float32) * scale
        probs = jnp.where(causal, jnp.exp(scores - lse[:, :, :, start:end]), 0.0)
        dv = dv.at[:, :, :end].add(jnp.einsum("bkgqs,bkgqd->bksd", probs.astype(dy.dtype), dy_block,
                                              preferred_element_type=jnp.float32))
        dprobs = jnp.einsum("bkgqd,bksd->bkgqs", dy_block, v[:, :, :end], preferred_element_type=jnp.float32)
        dscores = (probs * (dprobs - delta[:, :, :, start:end]) * scale).astype(q.dtype)
        dq_blocks.append(jnp.einsum("bkgqs,bksd->bkgqd", dscores, k[:, :, :end], preferred_element_type=jnp.float32))
        dk = dk.at[:, :, :end].add(jnp.einsum("bkgqs,bkgqd->bksd", dscores, q_block, preferred_element_type=jnp.float32))
    dq = jnp.concatenate(dq_blocks, axis=3)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_blocked_attention.defvjp(_blocked_attention_vjp_fwd, _blocked_attention_bwd)


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
    def __init__(self, config: GPTConfig, *, dtype, attention: AttentionImpl, rngs: nnx.Rngs):
        d, hd = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, hd
        self.attention = attention
        self.c_q = _linear(d, config.n_head * hd, dtype, rngs)
        self.c_k = _linear(d, config.n_kv_head * hd, dtype, rngs)
        self.c_v = _linear(d, config.n_kv_head * hd, dtype, rngs)
        self.c_proj = _linear(d, d, dtype, rngs, zero=True)

    def __call__(self, x, cos, sin, cache: tuple[jax.Array, jax.Array, jax.Array] | None = None):
        """x (B·T, D) → (B·T, D), T = len(cos); with ``cache=(k, v, pos)`` also returns the new (k, v)."""
        seq = cos.shape[0]
        batch = x.shape[0] // seq
        q = self.c_q(x).reshape(batch, seq, self.n_head, self.head_dim)
        k = self.c_k(x).reshape(batch, seq, self.n_kv_head, self.head_dim)
        v = self.c_v(x).reshape(batch, seq, self.n_kv_head, self.head_dim)
        # Rotary first, then QK-norm (nanochat's order).
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))
        scale = 1.0 / math.sqrt(self.head_dim)
        if cache is None:
            implementation = self._implementation(q)
            if implementation == "blocked":
                y = blocked_causal_attention(q, k, v, scale)
            else:
                y = jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                 implementation=implementation)
            new_kv = None
        else:
            k_cache, v_cache, pos = cache
            k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
            v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
            # Query i sits at absolute position pos+i and sees every cached key at or before it.
            mask = jnp.arange(k_cache.shape[1])[None, :] <= (pos + jnp.arange(seq))[:, None]
            y = jax.nn.dot_product_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype),
                                             mask=mask[None, None], scale=scale, implementation="xla")
            new_kv = (k_cache, v_cache)
        y = self.c_proj(y.reshape(batch * seq, self.n_head * self.head_dim))
        return y if cache is None else (y, new_kv)

    def _implementation(self, q: jax.Array) -> str | None:
        if self.attention != "auto":
            return self.attention
        # cuDNN flash attention needs a GPU and 16-bit inputs; block-causal XLA everywhere else.
        use_cudnn = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
        return "cudnn" if use_cudnn else "blocked"


class MLP(nnx.Module):
    def __init__(self, config: GPTConfig, *, dtype, rngs: nnx.Rngs):
        self.c_fc = _linear(config.n_embd, 4 * config.n_embd, dtype, rngs)
        self.c_proj = _linear(4 * config.n_embd, config.n_embd, dtype, rngs, zero=True)

    def __call__(self, x):
        return self.c_proj(jnp.square(jax.nn.relu(self.c_fc(x))))


class Block(nnx.Module):
    def __init__(self, config: GPTConfig, *, dtype, attention: AttentionImpl, rngs: nnx.Rngs):
        self.attn = CausalSelfAttention(config, dtype=dtype, attention=attention, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin):
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))

    def decode(self, x, cos, sin, cache):
        y, new_kv = self.attn(rms_norm(x), cos, sin, cache)
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


def _loss_chunk_rows(rows: int, vocab: int) -> int:
    """Rows per chunk of the fused head+loss: the largest divisor of ``rows`` whose float32 logits
    fit the budget (16 MB on CPU: 512 rows at V=8192; large on GPU, where only memory matters).

    On CPU, smaller chunks keep the logits in L2 between the passes, but every chunk also adds a
    whole (D, V) float32 dkernel accumulation and runs smaller matmuls: at d4 (V=8192, 2 cores,
    32 MB L3) 512-row chunks beat 128-row ones by ~2-4 % of the whole train step and 1024 rows are
    slower again (measured)."""
    budget = (512 << 20) if jax.default_backend() == "gpu" else (16 << 20)
    target = max(1, budget // (4 * vocab))
    return max(d for d in range(1, min(rows, target) + 1) if rows % d == 0)


def _head_loss_chunk(h, kernel, targets, dtype):
    """One chunk: float32 logits, softcap, per-row NLL, and pieces the gradient reuses."""
    logits = jnp.dot(h.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    tanh = jnp.tanh(logits / SOFTCAP)
    # |softcapped logit| ≤ 15, so exp cannot overflow: no running max needed (saves a pass).
    exp = jnp.exp(SOFTCAP * tanh)
    valid = targets != -1
    target_tanh = jnp.take_along_axis(tanh, jnp.where(valid, targets, 0)[:, None], axis=-1)[:, 0]
    nll = jnp.where(valid, jnp.log(exp.sum(-1)) - SOFTCAP * target_tanh, 0.0)
    return nll, tanh, exp, valid


def _head_loss_sum_impl(h, kernel, targets, rows, dtype, with_grads):
    chunks = h.shape[0] // rows
    xs = (h.reshape(chunks, rows, h.shape[1]), targets.reshape(chunks, rows))

    def body(dkernel, chunk):
        hc, tc = chunk
        nll, tanh, exp, valid = _head_loss_chunk(hc, kernel, tc, dtype)
        if not with_grads:
            return dkernel, (nll.sum(), None)
        # d nll / d logit = (softmax − onehot) · d softcap/d logit, with d softcap = 1 − tanh².
        inv_sum = jnp.where(valid, 1.0 / exp.sum(-1), 0.0)[:, None]
        onehot = (jnp.arange(exp.shape[-1])[None, :] == tc[:, None]) & valid[:, None]
        dlogits = (exp * inv_sum - onehot) * (1.0 - tanh * tanh)
        dl = dlogits.astype(dtype)
        dh = jnp.dot(dl, kernel.astype(dtype).T, preferred_element_type=jnp.float32).astype(h.dtype)
        dkernel = dkernel + jnp.dot(hc.astype(dtype).T, dl, preferred_element_type=jnp.float32)
        return dkernel, (nll.sum(), dh)

    dkernel, (losses, dh) = jax.lax.scan(body, jnp.zeros(kernel.shape, jnp.float32), xs)
    if not with_grads:
        return losses.sum()
    return losses.sum(), dh.reshape(h.shape), dkernel.astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def head_loss_sum(h: jax.Array, kernel: jax.Array, targets: jax.Array, rows: int, dtype) -> jax.Array:
    """Σ cross-entropy of softcap(h @ kernel) over targets ≠ −1, without materialising the logits.

    h (N, D), kernel (D, V), targets (N,) int. Same numbers as ``cross_entropy(GPT.logits(...),
    'sum')`` up to float32 rounding, but the (N, V) float32 logits are only ever built ``rows`` at
    a time. Under differentiation the forward pass also computes the gradients of each chunk while
    its logits are still in cache (the loss is a sum, so they only scale by the incoming
    cotangent): the logits are never stored for the backward pass, and a chunk's passes over them
    stay within the CPU's caches (``_loss_chunk_rows``).
    """
    return _head_loss_sum_impl(h, kernel, targets, rows, dtype, with_grads=False)


def _head_loss_sum_fwd(h, kernel, targets, rows, dtype):
    loss, dh, dkernel = _head_loss_sum_impl(h, kernel, targets, rows, dtype, with_grads=True)
    return loss, (dh, dkernel)


def _head_loss_sum_bwd(rows, dtype, residuals, g):
    dh, dkernel = residuals
    return (g * dh).astype(dh.dtype), (g * dkernel).astype(dkernel.dtype), None


head_loss_sum.defvjp(_head_loss_sum_fwd, _head_loss_sum_bwd)


class GPT(nnx.Module):
    """nanochat's GPT. ``model(idx)`` → float32 softcapped logits; ``model(idx, targets)`` → loss.

    Args:
      config: the shape.
      dtype: compute dtype of matmuls and attention (params stay float32). bfloat16 on GPU.
      attention: 'auto' (cuDNN on GPU with 16-bit dtype, else 'blocked'), 'blocked'
        (``blocked_causal_attention``), 'xla' (``jax.nn.dot_product_attention``) or 'cudnn'.
      remat: recompute each block's activations in the backward pass (saves memory at depth).
      rngs: initialisation randomness.
    """

    def __init__(self, config: GPTConfig, *, dtype=jnp.float32, attention: AttentionImpl = "auto",
                 remat: bool = False, rngs: nnx.Rngs):
        self.config = config
        self.remat = remat
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, param_dtype=jnp.float32,
                             embedding_init=nnx.initializers.normal(stddev=1.0), rngs=rngs)
        self.h = nnx.List([Block(config, dtype=dtype, attention=attention, rngs=rngs)
                           for _ in range(config.n_layer)])
        # float32 logits straight out of the matmul (no bf16 rounding before the softcap).
        self.lm_head = _linear(config.n_embd, config.vocab_size, dtype, rngs, zero=True,
                               preferred_element_type=jnp.float32)

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
            if self.remat:
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
            x, (k, v) = block.decode(x, cos, sin, (k, v, cache.pos))
            new_k.append(k)
            new_v.append(v)
        advance = seq if length is None else length
        logits = self.logits(x).reshape(batch, seq, -1)
        return logits, KVCache(tuple(new_k), tuple(new_v), cache.pos + advance)

    def _loss(self, x: jax.Array, targets: jax.Array, reduction: str) -> jax.Array:
        """Fused lm_head + softcap + cross-entropy (``head_loss_sum``) on the flat stream x (N, D)."""
        kernel = self.lm_head.kernel[...]
        rows = _loss_chunk_rows(x.shape[0], kernel.shape[1])
        total = head_loss_sum(rms_norm(x), kernel, targets, rows, jnp.dtype(self.lm_head.dtype or jnp.float32))
        if reduction == "sum":
            return total
        return total / jnp.maximum((targets != -1).sum(), 1)

    def logits(self, x: jax.Array) -> jax.Array:
        """Float32 softcapped logits (..., V) of residual-stream vectors x (..., D)."""
        logits = self.lm_head(rms_norm(x)).astype(jnp.float32)
        return SOFTCAP * jnp.tanh(logits / SOFTCAP)


def split_params(model: GPT) -> tuple[nnx.GraphDef, dict]:
    """Split once for the hot loop: the static graph and the params as a plain nested dict.

    Rebuild a module view with ``nnx.merge(graphdef, params)`` (inside or outside jit). After a
    donated step the original module's arrays are gone, so do not keep using ``model`` itself.
    """
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)
