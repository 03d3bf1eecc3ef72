"""train.py on 4 devices (fake CPU devices in a subprocess) against 1 device (issue: past one GPU).

``device_batch_size`` is rows per device: the tiny preset's 8 rows a step become 1 row × 4 devices ×
2 micro-batches. A batch that does not divide is refused before any work, naming the numbers.
Parameters and optimizer state split over ``mesh.fsdp`` are checkpointed and restored onto another
mesh (fsdp 2 → 4 devices' worth, and a 1-device checkpoint onto 4), and mid and SFT run on 4 devices.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train
from tests.test_train_e2e import ROOT, TINY, home  # noqa: F401  (home: the fixture)

SCRIPT = r"""
import sys
import jax
import train
from jaxchat.checkpoint import StageCheckpointer, committed_steps, checkpoint_dir

assert jax.device_count() == 4, jax.devices()

def run(*args):
    return train.main(["--config", "configs/tiny.toml", *args])

# 8 rows a step (512 tokens of 64) = 1 row per device × 4 devices × 2 micro-batches.
assert run("--stage=base", "--tag=dp", "--base.device_batch_size=1") == 0
# The preset's 4 rows per device × 4 devices = 16 rows > 8: refused before any work.
assert run("--stage=base", "--tag=bad") == 2
assert not committed_steps(checkpoint_dir("base", "bad"))

# fsdp 2, killed right after step 3's checkpoint; resumed with fsdp 4 (another mesh).
common = ["--stage=base", "--tag=fsdp", "--base.device_batch_size=1", "--checkpoint.save_every=3"]
original_save = StageCheckpointer.save
def save_then_crash(self, step, *args, **kwargs):
    original_save(self, step, *args, **kwargs)
    if step == 3:
        self.wait()
        raise KeyboardInterrupt
StageCheckpointer.save = save_then_crash
assert run(*common, "--mesh.fsdp=2") != 0  # train.py reports the interrupt and exits non-zero
StageCheckpointer.save = original_save
assert committed_steps(checkpoint_dir("base", "fsdp")) == [3]
assert run(*common, "--mesh.fsdp=4", "--resume") == 0

if sys.argv[1] == "fast":
    print("DEVICES_OK")
    raise SystemExit(0)

# A checkpoint saved on 1 device (the caller's "one" run) resumes onto 4 devices split 4 ways.
assert run("--stage=base", "--tag=one", "--base.device_batch_size=1", "--base.num_iterations=8", "--mesh.fsdp=4",
           "--resume") == 0

# mid and SFT on 4 devices: 8 rows = 1 × 4 × 2 (mid), 4 conversations = 1 × 4 (SFT).
assert run("--stage=mid", "--tag=fsdp", "--mid.device_batch_size=1", "--mesh.fsdp=2") == 0
assert run("--stage=sft", "--tag=fsdp", "--sft.device_batch_size=1", "--mesh.fsdp=4") == 0
print("DEVICES_OK")
"""


def _losses(home: Path, stage: str, tag: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (home / "report" / f"{stage}_{tag}.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def _run_on_four_devices(home: Path, which: str) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAXCHAT_HOME=str(home))
    result = subprocess.run([sys.executable, "-c", SCRIPT, which], env=env, capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "DEVICES_OK" in result.stdout, out[-4000:]
    assert "1 rows × 64 × 2 micro-batches × 4 devices (rows per device)" in out
    assert "16 rows" in out and "base.device_batch_size" in out  # the refusal names the numbers
    assert "split 2 ways (mesh.fsdp)" in out and "split 4 ways (mesh.fsdp)" in out
    return out


def _check_like_one_device(home: Path) -> None:
    """Same data, same init: every step's loss is the same on 1 and 4 devices, in every layout, up
    to float noise (amplified by the seed recipe's bf16 Newton-Schulz; tests/test_layouts.py checks
    a step's layout independence strictly, in float32). fsdp: crashed at 3 on fsdp 2, resumed on 4."""
    reference = _losses(home, "base", "ref")
    for tag in ("dp", "fsdp"):
        losses = _losses(home, "base", tag)
        assert sorted(losses) == sorted(reference), (tag, losses)
        for step, loss in reference.items():
            assert abs(losses[step] - loss) <= 1e-4 * loss, (tag, step, losses[step], loss)


def test_four_devices_train_like_one(home):
    assert train.main(["--config", TINY, "--stage=tokenizer"]) == 0
    assert train.main(["--config", TINY, "--stage=base", "--tag=ref"]) == 0  # the 1-device reference
    _run_on_four_devices(home, "fast")
    _check_like_one_device(home)


@pytest.mark.slow  # ~2 min: mid, SFT and two more resumes across meshes
def test_four_devices_every_stage_and_resume_across_device_counts(home):
    assert train.main(["--config", TINY, "--stage=tokenizer"]) == 0
    assert train.main(["--config", TINY, "--stage=base", "--tag=ref"]) == 0
    # A 1-device run saved at step 4, for the 4-device process to resume.
    assert train.main(["--config", TINY, "--stage=base", "--tag=one", "--base.num_iterations=8",
                       "--checkpoint.save_every=4"]) == 0
    shutil.rmtree(home / "checkpoints" / "base" / "one" / "8")
    _run_on_four_devices(home, "full")
    _check_like_one_device(home)
    assert sorted(_losses(home, "base", "one")) == list(range(1, 9))  # 1-4 on 1 device, 5-8 on 4
    # And back: the run saved split 4 ways on 4 devices resumes on this process's 1 device.
    assert train.main(["--config", TINY, "--stage=base", "--tag=fsdp", "--resume", "--base.num_iterations=8"]) == 0
    assert sorted(_losses(home, "base", "fsdp")) == list(range(1, 9))
