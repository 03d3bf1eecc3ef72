"""The 2026 recipe as a whole: its defaults, stage list, base-training scaling (nanochat 92d63d4's
``base_train`` numbers) and SFT's warm-started optimizer. The pieces it is built from have their own
parity tests (test_model_2026, test_optim_2026, test_loader_2026, test_sft_loader_2026)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat.common import JaxchatError
from jaxchat.config import build, initial, load_toml, stages_run, validate
from jaxchat.model import GPTConfig
from jaxchat.optim import hyperparams_2026, warm_start_2026
from jaxchat.runtime import Runtime
from jaxchat.training.build import Scaling, build_model, build_optimizer
from jaxchat.training.horizon import model_config, plan, rows_per_step

ROOT = Path(__file__).resolve().parents[1]


def test_the_recipe_sets_its_defaults_and_presets_and_the_command_line_still_win():
    cfg = build(None, {"recipe": "2026"})
    assert (cfg.tokenizer.vocab_size, cfg.model.window_pattern, cfg.base.total_batch_size, cfg.base.packing,
            cfg.data.corpus, cfg.sft.packing, cfg.sft.load_optimizer, cfg.optim.grad_clip) == (
        32768, "SSSL", "auto", "bestfit", "climbmix", "bestfit", True, 0.0)
    assert build(None, {}) == initial("2025") == initial()  # the seed recipe stays the default
    preset = load_toml(ROOT / "configs" / "gpt2_1gpu.toml")  # recipe = "2026" inside
    assert preset.recipe == "2026" and preset.data.corpus == "climbmix" and preset.model.depth == 24
    cli = build(ROOT / "configs" / "gpt2_1gpu.toml", {"base.packing": "stream", "model.depth": "12"})
    assert cli.base.packing == "stream" and cli.model.depth == 12 and cli.optim.embedding_lr == 0.3
    with pytest.raises(JaxchatError, match="recipe='2027': expected one of 2025, 2026"):
        build(None, {"recipe": "2027"})


def test_the_2026_recipe_has_no_midtraining_and_sft_starts_from_base():
    from jaxchat import stages

    assert stages_run("all", "2026") == ("tokenizer", "base", "sft", "report", "chat_eval")
    assert "mid" in stages_run("all", "2025")
    assert stages.get("sft").source("2026") == "base" and stages.get("sft").source("2025") == "mid"
    with pytest.raises(JaxchatError, match="the 2026 recipe has no mid stage .* run it with --recipe=2025"):
        validate(initial("2026"), "mid")


def test_base_scaling_matches_nanochat_92d63d4():
    """base_train's arithmetic for its speedrun (d24, 8 tokens per scaling parameter) and its d12
    reference: batch B_ref·(D/D_ref)^0.383 as a power of two, LR × √(B/B_ref), weight decay
    0.28·√(B/B_ref)·D_ref/D, steps D // B. Scaling parameters from nanochat's own model (torch, meta
    device): d12 110,100,912 and d24 729,810,624."""
    cfg = load_toml(ROOT / "configs" / "gpt2_1gpu.toml")
    d24 = model_config(cfg, 32768)
    p = plan(cfg, d24)
    d_ref, d = 8 * 110_100_912, int(8 * 729_810_624)
    batch = 2 ** round(math.log2(2 ** 19 * (d / d_ref) ** 0.383))
    assert p.total_batch_size == batch == 2 ** 20
    assert p.num_steps == d // batch == 5568
    assert p.scaling.lr_scale == pytest.approx(math.sqrt(2))
    assert p.scaling.weight_decay == pytest.approx(0.28 * math.sqrt(2) * d_ref / d)
    assert p.scaling.num_steps == 5568 and rows_per_step("base", cfg, d24) == 512
    d12 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=12),
                              base=dataclasses.replace(cfg.base, target_param_data_ratio=12.0))
    p12 = plan(d12, model_config(d12, 32768))
    assert (p12.total_batch_size, p12.scaling.lr_scale, p12.scaling.weight_decay) == (2 ** 19, 1.0, 0.28)
    no_ratio = dataclasses.replace(cfg, base=dataclasses.replace(cfg.base, target_param_data_ratio=-1.0,
                                                                  num_iterations=10))
    with pytest.raises(JaxchatError, match="total_batch_size=auto is derived from base.target_param_data_ratio"):
        plan(no_ratio, d24)


def test_sft_inherits_the_batch_of_the_checkpoint_it_starts_from():
    cfg = build(None, {"recipe": "2026", "model.sequence_len": "1024"})
    model = model_config(cfg, 32768)
    assert rows_per_step("sft", cfg, model, {"total_batch_size": 2 ** 19}) == 512
    assert rows_per_step("sft", cfg, model) == plan(cfg, model).total_batch_size // 1024  # before base ran
    fixed = build(None, {"recipe": "2026", "sft.examples_per_step": "64"})
    assert rows_per_step("sft", fixed, model, {"total_batch_size": 2 ** 19}) == 64


def _tiny_params(cfg):
    model = GPTConfig.from_depth_2026(2, vocab_size=256, sequence_len=64)
    _, params = build_model(model, cfg, Runtime())
    return model, params


def test_sft_warm_starts_from_base_moments_with_its_own_lrs_and_schedules():
    """chat_sft --load-optimizer: the moments (and AdamW's step count) come from base; the LRs and the
    momentum schedule are SFT's, starting from SFT's step 0; the state's structure is base's."""
    cfg = initial("2026")
    model, params = _tiny_params(cfg)
    base_tx = build_optimizer(params, model, cfg, "base", scaling=Scaling(num_steps=10, lr_scale=0.5, weight_decay=0.1))
    state = base_tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    for _ in range(3):
        _, state = base_tx.update(grads, state, params)
    sft_tx = build_optimizer(params, model, cfg, "sft")
    fresh = sft_tx.init(params)
    assert jax.tree.structure(fresh) == jax.tree.structure(state)  # SFT can restore base's state
    warm = warm_start_2026(fresh, state)
    hp, hp_base = hyperparams_2026(warm), hyperparams_2026(state)
    assert float(hp["muon"]["momentum"]) == pytest.approx(0.85)  # SFT's schedule at its step 0
    assert float(hp["muon"]["weight_decay"]) == 0.0 and float(hp_base["muon"]["weight_decay"]) > 0
    assert float(hp["wte"]["learning_rate"]) == pytest.approx(0.3 * (128 / 768) ** -0.5 * 0.8)  # × sft.init_lr_frac
    moments = [leaf for leaf in jax.tree.leaves(warm) if leaf.ndim >= 1]
    base_moments = [leaf for leaf in jax.tree.leaves(state) if leaf.ndim >= 1]
    assert all(np.array_equal(a, b) for a, b in zip(moments, base_moments)) and any(np.abs(m).max() > 0 for m in moments)
    updates, _ = sft_tx.update(grads, warm, params)  # a working state
    assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))
