"""nanochat checkpoints in and out (jaxchat/interop/nanochat.py, safe_pickle.py), without torch.

The fixtures are real nanochat base dirs written by nanochat's own tok_train + base_train
(tools/make_nanochat_checkpoint.py): 16788ee (Nov 2025, float32 weights) and 92d63d4 (current, wte and
value embeddings in bfloat16 as a GPU run saves them), each with nanochat's float32 logits on a fixed
sequence. Tolerances: jaxchat's float32 CPU logits within 5e-6 × max|logit| of nanochat's float32
logits (measured: 3.5e-7 for 16788ee with float32 rotary tables, 5.2e-7 for 92d63d4); 16788ee's own
forward rounds its rotary tables to bfloat16 (1.7e-5 measured, 1e-4 allowed).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxchat.common import JaxchatError
from jaxchat.interop import safe_pickle
from jaxchat.interop.nanochat import export_nanochat, import_nanochat, tokenizer_from_nanochat
from tests.fixtures.fineweb import fineweb_documents

FIXTURES = Path(__file__).parent / "fixtures"
NANOCHAT = {"16788ee": FIXTURES / "nanochat_16788ee", "92d63d4": FIXTURES / "nanochat_92d63d4_ckpt"}
STAGE = {"16788ee": "base", "92d63d4": "sft"}  # both imported into one home: one tag, two stages
TAG, STEP = "d2", 3
MODEL = f"base_checkpoints/{TAG}/model_{STEP:06d}.pt"


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One $JAXCHAT_HOME with both nanochat fixtures imported (they share a tokenizer): 16788ee's from
    its base dir as base/d2, 92d63d4's from its checkpoint directory as sft/d2."""
    home = tmp_path_factory.mktemp("jaxchat_home")
    import_nanochat(NANOCHAT["16788ee"], "base", TAG, home=home)
    import_nanochat(NANOCHAT["92d63d4"] / "base_checkpoints" / TAG, "base", TAG, as_stage="sft",
                    tokenizer_dir=NANOCHAT["92d63d4"] / "tokenizer", home=home)
    return home


def loaded(home: Path, fmt: str):
    from jaxchat.model.load import load_model

    return load_model(STAGE[fmt], TAG, home=home)


def logits_of(model, tokens: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp
    from flax import nnx

    return np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(tokens[None])))[0]  # jitted: compiles faster


# ---- import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["16788ee", "92d63d4"])
def test_imported_logits_equal_nanochats(home, fmt):
    model, tokenizer, meta = loaded(home, fmt)
    golden = np.load(NANOCHAT[fmt] / "logits.npz")
    ours = logits_of(model, golden["tokens"])
    reference = golden["logits_f32_rotary"] if fmt == "16788ee" else golden["logits"]
    scale = np.abs(reference).max()
    assert ours.shape == reference.shape == (len(golden["tokens"]), 300)
    assert np.abs(ours - reference).max() <= 5e-6 * scale
    assert np.abs(ours - golden["logits"]).max() <= 1e-4 * scale  # nanochat's own forward, bf16 rotary in 16788ee
    # The tool's text (tools/make_nanochat_checkpoint.py fixed_text) encodes as nanochat encoded it.
    text = "\n\n".join(fineweb_documents(4, seed=123))
    assert tokenizer.encode(text, prepend="<|bos|>")[: len(golden["tokens"])] == golden["tokens"].tolist()


def test_imported_checkpoints_are_complete_and_describe_their_run(home):
    from jaxchat.checkpoint import damage, read_meta
    from jaxchat.config import from_dict
    from jaxchat.model.config import GPTConfig

    for fmt, recipe in (("16788ee", "2025"), ("92d63d4", "2026")):
        meta = read_meta(STAGE[fmt], TAG, home=home)
        step_dir = Path(meta["checkpoint"])
        assert step_dir == home / "checkpoints" / STAGE[fmt] / TAG / str(STEP)
        assert damage(step_dir) is None and (step_dir / "checksums.json").is_file()
        assert not (step_dir / "opt_state").exists()
        cfg = from_dict(meta["run_config"])  # what train.py --source_tag reads
        nano = json.loads((NANOCHAT[fmt] / f"base_checkpoints/{TAG}/meta_{STEP:06d}.json").read_text())
        assert (cfg.recipe, cfg.tag, cfg.model.depth, cfg.model.sequence_len, cfg.tokenizer.vocab_size) == (
            recipe, TAG, 2, nano["model_config"]["sequence_len"], 300)
        config = GPTConfig(**meta["model_config"])
        assert {k: getattr(config, k) for k in nano["model_config"]} == nano["model_config"]
        assert meta["metrics"]["val_bpb"] == nano["val_bpb"] and meta["final"] is True
        assert meta["imported_from"]["format"] == f"nanochat {fmt}"
    assert read_meta("sft", TAG, home=home)["total_batch_size"] == 256  # 2026 SFT's examples_per_step=auto reads it
    assert GPTConfig(**read_meta("sft", TAG, home=home)["model_config"]).smear


