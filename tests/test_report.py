"""Report card sections, the final table, assembling with curves, and the metrics log."""

import json
import os
import struct
import sys
import types

import numpy as np
import pytest

from jaxchat import report
from jaxchat.common import JaxchatError
from jaxchat.metrics_log import MetricsLogger, metrics_path, plot_curves


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_sections_replace_not_duplicate(tmp_path):
    report.write_section("base", "Base training (d2)", "| loss | 3.1 |", home=tmp_path)
    report.write_section("base", "Base samples", "## not a heading of ours\n```\nsample\n```", home=tmp_path)
    path = report.write_section("base", "Base training (d2)", "| loss | 2.5 |", {"CORE": 0.1}, home=tmp_path)
    text = path.read_text()
    assert path == tmp_path / "report" / "base.md"
    assert text.count("## Base training (d2)") == 1 and "3.1" not in text and "| loss | 2.5 |" in text
    # Replaced in place: the order of sections is kept, and a "## " line inside a body is only text.
    assert text.index("Base training") < text.index("Base samples") and "not a heading of ours" in text
    sidecar = json.loads((tmp_path / "report" / "base.json").read_text())
    assert [s["heading"] for s in sidecar["sections"]] == ["Base training (d2)", "Base samples"]
    assert sidecar["metrics"] == {"CORE": 0.1}
    report.write_section("base", "Base samples", "new", {"CORE": np.float32(0.25), "MFU": 48}, home=tmp_path)
    assert json.loads((tmp_path / "report" / "base.json").read_text())["metrics"] == {"CORE": 0.25, "MFU": 48}
    report.write_section("base", "Fresh", "x", home=tmp_path, fresh=True)
    assert (tmp_path / "report" / "base.md").read_text() == "## Fresh\n\nx\n"


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(JaxchatError, match="bad report stage name 'Base Eval'"):
        report.write_section("Base Eval", "x", "y", home=tmp_path)
    with pytest.raises(JaxchatError, match=r"report metric CORE=\[1, 2\] is not a number"):
        report.write_section("base", "x", "y", {"CORE": [1, 2]}, home=tmp_path)
    (tmp_path / "report" / "mid.json").write_text("{broken")
    with pytest.raises(JaxchatError, match=r"mid.json is not valid JSON .*--reset"):
        report.write_section("mid", "x", "y", home=tmp_path)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = report.write_section("sft", "SFT", "old body", home=tmp_path)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        report.write_section("sft", "SFT", "new body", home=tmp_path)
    assert path.read_text() == "## SFT\n\nold body\n"
    assert json.loads((tmp_path / "report" / "sft.json").read_text())["sections"][0]["markdown"] == "old body"


def test_table_contents_and_pipeline_order(tmp_path):
    home = tmp_path
    report.write_section("chat-eval-sft", "Chat evaluation sft", "sft evals",
                         {"ARC-Easy": 0.388, "GSM8K": 0.046, "ChatCORE": 0.088, "SpellingBee": 0.5}, home=home)
    report.write_section("mid", "Midtraining", "mid run", {"val_bpb": 0.41}, home=home)
    report.write_section("base-eval", "Base model evaluation", "core", {"CORE": 0.2219}, home=home)
    report.write_section("tokenizer", "Tokenizer training", "tok", home=home)
    report.write_section("base", "Base training", "base run", home=home)
    report.write_section("chat-eval-mid", "Chat evaluation mid", "mid evals", {"ARC-Easy": 0.356, "MMLU": 0.311},
                         home=home)
    stages = report.read_stages(home)
    assert list(stages) == ["tokenizer", "base", "base-eval", "mid", "chat-eval-mid", "chat-eval-sft"]
    table = report.metrics_table(stages).splitlines()
    assert table[0] == "| Metric | BASE | MID | SFT |"
    assert table[2:9] == [
        "| CORE | 0.2219 | - | - |",
        "| ARC-Easy | - | 0.3560 | 0.3880 |",
        "| ARC-Challenge | - | - | - |",
        "| MMLU | - | 0.3110 | - |",
        "| GSM8K | - | - | 0.0460 |",
        "| HumanEval | - | - | - |",
        "| ChatCORE | - | - | 0.0880 |",
    ]
    assert table[9:] == ["| val_bpb | - | 0.4100 | - |", "| SpellingBee | - | - | 0.5000 |"]


