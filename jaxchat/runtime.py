"""The runtime plan: every choice that depends on the platform, resolved once, in one place.

``resolve(model_section, backend, device_kind)`` is a pure function of the config and the backend
it is given; ``for_this_machine`` is the only code that asks JAX which backend and device this
process has. The model and the training code receive a :class:`Runtime` and never ask themselves,
so the GPU's program is decided (and tested, with a faked ``"gpu"``) on any machine.

| choice              | CPU                                        | GPU                                |
|---------------------|--------------------------------------------|------------------------------------|
| compute dtype       | float32 (bf16 pays only with AMX)          | bfloat16 (params stay float32)     |
| attention           | blocked (FlashAttention-style, ~½ FLOPs)   | cudnn (flash attention; bf16 only) |
| dense               | transposed (fast-path weight gradient)     | xla                                |
| loss chunk          | 16 MB of logits (stays in cache)           | 512 MB (only memory matters)       |
| host memory         | kept for reuse (``jaxchat.host_memory``)   | left to malloc                     |

``Runtime()`` with no arguments is the portable reference program (plain XLA everywhere, float32):
correct on any backend, fast on none; the kernels' tests compare against it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxchat.common import JaxchatError
from jaxchat.config import ModelSection
from jaxchat.kernels.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from jaxchat.targets import peak_flops

DENSE_IMPLEMENTATIONS = ("xla", "transposed")
CPU_LOSS_CHUNK_BYTES = 16 << 20
GPU_LOSS_CHUNK_BYTES = 512 << 20
# The share of a GPU's memory XLA's allocator may take (JAX's own default, 75 %, would not hold the
# d20 step at 32 rows on an 80 GB card); set by ``configure_process`` before JAX starts.
GPU_MEMORY_FRACTION = 0.95


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How the GPT runs here. Every field is a resolved choice (no 'auto')."""

    backend: str = "any"  # what it was resolved for: cpu | gpu | tpu | any
    compute_dtype: str = "float32"  # matmuls and attention; params, norms, logits stay float32
    attention: str = "xla"  # blocked | xla | cudnn (jaxchat.kernels.attention)
    dense: str = "xla"  # xla | transposed (jaxchat.kernels.dense)
    loss_chunk_bytes: int = GPU_LOSS_CHUNK_BYTES  # float32 logits per chunk of the fused head+loss
    remat: bool = False  # recompute each block's activations in the backward pass
    retain_host_memory: bool = False  # keep freed malloc memory (CPU runs; applied by train.py at start)
    peak_flops: float | None = None  # of one device, for MFU; None when unknown

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise JaxchatError(f"attention={self.attention!r}: expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
        if self.dense not in DENSE_IMPLEMENTATIONS:
            raise JaxchatError(f"dense={self.dense!r}: expected one of {', '.join(DENSE_IMPLEMENTATIONS)}")

    @property
    def dtype(self) -> Any:
        return jnp.dtype(self.compute_dtype)

    def describe(self) -> str:
        """One line for the stage plan."""
        parts = [f"{self.backend}", f"dtype {self.compute_dtype}", f"attention {self.attention}",
                 f"dense {self.dense}", f"loss chunks ≤ {self.loss_chunk_bytes >> 20} MB",
                 f"remat {'on' if self.remat else 'off'}"]
        if self.retain_host_memory:
            parts.append("host memory retained")
        return ", ".join(parts)


def resolve(model: ModelSection, backend: str, device_kind: str = "") -> Runtime:
    """The plan for ``model`` (the config's model section) on ``backend`` ('cpu', 'gpu', 'tpu')."""
    gpu, cpu = backend == "gpu", backend == "cpu"
    dtype = model.dtype if model.dtype != "auto" else ("bfloat16" if gpu else "float32")
    attention = model.attention
    if attention == "auto":
        attention = "cudnn" if gpu and dtype in ("bfloat16", "float16") else "blocked"
    if attention == "cudnn" and not (gpu and dtype in ("bfloat16", "float16")):
        raise JaxchatError(f"model.attention='cudnn' needs a GPU and model.dtype bfloat16 (this run: {backend}, "
                           f"{dtype}); use model.attention=auto")
    return Runtime(backend=backend, compute_dtype=dtype, attention=attention,
                   dense="transposed" if cpu else "xla",
                   loss_chunk_bytes=CPU_LOSS_CHUNK_BYTES if cpu else GPU_LOSS_CHUNK_BYTES,
                   remat=model.remat is True,  # "auto" starts off: jaxchat.fit turns it on if needed
                   retain_host_memory=cpu, peak_flops=peak_flops(device_kind) if gpu else None)


def for_this_machine(model: ModelSection | None = None) -> Runtime:
    """``resolve`` for this process's default JAX backend and its first device (the one place that
    asks JAX what this machine is)."""
    return resolve(model or ModelSection(), jax.default_backend(), jax.devices()[0].device_kind)


def configure_process() -> None:
    """Environment JAX reads when it starts its clients (call before that; the user's settings win):
    XLA's GPU allocator may take ``GPU_MEMORY_FRACTION`` of the device, and a CUDA plugin installed
    only to compile (no NVIDIA driver here) is not tried as a backend (JAX would print a traceback
    and fall back to the CPU anyway)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(GPU_MEMORY_FRACTION))
    if not jax.config.jax_platforms and _cuda_without_driver():
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        jax.config.update("jax_platforms", "cpu")  # read from the environment at import: already done


def _cuda_without_driver() -> bool:
    plugins = [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
    return bool(plugins) and all("cuda" in name for name in plugins) and not os.path.exists("/dev/nvidiactl")


def predict_backend() -> str:
    """'cpu', or the accelerator platform JAX will pick, decided WITHOUT starting a backend: process
    settings that must precede JAX's start (``jaxchat.host_memory``) are decided by this."""
    platforms = jax.config.jax_platforms
    if platforms:
        return platforms.split(",")[0].strip()
    # Accelerator backends (jax[cuda12], ROCm, TPU) arrive as plugins; with none, JAX runs on the CPU,
    # as it does with a CUDA plugin installed to compile only (no NVIDIA driver: see configure_process).
    if _cuda_without_driver():
        return "cpu"
    return "accelerator" if importlib.metadata.entry_points(group="jax_plugins") else "cpu"
