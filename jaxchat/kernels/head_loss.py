"""The fused lm_head + softcap + cross-entropy: the loss without the (N, V) float32 logits.

``head_loss_sum(h, kernel, targets, rows, dtype, softcap)`` equals ``cross_entropy(softcap(h @
kernel), targets, "sum")`` (``jaxchat.model.gpt``) up to float32 rounding, computing the logits ``rows`` at a
time. On a GPU that is what makes a d20 step fit (32×2048 rows × 65,536 float32 logits would be
16 GiB); on a CPU, small chunks keep each chunk's passes over its logits within the caches: at d4
(V=8192, 2 cores, 32 MB L3) 512-row chunks beat 128-row ones by ~2-4 % of the whole train step and
1024 rows are slower again (measured), hence the CPU's 16 MB budget.

``transposed_copies`` (the CPU runtime's choice, ``jaxchat.kernels.dense``): in bf16 the two gradient
products take row-major transposed copies (of the kernel once, of each chunk's rows), without which
XLA:CPU computes them in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxchat.kernels.dense import transposed_copy


def chunk_rows(rows: int, vocab: int, budget_bytes: int) -> int:
    """Rows per chunk: the largest divisor of ``rows`` whose float32 logits fit ``budget_bytes``
    (the runtime plan's ``loss_chunk_bytes``: 16 MB on CPU, 512 MB on GPU)."""
    target = max(1, budget_bytes // (4 * vocab))
    return max(d for d in range(1, min(rows, target) + 1) if rows % d == 0)


def _head_loss_chunk(h, kernel, targets, dtype, softcap):
    """One chunk: float32 logits, softcap, per-row NLL, and pieces the gradient reuses."""
    logits = jnp.dot(h.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    tanh = jnp.tanh(logits / softcap)
    # |softcapped logit| ≤ softcap (15), so exp cannot overflow: no running max needed (saves a pass).
    exp = jnp.exp(softcap * tanh)
    valid = targets != -1
    target_tanh = jnp.take_along_axis(tanh, jnp.where(valid, targets, 0)[:, None], axis=-1)[:, 0]
    nll = jnp.where(valid, jnp.log(exp.sum(-1)) - softcap * target_tanh, 0.0)
    return nll, tanh, exp, valid


def _head_loss_sum_impl(h, kernel, targets, rows, dtype, softcap, with_grads, transposed_copies):
    chunks = h.shape[0] // rows
    xs = (h.reshape(chunks, rows, h.shape[1]), targets.reshape(chunks, rows))
    copies = transposed_copies and with_grads and jnp.dtype(dtype) != jnp.float32
    kernel_t = transposed_copy(kernel.astype(dtype)) if copies else None

    def body(dkernel, chunk):
        hc, tc = chunk
        nll, tanh, exp, valid = _head_loss_chunk(hc, kernel, tc, dtype, softcap)
        if not with_grads:
            return dkernel, (nll.sum(), None)
        # d nll / d logit = (softmax − onehot) · d softcap/d logit, with d softcap = 1 − tanh².
        inv_sum = jnp.where(valid, 1.0 / exp.sum(-1), 0.0)[:, None]
        onehot = (jnp.arange(exp.shape[-1])[None, :] == tc[:, None]) & valid[:, None]
        dlogits = (exp * inv_sum - onehot) * (1.0 - tanh * tanh)
        dl = dlogits.astype(dtype)
        kt = kernel_t if copies else kernel.astype(dtype).T
        dh = jnp.dot(dl, kt, preferred_element_type=jnp.float32).astype(h.dtype)
        hc_t = transposed_copy(hc.astype(dtype)) if copies else hc.astype(dtype).T
        dkernel = dkernel + jnp.dot(hc_t, dl, preferred_element_type=jnp.float32)
        return dkernel, (nll.sum(), dh)

    dkernel, (losses, dh) = jax.lax.scan(body, jnp.zeros_like(kernel, jnp.float32), xs)  # _like: keeps shard_map's type
    if not with_grads:
        return losses.sum()
    return losses.sum(), dh.reshape(h.shape), dkernel.astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def head_loss_sum(h: jax.Array, kernel: jax.Array, targets: jax.Array, rows: int, dtype,
                  softcap: float, transposed_copies: bool = False) -> jax.Array:
    """Σ cross-entropy of softcap·tanh(h @ kernel / softcap) over targets ≠ −1, logits never materialised.

    h (N, D), kernel (D, V), targets (N,) int; the matmul runs in ``dtype`` with float32 results.
    The (N, V) float32 logits are only ever built ``rows`` at a time (``chunk_rows``). Under
    differentiation the forward pass also computes the gradients of each chunk while its logits are
    still in cache (the loss is a sum, so they only scale by the incoming cotangent): the logits are
    never stored for the backward pass.
    """
    return _head_loss_sum_impl(h, kernel, targets, rows, dtype, softcap, False, transposed_copies)


def _head_loss_sum_fwd(h, kernel, targets, rows, dtype, softcap, transposed_copies):
    loss, dh, dkernel = _head_loss_sum_impl(h, kernel, targets, rows, dtype, softcap, True, transposed_copies)
    return loss, (dh, dkernel)


def _head_loss_sum_bwd(rows, dtype, softcap, transposed_copies, residuals, g):
    dh, dkernel = residuals
    return (g * dh).astype(dh.dtype), (g * dkernel).astype(dkernel.dtype), None


head_loss_sum.defvjp(_head_loss_sum_fwd, _head_loss_sum_bwd)
