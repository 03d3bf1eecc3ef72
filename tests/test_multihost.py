"""Several processes (jax.distributed): 2 local processes × 2 fake CPU devices train base through
train.py, on a coordinator at 127.0.0.1 (gloo collectives); never the network.

Each run is a subprocess (the device count and the distributed runtime must be set before JAX
starts); every wait is bounded and the processes are killed when a run fails or times out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxchat.checkpoint import damage, find_checkpoint, load_params, read_meta
from jaxchat.config import DistSection
from jaxchat.metrics_log import MetricsLogger
from tests.fixtures.fineweb import fineweb_documents, write_fineweb_shards

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 180  # one run of train.py (≈ 20 s for two processes on 2 shared cores)
# Base training through train.py; a crash after the checkpoint of step CRASH_AFTER when that is set.
DRIVER = """
import os, sys
import train
crash_after = int(os.environ.get("CRASH_AFTER", "0"))
if crash_after:
    from jaxchat.checkpoint import StageCheckpointer
    original = StageCheckpointer.save
    def save_then_crash(self, step, *args, **kwargs):
        original(self, step, *args, **kwargs)
        if step == crash_after:
            self.wait()
            raise KeyboardInterrupt  # every process dies right after this checkpoint
    StageCheckpointer.save = save_then_crash
