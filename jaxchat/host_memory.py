"""Keep freed host memory for reuse when JAX runs on the CPU (glibc only).

XLA:CPU allocates the temporaries of each execution as one block (≈ 550 MB for a d4 train step at
batch 8 × 512) with ``posix_memalign`` on one of its pool threads. glibc serves a block that large
from a fresh ``mmap`` and unmaps it when the step ends, so every step faults in, and the kernel
zeroes, all of its pages again: ~150,000 page faults and ~0.3 CPU-seconds per step, about a tenth
of the step on two cores (measured; ``benchmarks/train_step.py``). With one malloc arena that never
hands memory back, the next step reuses the same pages.

The settings are process-wide and must be made before JAX starts its CPU client (its threads pick
their arena at their first allocation), which is why ``train.py`` calls
:func:`retain_freed_host_memory` before anything else touches JAX. On a GPU run they would only cost
(one arena for every host thread, and host memory that is never returned), so they are applied only
when JAX will run on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

from jaxchat import runtime

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1
# malloc's settings are process-wide; this records that they were made (set once, never cleared).
_RETAINED = threading.Event()


def _jax_backends_started() -> bool:
    try:
        from jax._src import xla_bridge  # lazy: a private module that may move; only this probe needs it
    except ImportError:  # pragma: no cover - private module moved: assume the caller is early enough
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def retain_freed_host_memory() -> bool:
    """On a CPU run with glibc, make malloc keep freed memory for reuse; True if applied.

    Sets one malloc arena (``M_ARENA_MAX=1``), no ``mmap``-backed blocks (``M_MMAP_MAX=0``) and no
    trimming below 2 GB (``M_TRIM_THRESHOLD``). Does nothing (returns False) off Linux/glibc, when
    JAX will run on an accelerator, or when JAX has already started a backend (too late to help).
    """
    if not sys.platform.startswith("linux") or runtime.predict_backend() != "cpu" or _jax_backends_started():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = all(mallopt(param, value) == 1 for param, value in
                  ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)))
    if applied:
        _RETAINED.set()
    return applied


def retained() -> bool:
    """Whether :func:`retain_freed_host_memory` took effect in this process (for the stage plan)."""
    return _RETAINED.is_set()
