"""Validation metrics over token batches: bits per byte (docs/DESIGN.md §5) and mean loss (SFT val loss).

bpb = Σ loss_nats(target) / (ln 2 · Σ token_bytes[target]) over the targets whose token has at least
one byte: special tokens (0 bytes) are left out of both sums, so the number does not depend on how
many ``<|bos|>`` the stream happens to contain, and it compares across vocabularies.

Both metrics run one jitted function per batch that adds the batch's sums to a running total kept
on the device; the host reads the total once, at the end (no per-batch sync).

With a ``mesh`` (several devices, maybe several processes) each batch's rows are split over all its
devices (``sharding.rows_sharding``) and the params stay in their layout: GSPMD gives every device
its rows and adds the sums up, which come back replicated. A batch whose rows do not divide by the
devices gets masked rows (targets −1), which add nothing to either sum.
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

from jax.sharding import Mesh

from jaxchat import sharding
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


def _pad_rows(inputs: Any, targets: Any, devices: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that do not split over ``devices``: add masked rows (targets −1; they count nothing)."""
    extra = -inputs.shape[0] % devices
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if extra:
        inputs = np.concatenate([inputs, np.zeros((extra, inputs.shape[1]), inputs.dtype)])
        targets = np.concatenate([targets, np.full((extra, targets.shape[1]), -1, targets.dtype)])
    return inputs, targets


def _replicated(value: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """``value`` on the default device, or a whole copy on each device of ``mesh`` (built from the host
    value each process has: no collective)."""
    if mesh is None:
        return jnp.asarray(value)
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding.replicated(mesh), lambda index: value[index])


def _on_devices(inputs: Any, targets: Any, mesh: Mesh | None) -> tuple[Any, Any]:
    """One batch as the jitted step takes it: as it is on one device, split by rows over ``mesh``."""
    if mesh is None:
        return inputs, targets
    inputs, targets = _pad_rows(inputs, targets, sharding.batch_devices(mesh))
    return sharding.put_batch((inputs, targets), sharding.rows_sharding(mesh), axis=0)


def _totals(mesh: Mesh | None) -> tuple[jax.Array, jax.Array]:
    return _replicated(np.zeros((), np.float32), mesh), _replicated(np.zeros((), np.int32), mesh)


def _read(totals: tuple[jax.Array, jax.Array]) -> tuple[float, float]:
    """The totals on this host: the one sync (replicated on a mesh, so no collective either)."""
    return tuple(float(sharding.to_host(x)) for x in totals)


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


def evaluate_bpb(graphdef: nnx.GraphDef, params: Any, batches: Iterable[Batch], token_bytes: np.ndarray,
                 mesh: Mesh | None = None) -> float:
    """Bits per byte of the model over ``batches`` (docs/DESIGN.md §5).

    Args:
      graphdef, params: the model, as from ``jaxchat.model.split_params`` (or the train state).
      batches: iterable of ``{"inputs", "targets"}`` int32 (B, T) arrays (numpy or jax); targets −1
        are ignored. Every batch should have the same shape (one compilation).
      token_bytes: int array, per token id the length of its raw bytes (0 for special tokens), i.e.
        ``tokenizer.token_bytes``.
      mesh: split each batch's rows over its devices (every process passes the same batches);
        None: one device, as the arrays are.

    Returns Σ nats / (ln 2 · Σ bytes) over targets with ``token_bytes[target] > 0``. Raises
    JaxchatError when no batch holds such a target.
    """
    token_bytes = np.asarray(token_bytes)
    _check_vocab(graphdef, params, token_bytes)
    table = _replicated(token_bytes.astype(np.int32), mesh)
    params = params if mesh is None else sharding.on_mesh(params, mesh)
    totals = _totals(mesh)
    for i, batch in enumerate(batches):
        inputs, targets = _on_devices(*_arrays(batch, i), mesh)
        with sharding.using(mesh):  # the loss splits its work by device (sharding.sum_over_rows)
            totals = _bpb_step(graphdef, params, totals, inputs, targets, table)
    nats, n_bytes = _read(totals)  # the one host sync
    if n_bytes <= 0:
        raise JaxchatError("evaluate_bpb: the batches hold no target token with bytes (empty or all special/-1)")
    return nats / (math.log(2) * n_bytes)


def evaluate_loss(graphdef: nnx.GraphDef, params: Any, batches: Iterable[Batch], mesh: Mesh | None = None) -> float:
    """Mean cross-entropy (nats) over every target ≠ −1 in ``batches`` (SFT validation loss).

    The mean is over tokens, not over batches, so batches with few targets weigh less. ``mesh``: as
    for ``evaluate_bpb``. Raises JaxchatError when the batches hold no target at all.
    """
    params = params if mesh is None else sharding.on_mesh(params, mesh)
    totals = _totals(mesh)
    for i, batch in enumerate(batches):
        inputs, targets = _on_devices(*_arrays(batch, i), mesh)
        with sharding.using(mesh):  # the loss splits its work by device (sharding.sum_over_rows)
            totals = _loss_step(graphdef, params, totals, inputs, targets)
    nats, count = _read(totals)
    if count <= 0:
        raise JaxchatError("evaluate_loss: the batches hold no target token (empty, or every target is -1)")
    return nats / count
