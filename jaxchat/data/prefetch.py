"""Host→device prefetching that keeps the device busy and checkpoints the CONSUMED position.

    it = device_prefetch(pretrain_dataset(...), sharding=batch_sharding(mesh), microbatches=accum)
    if resuming:
        it.set_state(saved_data_state)          # or grain.checkpoint.CheckpointRestore(it) via Orbax
    for step in ...:
        batch = next(it)                        # already on the device (or being copied there)
        state, metrics = train_step(state, batch, lrm)
        ...
        save(..., data=it.get_state())          # or grain.checkpoint.CheckpointSave(it)

Two background threads (grain ``ThreadPrefetchDatasetIterator``s): the first produces host batches
(parquet, tokenising, packing), the second ``jax.device_put``s them, so the transfer of batch k+1 runs
while step k computes. Each prefetch stage stores, with every element, the state its parent had right
after producing it, and ``get_state()`` returns the state stored with the element ``next()`` returned
last: it is always the state after the batches the trainer CONSUMED, never after the ones buffered
ahead. Restoring it into a fresh pipeline makes the next batch the one the trainer had not seen yet.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np
from grain.experimental import ThreadPrefetchDatasetIterator
from jax.sharding import NamedSharding

from jaxchat.common import JaxchatError
from jaxchat.sharding import put_batch


def split_microbatches(batch: dict[str, Any], microbatches: int) -> dict[str, Any]:
    """Reshape every 2-D array ``(rows, T)`` of ``batch`` to ``(microbatches, rows // microbatches, T)``.

    That is the layout of ``train_step`` (gradient accumulation over the leading axis). Other values
    (``progress``, counters) pass through.
    """
    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray) and value.ndim == 2:
            rows = value.shape[0]
            if rows % microbatches:
                raise JaxchatError(f"batch field {key!r} has {rows} rows, not divisible into {microbatches} "
                                   "micro-batches; make rows = device_batch × accumulation steps")
            value = value.reshape(microbatches, rows // microbatches, value.shape[1])
        out[key] = value
    return out


class _DevicePutIterator(grain.DatasetIterator):
    """Puts the numpy arrays of each batch on the device(s); Python scalars stay on the host so the
    loop reads ``progress`` without a device round trip. State passes through unchanged."""

    def __init__(self, parent: grain.DatasetIterator, sharding: Any, microbatches: int | None):
        super().__init__(parent)
        self._sharding = sharding
        self._microbatches = microbatches

    def __next__(self) -> dict[str, Any]:
        batch = next(self._parent)
        if self._microbatches is not None:
            batch = split_microbatches(batch, self._microbatches)
        # device_put returns at once; the copy proceeds asynchronously, in this background thread's turn.
        return {k: self._put(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}

    def _put(self, value: np.ndarray) -> Any:
        if isinstance(self._sharding, NamedSharding):  # every process puts only its own devices' rows
            return put_batch(value, self._sharding, axis=0 if self._microbatches is None else 1)
        return jax.device_put(value, self._sharding)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


def device_prefetch(source: grain.IterDataset | grain.DatasetIterator, sharding: Any = None, size: int = 2, *,
                    host_size: int = 2, microbatches: int | None = None) -> grain.DatasetIterator:
    """Iterate ``source`` with batches produced and copied to the device ahead of the training step.

    ``source``: a grain ``IterDataset`` (a fresh iterator is made) or a ``DatasetIterator`` (used as
    is; after this call only the returned iterator may touch it). ``sharding``: anything
    ``jax.device_put`` accepts (None: the default device; ``jaxchat.sharding.batch_sharding(mesh)`` for
    data parallelism). ``size`` batches wait on the device, ``host_size`` on the host.
    ``microbatches``: reshape ``(rows, T)`` arrays to ``(microbatches, rows // microbatches, T)`` first.

    Returns a grain ``DatasetIterator``: ``get_state()`` is the position after the batches returned so
    far (not the prefetched ones) and ``set_state()`` resumes there; see the module docstring.
    Call ``close()`` when done to stop the threads.
    """
    for name, value, low in (("size", size, 1), ("host_size", host_size, 0)):
        if not isinstance(value, int) or value < low:
            raise JaxchatError(f"device_prefetch: {name}={value!r}, expected an integer >= {low}")
    if microbatches is not None and (not isinstance(microbatches, int) or microbatches < 1):
        raise JaxchatError(f"device_prefetch: microbatches={microbatches!r}, expected a positive integer or None")
    if isinstance(source, grain.IterDataset):
        iterator = iter(source)
    elif isinstance(source, grain.DatasetIterator):
        iterator = source
    else:
        raise JaxchatError(f"device_prefetch needs a grain IterDataset or DatasetIterator, got {type(source).__name__}")
    host = ThreadPrefetchDatasetIterator(iterator, host_size) if host_size else iterator
    return ThreadPrefetchDatasetIterator(_DevicePutIterator(host, sharding, microbatches), size)
