"""The one place that decides how arrays are laid out on devices (docs/DESIGN.md §17).

The mesh has two axes, ``data × fsdp``, over every device of every process. Batches are split over
both (each device gets ``device_batch_size`` rows of its own); parameters and optimizer state are
split over ``fsdp`` only (ZeRO-3 by GSPMD: XLA gathers a weight where it is used and reduce-scatters
its gradient), and replicated over ``data``. ``mesh.fsdp = 1`` (the default) is plain data
parallelism, and on one GPU the mesh has one device and all of this is free.

Which dimension of an array ``fsdp`` splits: the largest one it divides (ties: the first), for
arrays of at least ``MIN_SHARDED_SIZE`` elements; smaller ones (norms, lambdas, gates, counters)
stay replicated, where splitting them would cost more in collectives than it saves.

Several processes (``jax.distributed``): every process builds the same global host batch and puts
only its own devices' rows on them (``put_batch``), so the batches, and the training, do not depend
on how the devices are spread over processes.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxchat.common import JaxchatError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch's rows are split over every device
MIN_SHARDED_SIZE = 2**14  # smaller arrays stay replicated under fsdp


def make_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``data × fsdp`` mesh over ``devices`` (default: all devices of all processes).

    ``Mesh`` (not ``jax.make_mesh``) keeps Auto axes, so the embedding gather needs no explicit
    out_sharding (with ``jax.make_mesh``'s default Explicit axes it fails with a ShardingTypeError).
    The devices keep JAX's order (grouped by process), so each process's devices hold consecutive
    rows of a batch."""
    devices = list(devices if devices is not None else jax.devices())
    if not isinstance(fsdp, int) or fsdp < 1 or len(devices) % fsdp:
        raise JaxchatError(f"mesh.fsdp={fsdp}: expected a positive divisor of the {len(devices)} devices")
    return Mesh(np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


def fsdp_size(mesh: Mesh) -> int:
    return dict(mesh.shape).get(FSDP_AXIS, 1)


def batch_devices(mesh: Mesh) -> int:
    """How many devices split a batch's rows (every device of the mesh)."""
    return math.prod(dict(mesh.shape).get(axis, 1) for axis in BATCH_AXES)


def _batch_spec(mesh: Mesh) -> tuple[str, ...]:
    return tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Training batches are (accumulation, rows, time): split the rows over every device."""
    return NamedSharding(mesh, P(None, _batch_spec(mesh)))


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Eval batches are (rows, time): split the rows over every device."""
    return NamedSharding(mesh, P(_batch_spec(mesh)))


def param_spec(shape: Sequence[int], fsdp: int) -> P:
    """How ``fsdp`` splits an array of ``shape`` (params and optimizer state alike)."""
    if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
        return P()
    divisible = [d for d, n in enumerate(shape) if n % fsdp == 0]
    if not divisible:
        return P()
    dim = max(divisible, key=lambda d: (shape[d], -d))
    return P(*[FSDP_AXIS if d == dim else None for d in range(len(shape))])


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """A NamedSharding for every array leaf of ``tree`` (params, optimizer state, a TrainState)."""
    fsdp = fsdp_size(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp)), tree)


def abstract_on(tree: Any, mesh: Mesh) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying their shardings on ``mesh`` (what Orbax restores onto:
    a checkpoint saved on any mesh lands in this layout)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree,
                        state_shardings(tree, mesh))


def place(tree: Any, mesh: Mesh) -> Any:
    """Put params / optimizer state / a TrainState on the mesh in their layout."""
    return jax.device_put(tree, state_shardings(tree, mesh))


