"""Shared pytest fixtures. Each fixture module builds small files in the real source formats."""

import os

# Tests never touch the network, and run on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from tests.fixtures.fineweb import *  # noqa: E402,F401,F403
from tests.fixtures.tasks import *  # noqa: E402,F401,F403
