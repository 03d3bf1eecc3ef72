"""runs/speedrun_1gpu.sh checks the GPU against the preset before it installs or downloads anything
(``--check`` stops right after the check); nvidia-smi is faked on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "runs" / "speedrun_1gpu.sh"


def run_script(tmp_path: Path, gpu_line: str | None, *args: str, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + (f"echo '{gpu_line}'\n" if gpu_line else "exit 9\n"))
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)


def test_no_gpu_stops_in_one_line_pointing_to_the_cpu_demo(tmp_path):
    result = run_script(tmp_path, None)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        "speedrun_1gpu: no NVIDIA GPU found (nvidia-smi); on a CPU run the same recipe at demo size: "
        "bash runs/cpu_demo.sh"]


def test_a_card_smaller_than_the_preset_is_stopped_before_anything_is_installed(tmp_path):
    result = run_script(tmp_path, "NVIDIA GeForce RTX 4090, 24564", "--check")
    assert result.returncode == 1
    assert "configs/d20.toml is sized for h100-80gb (79 GiB) but this NVIDIA GeForce RTX 4090 has 24 GiB" in result.stdout
    assert "Successfully installed" not in result.stdout + result.stderr


@pytest.mark.parametrize("gpu, preset", [("NVIDIA H100 80GB HBM3, 81559", "configs/d26.toml"),
                                         ("NVIDIA A100-SXM4-80GB, 81920", "configs/d20.toml"),
                                         ("NVIDIA GeForce RTX 4090, 24564", "configs/d20_24gb.toml"),
                                         ("NVIDIA GeForce RTX 3060, 12288", "configs/d12_12gb.toml")])
def test_a_card_as_large_as_the_preset_passes_the_check(tmp_path, gpu, preset):
    result = run_script(tmp_path, gpu, "--check", preset)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"speedrun_1gpu: {gpu.split(',')[0]}")


def test_an_unreadable_preset_is_one_line(tmp_path):
    result = run_script(tmp_path, "NVIDIA H100 80GB HBM3, 81559", "--check", "configs/missing.toml")
    assert result.returncode == 1
    assert "speedrun_1gpu: cannot read the preset configs/missing.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_gpt2_script_checks_the_card_against_its_preset(tmp_path):
    """runs/gpt2_1gpu.sh is the same run with configs/gpt2_1gpu.toml (the 2026 recipe)."""
    script = ROOT / "runs" / "gpt2_1gpu.sh"
    ok = run_script(tmp_path, "NVIDIA H100 80GB HBM3, 81559", "--check", script=script)
    assert ok.returncode == 0 and "preset configs/gpt2_1gpu.toml (sized for h100-80gb)" in ok.stdout, ok.stderr
    small = run_script(tmp_path, "NVIDIA GeForce RTX 4090, 24564", "--check", script=script)
    assert small.returncode == 1 and "configs/gpt2_1gpu.toml is sized for h100-80gb" in small.stdout
