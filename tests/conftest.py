"""Shared pytest fixtures. Each fixture module builds small files in the real source formats."""

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

# Tests never touch the network, and run on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# Counters for jax.random over 3+ axes in the partitionable layout (JAX's default) take XLA:CPU 2-4 s
# to compile per shape, against 0.3 s in the classic one; tests draw many such shapes. Only which
# bits come out differs (not their distribution), and nothing in jaxchat depends on that.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
# One JAX compilation cache for the run, shared by its processes and the subprocesses tests start: many
# tests compile the same tiny-preset programs (train.py's steps above all). Created by the first process
# (pytest-xdist's workers inherit it) and removed when that process exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxchat-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# The slowest files first (seconds on 2 cores, 2026-12-01: 390 to 70), so that each of the two processes
# (files run whole in one: --dist=loadfile) ends on short files rather than one waiting for the other.
SLOWEST_FIRST = ("test_gpu_compile.py", "test_model.py", "kernels/test_attention.py", "test_train_e2e.py",
                 "test_model_2026.py", "test_fit.py", "test_eval.py", "test_train_step.py", "test_layouts.py",
                 "test_devices_e2e.py", "test_multihost.py", "test_resilience.py", "test_optim.py",
                 "test_engine.py", "test_eval_devices.py")


_renamed = [name for name in SLOWEST_FIRST if not (Path(__file__).parent / name).is_file()]
if _renamed:  # a stale name would quietly put that file back among the last
    raise RuntimeError(f"tests/conftest.py: SLOWEST_FIRST names {_renamed}, not files in tests/ any more")


def pytest_collection_modifyitems(config, items):
    rank = {f"tests/{name}": i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: files stay whole


_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address) -> None:
    """Refuse, at once and loudly, any connection a test makes beyond this machine (servers in tests
    listen on 127.0.0.1): a test that reaches for the network is a bug, never a slow retry loop."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise ConnectionRefusedError(f"tests must not use the network (connect to {address!r})")
    _connect(sock, address)


socket.socket.connect = _loopback_only

from tests.fixtures.fineweb import *  # noqa: E402,F401,F403
from tests.fixtures.tasks import *  # noqa: E402,F401,F403
