"""Hugging Face transformers export / import (jaxchat/interop/hf.py, hf_tokenizer.py).

Without optional libraries: the files and their keys, bit-exact round trips, refusals, the chat
template rendered by plain jinja2 + jaxchat's tokenizer, and jaxchat against HF's outputs stored by
``tools/parity_hf.py --write-fixture`` (tests/fixtures/hf_export). With ``tokenizers``: HF's tokenizer
on tokenizer.json. With ``transformers`` + ``torch``: the full parity on the tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat import GPT, GPTConfig, JaxchatError
from jaxchat.engine import Engine
from jaxchat.interop import hf_tokenizer
from jaxchat.interop.hf import export_hf, import_hf, inexpressible
from jaxchat.tokenizer.constants import SPECIAL_TOKENS
from tests.fixtures import hf_export as cases

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tok(fineweb_tokenizer):
    return fineweb_tokenizer


@pytest.fixture(scope="module")
def tiny():
    config = GPTConfig(**cases.TINY)
    return config, cases.tiny_params(config)


@pytest.fixture(scope="module")
def model(tiny):
    config, params = tiny
    graphdef, state = nnx.split(GPT(config, rngs=nnx.Rngs(0)))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def exported(tiny, tok, tmp_path_factory) -> Path:
    pytest.importorskip("safetensors")
    config, params = tiny
    return export_hf(tmp_path_factory.mktemp("hf") / "out", params, config, tok)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---- files and round trips -----------------------------------------------------------------------


def test_export_writes_a_nanochat_directory(exported, tiny, tok):
    from safetensors.numpy import load_file

    _, params = tiny
    names = {p.name for p in exported.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"}
    hf = json.loads((exported / "config.json").read_text())
    assert hf["architectures"] == ["NanoChatForCausalLM"] and hf["model_type"] == "nanochat"
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings")
    assert [hf[k] for k in shape] == [1024, 64, 256, 2, 4, 2, 128]
    assert hf["hidden_act"] == "relu2" and hf["final_logit_softcapping"] == 15.0 and hf["tie_word_embeddings"] is False
    assert hf["rms_norm_eps"] == float(np.finfo(np.float32).eps) and hf["rope_parameters"]["rope_theta"] == 10000.0
    special = tok.special_tokens
    assert hf["bos_token_id"] == special["<|bos|>"] and hf["eos_token_id"] == special["<|assistant_end|>"]
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [special["<|assistant_end|>"], special["<|bos|>"]]  # the Engine's stops
    assert generation["do_sample"] is False
    tok_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == hf_tokenizer.CHAT_TEMPLATE
    specials = [tok_config[k] for k in ("bos_token", "eos_token", "pad_token")]
    assert specials == ["<|bos|>", "<|assistant_end|>", "<|bos|>"]
    tensors = load_file(str(exported / "model.safetensors"))
    assert tensors["model.embed_tokens.weight"].shape == (1024, 64)
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)  # (out, in): transposed
    np.testing.assert_array_equal(tensors["lm_head.weight"], params["lm_head"]["kernel"].T)
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.fc1.weight"], params["h"][0]["mlp"]["c_fc"]["kernel"].T)
    assert len(tensors) == 2 + 6 * 2 and all(t.dtype == np.float32 for t in tensors.values())


def test_round_trip_is_bit_exact(exported, tiny, tok):
    config, params = tiny
    back = import_hf(exported)
    assert back.config == config
    assert back.tokenizer == tok and back.tokenizer.fingerprint() == tok.fingerprint()
    assert jax.tree.structure(back.params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back.params)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_tokenizer_json_round_trip(tok):
    data = hf_tokenizer.tokenizer_json(tok.mergeable_tokens(), tok.pattern)
    assert [t["content"] for t in data["added_tokens"]] == list(SPECIAL_TOKENS)
    assert data["added_tokens"][0]["id"] == tok.bos_token_id
    assert hf_tokenizer.tokens_from_tokenizer_json(data) == (tok.mergeable_tokens(), tok.pattern)
    # Every split of a token is a merge, in the order of the merged token's rank (tiktoken's rule).
    merged = [hf_tokenizer.token_bytes_of(a) + hf_tokenizer.token_bytes_of(b) for a, b in data["model"]["merges"]]
    ranks = [data["model"]["vocab"][hf_tokenizer.token_str(m)] for m in merged]
    assert ranks == sorted(ranks) and len(merged) >= tok.n_merge_tokens - 256


@pytest.mark.parametrize("changes, named", [
    (dict(value_embeds=True), "value_embeds=True"),
    (dict(layer_lambdas=True), "layer_lambdas=True"),
    (dict(smear=True), "smear=True"),
    (dict(backout=True), "backout=True"),
    (dict(window_pattern="SL"), "window_pattern='SL'"),
    (dict(qk_scale=1.2), "qk_scale=1.2"),
    (dict(vocab_size=1000, pad_vocab_to=64), "pad_vocab_to=64"),
])
def test_export_refuses_what_hf_cannot_express(tmp_path, tok, changes, named):
    config = dataclasses.replace(GPTConfig(**cases.TINY), **changes)
    with pytest.raises(JaxchatError, match=re.escape(named)) as info:
        export_hf(tmp_path / "out", {}, config, tok)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_refusal_names_every_2026_feature():
    names = inexpressible(GPTConfig.from_depth_2026(4, vocab_size=1000))
    assert [n.split("=")[0] for n in names] == ["value_embeds", "layer_lambdas", "smear", "backout", "window_pattern",
                                                "qk_scale", "pad_vocab_to"]
    # Windows that never apply (one layer: it is the last, always full) and padding that pads nothing are fine.
    assert inexpressible(GPTConfig(n_layer=1, window_pattern="S", vocab_size=1024, pad_vocab_to=64)) == []


def test_export_refuses_another_tokenizer(tmp_path, tok):
    config = dataclasses.replace(GPTConfig(**cases.TINY), vocab_size=2048)
    with pytest.raises(JaxchatError, match="tokenizer has 1024 tokens but the model's vocab_size is 2048"):
        export_hf(tmp_path / "out", {}, config, tok)


def test_export_refuses_to_replace_files_unless_asked(exported, tiny, tok):
    config, params = tiny
    with pytest.raises(JaxchatError, match="already holds config.json, generation_config.json, model.safetensors"):
        export_hf(exported, params, config, tok)
    before = (exported / "model.safetensors").read_bytes()
    assert export_hf(exported, params, config, tok, overwrite=True) == exported
    assert (exported / "model.safetensors").read_bytes() == before


def test_export_refuses_params_of_another_shape(tmp_path, tiny, tok):
    config, params = tiny
    wider = cases.tiny_params(dataclasses.replace(config, n_embd=128, n_head=8, n_kv_head=4))
    with pytest.raises(JaxchatError, match=r"do not fit the model config: model.embed_tokens.weight \(1024, 128\)"):
        export_hf(tmp_path / "out", wider, config, tok)


def test_import_refuses_what_jaxchat_cannot_run(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu", "attention_bias": True}))
    with pytest.raises(JaxchatError, match=r"hidden_act='gelu' \(jaxchat: 'relu2'\), attention_bias=True"):
        import_hf(copy)
    (copy / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(JaxchatError, match=r"missing \['model.layers.2"):
        import_hf(copy)
    (copy / "config.json").write_text(json.dumps(config))
    data = json.loads((copy / "tokenizer.json").read_text())
    data["added_tokens"] = data["added_tokens"][:-1]
    (copy / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(JaxchatError, match="are not jaxchat's special tokens"):
        import_hf(copy)


def test_import_reads_bfloat16_weights(exported, tiny, tmp_path):
    """HF's nanochat conversions are stored in bf16, which safetensors' NumPy API cannot read."""
    import shutil

    import ml_dtypes
    from safetensors.numpy import load_file

    config, params = tiny
    copy = tmp_path / "bf16"
    shutil.copytree(exported, copy)
    # The safetensors layout by hand: 8-byte header length, JSON header, then the raw data.
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, tensor in load_file(str(exported / "model.safetensors")).items():
        blob = tensor.astype(ml_dtypes.bfloat16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    (copy / "model.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    back = import_hf(copy)
    assert back.config == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back.params)):
        assert b.dtype == np.float32 and np.array_equal(a.astype(ml_dtypes.bfloat16).astype(np.float32), b)


# ---- the chat template with plain jinja2 ------------------------------------------------------------

GEN_START, GEN_END = "\ue000", "\ue001"  # private-use markers for {% generation %} spans


def render_template(tok, messages, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
    """(ids, mask) as transformers computes them: the template rendered in a sandbox with HF's
    settings, the text split at the special tokens (HF's added tokens) and each piece encoded alone;
    mask 1 inside ``{% generation %}`` blocks."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return GEN_START + caller() + GEN_END

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.globals["raise_exception"] = raise_exception
    text_out = env.from_string(hf_tokenizer.CHAT_TEMPLATE).render(messages=messages,
                                                                   add_generation_prompt=add_generation_prompt)
    specials = "|".join(re.escape(t) for t in (*SPECIAL_TOKENS, GEN_START, GEN_END))
    ids, mask, inside, text, text_inside = [], [], False, "", set()

    def flush():  # the text between two special tokens is encoded as one string, as HF does
        nonlocal text
        if text:
            assert len(text_inside) == 1, "a piece of text half inside a generation block"
            new = tok.encode(text)
            ids.extend(new)
            mask.extend([text_inside.pop()] * len(new))
        text = ""
        text_inside.clear()

    for piece in re.split(f"({specials})", text_out):
        if piece in (GEN_START, GEN_END):
            inside = piece == GEN_START
        elif piece in SPECIAL_TOKENS:
            flush()
            ids.append(tok.encode_special(piece))
            mask.append(inside)
        elif piece:
            text += piece
            text_inside.add(inside)
    flush()
    return ids, [int(m) for m in mask]


@pytest.mark.parametrize("index", range(len(cases.CONVERSATIONS)))
def test_chat_template_renders_like_jaxchat(tok, index):
    conversation = cases.CONVERSATIONS[index]
    merged = cases.merge_adjacent_text(conversation)  # HF tokenizes adjacent text parts as one string
    ids, _ = render_template(tok, cases.prompt(conversation)["messages"], add_generation_prompt=True)
    assert ids == tok.render_for_completion(merged) == tok.render_for_completion(conversation)
    ids, mask = render_template(tok, conversation["messages"], add_generation_prompt=False)
    assert (ids, mask) == tok.render_conversation(merged, max_tokens=None)
    # The one known difference: SpellingBee's adjacent text parts "… 3." + "\n\n…" ('.\n\n' is one regex piece).
    assert (ids != tok.render_conversation(conversation, max_tokens=None)[0]) == (index == 4)


def test_chat_template_refuses_what_render_refuses(tok):
    jinja2 = pytest.importorskip("jinja2")
    for messages in ([{"role": "assistant", "content": "hi"}],
                     [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                     [{"role": "system", "content": "s"}],
                     [{"role": "user", "content": "a"},
                      {"role": "assistant", "content": [{"type": "image", "text": ""}]}]):
        with pytest.raises(jinja2.exceptions.TemplateError):
            render_template(tok, messages, add_generation_prompt=True)
        with pytest.raises(JaxchatError):
            tok.render_conversation({"messages": messages})


# ---- jaxchat against HF's stored outputs (no torch needed) -------------------------------------------


@pytest.fixture(scope="module")
def golden():
    if not cases.GOLDEN_JSON.exists():
        pytest.skip("no golden HF outputs; run tools/parity_hf.py --write-fixture")
    return json.loads(cases.GOLDEN_JSON.read_text()), np.load(cases.GOLDEN_NPZ)


def test_logits_match_hf_golden(golden, model):
    data, arrays = golden
    seqs = data["sequences"]
    padded = np.zeros((len(seqs), cases.TINY["sequence_len"]), np.int32)  # one batch: causal, padding is after
    for row, seq in enumerate(seqs):
        padded[row, :len(seq)] = seq
    logits = np.asarray(jax.jit(lambda idx: model(idx))(padded))
    for row, (seq, want) in enumerate(zip(seqs, arrays["logits"])):
        n = len(seq)
        positions = [min(p, n - 1) if p >= 0 else n + p for p in arrays["positions"].tolist()]
        assert rel(logits[row, positions], want) <= TOLERANCE


def test_greedy_generation_matches_hf_golden(golden, model, tok):
    data, _ = golden
    stops = {tok.encode_special("<|assistant_end|>"), tok.bos_token_id}
    engine = Engine(model, tok)
    for prompt, hf_ids in zip(data["generation_prompts"], data["generated"]):
        hf_ids = hf_ids[:next((i for i, t in enumerate(hf_ids) if t in stops), len(hf_ids))]
        results, _ = engine.generate_batch(prompt, max_tokens=cases.GENERATE_TOKENS, temperature=0.0)
        assert results[0][len(prompt):] == hf_ids


def test_tokenization_matches_hf_golden(golden, tok):
    data, _ = golden
    assert [tok.encode(t) for t in cases.TEXTS] == data["texts"]
    for conversation, rendered in zip(cases.CONVERSATIONS, data["template"]):
        merged = cases.merge_adjacent_text(conversation)
        assert rendered["prompt"] == tok.render_for_completion(merged)
        assert (rendered["full"], rendered["mask"]) == tok.render_conversation(merged, max_tokens=None)


# ---- with HF's own libraries ------------------------------------------------------------------------


def test_tokenizers_library_encodes_like_jaxchat(exported, tok):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    hf.encode_special_tokens = True  # jaxchat's encode: special-token text is ordinary text
    for text in cases.TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids
        assert hf.encode(text).ids == [tok.bos_token_id] + ids  # the post-processor's <|bos|>
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    hf.encode_special_tokens = False
    assert hf.encode("<|user_start|>hi", add_special_tokens=False).ids[0] == tok.encode_special("<|user_start|>")


def test_transformers_loads_the_export_like_jaxchat(exported, tiny, model, tok, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert type(hf_model).__name__ == "NanoChatForCausalLM"

    prompt = tok.render_for_completion(cases.CONVERSATIONS[1])
    with torch.no_grad():
        theirs = hf_model(torch.tensor([prompt])).logits[0].numpy()
        generated = hf_model.generate(torch.tensor([prompt]),
                                      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                      max_new_tokens=cases.GENERATE_TOKENS)[0, len(prompt):].tolist()
    assert rel(np.asarray(model(jnp.asarray([prompt], jnp.int32))[0]), theirs) <= TOLERANCE
    results, _ = Engine(model, tok).generate_batch(prompt, max_tokens=cases.GENERATE_TOKENS, temperature=0.0)
    stops = set(hf_model.generation_config.eos_token_id)
    end = next((i for i, t in enumerate(generated) if t in stops), len(generated))
    assert results[0][len(prompt):] == generated[:end]

    for conversation in cases.CONVERSATIONS:
        merged = cases.merge_adjacent_text(conversation)
        ids = hf_tok.apply_chat_template(cases.prompt(conversation)["messages"], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
        assert ids == tok.render_for_completion(merged)
        full = hf_tok.apply_chat_template(conversation["messages"], tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
        assert (full["input_ids"], full["assistant_masks"]) == tok.render_conversation(merged, max_tokens=None)
    for conversation in cases.CONTROL_TEXT_CONVERSATIONS:
        ids = hf_tok.apply_chat_template(conversation["messages"], add_generation_prompt=True, tokenize=True,
                                         return_dict=False, sanitize_control_tokens=True)
        assert ids == tok.render_for_completion(conversation)
    for text in cases.TEXTS:
        assert hf_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == tok.encode(text)

    hf_model.save_pretrained(tmp_path / "resaved")  # what transformers writes imports as well
    hf_tok.save_pretrained(tmp_path / "resaved")
    again = import_hf(tmp_path / "resaved")
    assert again.config == tiny[0] and again.tokenizer == tok
    for a, b in zip(jax.tree.leaves(tiny[1]), jax.tree.leaves(again.params)):
        assert np.array_equal(a, b)


# ---- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_import_and_export(exported, tiny, tok, tmp_path):
    from jaxchat.interop.hf import export_hf_checkpoint, import_hf_checkpoint
    from jaxchat.model.gpt import split_params
    from jaxchat.model.load import load_model
    from jaxchat.runtime import Runtime
    from jaxchat.tokenizer import Tokenizer

    config, params = tiny
    home = tmp_path / "home"
    step_dir = import_hf_checkpoint(exported, "sft", "hf", home=home)
    assert step_dir == home / "checkpoints" / "sft" / "hf" / "0"
    loaded, loaded_tok, meta = load_model("sft", "hf", home=home, runtime=Runtime())
    assert loaded.config == config and loaded_tok == tok and meta["imported_from"]["format"] == "hf NanoChatForCausalLM"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(split_params(loaded)[1])):
        assert np.array_equal(a, np.asarray(b))
    with pytest.raises(JaxchatError, match="already exists"):
        import_hf_checkpoint(exported, "sft", "hf", home=home)
    import_hf_checkpoint(exported, "sft", "hf", home=home, overwrite=True)

    out = export_hf_checkpoint(tmp_path / "again", "sft", "hf", home=home)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (out / name).read_bytes() == (exported / name).read_bytes()

    # A model with another tokenizer: the one in that home, which checkpoints were trained with, is kept
    # unless replace_tokenizer, and then moved aside.
    other = Tokenizer(tok.mergeable_tokens()[:-1])
    other_config = dataclasses.replace(config, vocab_size=other.get_vocab_size())
    other_dir = export_hf(tmp_path / "other", cases.tiny_params(other_config), other_config, other)
    with pytest.raises(JaxchatError, match="refusing to replace"):
        import_hf_checkpoint(other_dir, "sft", "other", home=home)
    import_hf_checkpoint(other_dir, "sft", "other", home=home, replace_tokenizer=True)
    assert Tokenizer.from_directory(home / "tokenizer") == other
    assert Tokenizer.from_directory(home / f"tokenizer.old-{tok.fingerprint()[:12]}") == tok