sys.exit(train.main(sys.argv[1:]))
"""
BASE = ["--config", "configs/tiny.toml", "--stage=base", "--base.device_batch_size=1", "--base.eval_every=-1",
        "--base.core_every=0", "--checkpoint.save_every=2"]  # 512 tokens a step: 2 micro-batches × 4 devices × 1 row


@pytest.fixture
def home(tmp_path) -> Path:
    """$JAXCHAT_HOME with 3 FineWeb-format shards and a trained 1024-token tokenizer."""
    from jaxchat.tokenizer import Tokenizer

    home = tmp_path / "home"
    write_fineweb_shards(home / "base_data", n_shards=3)
    Tokenizer.train_from_iterator(fineweb_documents(400, seed=12345), vocab_size=1024).save(home / "tokenizer")
    (tmp_path / "driver.py").write_text(DRIVER)
    return home


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(home: Path, devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAXCHAT_HOME=str(home), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


def run_processes(commands: list[list[str]], env: dict[str, str], logs: Path, timeout_s: float = RUN_TIMEOUT_S,
                  kill_on_failure: bool = True) -> list[tuple[int, str]]:
    """Start every command at once; (exit status, output) of each. All are killed when one fails (the
    others would wait for it in a collective; unless ``kill_on_failure`` is false) or when ``timeout_s``
    passes."""
    logs.mkdir(parents=True, exist_ok=True)
    outputs = [logs / f"process{i}.log" for i in range(len(commands))]
    procs = []
    try:
        for command, out in zip(commands, outputs):
            with out.open("wb") as f:
                procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0, 130)] if kill_on_failure else []
            if failed or time.monotonic() > deadline:
                time.sleep(0.5 if failed else 0)  # let a failing process finish printing
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    return [(p.returncode, out.read_text(errors="replace")) for p, out in zip(procs, outputs)]


def train(home: Path, tag: str, *args: str, processes: int = 2, crash_after: int = 0) -> list[str]:
    """Base training of ``tag`` on 4 CPU devices in all: ``processes`` × (4 / processes). The outputs."""
    extra = {"CRASH_AFTER": str(crash_after)} if crash_after else {}
    env = env_for(home, 4 // processes, **extra)
    command = [sys.executable, str(home.parent / "driver.py"), *BASE, f"--tag={tag}", *args]
    if processes > 1:
        address = f"127.0.0.1:{free_port()}"
        commands = [[*command, f"--dist.coordinator={address}", f"--dist.num_processes={processes}",
                     f"--dist.process_id={i}"] for i in range(processes)]
    else:
        commands = [command]
    results = run_processes(commands, env, home.parent / "logs" / f"{tag}{'_crash' if crash_after else ''}")
    want = 130 if crash_after else 0
    for i, (rc, out) in enumerate(results):
        assert rc == want, f"process {i} of {tag}: exit status {rc}, expected {want}\n{out[-4000:]}"
    return [out for _, out in results]


def params_of(home: Path, tag: str) -> dict:
    from jaxchat.config import from_dict
    from jaxchat.model import GPTConfig
    from jaxchat.runtime import Runtime
    from jaxchat.training.build import build_model

    meta = read_meta("base", tag, home=home)
    _, abstract = build_model(GPTConfig(**meta["model_config"]), from_dict(meta["run_config"]), Runtime(), abstract=True)
    params, _ = load_params("base", tag, abstract_params=abstract, home=home)
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def test_two_processes_train_and_only_process_0_speaks(home):
    """2 processes × 2 devices, parameters split 4 ways across the processes (mesh.fsdp=4): a checkpoint
    every process wrote its shards of, written once; one metrics log; progress from process 0 only."""
    out0, out1 = train(home, "smoke", "--base.num_iterations=2", "--mesh.fsdp=4")
    assert "cpu ×4 in 2 processes" in out0 and "base step 00002/00002" in out0 and "val_bpb" in out0
    assert "base step" not in out1 and "stage" not in out1 and "error" not in out1  # gloo's own lines only
    directory, step = find_checkpoint("base", "smoke", home=home)
    assert step == 2 and damage(directory / "2") is None  # checksums.json matches every process's files
    records = [json.loads(line) for line in (home / "report" / "base_smoke.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # once each, not once per process
    assert json.loads((home / "report" / "base.json").read_text())["sections"]
    params = params_of(home, "smoke")
    assert all(np.all(np.isfinite(v)) for v in params.values())


@pytest.mark.slow  # three runs of train.py: about 90 s on 2 shared cores
def test_two_processes_resume_and_match_one_process(home):
    """2 processes × 2 devices: 2 steps, a crash right after the checkpoint, --resume for 2 more ≈ 4
    steps straight in ONE process with the same 4 devices and the same layout (mesh.fsdp=4: parameters
    split across the processes, so each saves and restores only its shards).

    Tolerances, from what reduction order alone does here (the processes' collectives run on gloo,
    the single process's within one client): the loss of every step (the data on every row and every
    update before it) within 1e-4 relative (measured ≈ 2e-7); the params as a whole within 1e-3 of
    their norm (measured 5e-5), each within 0.1 of its own norm (measured ≤ 2e-2: the zero-initialised
    projections, whose first few Muon updates orthogonalise near-zero gradients and so amplify float32
    rounding, as re-ordering a batch's rows on one device does; per element those leaves differ by up
    to 6e-2 of their largest value, so an element-wise tolerance would mean little). A wrong row, a
    wrong shard, a lost optimizer state or a replayed batch moves the losses by far more than that.
    Bit-exact resume within one layout is tests/test_train_e2e.py's."""
    common = ("--base.num_iterations=4", "--mesh.fsdp=4")
    train(home, "resumed", *common, crash_after=2)
    assert find_checkpoint("base", "resumed", home=home)[1] == 2
    out0, _ = train(home, "resumed", *common, "--resume")
    assert re.search(r"resuming at +step 2\n", out0), out0
    train(home, "single", *common, processes=1)

    losses = {tag: [(r["step"], r["loss"]) for r in MetricsLogger.read(home / "report" / f"base_{tag}.jsonl")
                    if "loss" in r] for tag in ("resumed", "single")}
    assert [step for step, _ in losses["resumed"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in losses["resumed"]], [v for _, v in losses["single"]], rtol=1e-4)
    resumed, single = params_of(home, "resumed"), params_of(home, "single")
    assert resumed.keys() == single.keys()
    norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in tree.values())))
    difference = {k: single[k] - resumed[k] for k in single}
    assert norm(difference) < 1e-3 * norm(single), norm(difference) / norm(single)
    for k in single:
        assert np.linalg.norm(difference[k]) <= 0.1 * np.linalg.norm(single[k]), k


