"""jaxchat.fit: the device batch and remat chosen against injected memory limits, the refusal, and
``"auto"`` in a real training stage (CPU-compiled steps; the GPU forms are in test_gpu_compile.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import train
from jaxchat import fit, runtime
from jaxchat.checkpoint import find_checkpoint, read_meta
from jaxchat.common import JaxchatError
from jaxchat.config import load_toml, override, validate
from jaxchat.model import GPTConfig
from tests.test_train_e2e import home  # noqa: F401 - the fixture: a miniature $JAXCHAT_HOME

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
GiB = 1 << 30


def test_row_candidates_make_up_the_total_and_split_over_devices():
    assert fit.row_candidates(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert fit.row_candidates(12) == [1, 2, 3, 4, 6, 12]
    assert fit.row_candidates(32, devices=4) == [1, 2, 4, 8]  # rows per device: 4 × (1, 2, 4, 8) divide 32
    assert fit.row_candidates(6, devices=4) == []


@pytest.mark.parametrize("limit", [0, 1, 5, 17, 63, 64, 1000])
def test_largest_fitting_bisects_to_the_largest_that_fits(limit):
    candidates = [1, 2, 4, 8, 16, 32, 64]
    probes = []

    def fits(rows):
        probes.append(rows)
        return rows <= limit

    expected = max((r for r in candidates if r <= limit), default=None)
    assert fit.largest_fitting(candidates, fits) == expected
    assert len(probes) <= 3  # log2(7) + 1: one compile per probe


class FakeMemory:
    """An affine model of a step: weights + rows × (activations per row), remat keeping a quarter."""

    def __init__(self, weights: float, per_row: float, remat_share: float = 0.25):
        self.weights, self.per_row, self.remat_share = weights, per_row, remat_share
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, rows: int, remat: bool) -> fit.Memory:
        self.calls.append((rows, remat))
        temp = int(rows * self.per_row * (self.remat_share if remat else 1))
        return fit.Memory(int(self.weights), 0, 0, temp, int(self.weights) + temp)


def machine_with(limit: int | None) -> fit.Machine:
    return fit.this_machine(runtime.Runtime(backend="cpu"), available=(limit, "injected"))


def cfg_with(**keys: str):
    return validate(override(load_toml(TINY), keys))


MODEL = GPTConfig.from_depth(1, vocab_size=1024, sequence_len=64)


def test_auto_picks_the_largest_batch_without_remat_when_one_fits():
    cfg = cfg_with(**{"base.device_batch_size": "auto", "model.remat": "auto"})  # 8 rows per step
    measure = FakeMemory(weights=10 * GiB, per_row=3 * GiB)
    chosen = fit.fit("base", cfg, MODEL, machine_with(int(25 * GiB / fit.SAFETY)), measure)
    assert (chosen.rows, chosen.remat, chosen.accum) == (4, False, 2)  # 10 + 4·3 = 22 ≤ 25 < 10 + 8·3
    assert chosen.chosen and chosen.fits and chosen.memory.peak == 22 * GiB
    assert all(not remat for _, remat in measure.calls)  # remat was never needed, never tried
    assert "4 rows × 64 × 2 micro-batches, remat off (chosen to fit)" in chosen.describe()


def test_remat_is_turned_on_only_when_no_batch_fits_without_it():
    cfg = cfg_with(**{"base.device_batch_size": "auto", "model.remat": "auto"})
    measure = FakeMemory(weights=10 * GiB, per_row=8 * GiB)  # even 1 row: 18 GiB without remat
    chosen = fit.fit("base", cfg, MODEL, machine_with(int(16 * GiB / fit.SAFETY)), measure)
    assert (chosen.rows, chosen.remat) == (2, True)  # 10 + 2·2 = 14 ≤ 16 < 10 + 4·2
    # remat stays off when model.remat is false: then the largest batch that fits without it, or a refusal
    off = cfg_with(**{"base.device_batch_size": "auto"})
    with pytest.raises(JaxchatError, match=r"does not fit .* even at 1 row × 64 tokens without remat: the compiled "
                                           r"step peaks at 18 GiB .* or set model.remat=auto"):
        fit.fit("base", off, MODEL, machine_with(int(16 * GiB / fit.SAFETY)), FakeMemory(10 * GiB, 8 * GiB))


def test_a_fixed_batch_with_remat_auto_decides_only_remat():
    cfg = cfg_with(**{"model.remat": "auto"})  # base.device_batch_size = 4 (tiny preset)
    chosen = fit.fit("base", cfg, MODEL, machine_with(int(20 * GiB / fit.SAFETY)), FakeMemory(10 * GiB, 4 * GiB))
    assert (chosen.rows, chosen.remat) == (4, True)  # 26 GiB without remat, 14 with


def test_nothing_fits_is_refused_with_the_numbers():
    cfg = cfg_with(**{"sft.device_batch_size": "auto", "model.remat": "auto"})
    with pytest.raises(JaxchatError) as error:
        fit.fit("sft", cfg, MODEL, machine_with(8 * GiB), FakeMemory(weights=9 * GiB, per_row=GiB))
    message = str(error.value)
    assert message.startswith("sft: depth 1 does not fit")
    assert "even at 1 row × 64 tokens with remat" in message and "peaks at 9.25 GiB" in message
    assert "7.6 GiB usable (95% of 8 GiB, injected)" in message and "lower model.depth" in message


def test_a_fixed_config_is_measured_not_searched():
    measure = FakeMemory(weights=GiB, per_row=GiB)
    chosen = fit.fit("mid", load_toml(TINY), MODEL, machine_with(2 * GiB), measure)
    assert measure.calls == [(4, False)] and not chosen.chosen and not chosen.fits  # 5 GiB > 1.8: reported


def test_a_fixed_batch_the_devices_cannot_share_is_refused():
    """tiny: 8 rows a step; 4 rows per device on 4 devices would be 16 (fit only reads the mesh's shape)."""
    from jax.sharding import AbstractMesh

    from jaxchat import sharding

    four = dataclasses.replace(machine_with(None), mesh=AbstractMesh((4, 1), sharding.BATCH_AXES))
    measure = FakeMemory(weights=GiB, per_row=GiB)
    with pytest.raises(JaxchatError, match=r"^base: 8 rows per step is not a multiple of 4 rows \(base.device_batch_"
                                           r"size, per device\) × 4 devices = 16 rows; change base.device_batch_size"):
        fit.fit("base", load_toml(TINY), MODEL, four, measure)
    assert measure.calls == []  # refused before compiling anything
    two = dataclasses.replace(four, mesh=AbstractMesh((2, 1), sharding.BATCH_AXES))
    assert fit.fit("base", load_toml(TINY), MODEL, two, measure).accum == 1  # 4 rows × 2 devices = 8


def test_the_real_cpu_compile_follows_the_injected_limit():
    """Compiled steps of the tiny model on this CPU: the choice moves with the limit, as bisection says."""
    cfg = cfg_with(**{"base.device_batch_size": "auto"})
    probe = fit.this_machine(runtime.for_this_machine(cfg.model), available=(None, "unknown"))
    peaks = {rows: fit.train_step_memory(probe, MODEL, cfg, "base", rows=rows, seq=64, accum=8 // rows,
                                         remat=False).peak for rows in (2, 4)}
    assert peaks[2] < peaks[4]
    between = int((peaks[2] + peaks[4]) / 2 / fit.SAFETY)
    machine = dataclasses.replace(probe, limit=between, where="injected")
    assert fit.fit("base", cfg, MODEL, machine).rows == 2


# ---- "auto" in a training run ------------------------------------------------------------------


def test_base_with_auto_batch_trains_with_the_chosen_batch(home, monkeypatch, capsys):
    assert train.main(["--config", str(TINY), "--stage=tokenizer"]) == 0
    monkeypatch.setattr(fit, "memory_available", lambda plan: (64 * GiB, "injected"))
    args = ["--config", str(TINY), "--stage=base", "--base.device_batch_size=auto", "--base.num_iterations=2",
            "--base.eval_every=100"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "device batch" in out and "8 rows × 64 × 1 micro-batches, remat off (chosen to fit)" in out
    _, step = find_checkpoint("base", "tiny")
    assert step == 2 and read_meta("base", "tiny")["run_config"]["base"]["device_batch_size"] == "auto"

    # A limit below the model's weights: refused before any work (the earlier run's files untouched).
    monkeypatch.setattr(fit, "memory_available", lambda plan: (1 << 20, "injected"))
    assert train.main([*args, "--tag=small", "--model.remat=auto"]) == 2
    err = capsys.readouterr().err
    assert "error: base: depth 1 does not fit" in err and "even at 1 row × 64 tokens with remat" in err
    assert not (home / "checkpoints" / "base" / "small").exists() or not any(
        (home / "checkpoints" / "base" / "small").iterdir())


# ---- python -m jaxchat.plan --------------------------------------------------------------------


def test_plan_for_this_machine_prints_every_stage_without_training(capsys, tmp_path, monkeypatch):
    from jaxchat import plan

    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert plan.main(["--config", str(TINY), "--target=this", "--stages=base,sft", "--inference=false",
                      "--base.device_batch_size=auto"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan for this machine: cpu")
    for word in ("parameters", "optimizer state", "FLOPs/token", "| base | 8 × 64 × 1 (auto) | off |",
                 "| sft | 2 × 64 × 2 | off |", "6 × 512"):
        assert word in out, word
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("args, message", [
    (["--target=rtx9090"], "error: target='rtx9090': no such GPU target; expected one of a100-40gb"),
    (["--mfu=1.5"], "error: mfu=1.5: expected a fraction in (0, 1]"),
    (["--stages=base,rl"], "error: stages='base,rl': expected base, mid, sft"),
    (["--base.device_batch_size=lots"], "error: base.device_batch_size='lots': expected int or auto"),
])
def test_plan_refuses_bad_arguments_in_one_line(capsys, args, message):
    from jaxchat import plan

    assert plan.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1
