"""Orbax checkpoints: optimizer-state round trips, async save + donation, crash safety, load_model."""

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat import checkpoint as ck
from jaxchat import runtime
from jaxchat.common import JaxchatError
from jaxchat.model import GPT, GPTConfig, split_params
from jaxchat.model.load import check_compatible, load_model
from jaxchat.optim import OptimConfig, make_optimizer, muon_momentum_warmup
from jaxchat.training import init_train_state, make_train_step

TINY = GPTConfig(sequence_len=16, vocab_size=128, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
META = {"stage": "base", "model_config": TINY, "tokenizer_fingerprint": "f" * 64}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    """(jitted donating train step, batch, host copy of a real TrainState after 2 steps), built once:
    compiling the Muon + AdamW step is the slow part, so the tests share it."""
    graphdef, params = split_params(GPT(TINY, rngs=nnx.Rngs(0)))
    tx = make_optimizer(params, TINY.n_embd, OptimConfig(), 1.0, muon_momentum_warmup())
    step = make_train_step(graphdef, tx)
    state = init_train_state(params, tx)
    tokens = jax.random.randint(jax.random.key(0), (1, 2, TINY.sequence_len + 1), 0, TINY.vocab_size)
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}
    for _ in range(2):  # non-trivial moments, momentum buffers and counts
        state, _ = step(state, batch, 1.0)
    return step, batch, host_copy(state)


def on_device(tree):
    # Uncommitted, like the step's own outputs: committed inputs would make the shared step recompile.
    return jax.tree.map(jnp.asarray, tree)


def host_copy(tree):
    return jax.tree.map(lambda a: np.array(a), tree)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_optimizer_state_round_trip(tmp_path, trained):
    step, batch, host_state = trained
    state = on_device(host_state)
    data_state = {"shard": 3, "row_group": 7, "nested": {"offsets": [1, 2, 3]}}
    with ck.StageCheckpointer(ck.checkpoint_dir("base", "d2", tmp_path)) as saver:
        saver.save(2, state.params, state.opt_state, data_state, {**META, "metrics": {"loss": jnp.float32(2.5)}})
    abstract = jax.eval_shape(lambda: state)  # a target without shardings: device 0 is filled in
    with ck.StageCheckpointer(ck.checkpoint_dir("base", "d2", tmp_path)) as loader:
        assert loader.latest_step() == 2
        params, opt_state, data, meta = loader.restore(None, abstract.params, abstract.opt_state)
    assert_trees_equal(params, state.params)  # int layer keys survive (target given)
    assert_trees_equal(opt_state, state.opt_state)  # chain / multi_transform / inject_hyperparams / Muon
    assert 0 in params["h"] and data == data_state
    assert meta["step"] == 2 and meta["metrics"] == {"loss": 2.5} and meta["model_config"]["n_embd"] == 32
    assert abs(datetime.datetime.fromisoformat(meta["time"]).timestamp() - time.time()) < 60
    # The restored state trains on exactly like the original.
    after_original, _ = step(state, batch, 1.0)
    restored = type(state)(np.asarray(2, np.int32), host_copy(params), host_copy(opt_state))
    after_restored, _ = step(on_device(restored), batch, 1.0)
    assert_trees_equal(after_restored, after_original)


def test_async_save_then_donated_steps_keep_saved_values(tmp_path, trained):
    step, batch, host_state = trained
    state = on_device(host_state)
    expected = host_copy((state.params, state.opt_state))
    saver = ck.StageCheckpointer(tmp_path / "run", async_save=True)
    saver.save(1, state.params, state.opt_state, None, META)
    for _ in range(3):  # donated: the saved buffers are deleted while the save may still be writing
        state, _ = step(state, batch, 1.0)
    saver.wait()
    params, opt_state, data, _ = saver.restore(1, expected[0], expected[1])
    saver.close()
    assert data is None
    assert_trees_equal(params, expected[0])
    assert_trees_equal(opt_state, expected[1])
    assert not np.array_equal(np.asarray(state.params["lm_head"]["kernel"]), expected[0]["lm_head"]["kernel"])


