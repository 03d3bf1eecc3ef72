"""``python -m jaxchat.convert`` as a user runs it: a checkpoint made by nanochat's own code comes in, a
jaxchat tool runs on it, it goes back out; bad command lines are one line (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxchat import convert
from jaxchat.interop import safe_pickle

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_import_chat_and_export_a_nanochat_run(home, tmp_path, capsys):
    source = FIXTURES / "nanochat_16788ee"
    assert convert.main(["import-nanochat", str(source), "--stage=base", "--tag=d2"]) == 0
    assert "imported" in capsys.readouterr().out
    assert (home / "checkpoints" / "base" / "d2" / "3").is_dir() and (home / "tokenizer" / "tokenizer.json").is_file()

    from jaxchat import chat  # a jaxchat tool on the imported model

    assert chat.main(["--source=base", "--tag=d2", "--prompt=Hello", "--sampling.max_tokens=4",
                      "--sampling.temperature=0"]) == 0
    out = tmp_path / "back"
    assert convert.main(["export-nanochat", str(out), "--stage=base", "--tag=d2"]) == 0
    theirs = safe_pickle.read_pt(source / "base_checkpoints" / "d2" / "model_000003.pt")
    ours = safe_pickle.read_pt(out / "base_checkpoints" / "d2" / "model_000003.pt")
    assert set(ours) == {k.removeprefix("_orig_mod.") for k in theirs}
    for name, value in theirs.items():  # nanochat's weights, back exactly (bf16 ones widened to float32)
        np.testing.assert_array_equal(ours[name.removeprefix("_orig_mod.")], value.astype(np.float32))


@pytest.mark.parametrize("argv, message", [
    ([], "expected a command: import-nanochat, export-nanochat, export-hf, import-hf"),
    (["import-nanochat"], "import-nanochat: expected a path after the command"),
    (["import-nanochat", "x", "--stage=base"], "--tag is required"),
    (["import-nanochat", "/nonexistent", "--stage=base", "--tag=t"], "/nonexistent does not exist"),
    (["export-hf", "out", "--colour=red"], "unknown config key 'colour'"),
])
def test_bad_command_lines_are_one_line(home, capsys, argv, message):
    assert convert.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_stage_fine_tunes_an_imported_checkpoint(home, capsys, monkeypatch):
    """train.py --source_tag starts from an import like from its own base checkpoint."""
    import train
    from jaxchat.checkpoint import find_checkpoint, read_meta
    from tests.fixtures.tasks import write_task_cache

    write_task_cache(home)
    assert convert.main(["import-nanochat", str(FIXTURES / "nanochat_16788ee"), "--stage=base", "--tag=d2"]) == 0
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert train.main(["--stage=mid", "--config", "configs/tiny.toml", "--source_tag=d2", "--tag=d2_mid",
                       "--mid.num_iterations=2", "--mid.eval_every=100", "--tokenizer.vocab_size=300"]) == 0
    assert find_checkpoint("mid", "d2_mid")[1] == 2
    assert read_meta("mid", "d2_mid")["source"].startswith("base/d2/3")
