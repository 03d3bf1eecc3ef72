"""train.py end to end on the tiny preset with fixture data: every stage, exact resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import train
from jaxchat.checkpoint import StageCheckpointer, find_checkpoint, load_params, read_meta
from tests.fixtures.fineweb import write_fineweb_shards
from tests.fixtures.tasks import write_task_cache

TINY = "configs/tiny.toml"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A complete miniature $JAXCHAT_HOME: 3 FineWeb shards, every task dataset, the eval bundle."""
    write_fineweb_shards(tmp_path / "base_data", n_shards=3)
    write_task_cache(tmp_path)
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.chdir(ROOT)
    return tmp_path


def run(*args: str) -> int:
    return train.main(["--config", TINY, *args])


def params_of(stage: str, tag: str, step: int | None = None):
    from jaxchat.config import from_dict
    from jaxchat.model import GPTConfig
    from jaxchat.runtime import Runtime
    from jaxchat.training.build import build_model

    meta = read_meta(stage, tag, step)
    _, abstract = build_model(GPTConfig(**meta["model_config"]), from_dict(meta["run_config"]), Runtime(), abstract=True)
    params, _ = load_params(stage, tag, step, abstract_params=abstract)
    return params


def test_stage_all_runs_the_whole_recipe(home, capsys):
    assert run("--stage=all") == 0
    out = capsys.readouterr().out
    assert (home / "tokenizer" / "tokenizer.json").is_file()
    for stage, steps in (("base", 6), ("mid", 4), ("sft", 3)):
        path, step = find_checkpoint(stage, "tiny")
        assert step == steps, (stage, step)
        meta = read_meta(stage, "tiny")
        assert meta["final"] is True and meta["stage"] == stage
    # mid started from base's final params, sft from mid's (recorded in the metadata).
    assert read_meta("mid", "tiny")["source"].startswith("base/tiny/6")
    assert read_meta("sft", "tiny")["source"].startswith("mid/tiny/4")
    for word in ("parameters", "FLOPs/token", "estimated time", "val_bpb", "val_loss"):
        assert word in out, word
    report = (home / "report" / "report.md").read_text()
    for heading in ("CORE", "ARC-Easy", "ChatCORE", "BASE", "MID", "SFT"):
        assert heading in report, heading
    lines = [json.loads(line) for line in (home / "report" / "base_tiny.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4, 5, 6]
    assert any("val_bpb" in line for line in lines)


def test_resume_continues_exactly(home, monkeypatch, capsys):
    """N steps, a crash right after a checkpoint, --resume for N more == 2N steps straight."""
    assert run("--stage=tokenizer") == 0
    common = ["--stage=base", "--base.num_iterations=6", "--checkpoint.save_every=3", "--base.eval_every=100"]
    assert run(*common, "--tag=straight") == 0

    original_save = StageCheckpointer.save

    def save_then_crash(self, step, *args, **kwargs):
        original_save(self, step, *args, **kwargs)
        if step == 3:
            self.wait()
            raise KeyboardInterrupt  # the process dies right after step 3's checkpoint

    monkeypatch.setattr(StageCheckpointer, "save", save_then_crash)
    capsys.readouterr()
    assert run(*common, "--tag=crashed") == 130
    monkeypatch.setattr(StageCheckpointer, "save", original_save)
    assert find_checkpoint("base", "crashed")[1] == 3
    directory = home / "checkpoints" / "base" / "crashed"
    assert capsys.readouterr().err.strip() == (f"interrupted: the latest complete checkpoint is step 3 "
                                               f"({directory / '3'}); --resume continues from it")
    assert run(*common, "--tag=crashed", "--resume") == 0

    straight, resumed = params_of("base", "straight"), params_of("base", "crashed")
    for a, b in zip(_leaves(straight), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_refusals_come_before_any_work(home, capsys):
    assert run("--stage=tokenizer") == 0
    # No base checkpoint: mid refuses with the command to run.
    assert run("--stage=mid") == 2
    err = capsys.readouterr().err
    assert "base" in err and "train.py --stage=base" in err and "Traceback" not in err
    assert not (home / "checkpoints" / "mid" / "tiny").exists() or not any((home / "checkpoints" / "mid" / "tiny").iterdir())
    # An existing run is never overwritten without --resume.
    assert run("--stage=base", "--base.num_iterations=2") == 0
    assert run("--stage=base", "--base.num_iterations=2") == 2
    assert "--resume" in capsys.readouterr().err
    # Unknown keys and bad values: one line, exit 2.
    assert run("--stage=base", "--base.num_iteration=3") == 2
    assert "unknown config key 'base.num_iteration'" in capsys.readouterr().err
    assert run("--stage=base", "--model.dtype=fp8") == 2
    assert "model.dtype" in capsys.readouterr().err


def test_resume_after_a_crash_before_the_first_checkpoint_starts_fresh(home, monkeypatch, capsys):
    assert run("--stage=tokenizer") == 0
    import jaxchat.training.stage as stage_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies before the loop has saved anything

    original = stage_module.run_loop
    monkeypatch.setattr(stage_module, "run_loop", crash)
    capsys.readouterr()
    assert run("--stage=base", "--base.num_iterations=2") == 130
    directory = home / "checkpoints" / "base" / "tiny"
    assert capsys.readouterr().err.strip() == (f"interrupted: no checkpoint was saved in {directory}; "
                                               "the next run starts fresh")
    (directory / "1.orbax-checkpoint-tmp" / "params").mkdir(parents=True)  # and a save killed midway
    monkeypatch.setattr(stage_module, "run_loop", original)
    assert run("--stage=base", "--base.num_iterations=2", "--resume") == 0
    out = capsys.readouterr().out
    assert f"base: --resume: no checkpoint in {directory} yet; starting fresh\n" in out
    assert find_checkpoint("base", "tiny")[1] == 2


def test_a_tokenizer_checkpoints_use_is_not_replaced_and_resume_checks_it(home, capsys):
    from jaxchat.model.load import load_model
    from jaxchat.tokenizer import load_tokenizer

    assert run("--stage=tokenizer") == 0
    old = load_tokenizer().fingerprint()
    assert run("--stage=base", "--base.num_iterations=2") == 0
    capsys.readouterr()
    # Retraining under checkpoints that use it: refused before any work, saying how to proceed.
    assert run("--stage=tokenizer", "--tokenizer.max_chars=300000") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: refusing to replace {home / 'tokenizer'}: 1 checkpoint(s) were trained with "
                          f"this tokenizer ({old[:12]})") and err.count("\n") == 1
    assert "--tokenizer.replace=true" in err and f"tokenizer.old-{old[:12]}" in err
    assert load_tokenizer().fingerprint() == old
    # Told explicitly: a new tokenizer, the old one moved aside (never deleted).
    assert run("--stage=tokenizer", "--tokenizer.max_chars=300000", "--tokenizer.replace=true") == 0
    new = load_tokenizer().fingerprint()
    aside = home / f"tokenizer.old-{old[:12]}"
    assert new != old and load_tokenizer(aside).fingerprint() == old
    assert f"moved the previous tokenizer ({old[:12]}, used by 1 checkpoint(s)) to {aside}" in capsys.readouterr().out
    # The run's own checkpoints were trained with the old one: --resume refuses, naming both, before any work.
    directory = home / "checkpoints" / "base" / "tiny"
    before = sorted(p.name for p in directory.iterdir())
    assert run("--stage=base", "--base.num_iterations=4", "--resume") == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {directory / '2'} was trained with tokenizer {old[:12]} but the current "
                          f"tokenizer is {new[:12]}") and err.count("\n") == 1
    assert "base step" not in out and sorted(p.name for p in directory.iterdir()) == before
    with pytest.raises(Exception, match=f"trained with tokenizer {old[:12]} but the current tokenizer is {new[:12]}"):
        load_model("base", "tiny")
    # Putting the old tokenizer back is the way to continue.
    (home / "tokenizer").rename(home / "tokenizer.new")
    aside.rename(home / "tokenizer")
    assert run("--stage=base", "--base.num_iterations=3", "--resume") == 0
    assert read_meta("base", "tiny")["step"] == 3 and read_meta("base", "tiny")["tokenizer_fingerprint"] == old


def test_base_on_climbmix_with_best_fit_packing(home, capsys):
    """data.corpus=climbmix reads base_data_climbmix/ (the tokenizer too); base.packing=bestfit packs
    nanochat 92d63d4's BOS-aligned rows."""
    import shutil

    shutil.move(str(home / "base_data"), str(home / "base_data_climbmix"))
    args = ["--data.corpus=climbmix", "--base.packing=bestfit"]
    assert run("--stage=tokenizer", *args) == 0
    assert run("--stage=base", "--base.num_iterations=2", "--base.eval_every=100", *args) == 0
    out = capsys.readouterr().out
    assert "climbmix train shard(s)" in out and "bestfit packing" in out
    assert find_checkpoint("base", "tiny")[1] == 2
    assert read_meta("base", "tiny")["run_config"]["base"]["packing"] == "bestfit"


def test_the_2026_recipe_trains_base_then_sft_from_base(home, capsys):
    """--recipe=2026: nanochat 92d63d4's model and optimizer, ClimbMix with best-fit rows, no midtraining;
    SFT starts from base with base's optimizer moments, packs its rows and reports val bpb and ChatCORE."""
    import shutil

    shutil.move(str(home / "base_data"), str(home / "base_data_climbmix"))
    assert run("--stage=all", "--recipe=2026", "--sft.metrics_max_generative=1") == 0
    out = capsys.readouterr().out
    assert find_checkpoint("base", "tiny")[1] == 6 and find_checkpoint("sft", "tiny")[1] == 3
    assert not (home / "checkpoints" / "mid").exists()
    base, sft = read_meta("base", "tiny"), read_meta("sft", "tiny")
    assert base["run_config"]["recipe"] == "2026" and base["total_batch_size"] == 512
    assert base["model_config"]["window_pattern"] == "SSSL" and base["model_config"]["value_embeds"]
    assert sft["source"].startswith("base/tiny/6") and sft["source"].endswith("optimizer moments too")
    assert "bestfit packing" in out and "packed rows per step" in out
    assert {"val_bpb", "chatcore"} <= set(sft["metrics"])
    assert "SFT" in (home / "report" / "report.md").read_text()


@pytest.mark.slow  # ~40 s: three more SFT runs
def test_the_2026_recipes_sft_resumes_exactly(home, capsys):
    """SFT's packed rows and warm-started optimizer resume exactly: a crash after step 2, then --resume."""
    import shutil

    shutil.move(str(home / "base_data"), str(home / "base_data_climbmix"))
    assert run("--stage=tokenizer", "--recipe=2026") == 0
    assert run("--stage=base", "--recipe=2026", "--base.eval_every=100") == 0
    common = ["--stage=sft", "--recipe=2026", "--source_tag=tiny", "--sft.num_iterations=3", "--checkpoint.save_every=2",
              "--sft.metrics_every=100", "--sft.metrics_max_generative=1"]
    assert run(*common, "--tag=straight") == 0
    original_save = StageCheckpointer.save

    def save_then_crash(self, step, *args, **kwargs):
        original_save(self, step, *args, **kwargs)
        if step == 2:
            self.wait()
            raise KeyboardInterrupt

    StageCheckpointer.save = save_then_crash
    try:
        assert run(*common, "--tag=crashed") == 130
    finally:
        StageCheckpointer.save = original_save
    assert run(*common, "--tag=crashed", "--resume") == 0
    for a, b in zip(_leaves(params_of("sft", "straight")), _leaves(params_of("sft", "crashed"))):
        np.testing.assert_array_equal(a, b)