def constrain_stack(x: Any) -> Any:
    """Inside a jitted step under the mesh (``using``): give each ``fsdp`` device a share of a
    stack of matrices (k, m, n) to orthogonalise, like nanochat 16788ee's DistMuon; GSPMD moves the
    slices in and all-gathers the results. No-op without fsdp (docs/DESIGN.md §17 on why not gather each)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or dict(mesh.shape).get(FSDP_AXIS, 1) == 1:
        return x
    return jax.lax.with_sharding_constraint(x, P(FSDP_AXIS, *([None] * (x.ndim - 1))))


def sum_over_rows(fn: Any, *args: Any, whole: Sequence[int] = ()) -> Any:
    """``fn(*args)`` for an ``fn`` that sums over the rows (axis 0) of its arguments, computed where
    the rows are: each device runs ``fn`` on its own rows, with whole copies of the arguments at the
    positions ``whole``, and the partial sums are added across devices (their gradients too).

    Under a mesh that splits rows (the abstract mesh of ``using``), GSPMD alone would slice a row
    axis that ``fn`` scans over by gathering every device's rows for every slice: for the fused
    head+loss that is all the hidden states of the batch on every device, per chunk. Without such a
    mesh this is ``fn(*args)``."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or batch_devices(mesh) == 1:
        return fn(*args)
    axes = _batch_spec(mesh)

    def local(*local_args: Any) -> Any:
        # Whole arguments become per-device values, so each device's gradient for them is its own
        # partial sum, which the transpose of this cast adds up across devices (one all-reduce).
        local_args = [jax.lax.pcast(a, axes, to="varying") if i in whole else a
                      for i, a in enumerate(local_args)]
        return jax.lax.psum(fn(*local_args), axes)

    specs = tuple(P() if i in whole else P(axes) for i in range(len(args)))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())(*args)


def using(mesh: Mesh | None) -> Any:
    """Context to call (or lower) a jitted function under: ``mesh`` as JAX's abstract mesh, which
    ``constrain_stack`` and ``sum_over_rows`` read while tracing. Only the abstract mesh:
    ``jax.set_mesh`` would also send the eager ops of tracing (constants) to the mesh's devices,
    which cannot run them when they are compile-only GPUs (``jaxchat.fit``)."""
    return contextlib.nullcontext() if mesh is None else jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def _local_rows(sharding: NamedSharding, shape: tuple[int, ...], axis: int) -> slice:
    """The rows (along ``axis``) this process's devices hold under ``sharding``: consecutive."""
    index = sharding.addressable_devices_indices_map(shape)
    starts = [idx[axis].start or 0 for idx in index.values()]
    stops = [shape[axis] if idx[axis].stop is None else idx[axis].stop for idx in index.values()]
    return slice(min(starts), max(stops))


def put_batch(batch: Any, sharding: NamedSharding, axis: int) -> Any:
    """Put a host batch (the same global batch in every process) on the mesh: each process copies
    only the rows along ``axis`` its own devices hold. The rows must divide by the devices."""
    devices = batch_devices(sharding.mesh)

    def one(x: Any) -> Any:
        x = np.asarray(x)
        if x.shape[axis] % devices:
            raise JaxchatError(f"a batch of {x.shape[axis]} rows cannot be split over {devices} devices; "
                               "rows must be device_batch_size × the number of devices")
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        rows = _local_rows(sharding, x.shape, axis)
        local = x[(slice(None),) * axis + (rows,)]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree.map(one, batch)


def to_host(x: jax.Array) -> np.ndarray:
    """A (global) array's value on the host of every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---- evals: sharing examples over the devices and processes ---------------------------------------


def on_mesh(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (params) with every leaf on ``mesh``'s devices, so an eval can run it on batches split
    over the mesh. Leaves already on exactly those devices (a train state's, in any layout) stay as
    they are; others (a checkpoint loaded onto one device, host arrays) are put in their layout from
    their host value, which every process has."""
    devices = set(mesh.devices.flat)
    shardings = state_shardings(tree, mesh)

    def one(x: Any, target: NamedSharding) -> Any:
        if isinstance(x, jax.Array) and x.sharding.device_set == devices:
            return x
        return jax.device_put(np.asarray(x), target)

    return jax.tree.map(one, tree, shardings)


@functools.lru_cache(maxsize=None)  # one compiled gather per mesh
def _replicator(mesh: Mesh) -> Any:
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))


def full_copies(tree: Any, mesh: Mesh) -> dict[jax.Device, Any]:
    """A whole copy of ``tree`` on each device of ``mesh`` this process holds, as single-device
    arrays (for work that does not split by rows, e.g. one generation Engine per device). Gathered
    from any layout on the mesh (fsdp included); every process must call it (a collective)."""
    whole = _replicator(mesh)(on_mesh(tree, mesh))
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]

    def on(device: jax.Device) -> Any:
        return jax.tree.map(lambda x: next(s.data for s in x.addressable_shards if s.device == device), whole)

    return {device: on(device) for device in mine}


def device_rank(mesh: Mesh, device: jax.Device) -> int:
    """``device``'s position among all of ``mesh``'s devices (the same number in every process)."""
    return list(mesh.devices.flat).index(device)


def process_sum(values: Any) -> np.ndarray:
    """The sum over processes of a host array of the same shape in each (its value, with one process):
    what each process counted on its share of an eval, made the same total everywhere. A collective."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)