def test_the_engine_runs_on_an_import(home):
    from jaxchat.engine import Engine

    model, tokenizer, _ = loaded(home, "92d63d4")
    golden = np.load(NANOCHAT["92d63d4"] / "logits.npz")
    prompt = golden["tokens"][:200].tolist()  # past the 128-key window of layer 0
    columns = [tokens for tokens, _masks in Engine(model, tokenizer).generate(prompt, num_samples=2, max_tokens=3,
                                                                               temperature=0.0)]
    assert len(columns) == 3 and columns[0] == [int(np.argmax(golden["logits"][199]))] * 2  # nanochat's greedy pick


# ---- round trip -----------------------------------------------------------------------------------


def test_export_then_import_gives_identical_params(home, tmp_path):
    import jax
    import tiktoken

    from jaxchat.checkpoint import load_params, read_meta
    from jaxchat.interop.nanochat import abstract_params
    from jaxchat.model.load import config_from_meta

    out = tmp_path / "nanochat"
    for fmt in NANOCHAT:
        target = export_nanochat(out, STAGE[fmt], TAG, home=home)
        assert target == out / ("base_checkpoints" if fmt == "16788ee" else "chatsft_checkpoints") / TAG
        ours = safe_pickle.read_pt(target / f"model_{STEP:06d}.pt")
        theirs = safe_pickle.read_pt(NANOCHAT[fmt] / MODEL)  # bf16 tensors widened exactly
        assert list(ours) and sorted(ours) == sorted(theirs)
        for name in theirs:
            assert ours[name].dtype == np.float32 and np.array_equal(ours[name], theirs[name]), name
        meta = json.loads((target / f"meta_{STEP:06d}.json").read_text())
        nano = json.loads((NANOCHAT[fmt] / f"base_checkpoints/{TAG}/meta_{STEP:06d}.json").read_text())
        assert meta["model_config"] == nano["model_config"] and meta["step"] == STEP
    # The tokenizer: what nanochat's pickle.load gets is a tiktoken Encoding of the same vocabulary.
    with open(out / "tokenizer" / "tokenizer.pkl", "rb") as f:
        encoding = pickle.load(f)  # our own file: trusted here
    tokenizer = tokenizer_from_nanochat(out / "tokenizer")
    assert isinstance(encoding, tiktoken.Encoding) and encoding.n_vocab == tokenizer.get_vocab_size()
    assert safe_pickle.read_tiktoken_pickle(out / "tokenizer" / "tokenizer.pkl")[:3] == \
        safe_pickle.read_tiktoken_pickle(NANOCHAT["16788ee"] / "tokenizer" / "tokenizer.pkl")[:3]
    assert np.array_equal(safe_pickle.load_pt(out / "tokenizer" / "token_bytes.pt"), tokenizer.token_bytes)
    # ... and back: bitwise the params of the first import.
    home2 = tmp_path / "home2"
    for fmt in NANOCHAT:
        import_nanochat(out, "base" if fmt == "16788ee" else "sft", TAG, home=home2)
        stage = STAGE[fmt]
        abstract = abstract_params(config_from_meta(read_meta(stage, TAG, home=home)))
        first, _ = load_params(stage, TAG, abstract_params=abstract, home=home)
        second, _ = load_params(stage, TAG, abstract_params=abstract, home=home2)
        first, second = jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)
        assert len(first) == len(second) > 10
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second))


def test_export_refuses_what_nanochat_cannot_load(home, tmp_path):
    out = tmp_path / "nanochat"
    export_nanochat(out, "base", TAG, home=home)
    with pytest.raises(JaxchatError) as e:
        export_nanochat(out, "base", TAG, home=home)
    assert "model_000003.pt already exists" in one_line_error(e)
    other = tmp_path / "other"
    (other / "tokenizer").mkdir(parents=True)
    ranks, pattern, specials, _ = safe_pickle.read_tiktoken_pickle(NANOCHAT["16788ee"] / "tokenizer" / "tokenizer.pkl")
    safe_pickle.write_tiktoken_pickle(other / "tokenizer" / "tokenizer.pkl", ranks, pattern + "|x", specials)
    with pytest.raises(JaxchatError) as e:
        export_nanochat(other, "base", TAG, home=home)
    assert "holds another tokenizer" in one_line_error(e)