def test_keeps_last_k_skips_existing_and_force_replaces(tmp_path):
    params = {"w": jnp.arange(4.0)}
    with ck.StageCheckpointer(tmp_path, max_to_keep=2, async_save=False) as saver:
        for step in (10, 20, 30):
            saver.save(step, {"w": params["w"] + step}, None, None, META)
        assert saver.all_steps() == [20, 30]
        saver.save(30, {"w": params["w"] * 0}, None, None, META)  # already there: left alone
        assert float(saver.restore(30, params, None)[0]["w"][1]) == 31
        saver.save(30, {"w": params["w"] * 0}, None, None, META, force=True)
        assert float(saver.restore(30, params, None)[0]["w"][1]) == 0
        with pytest.raises(ValueError, match="tokenizer_fingerprint"):
            saver.save(40, params, None, None, {"model_config": {}})


def test_final_save_right_after_a_periodic_save_of_the_same_step(tmp_path):
    with ck.StageCheckpointer(tmp_path) as saver:  # async
        saver.save(5, {"w": jnp.zeros((256, 256))}, None, {"pos": "periodic"}, META)
        saver.save(5, {"w": jnp.ones((256, 256))}, None, {"pos": "final"}, {**META, "time": "t0"}, force=True)
        params, _, data, meta = saver.restore(None, {"w": jnp.zeros((256, 256))}, None)
    assert float(params["w"].sum()) == 256 * 256 and data == {"pos": "final"} and meta["time"] == "t0"


def test_bytes_data_state_round_trip(tmp_path):
    state = b'{"pos": 17}\x00\xff'
    with ck.StageCheckpointer(tmp_path, async_save=False) as saver:
        saver.save(1, {"w": jnp.ones(2)}, None, state, META)
        assert saver.restore(1, {"w": jnp.ones(2)}, None)[2] == state


def write_checkpoint(home, stage, tag, step, params=None, meta=None):
    with ck.StageCheckpointer(ck.checkpoint_dir(stage, tag, home), async_save=False) as saver:
        saver.save(step, params or {"w": jnp.full((3,), float(step))}, None, {"step": step}, meta or META)


def test_incomplete_saves_are_skipped(tmp_path):
    write_checkpoint(tmp_path, "base", "d2", 2)
    directory = ck.checkpoint_dir("base", "d2", tmp_path)
    # A save killed before its rename, and a step directory that never got its commit marker.
    tmp_dir = directory / "3.orbax-checkpoint-tmp"
    (tmp_dir / "params").mkdir(parents=True)
    for item in ("params", "meta"):
        (directory / "4" / item).mkdir(parents=True)
    assert ck.find_checkpoint("base", home=tmp_path) == (directory, 2)
    assert ck.read_meta("base", "d2", home=tmp_path)["step"] == 2
    with pytest.raises(JaxchatError, match=r"no complete checkpoint at step 4; available steps: \[2\]"):
        ck.find_checkpoint("base", "d2", 4, home=tmp_path)
    with ck.StageCheckpointer(directory, async_save=False) as saver:
        assert saver.latest_step() == 2
        with pytest.raises(JaxchatError, match="not a complete checkpoint"):
            saver.restore(4, {"w": jnp.ones(3)}, None)
        saver.save(4, {"w": jnp.full((3,), 4.0)}, None, None, META)  # replaces the broken directory
        assert not tmp_dir.exists()  # Orbax removes leftover tmp directories before the first save
        assert saver.latest_step() == 4 and float(saver.restore(4, {"w": jnp.ones(3)}, None)[0]["w"][0]) == 4


