"""When things go wrong: damaged checkpoints, and Ctrl-C at any moment of a training run.

Damaged checkpoints: every file of a step is covered by its ``checksums.json``; a damaged step is one
line naming it and what is wrong, and the readers fall back to the previous intact step (or say, in
one line, that none is left). Interrupts: ``train.py`` run as a subprocess and sent SIGINT during
start-up, during the first compile and mid-run exits with status 130, no traceback, and a message that
matches what is on disk.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxchat import checkpoint as ck
from jaxchat.common import JaxchatError
from tests.fixtures.fineweb import write_fineweb_shards

ROOT = Path(__file__).resolve().parents[1]
META = {"stage": "base", "model_config": {}, "tokenizer_fingerprint": "f" * 64}
SIZE = 4096  # floats per array: a data file of a few KB


# ---- damaged checkpoints -------------------------------------------------------------------------


def state(step: int):
    params = {"w": jnp.arange(SIZE, dtype=jnp.float32) + step, "b": jnp.full((8,), float(step))}
    opt_state = {"mu": jnp.arange(SIZE, dtype=jnp.float32) * step, "count": jnp.int32(step)}
    return params, opt_state


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


# damage → (what it does to a step directory, the words of the one-line diagnosis)
DAMAGES = {
    "truncated params file": (lambda d: truncate(largest_file(d / "params")), "is truncated"),
    "deleted params manifest": (lambda d: (d / "params" / "manifest.ocdbt").unlink(), "manifest.ocdbt is missing"),
    "deleted meta": (lambda d: shutil.rmtree(d / "meta"), "meta/ is missing"),
    "truncated opt_state file": (lambda d: truncate(largest_file(d / "opt_state")), "is truncated"),
    "flipped byte in params": (lambda d: flip_byte(largest_file(d / "params")), "does not match its checksum"),
}


@pytest.fixture
def two_steps(tmp_path):
    """(home, directory): base/d2 with complete steps 1 and 2 (params, opt_state, data, meta)."""
    directory = ck.checkpoint_dir("base", "d2", tmp_path)
    with ck.StageCheckpointer(directory) as saver:
        for step in (1, 2):
            saver.save(step, *state(step), {"pos": step}, META)
    return tmp_path, directory


def one_line(text: str) -> str:
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_every_step_carries_checksums_of_all_its_files(two_steps):
    _, directory = two_steps
    record = ck._read_checksums(directory / "2")[0]
    assert record["items"] == ["data", "meta", "opt_state", "params"]
    on_disk = {p.relative_to(directory / "2").as_posix() for item in record["items"]
               for p in (directory / "2" / item).rglob("*") if p.is_file()}
    assert set(record["files"]) == on_disk  # written before the commit: nothing was added after it
    assert ck.damage(directory / "2") is None


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_latest_step_is_named_and_resume_falls_back(two_steps, damage, capsys):
    home, directory = two_steps
    harm, words = DAMAGES[damage]
    harm(directory / "2")
    capsys.readouterr()
    abstract_params, abstract_opt = jax.eval_shape(lambda: state(0))
    with ck.StageCheckpointer(directory) as saver:
        assert saver.latest_resumable_step() == 1
        params, opt_state, data, meta = saver.restore(None, abstract_params, abstract_opt)
        warning = one_line(capsys.readouterr().err)
        # The explicit step: one line naming it and what is wrong.
        with pytest.raises(JaxchatError) as e:
            saver.restore(2, abstract_params, abstract_opt)
    assert meta["step"] == 1 and data == {"pos": 1}
    np.testing.assert_array_equal(params["w"], np.arange(SIZE, dtype=np.float32) + 1)
    np.testing.assert_array_equal(opt_state["mu"], np.arange(SIZE, dtype=np.float32))
    assert warning.startswith(f"warning: checkpoint {directory / '2'} is damaged: ") and words in warning
    assert warning.endswith(f"falling back to step 1 ({directory / '1'})")
    assert str(directory / "2") in str(e.value) and words in str(e.value) and "\n" not in str(e.value)

    # Loading a model reads params and meta only: a damaged optimizer state does not matter to it.
    expected = 2 if damage == "truncated opt_state file" else 1
    assert ck.find_checkpoint("base", home=home) == (directory, expected)
    assert ck.read_meta("base", "d2", home=home)["step"] == expected
    params, meta = ck.load_params("base", "d2", abstract_params=abstract_params, home=home)
    assert meta["step"] == expected and float(params["b"][0]) == expected
    assert "Traceback" not in capsys.readouterr().err


def test_no_intact_step_left_is_one_error(two_steps, capsys):
    home, directory = two_steps
    truncate(largest_file(directory / "2" / "params"))
    shutil.rmtree(directory / "1" / "meta")
    abstract_params, abstract_opt = jax.eval_shape(lambda: state(0))
    with ck.StageCheckpointer(directory) as saver:
        with pytest.raises(JaxchatError) as e:
            saver.restore(None, abstract_params, abstract_opt)
    message = str(e.value)
    assert message.startswith(f"no intact checkpoint in {directory} (step 2: params/") and "\n" not in message
    assert "step 1: meta/ is missing" in message
    with pytest.raises(JaxchatError, match="no intact checkpoint .* train one with `python train.py --stage=base`"):
        ck.load_params("base", abstract_params=abstract_params, home=home)
    assert "Traceback" not in capsys.readouterr().err


def test_a_step_without_checksums_is_refused_until_sealed(two_steps, capsys):
    """A checkpoint from before checksums (or stripped of them) cannot be verified: it is skipped like a
    damaged one, and the message says how to accept it as it is."""
    home, directory = two_steps
    (directory / "2" / ck.CHECKSUMS_FILE).unlink()
    assert ck.find_checkpoint("base", home=home) == (directory, 1)
    warning = one_line(capsys.readouterr().err)
    assert "checksums.json is missing" in warning and "jaxchat.checkpoint.write_checksums(path)" in warning
    ck.write_checksums(directory / "2")
    assert ck.find_checkpoint("base", home=home) == (directory, 2)


def test_a_damaged_step_is_saved_again_not_skipped(two_steps):
    _, directory = two_steps
    flip_byte(largest_file(directory / "2" / "params"))
    with ck.StageCheckpointer(directory, async_save=False) as saver:  # e.g. a resume from step 1 reaching step 2
        saver.save(2, *state(2), {"pos": 2}, META)
    assert ck.damage(directory / "2") is None


def test_checksum_verification_is_cached_per_file_state(two_steps, monkeypatch):
    _, directory = two_steps
    calls = []
    original = ck._hash_files
    monkeypatch.setattr(ck, "_hash_files", lambda paths: calls.append(len(paths)) or original(paths))
    for _ in range(3):
        assert ck.damage(directory / "1") is None
    assert len(calls) == 1  # a process hashes a step once (load_model reads find → meta → params)
    flip_byte(largest_file(directory / "1" / "params"))
    assert "does not match its checksum" in ck.damage(directory / "1")


def _save_lm(home: Path, tokenizer, steps=(1, 2)) -> Path:
    from flax import nnx

    from jaxchat.model import GPT, GPTConfig, split_params

    config = GPTConfig(sequence_len=16, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2,
                       n_embd=32)
    _, params = split_params(GPT(config, rngs=nnx.Rngs(0)))
    meta = {"stage": "sft", "model_config": dataclasses.asdict(config),
            "tokenizer_fingerprint": tokenizer.fingerprint()}
    directory = ck.checkpoint_dir("sft", "d1", home)
    with ck.StageCheckpointer(directory) as saver:
        for step in steps:
            saver.save(step, params, None, None, meta)
    return directory


def test_chat_cli_on_a_damaged_checkpoint(tmp_path, fineweb_tokenizer):
    """The chat CLI on a damaged latest step: one warning and an answer from the previous step; when
    no intact step is left, one ``error:`` line. Never a traceback or asyncio's "Event loop is closed"."""
    fineweb_tokenizer.save(tmp_path / "tokenizer")
    directory = _save_lm(tmp_path, fineweb_tokenizer)
    truncate(largest_file(directory / "2" / "params"))
    env = {**os.environ, "JAXCHAT_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "jaxchat.chat", "--prompt=hi", "--sampling.max_tokens=4"]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Event loop is closed" not in proc.stderr
    warning = one_line(proc.stderr)
    assert warning.startswith(f"warning: checkpoint {directory / '2'} is damaged: params/")
    assert warning.endswith(f"falling back to step 1 ({directory / '1'})")

    shutil.rmtree(directory / "1" / "meta")
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Event loop is closed" not in proc.stderr
    assert one_line(proc.stderr).startswith(f"error: no intact checkpoint in {directory} (step 2: ")


# ---- Ctrl-C --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sigint_home(tmp_path_factory, fineweb_tokenizer) -> Path:
    """A $JAXCHAT_HOME with FineWeb shards and a tokenizer; each run uses its own tag."""
    home = tmp_path_factory.mktemp("sigint")
    write_fineweb_shards(home / "base_data", n_shards=3)
    fineweb_tokenizer.save(home / "tokenizer")
    return home


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    """JAX's persistent compilation cache, shared by the runs of this module that do not need a slow
    first compile: the first run that uses it compiles in full and fills it."""
    return tmp_path_factory.mktemp("jax_cache")


class TrainProcess:
    """``python train.py --stage=base`` on the tiny preset, its output collected as it comes."""

    def __init__(self, home: Path, tag: str, *args: str, compile_cache: Path | None = None):
        env = {**os.environ, "JAXCHAT_HOME": str(home), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
        if compile_cache is not None:  # later runs skip most of the compile
            env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        else:  # a full compile, even of a program the test run's own cache (tests/conftest.py) holds
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
        self.directory = home / "checkpoints" / "base" / tag
        if "--resume" not in args:
            shutil.rmtree(self.directory, ignore_errors=True)  # a fresh run of this tag
        self.proc = subprocess.Popen(
            [sys.executable, "train.py", "--config", "configs/tiny.toml", "--stage=base", f"--tag={tag}",
             "--base.core_every=0", "--base.eval_every=-1", "--checkpoint.save_every=-1", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.out):
            assert self.proc.poll() is None, f"exited before {pattern!r}: {''.join(self.err)[-2000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s"
            time.sleep(0.02)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return rc, "".join(self.out), "".join(self.err)


def assert_true_interrupt(rc: int, out: str, err: str, directory: Path) -> str:
    """Exit 130, no traceback, one ``interrupted:`` line that says what is on disk; returns that line."""
    assert rc == 130, (rc, err[-3000:])
    assert "Traceback" not in err and "Segmentation" not in err and "Fatal Python" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, err[-3000:]
    steps = ck.complete_steps(directory)
    if steps:
        claim = f"the latest complete checkpoint is step {steps[-1]} ({directory / str(steps[-1])}); --resume"
        assert claim in lines[0], (lines[0], steps)
    else:
        assert ("nothing was written" in lines[0] or "no training stage had started; no checkpoint was written" in lines[0]
                or f"no checkpoint was saved in {directory}; the next run starts fresh" in lines[0]), lines[0]
    return lines[0]


def test_sigint_during_start_up(sigint_home):
    """Several moments of start-up (imports, the model, the data) at once: each run exits with a true message."""
    delays = (0.8, 1.6, 2.4)
    runs = [TrainProcess(sigint_home, f"startup{i}") for i in range(len(delays))]
    for run, delay in zip(runs, delays):
        time.sleep(max(0.0, run.started + delay - time.monotonic()))
        run.interrupt()
    for run in runs:
        assert_true_interrupt(*run.finish(), run.directory)


def test_sigint_during_the_first_compile_stops_at_a_step_boundary_and_saves(sigint_home, compile_cache):
    # The plan is printed right before the first step compiles (in full: this run fills the cache).
    run = TrainProcess(sigint_home, "compile", "--base.num_iterations=1000", compile_cache=compile_cache)
    run.wait_for(r"estimated time")
    time.sleep(0.5)  # the loop has started; an uncached compile of the step takes seconds
    run.interrupt()
    rc, out, err = run.finish()
    line = assert_true_interrupt(rc, out, err, run.directory)
    assert "interrupt: stopping at the next step boundary, then saving a checkpoint" in err
    step = ck.complete_steps(run.directory)[-1]
    assert f"base stopped after step {step};" in line and step >= 1


def test_second_sigint_exits_at_once(sigint_home):
    run = TrainProcess(sigint_home, "twice", "--base.num_iterations=1000")  # no cache: both land in the compile
    run.wait_for(r"estimated time")
    run.interrupt()
    time.sleep(0.3)
    run.interrupt()
    rc, out, err = run.finish(timeout=30)
    assert_true_interrupt(rc, out, err, run.directory)


def test_sigint_mid_run_saves_and_resume_continues(sigint_home, compile_cache):
    run = TrainProcess(sigint_home, "midrun", "--base.num_iterations=1000", compile_cache=compile_cache)
    run.wait_for(r"base step 00004/")
    run.interrupt()
    rc, out, err = run.finish()
    line = assert_true_interrupt(rc, out, err, run.directory)
    step = ck.complete_steps(run.directory)[-1]
    assert step >= 4 and f"base stopped after step {step};" in line
    assert f"base step {step:05d}/" in out and f"base step {step + 1:05d}/" not in out  # stopped at that boundary

    resumed = TrainProcess(sigint_home, "midrun", f"--base.num_iterations={step + 2}", "--resume",
                           compile_cache=compile_cache)
    rc, out, err = resumed.finish()
    assert rc == 0, err[-3000:]
    assert re.search(rf"resuming at\s+step {step}\n", out), out
    assert ck.complete_steps(run.directory)[-1] == step + 2


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(5))
def test_sigint_repeated(sigint_home, attempt):
    """The interrupt tests again, at more moments (slow: run with -m slow to hunt flakiness)."""
    test_sigint_during_start_up(sigint_home)
    run = TrainProcess(sigint_home, f"again{attempt}", "--base.num_iterations=1000")
    run.wait_for(r"estimated time")
    time.sleep(0.5 * attempt)
    run.interrupt()
    assert_true_interrupt(*run.finish(), run.directory)
