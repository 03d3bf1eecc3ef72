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


def test_resume_continues_exactly(home, monkeypatch):
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
    assert run(*common, "--tag=crashed") == 130
    monkeypatch.setattr(StageCheckpointer, "save", original_save)
    assert find_checkpoint("base", "crashed")[1] == 3
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
