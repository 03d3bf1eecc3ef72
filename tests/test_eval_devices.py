"""The evals split their work over the devices and give the one-device numbers (issue: past one GPU).

One subprocess with 4 CPU devices (XLA_FLAGS must be set before JAX starts, hence the subprocess)
runs val bpb / loss, CORE, a categorical chat task and a generative one on one device, then on a
4-device mesh (4 data) and on 2 data × 2 fsdp with the params split, and checks:

- the same numbers: bpb / loss up to float summation order, CORE's per-row scores to 1e-5 and its
  accuracies exactly, the same predicted letters and the same completions of every problem;
- that the work is really split: every batch put on the mesh has a quarter of its rows on each of
  the 4 devices (batches whose rows do not divide by 4 are padded with masked rows), and each
  device's Engine generates its own share of the problems.

The same script in 2 processes × 2 devices (jax.distributed, gloo on 127.0.0.1) checks that every
process gets the one-device numbers, its devices holding their rows and generating their problems
(slow: kept out of the default run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_multihost import env_for, free_port, run_processes

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import collections, sys, tempfile
from pathlib import Path

import jax, numpy as np
from jaxchat import distributed, sharding
from jaxchat.config import DistSection

if len(sys.argv) > 1:  # coordinator, processes, this process: several processes share the 4 devices
    distributed.initialize(DistSection(coordinator=sys.argv[1], num_processes=int(sys.argv[2]),
                                       process_id=int(sys.argv[3])))
from jaxchat.engine import Engine
from jaxchat.eval import bpb, chat, core
from jaxchat.model import split_params
from jaxchat.tokenizer import Tokenizer
from tests.fixtures.fineweb import fineweb_documents
from tests.fixtures.tasks import write_eval_bundle
from tests.test_eval import make_model

assert jax.device_count() == 4, jax.devices()
local = sorted(d.id for d in jax.local_devices())
tok = Tokenizer.train_from_iterator(fineweb_documents(400, seed=12345), vocab_size=1024)
model = make_model()
graphdef, params = split_params(model)

# Every batch put on a mesh: how many rows each of this process's devices holds.
puts = []
_put_batch = sharding.put_batch
def spy_put_batch(batch, target, axis):
    out = _put_batch(batch, target, axis)
    for x in jax.tree.leaves(out):
        puts.append((x.shape[axis], sorted((s.device.id, s.data.shape[axis]) for s in x.addressable_shards)))
    return out
sharding.put_batch = spy_put_batch

def check_split():
    assert puts
    for rows, shards in puts:
        assert [d for d, _ in shards] == local, shards  # a block of rows on each device of this process
        assert {n for _, n in shards} == {rows // 4}, (rows, shards)  # a quarter each
    puts.clear()

meshes = {"4 data": (sharding.make_mesh(1), sharding.on_mesh(params, sharding.make_mesh(1))),
          "2 data x 2 fsdp": (sharding.make_mesh(2), sharding.on_mesh(params, sharding.make_mesh(2)))}
split = [x for x in jax.tree.leaves(meshes["2 data x 2 fsdp"][1]) if not x.sharding.is_fully_replicated]
assert split and all(x.addressable_shards[0].data.size * 2 == x.size for x in split)  # fsdp really splits

# ---- val bpb / loss: 6 and 3 rows, neither divisible by 4 ----
rng = np.random.default_rng(0)
special = [tok.bos_token_id, tok.encode_special("<|user_start|>")]
def batch(rows, seq=32):
    inputs = rng.integers(0, 1024, (rows, seq)).astype(np.int32)
    targets = rng.integers(0, 1024, (rows, seq)).astype(np.int32)
    targets[rng.random((rows, seq)) < 0.2] = -1
    targets[0, :2] = special  # zero bytes: left out of bpb
    return {"inputs": inputs, "targets": targets}
batches = [batch(6), batch(6)]
ref_bpb = bpb.evaluate_bpb(graphdef, params, batches, tok.token_bytes)
ref_loss = bpb.evaluate_loss(graphdef, params, batches)
for name, (mesh, placed) in meshes.items():
    got_bpb = bpb.evaluate_bpb(graphdef, placed, batches, tok.token_bytes, mesh=mesh)
    got_loss = bpb.evaluate_loss(graphdef, placed, batches, mesh=mesh)
    assert abs(got_bpb - ref_bpb) <= 1e-5 * ref_bpb and abs(got_loss - ref_loss) <= 1e-5 * ref_loss, \
        (name, got_bpb, ref_bpb, got_loss, ref_loss)
    assert {rows for rows, _ in puts} == {8}, puts  # 6 rows padded to 8
    check_split()
# Params not on the mesh (a checkpoint loaded onto one device) are put on it.
got_bpb = bpb.evaluate_bpb(graphdef, params, batches, tok.token_bytes, mesh=meshes["4 data"][0])
assert abs(got_bpb - ref_bpb) <= 1e-5 * ref_bpb, (got_bpb, ref_bpb)
check_split()
print(f"bpb {ref_bpb:.6f} loss {ref_loss:.6f}: same on every layout")

# ---- CORE on the fixture bundle ----
bundle = write_eval_bundle(Path(tempfile.mkdtemp()) / "bundle")
rows = core.Rows()
for task in core.load_bundle(bundle):
    data = core.prepare_items(task.items)
    for idx, item in enumerate(data):
        r = core.build_rows(tok, item, task.task_type, task.delimiter,
                            core.fewshot_examples(data, idx, task.num_fewshot), 128)
        rows.tokens += r.tokens; rows.starts += r.starts; rows.ends += r.ends
ref_scores = core.score_all(graphdef, params, rows, tok.bos_token_id, 128, tokens_per_batch=256)
ref_core = core.evaluate_core(graphdef, params, tok, bundle, progress=False, tokens_per_batch=256)
for name, (mesh, placed) in meshes.items():
    loss, greedy = core.score_all(graphdef, placed, rows, tok.bos_token_id, 128, tokens_per_batch=256, mesh=mesh)
    np.testing.assert_allclose(loss, ref_scores[0], rtol=1e-5, err_msg=name)
    assert (greedy == ref_scores[1]).all(), name
    check_split()
    got = core.evaluate_core(graphdef, placed, tok, bundle, progress=False, tokens_per_batch=256, mesh=mesh)
    assert got["tasks"] == ref_core["tasks"] and abs(got["core"] - ref_core["core"]) < 1e-12, (name, got, ref_core)
    check_split()
print(f"CORE {ref_core['core']:.4f} over {len(rows.tokens)} rows: same on every layout")

# ---- chat eval: categorical ----
class Task:
    def __init__(self, conversations, eval_type):
        self.conversations, self.eval_type, self.name, self.seen = conversations, eval_type, "t", {}
    def __len__(self):
        return len(self.conversations)
    def __getitem__(self, i):
        return self.conversations[i]
    def evaluate(self, conversation, answer):
        self.seen.setdefault(conversation["id"], []).append(answer)
        if "letters" in conversation:
            return answer == conversation["messages"][-1]["content"]
        return len(answer) % 2 == 1  # a completion passes or not: some of each

def conversation(i, letters=None, most=45):
    words = " ".join(["apple", "river", "stone", "cloud"][j % 4] for j in range((7 * i) % most))  # some > 128 tokens
    out = {"id": i, "messages": [{"role": "user", "content": f"Question {i}: {words}?"},
                                 {"role": "assistant", "content": letters[i % len(letters)] if letters else "x"}]}
    if letters:
        out["letters"] = letters
    return out

categorical = [conversation(i, "ABCDE"[: 2 + i % 4]) for i in range(11)]
reference = Task(categorical, "categorical")
ref_acc = chat.run_categorical(graphdef, params, tok, reference, batch_size=2)
for name, (mesh, placed) in meshes.items():
    task = Task(categorical, "categorical")
    acc = chat.run_categorical(graphdef, placed, tok, task, batch_size=2, mesh=mesh)  # 8 rows a batch: 2 batches
    assert acc == ref_acc and task.seen == reference.seen, (name, acc, ref_acc, task.seen, reference.seen)
    check_split()
print(f"categorical {ref_acc:.4f}: same on every layout")

# ---- chat eval: generative, one Engine per device ----
generated = collections.Counter()  # problems per device
_generate_batch = Engine.generate_batch
def spy_generate_batch(self, tokens, *args, **kwargs):
    (device,) = jax.tree.leaves(self._params)[0].devices()
    generated[device.id] += 1
    return _generate_batch(self, tokens, *args, **kwargs)
Engine.generate_batch = spy_generate_batch

# Short prompts (one Engine compilation per device); sampled, so the devices must draw alike too.
generative = [conversation(i, most=1) for i in range(7)]
settings = {"max_new_tokens": 4, "num_samples": 2, "temperature": 0.8, "top_k": 20}
reference = Task(generative, "generative")
ref_acc = chat.run_generative(Engine(model, tok), tok, reference, **settings)
generated.clear()
for name, (mesh, placed) in meshes.items():
    task = Task(generative, "generative")
    acc = chat.run_generative(chat.DeviceEngines(graphdef, placed, tok, mesh), tok, task, **settings)
    ranks = {d.id: sharding.device_rank(mesh, d) for d in jax.local_devices()}
    assert dict(generated) == {d: len(range(r, 7, 4)) for d, r in ranks.items()}, generated  # problem i: rank i mod 4
    ours = {i: seen for i, seen in reference.seen.items() if i % 4 in ranks.values()}  # this process's problems
    assert acc == ref_acc and task.seen == ours, (name, acc, ref_acc, task.seen, ours)
    generated.clear()
print(f"generative pass@2: {ref_acc:.4f}, same on every layout")
print("EVAL_DEVICES_OK")
"""


def env_with(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


def test_evals_split_over_devices_and_match_one_device():
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env_with(4), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "EVAL_DEVICES_OK" in result.stdout, result.stdout[-3000:] + result.stderr[-5000:]
    print(result.stdout)


@pytest.mark.slow  # two processes compiling everything on 2 shared cores: a few minutes
def test_evals_split_over_processes_and_match_one_device(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    commands = [[sys.executable, "-c", SCRIPT, address, "2", str(i)] for i in range(2)]
    results = run_processes(commands, env_for(tmp_path, 2), tmp_path / "logs", timeout_s=600)
    for i, (code, text) in enumerate(results):
        assert code == 0 and "EVAL_DEVICES_OK" in text, f"process {i}: exit {code}\n{text[-4000:]}"