def test_sigterm_to_one_process_stops_every_process_at_the_same_step_with_a_checkpoint(home):
    """A SIGTERM (a scheduler's preemption notice) to process 1 while both train: JAX's distributed
    runtime catches it and spreads it, both stop at the step they agree on, save it, exit 130."""
    env = env_for(home, 2)
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, str(home.parent / "driver.py"), *BASE, "--tag=term", "--base.num_iterations=400",
               "--checkpoint.save_every=-1", f"--dist.coordinator={address}", "--dist.num_processes=2"]
    logs = home.parent / "logs" / "term"
    logs.mkdir(parents=True)
    outputs = [logs / f"process{i}.log" for i in range(2)]
    procs = []
    try:
        for i, out in enumerate(outputs):
            with out.open("wb") as f:
                procs.append(subprocess.Popen([*command, f"--dist.process_id={i}"], cwd=ROOT, env=env, stdout=f,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "base step 00003" not in outputs[0].read_text(errors="replace"):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, outputs[0].read_text()
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    texts = [out.read_text(errors="replace") for out in outputs]
    assert [p.returncode for p in procs] == [130, 130], texts
    directory, step = find_checkpoint("base", "term", home=home)
    assert 3 <= step < 400 and damage(directory / str(step)) is None
    assert f"base stopped after step {step}" in texts[0], texts[0]
    records = [r for r in MetricsLogger.read(home / "report" / "base_term.jsonl") if "loss" in r]
    assert records[-1]["step"] == step  # every step trained was saved: nothing lost


def test_one_process_work_runs_in_process_0_while_the_others_wait(tmp_path):
    """``distributed.on_primary`` (``--stage=all``'s tokenizer and report): process 0 alone does the work,
    process 1 returns only after it is done; a failure in process 0 is process 1's one-line error."""
    code = """if True:
        import sys, time
        from pathlib import Path
        from jaxchat import cli, distributed
        from jaxchat.common import JaxchatError
        from jaxchat.config import DistSection
        address, pid, out, fail = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "fail"
        def work():
            time.sleep(2)  # process 1 must wait for this
            if fail:
                raise JaxchatError("the tokenizer's data is missing")
            (out / f"written_by_{pid}").write_text("")
        def run():
            distributed.initialize(DistSection(coordinator=address, num_processes=2, process_id=pid))
            distributed.on_primary("tokenizer", work)
            assert (out / "written_by_0").is_file()  # in process 1 too: it waited
            print("RETURNED")
        sys.exit(cli.report_errors(run))
    """
    env = env_for(tmp_path, 1)
    for mode in ("ok", "fail"):
        out = tmp_path / mode
        out.mkdir()
        address = f"127.0.0.1:{free_port()}"
        results = run_processes([[sys.executable, "-c", code, address, str(i), str(out), mode] for i in range(2)],
                                env, tmp_path / f"logs_{mode}", timeout_s=120, kill_on_failure=False)
        if mode == "ok":
            assert [rc for rc, _ in results] == [0, 0] and all("RETURNED" in text for _, text in results), results
            assert [p.name for p in out.iterdir()] == ["written_by_0"]
        else:
            assert [rc for rc, _ in results] == [2, 2], results
            assert "error: the tokenizer's data is missing" in results[0][1]
            assert "error: tokenizer: process 0 failed: the tokenizer's data is missing" in results[1][1], results[1][1]


def test_a_process_that_cannot_reach_the_coordinator_says_so_in_one_line(tmp_path):
    """Process 1 with nobody at the coordinator's address, and process 0 alone: one line each, exit 2."""
    from jaxchat import distributed

    address = f"127.0.0.1:{free_port()}"
    code = ("import sys; from jaxchat import cli, distributed; from jaxchat.config import DistSection; "
            "sys.exit(cli.report_errors(lambda: distributed.initialize(DistSection(coordinator=sys.argv[1], "
            "num_processes=2, process_id=int(sys.argv[2])), timeout_s=2)))")
    env = env_for(tmp_path, 1)
    for process_id, words in ((1, "cannot reach process 0's coordinator"), (0, "not all 2 processes joined")):
        [(rc, out)] = run_processes([[sys.executable, "-c", code, address, str(process_id)]], env,
                                    tmp_path / f"p{process_id}", timeout_s=60)
        lines = out.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: dist.coordinator={address}: {words}"), out
    assert not distributed.initialize(DistSection())  # the default: one process, nothing started


@pytest.mark.parametrize("settings, words", [
    ({"process_id": 2, "num_processes": 2, "coordinator": "node0:1234"}, "dist.process_id=2: expected a number below"),
    ({"num_processes": 2}, "dist.num_processes=2 needs dist.coordinator"),
    ({"coordinator": "node0"}, "dist.coordinator='node0': expected HOST:PORT"),
    ({"coordinator": "node0:70000"}, "dist.coordinator='node0:70000': expected HOST:PORT"),
    ({"coordinator": "node0:1234", "auto": True}, "dist.coordinator=node0:1234 and dist.auto=true are both set"),
    ({"num_processes": 0}, "dist.num_processes=0: expected a positive number"),
])
def test_dist_settings_are_checked_before_anything_starts(settings, words):
    from jaxchat.common import JaxchatError
    from jaxchat.config import RunConfig, validate

    config = dataclasses.replace(RunConfig(), dist=DistSection(**settings))
    with pytest.raises(JaxchatError, match="^" + re.escape(words)):
        validate(config, "base")
    validate(dataclasses.replace(config, dist=DistSection(coordinator="[::1]:1234", num_processes=2, process_id=1)),
             "base")
