"""Causal self-attention, the one place that dispatches on ``model.attention`` (the runtime plan's choice).

- ``blocked``: :func:`blocked_causal_attention`, block-causal softmax attention in plain XLA ops
  with FlashAttention's backward: ~half the FLOPs of masked attention, and the CPU's choice.
- ``xla`` / ``cudnn``: ``jax.nn.dot_product_attention`` (cuDNN's flash attention needs a GPU and
  16-bit inputs: the GPU's choice).

Shapes: q (B, T, H, hd), k/v (B, T, K, hd) with H a multiple of K (GQA: query head h reads kv head
h // (H/K), nanochat's repeat_interleave). Scores and softmax in float32, outputs in q's dtype.

Sliding window (nanochat 92d63d4, flash-attn's ``window_size=(window, 0)``): with ``window`` set,
query i sees keys j with i − window ≤ j ≤ i; ``None`` is full causal attention. Every path takes it:
``xla`` / ``cudnn`` through ``jax.nn.dot_product_attention``'s ``local_window_size=(window, 0)``
(the same keys: cuDNN's sliding_window_length is window + 1), ``blocked`` by skipping the key blocks
wholly outside the window and masking the partial ones, ``cached_attention`` by its mask.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

Implementation = Literal["blocked", "xla", "cudnn"]
IMPLEMENTATIONS = ("blocked", "xla", "cudnn")
BLOCK = 128  # query rows per block of blocked_causal_attention


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                     implementation: Implementation, window: int | None = None) -> jax.Array:
    """softmax(q·kᵀ·scale + causal (and window) mask)·v with the chosen implementation; (B, T, H, hd)."""
    if implementation == "blocked":
        return blocked_causal_attention(q, k, v, scale, window=window)
    if implementation in ("xla", "cudnn"):
        local = None if window is None or window >= q.shape[1] - 1 else (window, 0)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale, local_window_size=local,
                                            implementation=implementation)
    raise ValueError(f"attention implementation {implementation!r}: expected one of {IMPLEMENTATIONS}")


def cached_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array, *,
                     scale: float, window: int | None = None) -> jax.Array:
    """Attention of T new queries at absolute positions pos… pos+T−1 over a KV cache (B, L, K, hd)
    whose first pos+T positions are written; later positions hold garbage and are masked out."""
    seq = q.shape[1]
    # Query i sits at absolute position pos+i and sees every cached key at or before it
    # (and, with a window, not more than `window` positions before it).
    query_pos, key_pos = (pos + jnp.arange(seq))[:, None], jnp.arange(k_cache.shape[1])[None, :]
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos >= query_pos - window
    return jax.nn.dot_product_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype),
                                        mask=mask[None, None], scale=scale, implementation="xla")


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
                             block: int = BLOCK, *, window: int | None = None) -> jax.Array:
    """Causal softmax attention that skips the key blocks every query of a block is masked from.

    q (B, T, H, hd), k/v (B, T, K, hd) with H a multiple of K (GQA: query head h reads kv head
    h // (H/K), nanochat's repeat_interleave). Query block i (rows [i·block, (i+1)·block)) only
    sees keys [0, (i+1)·block), so its scores are computed against those keys alone and only the
    diagonal block is masked: the same result as full masked attention with (n+1)/2n of its FLOPs
    for n blocks. With a ``window``, block i's keys start at i·block − window instead of 0 (the
    blocks wholly outside the window are skipped too) and the window's edge is masked. Scores and
    softmax in float32. The backward pass is FlashAttention's (``_blocked_attention_bwd``).
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
    if window is not None and window >= seq - 1:
        window = None  # the window holds the whole sequence: plain causal
    y = _blocked_attention(q, k, v, scale, block, window)
    return y.transpose(0, 3, 1, 2, 4).reshape(batch, seq, n_head, head_dim)


def _query_blocks(seq: int, block: int, window: int | None):
    """(start, end, first, mask) for each query block: its queries are [start, end), the keys it can
    see [first, end), and mask its (queries, keys) causal-and-window mask over those keys."""
    for start in range(0, seq, block):
        end = start + block
        first = 0 if window is None else max(0, start - window)
        queries, keys = jnp.arange(start, end)[:, None], jnp.arange(first, end)[None, :]
        mask = keys <= queries
        if window is not None:
            mask &= keys >= queries - window
        yield start, end, first, mask


def _blocked_attention_fwd(q, k, v, scale, block, window):
    """Heads-major forward; also returns each query's log-sum-exp (what the backward needs)."""
    outputs, lses = [], []
    for start, end, first, mask in _query_blocks(q.shape[3], block, window):
        scores = jnp.einsum("bkgqd,bksd->bkgqs", q[:, :, :, start:end], k[:, :, first:end],
                            preferred_element_type=jnp.float32) * scale
        scores = jnp.where(mask, scores, -jnp.inf)  # every row keeps its diagonal: no all −inf rows
        row_max = scores.max(-1, keepdims=True)
        exp = jnp.exp(scores - row_max)
        total = exp.sum(-1, keepdims=True)
        # Normalise the (queries, hd) output rather than the (queries, keys) probabilities.
        y = jnp.einsum("bkgqs,bksd->bkgqd", exp.astype(v.dtype), v[:, :, first:end],
                       preferred_element_type=jnp.float32)
        outputs.append((y / total).astype(q.dtype))
        lses.append(row_max + jnp.log(total))
    return jnp.concatenate(outputs, axis=3), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _blocked_attention(q, k, v, scale, block, window):
    return _blocked_attention_fwd(q, k, v, scale, block, window)[0]


def _blocked_attention_vjp_fwd(q, k, v, scale, block, window):
    y, lse = _blocked_attention_fwd(q, k, v, scale, block, window)
    return y, (q, k, v, y, lse)


def _blocked_attention_bwd(scale, block, window, residuals, dy):
    """FlashAttention's backward: probabilities recomputed from the saved log-sum-exp, and the
    softmax term Σ_s P·dP taken as Σ_d dY·Y, one (T, hd) reduction instead of one per block."""
    q, k, v, y, lse = residuals
    delta = jnp.sum(dy.astype(jnp.float32) * y.astype(jnp.float32), -1, keepdims=True)
    dq_blocks, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    for start, end, first, mask in _query_blocks(q.shape[3], block, window):
        q_block, dy_block = q[:, :, :, start:end], dy[:, :, :, start:end]
        k_seen, v_seen = k[:, :, first:end], v[:, :, first:end]
        scores = jnp.einsum("bkgqd,bksd->bkgqs", q_block, k_seen, preferred_element_type=jnp.float32) * scale
        probs = jnp.where(mask, jnp.exp(scores - lse[:, :, :, start:end]), 0.0)
        dv = dv.at[:, :, first:end].add(jnp.einsum("bkgqs,bkgqd->bksd", probs.astype(dy.dtype), dy_block,
                                                   preferred_element_type=jnp.float32))
        dprobs = jnp.einsum("bkgqd,bksd->bkgqs", dy_block, v_seen, preferred_element_type=jnp.float32)
        dscores = (probs * (dprobs - delta[:, :, :, start:end]) * scale).astype(q.dtype)
        dq_blocks.append(jnp.einsum("bkgqs,bksd->bkgqd", dscores, k_seen, preferred_element_type=jnp.float32))
        dk = dk.at[:, :, first:end].add(jnp.einsum("bkgqs,bkgqd->bksd", dscores, q_block,
                                                   preferred_element_type=jnp.float32))
    dq = jnp.concatenate(dq_blocks, axis=3)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_blocked_attention.defvjp(_blocked_attention_vjp_fwd, _blocked_attention_bwd)