def test_export_maps_only_models_a_nanochat_gpt_can_be():
    import dataclasses

    from jaxchat.interop.nanochat import nanochat_model_config
    from jaxchat.model.config import GPTConfig

    assert nanochat_model_config(GPTConfig.from_depth(2), "x")[0] == "16788ee"
    assert nanochat_model_config(GPTConfig.from_depth_2026(2), "x") == ("92d63d4", {
        "sequence_len": 2048, "vocab_size": 32768, "n_layer": 2, "n_head": 1, "n_kv_head": 1, "n_embd": 128,
        "window_pattern": "SSSL"})
    for config, wrong in ((dataclasses.replace(GPTConfig.from_depth(2), window_pattern="SL"), "window_pattern='SL'"),
                          (dataclasses.replace(GPTConfig.from_depth_2026(2), qk_scale=1.0), "qk_scale=1.0")):
        with pytest.raises(JaxchatError) as e:
            nanochat_model_config(config, "ckpt")
        assert one_line_error(e).startswith("ckpt: the model matches no nanochat GPT") and wrong in str(e.value)


# ---- safety ---------------------------------------------------------------------------------------


class _RunsCode:
    """Pickles as a call of os.system (pickling only records the reference; nothing runs here)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _pt_with_pickle(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return path


def test_a_pt_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"transformer.wte.weight": _RunsCode(f"touch {marker}")}, protocol=2)
    path = _pt_with_pickle(tmp_path / "model_000003.pt", payload)
    with pytest.raises(JaxchatError) as e:
        safe_pickle.read_pt(path)
    assert one_line_error(e) == (f"{path}: refused to load global '{os.system.__module__}.system' (a .pt state_dict "
                                 f"holds only tensors; this file may run code)")
    # Through the importer: refused before anything is written.
    source = tmp_path / "nanochat"
    shutil.copytree(NANOCHAT["16788ee"], source)
    shutil.copy(path, source / MODEL)
    with pytest.raises(JaxchatError) as e:
        import_nanochat(source, "base", TAG, home=tmp_path / "home")
    assert "refused to load global" in one_line_error(e) and str(source / MODEL) in str(e.value)
    assert not marker.exists() and not (tmp_path / "home").exists()


def test_a_tokenizer_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "tokenizer.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(f"touch {marker}")))
    with pytest.raises(JaxchatError) as e:
        safe_pickle.read_tiktoken_pickle(path)
    assert one_line_error(e) == (f"{path}: refused to load global '{os.system.__module__}.system' (a nanochat "
                                 f"tokenizer.pkl holds only a tiktoken Encoding; this file may run code)")
    path.write_bytes(pickle.dumps([__import__("builtins").eval]))
    with pytest.raises(JaxchatError, match="refused to load global 'builtins.eval'"):
        safe_pickle.read_tiktoken_pickle(path)
    assert not marker.exists()


def test_the_reader_rebuilds_what_torch_saves(tmp_path):
    """Views, offsets, shared and expanded storages, bf16/f16/int/bool, written by torch itself."""
    ours = safe_pickle.read_pt(FIXTURES / "nanochat_16788ee" / "torch_views.pt")
    expected = np.load(FIXTURES / "nanochat_16788ee" / "torch_views.npz")
    assert sorted(ours) == sorted(expected.files)
    for name in expected.files:
        assert ours[name].dtype == expected[name].dtype and np.array_equal(ours[name], expected[name]), name
    assert safe_pickle.load_pt(NANOCHAT["16788ee"] / "tokenizer" / "token_bytes.pt").shape == (300,)


def test_write_pt_is_torchs_zip_layout(tmp_path):
    import ml_dtypes

    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=">i8"),
              "c": np.asarray([1.5, -2.25], ml_dtypes.bfloat16), "d": np.float32(7.0) * np.ones(()),
              "e": np.zeros((0, 2), np.float16)}
    path = safe_pickle.write_pt(tmp_path / "x.pt", arrays)
    back = safe_pickle.read_pt(path)
    assert list(back) == list(arrays) and back["c"].dtype == np.float32 and back["b"].dtype == np.int64
    assert all(np.array_equal(back[k], np.asarray(v, back[k].dtype)) for k, v in arrays.items())
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        names = archive.namelist()
        assert names[:4] == ["archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                             "archive/byteorder"] and archive.read("archive/version") == b"3\n"
        for info in archive.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torch"), reason="torch is not installed")
def test_torch_reads_what_we_write(home, tmp_path):
    import torch

    target = export_nanochat(tmp_path / "nanochat", "sft", TAG, home=home)
    loaded_sd = torch.load(target / f"model_{STEP:06d}.pt", weights_only=True)
    ours = safe_pickle.read_pt(target / f"model_{STEP:06d}.pt")
    assert sorted(loaded_sd) == sorted(ours)
    assert all(loaded_sd[k].dtype == torch.float32 and np.array_equal(loaded_sd[k].numpy(), ours[k]) for k in ours)
    token_bytes = torch.load(tmp_path / "nanochat" / "tokenizer" / "token_bytes.pt", weights_only=True)
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (300,)


# ---- bad input ------------------------------------------------------------------------------------


def _copy(tmp_path: Path, fmt: str = "16788ee") -> Path:
    source = tmp_path / f"nanochat_{fmt}"
    shutil.copytree(NANOCHAT[fmt], source)
    return source


def _refused(source, tmp_path, **kwargs) -> str:
    with pytest.raises(JaxchatError) as e:
        import_nanochat(source, kwargs.pop("stage", "base"), kwargs.pop("tag", TAG), home=tmp_path / "home", **kwargs)
    assert not (tmp_path / "home" / "checkpoints").exists()
    return one_line_error(e)


def test_missing_and_bad_files_are_named(tmp_path):
    assert "does not exist; expected a nanochat base dir" in _refused(tmp_path / "nowhere", tmp_path)
    source = _copy(tmp_path)
    assert f"{source}/base_checkpoints/d20 does not exist; tags in" in _refused(source, tmp_path, tag="d20")
    assert "no mid_checkpoints/" in _refused(source, tmp_path, stage="mid")
    assert "has no model_000007.pt; steps there: [3]" in _refused(source, tmp_path, step=7)
    alone = tmp_path / "alone" / TAG  # a checkpoint directory with no tokenizer two levels up
    shutil.copytree(source / "base_checkpoints" / TAG, alone)
    assert "no nanochat tokenizer at" in _refused(alone, tmp_path)
    meta = source / f"base_checkpoints/{TAG}/meta_{STEP:06d}.json"
    original = meta.read_text()
    meta.write_text("{not json")
    assert f"{meta}: not valid JSON" in _refused(source, tmp_path)
    meta.write_text(json.dumps({**json.loads(original), "model_config": {
        **json.loads(original)["model_config"], "rope_theta": 5}}))
    assert "unsupported model_config keys ['rope_theta']" in _refused(source, tmp_path)
    meta.write_text(json.dumps({**json.loads(original), "model_config": {
        **json.loads(original)["model_config"], "window_pattern": "SL"}}))
    assert "a nanochat version between 16788ee and 92d63d4" in _refused(source, tmp_path)
    meta.write_text(json.dumps({**json.loads(original), "model_config": {
        **json.loads(original)["model_config"], "n_embd": 64}}))
    assert "the weights do not fit the model its meta describes" in _refused(source, tmp_path)
    meta.unlink()
    assert f"{meta} does not exist" in _refused(source, tmp_path)
    meta.write_text(original)
    model = source / MODEL
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert f"{model}: not" in _refused(source, tmp_path)
    shutil.copy(NANOCHAT["16788ee"] / MODEL, model)
    safe_pickle.write_pt(source / "tokenizer" / "token_bytes.pt", np.ones(299, np.int32))
    assert "token_bytes.pt does not belong to" in _refused(source, tmp_path)
    (source / "tokenizer" / "tokenizer.pkl").unlink()
    assert "tokenizer.pkl does not exist" in _refused(source, tmp_path, tokenizer_dir=source / "tokenizer")


def test_a_tokenizer_checkpoints_use_is_not_replaced_without_asking(tmp_path):
    from jaxchat.tokenizer import Tokenizer

    home = tmp_path / "home"
    nano_tok = tokenizer_from_nanochat(NANOCHAT["16788ee"] / "tokenizer")
    other = Tokenizer(nano_tok.mergeable_tokens()[:-1], nano_tok.pattern)
    other.save(home / "tokenizer")
    used = home / "checkpoints" / "base" / "mine" / "5" / "meta" / "metadata"
    used.parent.mkdir(parents=True)
    used.write_text(json.dumps({"tokenizer_fingerprint": other.fingerprint()}))
    with pytest.raises(JaxchatError) as e:
        import_nanochat(NANOCHAT["16788ee"], "base", TAG, home=home)
    assert f"refusing to replace {home / 'tokenizer'}: 1 checkpoint(s)" in one_line_error(e)
    assert Tokenizer.from_directory(home / "tokenizer") == other
    import_nanochat(NANOCHAT["16788ee"], "base", TAG, home=home, replace_tokenizer=True)
    assert Tokenizer.from_directory(home / "tokenizer") == nano_tok
    assert Tokenizer.from_directory(home / f"tokenizer.old-{other.fingerprint()[:12]}") == other
    with pytest.raises(JaxchatError) as e:  # the step exists now
        import_nanochat(NANOCHAT["16788ee"], "base", TAG, home=home)
    assert "already exists" in one_line_error(e)
