"""Validation metrics over token batches: bits per byte (docs/DESIGN.md §5) and mean loss (SFT val loss).

bpb = Σ loss_nats(target) / (ln 2 · Σ token_bytes[target]) over the targets whose token has at least
one byte: special tokens (0 bytes) are left out of both sums, so the number does not depend on how
many ``<|bos|>`` the stream happens to contain, and it compares across vocabularies.

Both metrics run one jitted function per batch that adds the batch's sums to a running total kept
on the device; the host reads the total once, at the end (no per-batch sync).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxchat.common import JaxchatError

Batch = Mapping[str, Any]  # {"inputs", "targets"}: int32 (B, T); targets -1 = ignored


@functools.partial(jax.jit, static_argnums=0)
def _bpb_step(graphdef: nnx.GraphDef, params: Any, totals: tuple[jax.Array, jax.Array],
              inputs: jax.Array, targets: jax.Array, token_bytes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``totals + (Σ nats, Σ bytes)`` of one batch, counting only targets whose token has bytes."""
    model = nnx.merge(graphdef, params)
    valid = targets != -1
    n_bytes = jnp.where(valid, token_bytes[jnp.where(valid, targets, 0)], 0)
    # Zero-byte targets become "ignored" (-1), so the model's summed loss is exactly Σ nats over the
    # counted targets, and it can use its fused head+loss (the (B, T, V) logits never materialise).
    nats = model(inputs, jnp.where(n_bytes > 0, targets, -1), reduction="sum")
    return totals[0] + nats, totals[1] + n_bytes.sum(dtype=jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _loss_step(graphdef: nnx.GraphDef, params: Any, totals: tuple[jax.Array, jax.Array],
               inputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``totals + (Σ nats, number of targets)`` of one batch (targets == -1 ignored)."""
    model = nnx.merge(graphdef, params)
    return totals[0] + model(inputs, targets, reduction="sum"), totals[1] + (targets != -1).sum(dtype=jnp.int32)


def _arrays(batch: Batch, index: int) -> tuple[Any, Any]:
    """The batch's (inputs, targets) as (rows, T) int32 arrays; a leading accumulation axis is folded."""
    if not isinstance(batch, Mapping) or "inputs" not in batch or "targets" not in batch:
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise JaxchatError(f"eval batch {index}: expected a dict with 'inputs' and 'targets', got {got}")
    inputs, targets = batch["inputs"], batch["targets"]
    if inputs.shape != targets.shape or inputs.ndim < 2:
        raise JaxchatError(
            f"eval batch {index}: inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have "
            "the same (B, T) shape"
        )
    if inputs.ndim > 2:  # (accum, B, T) from the training pipeline: same tokens, one bigger batch
        inputs, targets = inputs.reshape(-1, inputs.shape[-1]), targets.reshape(-1, targets.shape[-1])
    return inputs, targets


def _check_vocab(graphdef: nnx.GraphDef, params: Any, token_bytes: np.ndarray) -> None:
    """token_bytes must cover the model's vocabulary (a mismatch means another tokenizer). The
    vocabulary is the config's, not wte's rows, which a 2026 model pads to a multiple of 64."""
    try:
        vocab = nnx.merge(graphdef, params).config.vocab_size
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # not a jaxchat GPT: nothing to check against
    if token_bytes.shape != (vocab,):
        raise JaxchatError(
            f"token_bytes has shape {token_bytes.shape}, expected ({vocab},) for the model's vocabulary; "
            "is the model paired with another tokenizer?"
        )


def evaluate_bpb(graphdef: nnx.GraphDef, params: Any, batches: Iterable[Batch], token_bytes: np.ndarray) -> float:
    """Bits per byte of the model over ``batches`` (docs/DESIGN.md §5).

    Args:
      graphdef, params: the model, as from ``jaxchat.model.split_params`` (or the train state).
      batches: iterable of ``{"inputs", "targets"}`` int32 (B, T) arrays (numpy or jax); targets −1
        are ignored. Every batch should have the same shape (one compilation).
      token_bytes: int array, per token id the length of its raw bytes (0 for special tokens), i.e.
        ``tokenizer.token_bytes``.

    Returns Σ nats / (ln 2 · Σ bytes) over targets with ``token_bytes[target] > 0``. Raises
    JaxchatError when no batch holds such a target.
    """
    token_bytes = np.asarray(token_bytes)
    _check_vocab(graphdef, params, token_bytes)
    table = jnp.asarray(token_bytes, jnp.int32)
    totals = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    for i, batch in enumerate(batches):
        inputs, targets = _arrays(batch, i)
        totals = _bpb_step(graphdef, params, totals, inputs, targets, table)
    nats, n_bytes = (float(x) for x in jax.device_get(totals))  # the one host sync
    if n_bytes <= 0:
        raise JaxchatError("evaluate_bpb: the batches hold no target token with bytes (empty or all special/-1)")
    return nats / (math.log(2) * n_bytes)


def evaluate_loss(graphdef: nnx.GraphDef, params: Any, batches: Iterable[Batch]) -> float:
    """Mean cross-entropy (nats) over every target ≠ −1 in ``batches`` (SFT validation loss).

    The mean is over tokens, not over batches, so batches with few targets weigh less. Raises
    JaxchatError when the batches hold no target at all.
    """
    totals = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    for i, batch in enumerate(batches):
        inputs, targets = _arrays(batch, i)
        totals = _loss_step(graphdef, params, totals, inputs, targets)
    nats, count = (float(x) for x in jax.device_get(totals))
    if count <= 0:
        raise JaxchatError("evaluate_loss: the batches hold no target token (empty, or every target is -1)")
    return nats / count
