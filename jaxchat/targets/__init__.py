"""Named GPUs to plan for without one: XLA GPU target configs, and compile-only devices built from them.

Each ``<name>.txtpb`` here is a target config in XLA's GPU spec format (``GpuTargetConfigProto``).
With ``jax[cuda12]`` installed, XLA's GPU compiler turns one into compile-only devices on a machine
without a GPU, so a jitted program is compiled exactly as for that card and its memory read from the
buffer assignment (``jaxchat.fit``). ``h100-80gb`` is an H100 SXM's description; the others are that
file with three fields changed: ``device_memory_size`` (what ``nvidia-smi`` reports for the card),
``cuda_compute_capability`` (8.0 for an A100, 8.9 for Ada cards) and ``device_description_str``.
Their SM counts, clocks and cache sizes stay the H100's: they steer XLA's fusion heuristics, not the
buffer sizes this is for (the same program compiled for 8.0 and 9.0 needs the same bytes, measured).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import re
from pathlib import Path

from jaxchat.common import JaxchatError

SPEC_DIR = Path(__file__).parent
# Dense bf16 tensor-core peak FLOP/s (FP32 accumulate) by device kind (datasheets), for MFU and
# planned times; unknown devices show no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
              "RTX 4090": 165e12, "RTX 4080": 97.5e12, "RTX 4070": 58.3e12, "RTX 3090": 71e12}


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU described by its spec file: what planning needs to know of it."""

    name: str  # h100-80gb
    description: str  # what JAX reports as the device kind
    memory: int  # bytes of device memory
    compute_capability: str  # "9.0"
    peak_flops: float | None  # dense bf16, from PEAK_FLOPS by description

    @property
    def spec(self) -> str:
        return (SPEC_DIR / f"{self.name}.txtpb").read_text()


def names() -> list[str]:
    """The named targets, by memory (largest first)."""
    return sorted((path.stem for path in SPEC_DIR.glob("*.txtpb")), key=lambda name: (-get(name).memory, name))


def check_name(name: str) -> None:
    """JaxchatError unless ``name`` is a target (without loading JAX: config validation calls it)."""
    if not (SPEC_DIR / f"{name}.txtpb").is_file():
        choices = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.txtpb")))
        raise JaxchatError(f"target={name!r}: no such GPU target; expected one of {choices}")


def get(name: str) -> Target:
    """The target called ``name``; JaxchatError listing the names otherwise."""
    check_name(name)
    text = (SPEC_DIR / f"{name}.txtpb").read_text()
    memory = int(re.search(r"device_memory_size: (\d+)", text).group(1))
    cc = re.search(r"cuda_compute_capability \{\s*major: (\d+)\s*(?:minor: (\d+))?", text)
    description = re.search(r'device_description_str: "([^"]*)"', text).group(1)
    return Target(name=name, description=description, memory=memory,
                  compute_capability=f"{cc.group(1)}.{cc.group(2) or 0}", peak_flops=peak_flops(description))


def peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak of a GPU called ``device_kind`` (``NVIDIA H100 80GB HBM3``); None if unknown."""
    return next((flops for name, flops in PEAK_FLOPS.items() if name in device_kind), None)


def compiler_available() -> bool:
    """Whether XLA's GPU compiler is installed (the ``jax[cuda12]`` plugin): no GPU is needed."""
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins namespace at all: no plugin installed
        return False


def mesh(target: Target, devices: int = 1, fsdp: int = 1):
    """The ``data × fsdp`` mesh (``jaxchat.sharding.make_mesh``: axes ``BATCH_AXES``, ``fsdp`` dividing
    ``devices``) of ``devices`` compile-only ``target`` GPUs (no GPU needed, only the plugin)."""
    if not compiler_available():
        raise JaxchatError(f"planning for {target.name} compiles for a GPU, which needs XLA's GPU compiler: "
                           "pip install -e '.[cuda12]' (no GPU needed)")
    from jax.experimental import topologies  # lazy: JAX (config validation reads this module without it)
    from jaxchat import sharding

    if not isinstance(devices, int) or devices < 1:
        raise JaxchatError(f"devices={devices}: expected a positive number of {target.name} GPUs")
    try:
        topology = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{devices}",
                                                target_config=target.spec)
    except NotImplementedError:  # the CUDA plugin failed to start (no GPU) because JAX tried it as a backend
        raise JaxchatError("XLA's GPU compiler did not load: without a GPU, set JAX_PLATFORMS=cpu before JAX "
                           "starts (python -m jaxchat.plan does)") from None
    return sharding.make_mesh(fsdp, topology.devices)  # JaxchatError unless fsdp divides devices


def compile_only_process() -> None:
    """Before JAX starts: run on the CPU, so that the CUDA plugin loads as a compiler only (without a
    GPU, trying it as a backend fails and unregisters it). For processes that only plan."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    jax = sys.modules.get("jax")  # already imported: its config read the environment then
    if jax is not None and not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")
