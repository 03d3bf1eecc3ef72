"""jaxchat.preflight: a run is refused before any work when its tokenizer size is ignored or its model cannot fit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import train
from jaxchat import cli, preflight
from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig, explicit_keys, override
from jaxchat.model import GPTConfig, num_params
from jaxchat.preflight import check_run, estimate_memory
from jaxchat.runtime import Runtime

GiB = 1 << 30
CPU = Runtime(backend="cpu", compute_dtype="float32")
GPU = Runtime(backend="gpu", compute_dtype="bfloat16")
PLENTY = (1 << 50, "test: plenty")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def config(*args: str) -> RunConfig:
    return override(RunConfig(), dict(a.split("=", 1) for a in args))


# ---- the tokenizer's size ------------------------------------------------------------------------


def test_a_set_vocab_size_that_differs_from_the_tokenizer_on_disk_is_refused(home, fineweb_tokenizer):
    fineweb_tokenizer.save(home / "tokenizer")  # 1024 tokens
    cfg = config("tokenizer.vocab_size=4096")
    for stage in ("base", "mid", "sft", "all"):
        with pytest.raises(JaxchatError) as info:
            check_run(stage, cfg, explicit={"tokenizer.vocab_size"}, plan=CPU, available=PLENTY)
        message = str(info.value)
        assert message == (
            f"tokenizer.vocab_size=4096 is set, but the tokenizer in {home / 'tokenizer'} has 1024 tokens and "
            f"{stage} would train with it; retrain the tokenizer with `python train.py --stage=tokenizer "
            f"--tokenizer.vocab_size=4096` (it replaces that one), or drop tokenizer.vocab_size to use it")
    # Not set by the user (the default 65536): the stages use the tokenizer's size, as before.
    assert check_run("base", RunConfig(), explicit=set(), plan=CPU, available=PLENTY)
    # The tokenizer stage trains a new one of the size asked for; chat_eval and report train nothing.
    for stage in ("tokenizer", "chat_eval", "report"):
        assert check_run(stage, cfg, explicit={"tokenizer.vocab_size"}) == []
    # Set, and equal to the tokenizer's: fine. A preset counts as set (tiny's 1024 matches).
    argv = ["--stage=base", "--config=configs/tiny.toml"]
    stage, tiny = train.parse(argv)
    assert check_run(stage, tiny, explicit=explicit_keys(argv), plan=CPU, available=PLENTY)
    argv = ["--stage=base", "--config=configs/cpu_demo.toml"]  # 8192 in the preset
    with pytest.raises(JaxchatError, match=r"tokenizer.vocab_size=8192 is set, but .* has 1024 tokens"):
        check_run("base", train.parse(argv)[1], explicit=explicit_keys(argv), plan=CPU, available=PLENTY)


def test_all_without_a_tokenizer_trains_one_of_the_size_set(home):
    cfg = config("tokenizer.vocab_size=4096", "model.depth=2", "model.sequence_len=64")
    estimates = check_run("all", cfg, explicit={"tokenizer.vocab_size"}, plan=CPU, available=PLENTY)
    assert [e.stage for e in estimates] == ["base", "mid", "sft"]
    assert all(e.model.vocab_size == 4096 for e in estimates)  # no tokenizer yet: the config's size
    assert not home.exists()  # nothing written


# ---- memory ----------------------------------------------------------------------------------------


def test_the_estimate_counts_weights_gradients_optimizer_and_activations():
    d20 = GPTConfig.from_depth(20)
    e = estimate_memory("base", d20, rows=32, tokens_per_row=2048, compute_dtype="bfloat16", remat=False)
    p, adam = num_params(d20), 2 * 65536 * 1280
    assert (e.params, e.gradients) == (4 * p, 4 * p) == (2_243_952_640, 2_243_952_640)
    assert e.optimizer == 4 * (2 * adam + (p - adam)) == 2_915_041_280  # AdamW m+v; Muon one buffer
    assert e.activations == 20 * 32 * 2048 * 5 * 1280 * 2 == 16_777_216_000
    assert e.total == 24_180_162_560  # ~22.5 GiB: d20 fits one 80 GB GPU, as nanochat's recipe says
    remat = estimate_memory("base", d20, rows=32, tokens_per_row=2048, compute_dtype="bfloat16", remat=True)
    assert remat.activations == e.activations // 5
    cpu = estimate_memory("base", d20, rows=32, tokens_per_row=2048, compute_dtype="float32", remat=False)
    assert cpu.activations == 2 * e.activations


def test_the_presets_fit_the_gpus_they_are_written_for(home):
    for preset in ("d12", "d20", "d26"):
        argv = ["--stage=all", f"--config=configs/{preset}.toml"]
        stage, cfg = train.parse(argv)
        plan = Runtime(backend="gpu", compute_dtype="bfloat16", remat=cfg.model.remat)
        estimates = check_run(stage, cfg, explicit=explicit_keys(argv), plan=plan, available=(80 * 10**9, "H100"))
        assert [e.stage for e in estimates] == ["base", "mid", "sft"]
        assert max(e.total for e in estimates) < 80 * 10**9, preset


def test_a_model_that_cannot_fit_prints_its_plan_and_is_refused(home, capsys):
    cfg = config("model.depth=200")
    with pytest.raises(JaxchatError) as info:
        check_run("base", cfg, explicit={"model.depth"}, plan=CPU, available=(24 * GiB, "host RAM: test"))
    message = str(info.value)
    assert message == ("base: depth 200 with 32 rows × 2048 tokens needs at least 7.37 TiB of memory "
                       "(parameters 1.44 TiB, gradients 1.44 TiB, optimizer 1.44 TiB, activations ≥ 3.05 TiB), "
                       "but this machine has 24 GiB (host RAM: test); lower model.depth (the weights and "
                       "optimizer state alone need 4.32 TiB)")
    out = capsys.readouterr().out
    assert out.startswith("base: memory plan (one device; a lower bound)\n")
    for row in ("parameters", "gradients", "optimizer", "activations", "total", "available"):
        assert f"\n  {row}" in out
    assert "394,893,721,600 parameters" in out and "24 GiB (host RAM: test)" in out
    assert not home.exists()


def test_activations_that_do_not_fit_ask_for_a_smaller_batch_or_remat(home):
    cfg = config("model.depth=20")
    with pytest.raises(JaxchatError, match=r"base: depth 20 with 32 rows × 2048 tokens needs at least 22.5 GiB .* "
                                           r"but this machine has 16 GiB \(H100 memory: bytes_limit\); lower "
                                           r"base.device_batch_size \(accumulation keeps base's total batch\) or set "
                                           r"model.remat=true$"):
        check_run("base", cfg, explicit=set(), plan=GPU, available=(16 * GiB, "H100 memory: bytes_limit"))
    # sft's rows are 4 and at least 1/8 of the context: it fits where base does not.
    [sft] = check_run("sft", cfg, explicit=set(), plan=GPU, available=(16 * GiB, "H100 memory: bytes_limit"))
    assert (sft.rows, sft.tokens_per_row) == (4, 256)
    # Each stage is checked with its own batch: `all` refuses for the worst one, naming it.
    small_base = config("model.depth=20", "base.device_batch_size=4", "base.total_batch_size=524288")
    with pytest.raises(JaxchatError, match=r"^mid: depth 20 with 32 rows"):
        check_run("all", small_base, explicit=set(), plan=GPU, available=(16 * GiB, "test"))


def test_memory_available_on_this_machine_and_from_a_device():
    limit, where = preflight.host_memory_available()
    assert limit is None or limit > 0 and where
    device = SimpleNamespace(device_kind="NVIDIA H200", memory_stats=lambda: {"bytes_limit": 140 * GiB})
    assert preflight.device_memory_available(device) == (140 * GiB, "NVIDIA H200 memory: bytes_limit")
    unknown = SimpleNamespace(device_kind="cpu", memory_stats=lambda: None)
    assert preflight.device_memory_available(unknown) == (None, "device memory: unknown")
    # Unknown memory: nothing to compare with, nothing refused.
    assert check_run("base", config("model.depth=200"), explicit=set(), plan=CPU, available=(None, "unknown"))


def test_on_this_machine_depth_200_is_one_error_line_and_status_2(home, capsys):
    """What train.py does once it calls the preflight after parse(): the real runtime plan and memory."""
    argv = ["--stage=base", "--model.depth=200"]

    def run() -> None:
        stage, cfg = train.parse(argv)
        check_run(stage, cfg, explicit=explicit_keys(argv))

    assert cli.report_errors(run) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: base: depth 200 with 32 rows × 2048 tokens needs at least ")
    assert captured.err.count("\n") == 1 and "lower model.depth" in captured.err
    assert "memory plan" in captured.out and not home.exists()
