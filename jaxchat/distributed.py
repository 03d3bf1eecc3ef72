"""Several processes (hosts) training one model: JAX's distributed runtime (``dist.*`` settings).

    --dist.coordinator=node0:1234 --dist.num_processes=2 --dist.process_id=0   # on node0
    --dist.coordinator=node0:1234 --dist.num_processes=2 --dist.process_id=1   # on node1
    --dist.auto=true                                                            # SLURM, Open MPI, …

``initialize`` must run before JAX computes anything (``train.py`` calls it right after the config is
validated). Afterwards ``jax.devices()`` lists the devices of every process and the mesh of
``jaxchat.sharding`` spans them all; every process runs the same program on the same global batches.
Only the primary process (0) prints progress and writes logs, reports and the checkpoints' own files
(``is_primary``); Orbax writes each process's shards of the arrays itself.

A process that cannot reach the coordinator, or a coordinator that waits in vain for the others,
stops after ``timeout_s`` with one line naming the address (JAX itself would abort the process with
a stack trace: its registration failure is fatal in C++, not a Python exception).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

from jaxchat.common import JaxchatError

INIT_TIMEOUT_S = 300  # how long a process waits for the coordinator and the others (JAX's default)
PRIMARY_WORK_TIMEOUT_S = 48 * 3600  # how long the others wait for process 0's one-process work
_EXIT_STATUS = 2  # cli.USAGE_ERROR: what a JaxchatError exits with


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) → (host, port); JaxchatError naming ``dist.coordinator`` otherwise."""
    host, sep, port = str(address).strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise JaxchatError(f"dist.coordinator={address!r}: expected HOST:PORT of process 0, e.g. node0:1234")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Process > 0: wait until process 0's coordinator accepts connections (JaxchatError after ``timeout_s``)."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(0.1, deadline - time.monotonic()))):
                return
        except OSError as e:
            last = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise JaxchatError(f"dist.coordinator={address}: cannot reach process 0's coordinator ({last}) within "
                               f"{round(timeout_s)} s; start process 0 with the same dist.coordinator and check "
                               "that this machine can reach that host and port")
        time.sleep(0.25)


def _watchdog(message: str, timeout_s: float) -> threading.Timer:
    """One ``error:`` line and exit 2 after ``timeout_s``, unless cancelled: JAX's own timeout aborts the
    process from C++ with a stack trace, so this one fires first."""

    def fire() -> None:
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(_EXIT_STATUS)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def initialize(dist, timeout_s: float = INIT_TIMEOUT_S) -> bool:
    """Start JAX's distributed runtime as ``dist`` (a ``config.DistSection``) says; True when it did.

    ``dist.coordinator`` set → ``jax.distributed.initialize(coordinator, num_processes, process_id)``;
    ``dist.auto`` → ``jax.distributed.initialize()`` (JAX detects SLURM, Open MPI, … ); neither → one
    process, nothing to do. Call before any JAX computation. A second call (in-process) is a no-op."""
    if not dist.coordinator and not dist.auto:
        return False
    import jax  # lazy: jaxchat.config imports this module, and train.py --help starts no JAX

    if jax.distributed.is_initialized():
        return True
    if not jax.config.jax_cpu_collectives_implementation:  # the CPU backend's cross-process collectives
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # (JAX 0.10's default; a user's choice wins)
    deadline = time.monotonic() + timeout_s
    kwargs: dict = {}
    if dist.coordinator:
        address = dist.coordinator.strip()
        host, port = split_address(address)
        if dist.process_id > 0:
            _wait_for_coordinator(address, timeout_s)
        kwargs = dict(coordinator_address=address, num_processes=dist.num_processes, process_id=dist.process_id)
        if _is_loopback(host):  # a local test run: never listen beyond this machine
            kwargs["coordinator_bind_address"] = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        what = (f"dist.coordinator={address}: not all {dist.num_processes} processes joined within "
                f"{round(timeout_s)} s; run the same command on every machine, each with its own "
                f"--dist.process_id (0 … {dist.num_processes - 1})")
    else:
        what = (f"dist.auto=true: the processes of this job did not all join JAX's coordinator within "
                f"{round(timeout_s)} s")
    remaining = max(1.0, deadline - time.monotonic())
    # JAX's deadline comes after ours: our watchdog says what went wrong in one line first.
    timer = _watchdog(what, remaining)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=int(remaining) + 30)
    except (ValueError, TypeError) as e:  # auto: no cluster found; bad settings
        if not dist.coordinator:
            raise JaxchatError(f"dist.auto=true: JAX found no cluster to start from ({e}); set dist.coordinator, "
                               "dist.num_processes and dist.process_id instead") from None
        raise JaxchatError(f"dist.coordinator={dist.coordinator}: {e}") from None
    except Exception as e:  # noqa: BLE001 — XLA raises its own types (a taken port; JAX already computing)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        where = f"dist.coordinator={dist.coordinator}" if dist.coordinator else "dist.auto=true"
        raise JaxchatError(f"{where}: JAX's distributed runtime failed to start: {first}") from None
    finally:
        timer.cancel()
    return True


def is_primary() -> bool:
    """True in process 0, the one that prints and writes logs, reports and checkpoint bookkeeping (and
    in a single-process run: that never starts a JAX backend just to ask)."""
    import jax  # lazy: as in initialize

    if not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0


def process_count() -> int:
    """How many processes take part (1 without ``jax.distributed``; starts no backend then)."""
    import jax  # lazy: as in initialize

    return jax.process_count() if jax.distributed.is_initialized() else 1


def from_primary(value: int) -> int:
    """Process 0's ``value`` (an int32) in every process: a decision all must follow alike."""
    if process_count() == 1:
        return int(value)
    import numpy as np  # lazy: as in initialize
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def gather(value: int) -> list[int]:
    """Every process's ``value`` (an int32), in process order, in every process."""
    if process_count() == 1:
        return [int(value)]
    import numpy as np  # lazy: as in initialize
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)]


def preempted(step: int) -> bool:
    """Several processes: has a preemption notice (SIGTERM to any process, which JAX's distributed
    runtime catches and spreads) reached the step every process agreed to stop at? Call it at every
    step, in every process, from the same first step (JAX's preemption sync protocol). One process:
    False (SIGTERM keeps its default: the run dies, and resumes from its last checkpoint)."""
    if process_count() == 1:
        return False
    from jax.experimental import multihost_utils  # lazy: as in initialize

    return multihost_utils.reached_preemption_sync_point(step)


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils  # lazy: as in initialize

        multihost_utils.sync_global_devices(name)


def on_primary(name: str, work: Callable[[], Any]) -> None:
    """Run ``work`` in process 0 only: work that writes shared files once (a tokenizer, the report).
    The other processes wait until it is done, through the coordinator's key-value store (no device
    collective: it may take hours), and fail with one line naming its error if it failed."""
    if process_count() == 1:
        work()
        return
    from jax._src import distributed as runtime  # the coordinator's client: not exported by jax.distributed

    client, key = runtime.global_state.client, f"jaxchat/on_primary/{name}"
    if not is_primary():
        outcome = client.blocking_key_value_get(key, PRIMARY_WORK_TIMEOUT_S * 1000)
        if outcome != "done":
            raise JaxchatError(f"{name}: process 0 {outcome}")
        return
    try:
        work()
    except BaseException as error:
        client.key_value_set(key, f"failed: {error}")
        raise
    client.key_value_set(key, "done")