def test_order_and_columns_come_from_the_stage_registry(tmp_path, monkeypatch):
    """A stage with checkpoints added to ``jaxchat.stages`` gets its place in the order and its column."""
    from jaxchat import stages

    home = tmp_path
    report.write_section("sft", "SFT", "sft run", {"GSM8K": 0.046}, home=home)
    report.write_section("rl", "RL", "rl run", {"GSM8K": 0.076}, home=home)
    report.write_section("chat-eval-rl", "Chat evaluation rl", "rl evals", {"ChatCORE": 0.09}, home=home)
    report.write_section("base", "Base training", "base run", home=home)
    # Not a registered stage: no column, its metrics nowhere in the table, its section after the pipeline's.
    assert list(report.read_stages(home)) == ["base", "sft", "chat-eval-rl", "rl"]
    assert report.metrics_table(report.read_stages(home)).splitlines()[0] == "| Metric | BASE | MID | SFT |"
    assert "0.0760" not in report.metrics_table(report.read_stages(home))
    registry = list(stages.STAGES)
    at = stages.names().index("sft") + 1
    registry.insert(at, stages.StageSpec("rl", "RL", "jaxchat.training.rl:train_rl", starts_from="sft",
                                         checkpointed=True))
    monkeypatch.setattr(stages, "STAGES", tuple(registry))
    assert list(report.read_stages(home)) == ["base", "sft", "rl", "chat-eval-rl"]
    rl_table = report.metrics_table(report.read_stages(home)).splitlines()
    assert rl_table[0] == "| Metric | BASE | MID | SFT | RL |" and "| GSM8K | - | - | 0.0460 | 0.0760 |" in rl_table
    assert "| ChatCORE | - | - | - | 0.0900 |" in rl_table
    # Only stages with checkpoints are columns; the tokenizer's metrics have none.
    assert report.table_column("tokenizer") is None and report.table_column("chat-eval-mid") == "mid"


def test_assemble_with_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    with MetricsLogger("base", "d2") as log:
        for step in range(20):
            log.log(step, loss=4.0 - 0.1 * step, lrm=1.0)
            if step % 5 == 0:
                log.log(step, val_bpb=1.5 - 0.02 * step)
    report.write_section("base", "Base training (d2)", "| steps | 20 |", {"CORE": 0.05})
    report.write_section("sft", "SFT (d2)", "done", {"ChatCORE": 0.01})
    path = report.assemble()
    text = path.read_text()
    assert path == tmp_path / "report" / "report.md"
    assert text.startswith("# jaxchat report card\n") and "- Git commit: " in text and "- Devices: cpu: " in text
    assert text.index("## Base training (d2)") < text.index("![base_d2 curves](base_d2.png)") < text.index("## SFT")
    assert text.rstrip().endswith("| ChatCORE | - | - | 0.0100 |") and "| CORE | 0.0500 | - | - |" in text
    width, height = png_size(tmp_path / "report" / "base_d2.png")
    assert width > 500 and height > 200


