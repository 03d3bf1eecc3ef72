"""Run configuration: presets, overrides, refusals, and the numbers derived from a config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import train
from jaxchat.common import JaxchatError
from jaxchat import stages
from jaxchat.config import (
    OptimSection, RunConfig, explicit_keys, from_dict, load_toml, override, parse_overrides,
    sections_read, stages_run, to_dict, validate)
from jaxchat.model import GPTConfig, estimate_flops, num_params
from jaxchat.recipe import shards_needed
from jaxchat.training.horizon import horizon
from tests.cli_help import help_listing_every_key

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(path):
    cfg = validate(load_toml(path))
    assert cfg.run_tag
    from jaxchat.training.horizon import model_config, rows_per_step

    model = model_config(cfg, cfg.tokenizer.vocab_size)
    for name in ("base", "mid", "sft"):  # accumulation must make up the total batch exactly
        if name in stages_run("all", cfg.recipe):
            assert rows_per_step(name, cfg, model) % getattr(cfg, name).device_batch_size == 0, name


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
    # Learning rates and the schedule: a negative LR trains in reverse, a non-finite one diverges at once.
    (["--optim.matrix_lr=-0.02"], "optim.matrix_lr=-0.02: expected a number >= 0"),
    (["--optim.embedding_lr=-1"], "optim.embedding_lr=-1.0: expected a number >= 0"),
    (["--optim.unembedding_lr=-0.004"], "optim.unembedding_lr=-0.004: expected a number >= 0"),
    (["--optim.weight_decay=-0.1"], "optim.weight_decay=-0.1: expected a number >= 0"),
    (["--optim.grad_clip=-1"], "optim.grad_clip=-1.0: expected a number >= 0 (0 disables clipping)"),
    (["--optim.matrix_lr=inf"], "optim.matrix_lr='inf': expected a finite float"),
    (["--optim.embedding_lr=nan"], "optim.embedding_lr='nan': expected a finite float"),
    (["--sft.init_lr_frac=NaN"], "sft.init_lr_frac='NaN': expected a finite float"),
    (["--sft.init_lr_frac=-0.02"], "sft.init_lr_frac=-0.02: expected a positive number"),
    (["--base.final_lr_frac=-0.5"], "base.final_lr_frac=-0.5: expected a number in [0, 1]"),
    (["--base.warmup_ratio=-0.5", "--base.warmdown_ratio=1.5"], "base.warmdown_ratio=1.5: expected a number in [0, 1]"),
    (["--base.warmup_ratio=0.5", "--base.warmdown_ratio=0.6"], "base.warmup_ratio + base.warmdown_ratio = 1.1"),
    (["--base.target_flops=1e999"], "base.target_flops='1e999': expected a finite float"),
    # Booleans on the command line: true or false only (1/0/yes/no are ambiguous and refused).
    (["--resume=1"], "resume='1': expected bool (true or false)"),
    (["--resume=yes"], "resume='yes': expected bool (true or false)"),
    (["--model.remat=0"], "model.remat='0': expected bool (true or false)"),
    (["--model.depth=1e400"], "model.depth='1e400': expected int"),
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
    help_listing_every_key(train.main, RunConfig(), capsys)


def test_train_py_errors_are_one_line(capsys):
    assert train.main(["--stage=bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected one of download, tokenizer, base" in err
    assert train.main(["--config=configs/none.toml", "--stage=base"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_command_line_booleans_are_true_or_false_in_any_case():
    assert override(RunConfig(), parse_overrides(["--resume=TRUE", "--model.remat=False"])).resume is True
    assert override(RunConfig(), parse_overrides(["--model.remat=True"])).model.remat is True
    assert override(RunConfig(), parse_overrides(["--resume"])).resume is True  # a bare flag is true
    assert override(RunConfig(), parse_overrides(["--base.total_batch_size=1e6", "--seed=1_000"])).seed == 1000


def test_a_config_built_in_code_with_a_non_finite_float_is_refused():
    cfg = RunConfig(optim=OptimSection(matrix_lr=float("nan")))
    with pytest.raises(JaxchatError, match=r"optim.matrix_lr=nan: expected a finite number"):
        validate(cfg, "base")
    assert validate(cfg, "tokenizer") is cfg  # the tokenizer never reads the optimizer's settings


@pytest.mark.parametrize("toml, message", [
    ("[model]\ndepth = \"4\"\n", "model.depth='4': expected int, got str (TOML values are typed"),
    ("[model]\ndepth = 4.0\n", "model.depth=4.0: expected int, got float"),
    ("resume = \"yes\"\n", "resume='yes': expected bool, got str"),
    ("resume = 1\n", "resume=1: expected bool, got int"),
    ("[optim]\nmatrix_lr = \"0.02\"\n", "optim.matrix_lr='0.02': expected float, got str"),
    ("[optim]\nmatrix_lr = true\n", "optim.matrix_lr=True: expected float, got bool"),
    ("tag = 7\n", "tag=7: expected str, got int"),
    ("[optim]\nmatrix_lr = inf\n", "optim.matrix_lr=inf: expected a finite float"),
    ("[optim]\nembedding_lr = -inf\n", "optim.embedding_lr=-inf: expected a finite float"),
    ("[sft]\ninit_lr_frac = nan\n", "sft.init_lr_frac=nan: expected a finite float"),
])
def test_preset_values_must_have_the_field_type(tmp_path, toml, message):
    path = tmp_path / "preset.toml"
    path.write_text(toml)
    with pytest.raises(JaxchatError) as info:
        load_toml(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_preset_ints_stand_for_floats_and_metadata_is_typed_too(tmp_path):
    path = tmp_path / "preset.toml"
    path.write_text("resume = true\n[optim]\nmatrix_lr = 1\n[model]\nremat = false\n")
    cfg = load_toml(path)
    assert cfg.optim.matrix_lr == 1.0 and isinstance(cfg.optim.matrix_lr, float) and cfg.resume is True
    with pytest.raises(JaxchatError, match=r"^checkpoint metadata: model.depth='4': expected int, got str"):
        from_dict({"model": {"depth": "4"}})
    with pytest.raises(JaxchatError, match=r"^checkpoint metadata: resume='false': expected bool, got str"):
        from_dict({"resume": "false"})


def test_every_stage_lists_the_sections_it_reads(monkeypatch):
    every = ("model", "tokenizer", "optim", "base", "mid", "sft", "chat_eval", "checkpoint", "data", "mesh", "dist")
    assert all(set(spec.sections) <= set(every) for spec in stages.STAGES)  # every stage says what it reads
    assert sections_read("tokenizer") == ("tokenizer", "data") and sections_read("report") == ()
    assert sections_read("all") == every
    with pytest.raises(JaxchatError, match="rl"):
        sections_read("rl")
    # A stage added to the registry alone is checked against every section until it says what it reads.
    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES, stages.StageSpec("rl", "RL", "x:y")))
    assert sections_read("rl") == every


def test_only_the_stages_being_run_are_validated():
    bad_mid = override(RunConfig(), {"mid.total_batch_size": "1000", "sft.examples_per_step": "3"})
    assert validate(bad_mid, "base") is bad_mid
    assert validate(bad_mid, "tokenizer") is bad_mid and validate(bad_mid, "report") is bad_mid
    with pytest.raises(JaxchatError, match=r"mid.total_batch_size=1000 is not a multiple"):
        validate(bad_mid, "mid")
    with pytest.raises(JaxchatError, match=r"mid.total_batch_size=1000 is not a multiple"):
        validate(bad_mid, "all")
    with pytest.raises(JaxchatError, match=r"sft.examples_per_step=3 is not a multiple"):
        validate(bad_mid, "sft")
    # The tokenizer stage reads only the tokenizer section: base/mid/sft's rules do not apply.
    odd = override(RunConfig(), {"base.device_batch_size": "0", "optim.matrix_lr": "-1", "chat_eval.source": "x"})
    assert validate(odd, "tokenizer") is odd
    with pytest.raises(JaxchatError, match="chat_eval.source='x'"):
        validate(odd, "chat_eval")
    with pytest.raises(JaxchatError, match="tokenizer.vocab_size=0"):
        validate(override(RunConfig(), {"tokenizer.vocab_size": "0"}), "tokenizer")
    # train.py parses with the stage it runs.
    stage, cfg = train.parse(["--stage=base", "--config=configs/tiny.toml", "--mid.total_batch_size=1000"])
    assert stage == "base" and cfg.mid.total_batch_size == 1000
    assert train.parse(["--stage", "tokenizer", "--base.total_batch_size=7"])[1].base.total_batch_size == 7
    with pytest.raises(JaxchatError, match="mid.total_batch_size=1000"):
        train.parse(["--stage=all", "--mid.total_batch_size=1000"])


def test_explicit_keys_are_those_of_the_preset_and_the_command_line(tmp_path):
    assert explicit_keys(["--stage=base"]) == frozenset()
    assert explicit_keys(["--stage=base", "--tokenizer.vocab-size=512", "--resume"]) == {"tokenizer.vocab_size",
                                                                                         "resume"}
    tiny = explicit_keys(["--stage=base", "--config", "configs/tiny.toml"])
    assert {"tokenizer.vocab_size", "model.depth", "tag"} <= tiny and "optim.matrix_lr" not in tiny
    assert "tokenizer.vocab_size" not in explicit_keys(["--config=configs/d20.toml"])


@pytest.mark.parametrize("argv, message", [
    (["--stage=base", "--optim.matrix_lr=-0.02"], "optim.matrix_lr=-0.02: expected a number >= 0"),
    (["--stage=sft", "--sft.init_lr_frac=inf"], "sft.init_lr_frac='inf': expected a finite float"),
    (["--stage=base", "--resume=yes"], "resume='yes': expected bool (true or false)"),
    (["--stage=base", "--config=PRESET"], "PRESET: optim.embedding_lr=nan: expected a finite float"),
    (["--stage=mid", "--mid.total_batch_size=1000"], "mid.total_batch_size=1000 is not a multiple"),
])
def test_train_py_refuses_in_one_line_with_status_2_before_writing(tmp_path, monkeypatch, capsys, argv, message):
    preset = tmp_path / "lr.toml"
    preset.write_text("[optim]\nembedding_lr = nan\n")
    home = tmp_path / "home"
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    argv = [a.replace("PRESET", str(preset)) for a in argv]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.replace('PRESET', str(preset))}") and err.count("\n") == 1, err
    assert not home.exists()  # nothing written
