"""The runtime plan: every platform choice resolved in one place, the GPU's tested on a CPU."""

import ast
import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxchat import runtime
from jaxchat.common import JaxchatError
from jaxchat.config import ModelSection, RunConfig
from jaxchat.model import GPT, GPTConfig
from jaxchat.training.build import build_model

PACKAGE = Path(runtime.__file__).parent


def test_gpu_plan_uses_cudnn_bfloat16_and_plain_matmuls():
    plan = runtime.resolve(ModelSection(), "gpu", "NVIDIA H100 80GB HBM3")
    assert (plan.backend, plan.compute_dtype, plan.attention, plan.dense) == ("gpu", "bfloat16", "cudnn", "xla")
    assert plan.loss_chunk_bytes == 512 << 20 and not plan.retain_host_memory and not plan.remat
    assert plan.peak_flops == 989e12
    assert runtime.resolve(ModelSection(), "gpu", "NVIDIA A100-SXM4-40GB").peak_flops == 312e12
    assert runtime.resolve(ModelSection(), "gpu", "Some Future GPU").peak_flops is None


def test_cpu_plan_uses_the_cpu_kernels():
    plan = runtime.resolve(ModelSection(), "cpu", "cpu")
    assert (plan.backend, plan.compute_dtype, plan.attention, plan.dense) == ("cpu", "float32", "blocked", "transposed")
    assert plan.loss_chunk_bytes == 16 << 20 and plan.retain_host_memory and plan.peak_flops is None


def test_config_keys_override_the_automatic_choices():
    gpu = lambda **kw: runtime.resolve(ModelSection(**kw), "gpu", "H100")  # noqa: E731
    assert gpu(attention="xla").attention == "xla"
    assert gpu(dtype="float32").attention == "blocked"  # cuDNN flash attention needs 16-bit inputs
    assert gpu(remat=True).remat
    cpu = runtime.resolve(ModelSection(dtype="bfloat16", attention="xla"), "cpu")
    assert (cpu.compute_dtype, cpu.attention) == ("bfloat16", "xla")
    with pytest.raises(JaxchatError, match="model.attention='cudnn' needs a GPU"):
        runtime.resolve(ModelSection(attention="cudnn"), "cpu")
    with pytest.raises(JaxchatError, match="model.attention='cudnn' needs a GPU"):
        gpu(attention="cudnn", dtype="float32")


def test_runtime_refuses_unknown_kernels():
    with pytest.raises(JaxchatError, match="attention='flash'"):
        runtime.Runtime(attention="flash")
    with pytest.raises(JaxchatError, match="dense='fast'"):
        runtime.Runtime(dense="fast")


def test_the_gpu_plan_builds_the_gpu_model():
    """What the training stage builds for a GPU: bf16 compute and cuDNN in every layer, float32 params."""
    plan = runtime.resolve(ModelSection(remat=True), "gpu", "H100")
    config = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    graphdef, params = build_model(config, RunConfig(), plan, abstract=True)
    model = nnx.merge(graphdef, params)
    assert model.runtime is plan
    assert all(block.attn.implementation == "cudnn" for block in model.h)
    assert model.h[0].mlp.c_fc.dtype == jnp.bfloat16 and model.lm_head.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_for_this_machine_resolves_the_default_backend():
    plan = runtime.for_this_machine(ModelSection(remat=True))
    assert plan == dataclasses.replace(runtime.resolve(ModelSection(), "cpu", "cpu"), remat=True)  # tests run on CPU


def test_only_the_runtime_asks_jax_for_the_backend():
    """Model, kernels and training code receive the plan; none reads the backend itself."""
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "default_backend":
                callers.append(str(path.relative_to(PACKAGE)))
    assert sorted(set(callers)) == ["runtime.py"], callers


def test_gpt_default_is_the_portable_reference():
    model = GPT(GPTConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16), rngs=nnx.Rngs(0))
    assert model.runtime == runtime.Runtime()
    assert (model.runtime.attention, model.runtime.dense, model.runtime.compute_dtype) == ("xla", "xla", "float32")


def test_remat_auto_starts_off_and_true_is_on():
    assert runtime.resolve(ModelSection(remat="auto"), "gpu", "NVIDIA H100 80GB HBM3").remat is False
    assert runtime.resolve(ModelSection(remat=True), "gpu", "").remat is True


def test_configure_process_lets_xla_take_95_percent_and_keeps_the_users_choice():
    import subprocess
    import sys

    code = ("import os; from jaxchat import runtime; runtime.configure_process(); "
            "print(os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'])")
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0.95"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ".5"


def test_peak_flops_by_device_kind():
    assert runtime.resolve(ModelSection(), "gpu", "NVIDIA GeForce RTX 4090").peak_flops == 165e12
    assert runtime.resolve(ModelSection(), "gpu", "Some New GPU").peak_flops is None
    assert runtime.resolve(ModelSection(), "cpu", "cpu").peak_flops is None
