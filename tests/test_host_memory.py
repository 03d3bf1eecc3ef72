"""Host allocator settings for CPU runs: freed memory is reused instead of faulted in again."""

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import pytest

from jaxchat import runtime
from jaxchat.host_memory import retain_freed_host_memory

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")

# A fresh process: each call of the jitted program writes a 128 MB temporary (the product, which
# the row argmax reads) and frees it at the end; ru_minflt counts the pages the kernel had to fault in
# (and zero) for it. The median call: on a loaded machine the heap takes longer to settle, and a few
# calls that still grow it moved the mean past the bound (8,432 of 8,331 pages, in a 2-process run).
_PROBE = textwrap.dedent("""
    import resource, statistics, sys
    from jaxchat.host_memory import retain_freed_host_memory
    applied = retain_freed_host_memory() if sys.argv[1] == "retain" else False
    import jax, jax.numpy as jnp
    program = jax.jit(lambda a, b: jnp.argmax(a @ b, axis=1))
    a, b = jnp.ones((4096, 64)), jnp.ones((64, 8192))
    for _ in range(3):
        program(a, b).block_until_ready()
    faults = []
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        program(a, b).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, int(statistics.median(faults)))
""")


def _faults_per_call(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=120)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@glibc_only
def test_retained_memory_is_reused_without_page_faults():
    applied, retained = _faults_per_call("retain")
    _, default = _faults_per_call("default")
    assert applied
    # 128 MB is 32,768 pages: glibc's default maps and unmaps it on every call. Retained, the heap
    # only grows while it settles (a temporary can be freed on a pool thread just after the next call
    # has allocated its own), then calls reuse freed blocks.
    assert default > 30_000, default
    assert retained < default / 4, (retained, default)


def test_too_late_once_jax_has_started():
    jax.devices()  # this process's backend is running: the pool threads already have their arenas
    assert retain_freed_host_memory() is False


def test_cpu_decision_follows_jax_platforms(monkeypatch):
    for platforms, on_cpu in (("cpu", True), ("cuda,cpu", False), ("tpu", False)):
        monkeypatch.setattr(runtime, "jax", SimpleNamespace(config=SimpleNamespace(jax_platforms=platforms)))
        assert (runtime.predict_backend() == "cpu") is on_cpu
