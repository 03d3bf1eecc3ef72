"""Run configuration: presets, overrides, refusals, and the numbers derived from a config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import train
from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig, from_dict, keys, load_toml, override, parse_overrides, to_dict, validate
from jaxchat.model import GPTConfig, estimate_flops, num_params
from jaxchat.recipe import shards_needed
from jaxchat.training.base import horizon

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(path):
    cfg = validate(load_toml(path))
    assert cfg.run_tag
    for stage in (cfg.base, cfg.mid):  # accumulation must make up the total batch exactly
        assert stage.total_batch_size % (stage.device_batch_size * cfg.model.sequence_len) == 0


def test_defaults_are_the_d20_recipe():
    cfg = RunConfig()
    assert validate(load_toml(CONFIGS / "d20.toml")) == cfg
    model = GPTConfig.from_depth(cfg.model.depth, vocab_size=cfg.tokenizer.vocab_size)
    steps, source = horizon(cfg, model)
    assert isinstance(steps, int)  # the step count formats as an int in every log line
    assert steps == 20 * num_params(model) // 524_288 == 21_400  # docs/DESIGN.md §5: Chinchilla 20×
    assert "params" in source
    assert cfg.base.total_batch_size // (cfg.base.device_batch_size * cfg.model.sequence_len) == 8
    assert 230 <= shards_needed(cfg) <= 250  # nanochat downloads 240 shards for d20


def test_horizon_prefers_num_iterations_then_target_flops():
    cfg = override(RunConfig(), {"base.num_iterations": "100", "base.target_flops": "1e18"})
    model = GPTConfig.from_depth(20)
    assert horizon(cfg, model) == (100, "base.num_iterations")
    cfg = override(RunConfig(), {"base.target_flops": "1e18"})
    steps, _ = horizon(cfg, model)
    assert steps == round(1e18 / (estimate_flops(model) * 524_288)) == 546


def test_command_line_overrides_and_types():
    args = ["--base.num_iterations=1_000", "--resume", "--tag", "x", "--model.dtype=bfloat16",
            "--optim.matrix_lr", "0.01", "--checkpoint.save-every=50"]
    cfg = override(RunConfig(), parse_overrides(args))
    assert (cfg.base.num_iterations, cfg.resume, cfg.tag, cfg.model.dtype) == (1000, True, "x", "bfloat16")
    assert cfg.optim.matrix_lr == 0.01 and cfg.checkpoint.save_every == 50
    assert from_dict(to_dict(cfg)) == cfg  # what checkpoints store comes back identical


@pytest.mark.parametrize("args, message", [
    (["--base.num_iter=3"], "unknown config key 'base.num_iter'"),
    (["--depth=3"], "did you mean model.depth"),
    (["--model.depth=four"], "model.depth='four': expected int"),
    (["--model.depth=2.5"], "expected int"),
    (["--resume=maybe"], "expected bool"),
    (["--model.dtype=fp8"], "model.dtype='fp8': expected one of"),
    (["--base.device_batch_size=0"], "base.device_batch_size=0: expected a positive number"),
    (["--base.total_batch_size=1000"], "not a multiple of"),
    (["--sft.examples_per_step=6"], "not a multiple of sft.device_batch_size"),
    (["stray"], "unexpected argument 'stray'"),
    (["--model.attention=flash"], "model.attention='flash': expected one of auto, blocked, xla, cudnn"),
    (["--chat_eval.source=base"], "chat_eval.source='base': expected one of mid, sft"),
    (["--chat_eval.num_samples=0"], "chat_eval.num_samples=0: expected a positive number"),
    (["--chat_eval.temperature=-1"], "chat_eval.temperature=-1.0: expected a number >= 0"),
    (["--chat_eval.max_problems=0"], "chat_eval.max_problems=0: expected -1 (all) or a positive number"),
])
def test_bad_values_are_refused_with_the_key(args, message):
    with pytest.raises(JaxchatError, match=re.escape(message)):
        validate(override(RunConfig(), parse_overrides(args)))


def test_bad_preset_files(tmp_path):
    with pytest.raises(JaxchatError, match="config file not found"):
        load_toml(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[model\ndepth = 3\n")
    with pytest.raises(JaxchatError, match="not valid TOML"):
        load_toml(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text("[model]\ndepht = 3\n")
    with pytest.raises(JaxchatError, match=r"typo.toml: unknown config key 'model.depht'"):
        load_toml(tmp_path / "typo.toml")


def test_help_lists_every_key_with_its_default(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for key, value, _ in keys(RunConfig()):
        assert f"--{key} = {value!r}" in out


def test_train_py_errors_are_one_line(capsys):
    assert train.main(["--stage=bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected one of download, tokenizer, base" in err
    assert train.main(["--config=configs/none.toml", "--stage=base"]) == 2
    assert "config file not found" in capsys.readouterr().err
