"""The stage registry: every module that names stages reads it, so a new stage is one entry."""

import dataclasses
import sys
import types

import pytest

from jaxchat import checkpoint, config, recipe, stages
from jaxchat.common import JaxchatError

import train


def test_the_recipe_has_no_phantom_stages():
    assert stages.names() == ["download", "tokenizer", "base", "mid", "sft", "chat_eval", "report"]
    assert stages.checkpointed() == ["base", "mid", "sft"]
    assert [s.starts_from for s in stages.STAGES if s.checkpointed] == [None, "base", "mid"]
    for stage in stages.STAGES:  # every runner resolves to a function
        module, function = stage.runner.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), stage.runner


def test_unknown_stages_are_refused_with_the_choices():
    with pytest.raises(JaxchatError, match="unknown stage 'rl'; expected one of download, tokenizer"):
        stages.get("rl")
    with pytest.raises(JaxchatError, match="unknown checkpoint stage 'rl'; expected a stage with checkpoints: base, mid, sft"):
        checkpoint.checkpoint_dir("rl", "d20")
    assert train.main(["--stage=rl"]) == 2


def test_optimizer_overrides_come_from_the_registry():
    sft = stages.get("sft").optimizer
    cfg = config.override(config.RunConfig(), {"sft.init_lr_frac": "0.05"})
    assert (sft.lr_frac(cfg), sft.clip_gradients, sft.muon_momentum) == (0.05, False, 0.95)
    base = stages.get("base").optimizer
    assert (base.lr_frac(cfg), base.clip_gradients, base.muon_momentum) == (1.0, True, None)
    mid = stages.get("mid").optimizer  # nanochat's mid_train.py does not clip
    assert (mid.lr_frac(cfg), mid.clip_gradients, mid.muon_momentum) == (1.0, False, None)


def _fake_stage(monkeypatch, calls):
    """Register an 'rl' stage (a module with a runner, one StageSpec), as a contributor would."""
    module = types.ModuleType("fake_rl_stage")
    module.train_rl = lambda cfg: calls.append(("rl", cfg.run_tag))
    monkeypatch.setitem(sys.modules, "fake_rl_stage", module)
    spec = stages.StageSpec("rl", "RL training", "fake_rl_stage:train_rl", starts_from="sft", checkpointed=True,
                            chat_evaluated=True, optimizer=stages.OptimizerOverrides(clip_gradients=False))
    registry = list(stages.STAGES)
    registry.insert(registry.index(stages.get("sft")) + 1, spec)
    monkeypatch.setattr(stages, "STAGES", tuple(registry))
    return spec


def test_a_new_stage_is_one_registry_entry(monkeypatch, tmp_path):
    calls = []
    _fake_stage(monkeypatch, calls)
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    # train.py dispatches to it; checkpoints and the tools accept it
    assert "rl" in stages.choices()
    assert train.main(["--stage=rl", "--tag=x"]) == 0 and calls == [("rl", "x")]
    assert checkpoint.checkpoint_dir("rl", "x") == tmp_path / "checkpoints" / "rl" / "x"
    assert stages.check_checkpointed("rl") == "rl"
    # --stage=all runs it after sft, with chat_eval after it, before the report
    order = []
    specs = []  # every stage's runner replaced by one that records its name
    for stage in stages.STAGES:
        fn = f"run_{stage.name}"
        setattr(sys.modules["fake_rl_stage"], fn, lambda cfg, n=stage.name: order.append(n))
        specs.append(dataclasses.replace(stage, runner=f"fake_rl_stage:{fn}"))
    monkeypatch.setattr(stages, "STAGES", tuple(specs))
    monkeypatch.setattr(recipe, "chat_eval", lambda cfg, source=None: order.append(f"chat_eval({source})"))
    recipe.run_all(config.RunConfig(tag="x"))
    assert order == ["tokenizer", "base", "mid", "chat_eval(mid)", "sft", "chat_eval(sft)", "rl", "chat_eval(rl)",
                     "report"]


def test_report_columns_and_order_follow_the_registry(monkeypatch, tmp_path):
    from jaxchat import report

    _fake_stage(monkeypatch, [])
    report.write_section("rl", "RL", "rl run", {"GSM8K": 0.076}, home=tmp_path)
    report.write_section("chat-eval-sft", "Chat eval", "sft", {"GSM8K": 0.05}, home=tmp_path)
    table = report.metrics_table(report.read_stages(tmp_path))
    assert table.splitlines()[0] == "| Metric | BASE | MID | SFT | RL |"
    assert "| GSM8K | - | - | 0.0500 | 0.0760 |" in table


def test_the_stage_builds_its_optimizer_from_its_overrides(monkeypatch):
    from jaxchat.training import build

    seen = {}
    monkeypatch.setattr(build, "make_optimizer", lambda params, d, optim, lrm, momentum: seen.update(
        {"lr_frac": optim.init_lr_frac, "clip": optim.grad_clip, "momentum": momentum}))
    cfg = config.RunConfig()
    model = types.SimpleNamespace(n_embd=64)
    build.build_optimizer({}, model, cfg, "sft")
    assert seen == {"lr_frac": 0.02, "clip": None, "momentum": 0.95}
    build.build_optimizer({}, model, cfg, "base")
    assert (seen["lr_frac"], seen["clip"], seen["momentum"](0), seen["momentum"](300)) == (1.0, 1.0, 0.85, 0.95)