def test_reset_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    report.write_section("base", "Base training", "x", {"CORE": 0.2})
    MetricsLogger("base", "d2").close()
    assert report.main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "report" / "report.md")
    assert report.main(["--reset"]) == 0
    assert "removed 5 file(s)" in capsys.readouterr().out  # base.md, base.json, report.md, jsonl, png
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [".lock", "started.txt"]
    assert report.main([]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Base training" not in text and "| CORE | - | - | - |" in text and "- Run started: " in text
    other = tmp_path / "other"
    assert report.main([f"--home={other}"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(other / "report" / "report.md"))


def test_cli_help_and_errors(tmp_path, monkeypatch, capsys):
    from jaxchat.config import keys

    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert report.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m jaxchat.report --reset" in out
    for key, value, _ in keys(report.ReportConfig()):
        assert f"--{key} = {value!r}" in out
    assert "--reset = False  [bool]" in out and "--home = ''  [str]" in out
    for argv, message in ((["--rest"], "unknown config key 'rest'"),
                          (["--reset=perhaps"], "reset='perhaps': expected bool"),
                          (["reset"], "unexpected argument 'reset'")):
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "base.json").write_text("{broken")
    assert report.main([]) == 2
    err = capsys.readouterr().err
    assert "base.json is not valid JSON" in err and "--reset" in err and err.count("\n") == 1


# ---- metrics log ----------------------------------------------------------------------------------


def test_metrics_log_lines_and_resume(tmp_path):
    import jax.numpy as jnp

    log = MetricsLogger("base", "d4", directory=tmp_path)
    for step in range(1, 6):
        log.log(step, loss=jnp.float32(1.0 / 2**step), tokens=np.int64(100))
    log.log(5, {"val_bpb": 0.9})  # the training loop passes a dict
    log.close()
    path = tmp_path / "base_d4.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == 0.5 and first["tokens"] == 100 and "time" in first
    assert json.loads(path.read_text().splitlines()[5])["val_bpb"] == 0.9
    # Resumed from a checkpoint at step 3: the new run appends from step 4; a crash cut its last line.
    log = MetricsLogger("base", "d4", directory=tmp_path)
    log.log(4, loss=0.2)
    log.log(5, loss=float("nan"))
    log.close()
    with path.open("a") as f:
        f.write('{"step": 6, "lo')
    records = MetricsLogger.read(path)
    assert [(r["step"], r.get("loss")) for r in records] == [(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.2), (5, None)]
    assert [r["step"] for r in MetricsLogger.read(path, upto_step=3)] == [1, 2, 3]
    assert metrics_path("mid", "d20") == metrics_path("mid", "d20", None)
    with pytest.raises(JaxchatError, match="bad metrics log tag 'd2/x'"):
        MetricsLogger("base", "d2/x", directory=tmp_path)


def test_damaged_metrics_log_names_the_line(tmp_path):
    path = tmp_path / "base_d1.jsonl"
    path.write_text('{"step": 1, "loss": 2}\nnot json\n{"step": 2, "loss": 1}\n')
    with pytest.raises(JaxchatError, match=r"base_d1.jsonl:2: not a JSON line"):
        MetricsLogger.read(path)


def test_wandb_mirroring_and_missing_wandb(tmp_path, monkeypatch):
    runs = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.finished = kwargs, [], False
            runs.append(self)

        def log(self, data, step):
            self.logged.append((step, data))

        def finish(self):
            self.finished = True

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: FakeRun(**kw)))
    with MetricsLogger("sft", "d2", directory=tmp_path, wandb_run="my-run") as log:
        log.log(3, loss=1.5, val_loss=float("inf"))
    (run,) = runs
    assert run.kwargs["name"] == "my-run" and run.logged == [(3, {"loss": 1.5})] and run.finished
    existing = FakeRun()
    with MetricsLogger("sft", "d2", directory=tmp_path, wandb_run=existing) as log:
        log.log(4, loss=1.0)
    assert existing.logged == [(4, {"loss": 1.0})] and not existing.finished  # not ours to finish
    monkeypatch.setitem(sys.modules, "wandb", None)  # "not installed"
    with pytest.raises(JaxchatError, match="pip install wandb"):
        MetricsLogger("sft", "d2", directory=tmp_path, wandb_run="my-run")


def test_plot_curves_and_missing_matplotlib(tmp_path, monkeypatch):
    for tag, scale in (("d2", 1.0), ("d4", 0.8)):
        with MetricsLogger("base", tag, directory=tmp_path) as log:
            for step in range(10):
                log.log(step, loss=scale * (3 - 0.1 * step))
    out = plot_curves([tmp_path / "base_d2.jsonl", tmp_path / "base_d4.jsonl"], tmp_path / "png" / "c.png",
                      keys=("loss", "val_bpb"))
    assert out.is_file() and png_size(out)[0] > 2 * png_size(plot_curves(tmp_path / "base_d2.jsonl",
                                                                         tmp_path / "one.png", keys=("loss",)))[0] - 10
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(JaxchatError, match="pip install matplotlib"):
        plot_curves([tmp_path / "base_d2.jsonl"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    # assemble still writes the report, with a note instead of the picture.
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path / "home"))
    os.makedirs(tmp_path / "home" / "report")
    (tmp_path / "home" / "report" / "base_d2.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert "_No curves for base_d2.jsonl: plotting the training curves needs matplotlib" in \
        report.assemble().read_text()