def test_killed_save_leaves_previous_checkpoint_usable(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, jax.numpy as jnp
        from jaxchat.checkpoint import StageCheckpointer
        meta = {{"model_config": {{}}, "tokenizer_fingerprint": "x", "stage": "base"}}
        saver = StageCheckpointer(sys.argv[1])
        saver.save(1, {{"w": jnp.ones((4,))}}, None, {{"pos": 1}}, meta)
        saver.wait()
        saver.save(2, {{"w": jnp.ones((2048, 8192))}}, None, {{"pos": 2}}, meta)  # 64 MB, async
        os._exit(0)  # killed while the background thread writes step 2
    """)
    directory = tmp_path / "checkpoints" / "base" / "d1"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script, str(directory)], check=True, cwd=REPO, env=env, timeout=120)
    assert not ck.is_complete_step(directory / "2")
    assert ck.find_checkpoint("base", home=tmp_path) == (directory, 1)
    with ck.StageCheckpointer(directory) as saver:
        params, _, data, meta = saver.restore(None, {"w": jnp.zeros(4)}, None)
    assert data == {"pos": 1} and meta["step"] == 1 and float(params["w"].sum()) == 4


def test_find_checkpoint_choices_and_errors(tmp_path):
    with pytest.raises(JaxchatError) as e:
        ck.find_checkpoint("mid", home=tmp_path)
    assert str(tmp_path / "checkpoints" / "mid") in str(e.value) and "python train.py --stage=mid" in str(e.value)
    with pytest.raises(JaxchatError, match="unknown checkpoint stage 'pretrain'"):
        ck.find_checkpoint("pretrain", home=tmp_path)
    write_checkpoint(tmp_path, "base", "d4", 5)
    write_checkpoint(tmp_path, "base", "d4", 9)
    time.sleep(0.02)  # distinct commit times
    write_checkpoint(tmp_path, "base", "d2", 3)
    assert ck.find_checkpoint("base", home=tmp_path) == (ck.checkpoint_dir("base", "d2", tmp_path), 3)
    assert ck.find_checkpoint("base", "d4", home=tmp_path)[1] == 9
    assert ck.find_checkpoint("base", "d4", 5, home=tmp_path)[1] == 5
    with pytest.raises(JaxchatError, match="d7"):
        ck.find_checkpoint("base", "d7", home=tmp_path)
    params, meta = ck.load_params("base", "d4", 5, abstract_params={"w": jax.ShapeDtypeStruct((3,), jnp.float32)},
                                  home=tmp_path)
    assert float(params["w"][0]) == 5 and meta["checkpoint"].endswith("d4/5")
    with pytest.raises(JaxchatError, match=r"w: checkpoint \(3,\) vs model \(4,\)"):
        ck.load_params("base", "d4", abstract_params={"w": jnp.zeros(4)}, home=tmp_path)


LM = GPTConfig(sequence_len=16, vocab_size=1024, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)


@pytest.fixture
def saved_lm(tmp_path, monkeypatch, fineweb_tokenizer):
    """A tiny LM over the fixture tokenizer, saved as sft/d1 under a temp $JAXCHAT_HOME."""
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    fineweb_tokenizer.save(tmp_path / "tokenizer")
    model = GPT(LM, rngs=nnx.Rngs(3))
    _, params = split_params(model)
    params = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.key(1), a.shape), params)
    meta = {"stage": "sft", "model_config": dataclasses.asdict(LM), "tokenizer_fingerprint": fineweb_tokenizer.fingerprint(),
            "train_config": {"lr": 0.02, "dtype": jnp.bfloat16}}
    with ck.StageCheckpointer(ck.checkpoint_dir("sft", "d1")) as saver:
        saver.save(7, params, None, None, meta)
    return params


def test_load_model_round_trip(saved_lm, fineweb_tokenizer):
    model, tokenizer, meta = load_model("sft")
    assert tokenizer == fineweb_tokenizer and meta["step"] == 7 and meta["train_config"]["dtype"] == "bfloat16"
    assert model.runtime == runtime.for_this_machine()  # the plan for this machine unless given one
    reference = nnx.merge(split_params(GPT(LM, runtime=model.runtime, rngs=nnx.Rngs(0)))[0], saved_lm)
    idx = jnp.asarray([fineweb_tokenizer.encode("The river explains the theory.", prepend="<|bos|>")])
    forward = jax.jit(lambda m, x: m(x))  # NNX modules are pytrees; one compile serves both models
    np.testing.assert_array_equal(np.asarray(forward(model, idx)), np.asarray(forward(reference, idx)))


def test_load_model_refuses_other_tokenizer_and_shapes(saved_lm, tmp_path):
    step_dir = tmp_path / "checkpoints" / "sft" / "d1" / "7"
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "tokenizer_fingerprint": "0" * 64}))
    ck.write_checksums(step_dir)  # a deliberate edit: re-seal it (otherwise it is refused as damaged)
    with pytest.raises(JaxchatError, match="trained with tokenizer 000000000000 but the current tokenizer"):
        load_model("sft")
    meta_file.write_text(json.dumps({**meta, "model_config": {**meta["model_config"], "n_embd": 64, "n_head": 4}}))
    ck.write_checksums(step_dir)
    with pytest.raises(JaxchatError, match=r"does not fit the model's parameters: h/0/attn/c_k/kernel: checkpoint \(32, 32\) vs model \(64, 32\)"):
        load_model("sft")


def test_check_compatible(saved_lm, fineweb_tokenizer):
    meta = ck.read_meta("sft")
    check_compatible(meta, LM, fineweb_tokenizer)
    check_compatible(meta, GPTConfig(**{**dataclasses.asdict(LM), "sequence_len": 64}), fineweb_tokenizer)
    with pytest.raises(JaxchatError, match=r"different model shape: n_layer=1 \(model wants 2\)"):
        check_compatible(meta, GPTConfig(**{**dataclasses.asdict(LM), "n_layer": 2}), fineweb_tokenizer)
    with pytest.raises(JaxchatError, match="but the current tokenizer"):
        check_compatible({**meta, "tokenizer_fingerprint": "ab" * 32}, LM, fineweb_tokenizer)


def test_several_cpu_devices(tmp_path):
    """Saved from params replicated over a 4-device mesh; restored onto one device and onto the mesh."""
    script = textwrap.dedent("""
        import sys, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxchat.checkpoint import StageCheckpointer
        assert len(jax.devices()) == 4
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        rep = NamedSharding(mesh, P())
        params = {"h": {0: jax.device_put(jnp.arange(8.0).reshape(2, 4), rep)}}
        meta = {"model_config": {}, "tokenizer_fingerprint": "x"}
        with StageCheckpointer(sys.argv[1]) as saver:
            saver.save(1, params, None, None, meta)
            single = saver.restore(1, jax.eval_shape(lambda: params), None)[0]
            meshed = saver.restore(1, params, None)[0]
        assert single["h"][0].sharding.device_set == {jax.devices()[0]}
        assert meshed["h"][0].sharding == rep
        assert float(single["h"][0].sum()) == float(meshed["h"][0].sum()) == 28.0
        print("ok")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ck")], cwd=REPO, env=env, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


EIGHT_WAY = r"""
import sys
from pathlib import Path
import jax, numpy as np
from flax import nnx
from jaxchat import checkpoint as ck, runtime, sharding
from jaxchat.model import GPT, GPTConfig, split_params
from jaxchat.optim import OptimConfig, make_optimizer, muon_momentum_warmup
from jaxchat.training import init_train_state, make_train_step
from jaxchat.training.build import abstract_state

assert jax.device_count() == 8, jax.devices()
config = GPTConfig.from_depth(2, vocab_size=512, sequence_len=32)
graphdef, params = split_params(GPT(config, runtime=runtime.Runtime(), rngs=nnx.Rngs(0)))
tx = make_optimizer(params, config.n_embd, OptimConfig(), 1.0, muon_momentum_warmup())
eight, one = sharding.make_mesh(8), sharding.make_mesh(1, jax.devices()[:1])
state = sharding.place(init_train_state(params, tx), eight)
step = make_train_step(graphdef, tx, mesh=eight, state_sharding=sharding.state_shardings(state, eight))
tokens = np.random.default_rng(0).integers(0, 512, (1, 8, 33)).astype(np.int32)
batch = sharding.put_batch({"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}, sharding.batch_sharding(eight), 1)
for _ in range(2):  # a trained optimizer state, not zeros
    state, _ = step(state, batch, 1.0)
split = [x for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated]
assert split and all(x.addressable_shards[0].data.size * 8 == x.size for x in split)
meta = {"model_config": {}, "tokenizer_fingerprint": "test"}
saved = jax.device_get(state)

def restore(directory, mesh):
    target = sharding.abstract_on(abstract_state(params, tx), mesh)
    with ck.StageCheckpointer(Path(directory), async_save=False) as c:
        p, o, _, _ = c.restore(None, target.params, target.opt_state)
    return p, o

def same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)

with ck.StageCheckpointer(Path(sys.argv[1]) / "eight", async_save=False) as c:
    c.save(2, state.params, state.opt_state, None, meta)
p, o = restore(Path(sys.argv[1]) / "eight", one)  # 8-way → 1 device
assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves((p, o)))
same((p, o), (saved.params, saved.opt_state))
with ck.StageCheckpointer(Path(sys.argv[1]) / "one", async_save=False) as c:
    c.save(2, p, o, None, meta)
p, o = restore(Path(sys.argv[1]) / "one", eight)  # and back
split = [x for x in jax.tree.leaves((p, o)) if not x.sharding.is_fully_replicated]
assert len(split) == len([x for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated])
assert all(x.addressable_shards[0].data.size * 8 == x.size for x in split)
same((p, o), (saved.params, saved.opt_state))
print("EIGHT_WAY_OK")
"""


def test_sharded_state_moves_from_8_way_to_one_device_and_back(tmp_path):
    """Parameters and a trained optimizer state split 8 ways (mesh.fsdp=8 on 8 fake devices) restore
    onto 1 device bit for bit, and a 1-device checkpoint onto the 8-way layout (1/8 on each device)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", EIGHT_WAY, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "EIGHT_WAY_OK" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
