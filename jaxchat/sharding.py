"""The one place that decides how arrays are laid out on devices.

jaxchat is data-parallel: parameters and optimizer state are replicated, batches are split over the
``data`` mesh axis along their batch dimension. On one GPU the mesh has one device and this is free.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all). ``Mesh`` (not ``jax.make_mesh``) keeps Auto axes,
    so the embedding gather needs no explicit out_sharding (with ``jax.make_mesh``'s default
    Explicit axes it fails with a ShardingTypeError)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are (accumulation, batch, time): split the batch dimension over the data axis."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Put a host batch on the mesh. The batch size must divide evenly by the number of devices."""
    n = mesh.devices.size
    for leaf in jax.tree.leaves(batch):
        if leaf.shape[1] % n:
            raise ValueError(f"batch dimension {leaf.shape[1]} is not divisible by {n} devices")
    return jax.device_put(batch, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put params / optimizer state on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
