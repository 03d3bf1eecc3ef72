"""Shared pytest fixtures. Each fixture module builds small files in the real source formats."""

import ipaddress
import os
import socket

# Tests never touch the network, and run on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# Counters for jax.random over 3+ axes in the partitionable layout (JAX's default) take XLA:CPU 2-4 s
# to compile per shape, against 0.3 s in the classic one; tests draw many such shapes. Only which
# bits come out differs (not their distribution), and nothing in jaxchat depends on that.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

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
