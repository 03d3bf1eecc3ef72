"""The GPU programs compile, and fit, for the GPU each preset is sized for, without a GPU.

XLA's GPU compiler (the ``jax[cuda12]`` plugin, which ``.ci/run`` installs) compiles, deviceless for
the preset's ``target`` (h100-80gb when it names none), the train step of every preset in its GPU
form (bf16, cuDNN attention, the preset's remat): base (mid has the same shape in every preset;
SFT's step is the same program on fewer rows, checked, and compiled too with ``-m slow``); and the
engine's prefill and decode and the eval forward of the recipe's d20. Each must fit
``jaxchat.fit.SAFETY`` of the card's memory. Skipped where the plugin is absent.

The default run compiles three presets' base steps: the smallest card's, and the two recipes' main
jobs on an H100 (on 2 cores d12_12gb and d20 take 30-65 s each, gpt2_1gpu 90-150 s); ``-m slow``
compiles every other preset's too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jaxchat import targets
from jaxchat.config import load_toml

pytestmark = pytest.mark.skipif(not targets.compiler_available(),
                                reason="XLA's GPU compiler is not installed (pip install -e '.[cuda12]')")

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(path.name for path in (ROOT / "configs").glob("*.toml"))
# Compiled by default: the smallest card (9.1 of 10.8 GiB), and each recipe's main job on an H100.
DEFAULT_GPU_PRESETS = ("d12_12gb.toml", "d20.toml", "gpt2_1gpu.toml")


def fitted(preset: str, stage: str):
    from jaxchat import fit
    from jaxchat.training.horizon import model_config

    cfg = load_toml(ROOT / "configs" / preset)
    machine = fit.for_target(cfg.target or "h100-80gb", cfg.model)
    return fit.fit(stage, cfg, model_config(cfg, cfg.tokenizer.vocab_size), machine), machine


def check(result, preset: str, stage: str) -> None:
    chosen, machine = result
    if load_toml(ROOT / "configs" / preset).model.dtype == "auto":  # the CPU presets pin float32
        assert machine.runtime.compute_dtype == "bfloat16" and machine.runtime.attention == "cudnn"
    assert chosen.fits, f"{preset} {stage}: {chosen.describe()}"


def test_the_presets_targets_exist():
    for preset in PRESETS:
        cfg = load_toml(ROOT / "configs" / preset)
        if cfg.target:
            targets.check_name(cfg.target)


def test_the_default_gpu_presets_exist():
    assert set(DEFAULT_GPU_PRESETS) <= set(PRESETS)


@pytest.mark.parametrize("preset", [p if p in DEFAULT_GPU_PRESETS else pytest.param(p, marks=pytest.mark.slow)
                                    for p in PRESETS])
def test_the_base_step_compiles_for_the_gpu_and_fits(preset):
    """mid trains the same shape in every preset of the 2025 recipe (its rows are base's): this covers it."""
    cfg = load_toml(ROOT / "configs" / preset)
    if cfg.recipe == "2025":
        assert (cfg.mid.device_batch_size == cfg.base.device_batch_size
                and cfg.mid.total_batch_size == cfg.base.total_batch_size)
    check(fitted(preset, "base"), preset, "base")


def test_sft_steps_are_no_larger_than_base_steps():
    """SFT's step is base's program on at most as many rows of at most the same length (same model,
    same optimizer state), so a preset whose base step fits fits SFT too; compiled below (slow)."""
    for preset in PRESETS:
        cfg = load_toml(ROOT / "configs" / preset)
        assert cfg.sft.device_batch_size <= cfg.base.device_batch_size, preset


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_the_sft_step_compiles_for_the_gpu_and_fits(preset):
    check(fitted(preset, "sft"), preset, "sft")


def test_the_engine_and_the_eval_forward_compile_for_the_gpu_and_fit():
    from jaxchat import fit
    from jaxchat.model import GPTConfig

    cfg = load_toml(ROOT / "configs" / "d20.toml")
    machine = fit.for_target("h100-80gb", cfg.model)
    model_config = GPTConfig.from_depth(20, vocab_size=65536, sequence_len=2048)
    memory = fit.inference_memory(machine, model_config, cfg, eval_rows=32)
    assert set(memory) == {"prefill", "decode", "eval"}
    params = 4 * 560_988_160
    for name, m in memory.items():
        assert params <= m.arguments and m.peak <= machine.budget, (name, m)
    assert memory["decode"].aliased > 0  # the KV cache is updated in place (donated), not copied


def test_remat_shows_in_the_gpu_compiled_memory():
    """Unlike a CPU compile, the GPU program's temporaries shrink with remat: what the choice relies on."""
    from jaxchat import fit
    from jaxchat.config import RunConfig
    from jaxchat.model import GPTConfig

    cfg = RunConfig()
    machine = fit.for_target("rtx4090-24gb", cfg.model)
    model_config = GPTConfig.from_depth(4, vocab_size=8192, sequence_len=2048)
    without, with_remat = (fit.train_step_memory(machine, model_config, cfg, "base", rows=8, seq=2048, accum=32,
                                                 remat=remat) for remat in (False, True))
    assert with_remat.temporaries < 0.7 * without.temporaries  # the rest: the 512 MB loss chunk, gradients


def test_plan_for_a_named_card_as_a_user_runs_it():
    """Every program compiled for the card; the command itself makes the CUDA plugin a compiler only
    (JAX_PLATFORMS unset, as on a machine without a GPU)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-m", "jaxchat.plan", "--config", "configs/tiny.toml",
                             "--target=rtx4070-12gb", "--model.dtype=auto", "--sft.device_batch_size=auto"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith("plan for rtx4070-12gb (NVIDIA GeForce RTX 4070), compiled without a GPU")
    for word in ("attention cudnn", "usable (95% of 11.4 GiB", "| base | 4 × 64 × 2 | off |",
                 "| sft | 4 × 64 × 1 (auto) | off |", "| prefill |", "| decode |", "| eval forward |",
                 "of 58 TFLOP/s"):
        assert word in out, word
