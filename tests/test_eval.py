"""Evaluation: val bpb / loss, CORE (prompts, spans, scoring, centring), chat eval, the two CLIs."""

from __future__ import annotations

import functools
import json
import math
import random
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat.common import JaxchatError
from jaxchat.eval import bpb, chat, core
from jaxchat.model import GPT, GPTConfig, split_params
from tests.cli_help import help_listing_every_key


def make_model(vocab: int = 1024, seq_len: int = 128, seed: int = 0) -> GPT:
    """A tiny GPT whose zero-initialised kernels (lm_head, c_proj) are random: non-trivial logits."""
    config = GPTConfig(sequence_len=seq_len, vocab_size=vocab, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    graphdef, params = split_params(GPT(config, rngs=nnx.Rngs(seed)))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [leaf if bool(jnp.any(leaf)) else 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


@pytest.fixture(scope="module")
def model() -> GPT:
    return make_model()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@functools.lru_cache(maxsize=4)
def _jitted_forward(graphdef):
    return jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))


def forward(model: GPT, x) -> np.ndarray:
    """The plain model's logits (jitted once per shape: eager ops recompile for every new length)."""
    graphdef, params = split_params(model)
    return np.asarray(_jitted_forward(graphdef)(params, jnp.asarray(x, jnp.int32)))


def model_logits(model: GPT, tokens) -> np.ndarray:
    """Reference logits (T, V) of ONE sequence, run alone at the full context length, padded with id 0
    (the code under test pads with <|bos|> to bucketed lengths, in batches)."""
    padded = np.zeros((1, model.config.sequence_len), np.int32)
    padded[0, :len(tokens)] = tokens
    return forward(model, padded)[0, :len(tokens)]


# ---- bpb / loss ----------------------------------------------------------------------------------


def hand_batches(vocab: int, special: list[int], n: int = 3, rows: int = 2, seq: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        inputs = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
        targets = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
        targets[rng.random((rows, seq)) < 0.2] = -1  # ignored
        targets[0, :3] = special  # zero-byte tokens: excluded from both sums
        batches.append({"inputs": inputs, "targets": targets})
    return batches


def test_bpb_matches_numpy_formula_and_excludes_zero_byte_tokens(model):
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1)
    token_bytes = rng.integers(1, 6, vocab).astype(np.int32)
    special = [1015, 1016, 7]
    token_bytes[special] = 0  # 1015/1016: special tokens; 7: an ordinary id given 0 bytes here
    batches = hand_batches(vocab, special)

    nats = n_bytes = nats_all = 0.0
    for b in batches:
        lp = log_softmax(forward(model, b["inputs"]))
        for r, t in np.argwhere(b["targets"] != -1):
            target = b["targets"][r, t]
            nll = -lp[r, t, target]
            nats_all += nll
            if token_bytes[target] > 0:
                nats += nll
                n_bytes += token_bytes[target]
    expected = nats / (math.log(2) * n_bytes)

    graphdef, params = split_params(model)
    got = bpb.evaluate_bpb(graphdef, params, batches, token_bytes)
    assert got == pytest.approx(expected, rel=1e-5)
    # The exclusion matters in this data: counting the zero-byte targets' nats gives another number.
    assert abs(nats_all / (math.log(2) * n_bytes) - got) > 1e-3
    # An (accum, B, T) batch is the same tokens: same bpb.
    stacked = {k: np.stack([b[k] for b in batches]) for k in ("inputs", "targets")}
    assert bpb.evaluate_bpb(graphdef, params, [stacked], token_bytes) == pytest.approx(got, rel=1e-5)


def test_bpb_with_tokenizer_token_bytes(model, fineweb_tokenizer):
    """With the real table, special tokens (0 bytes) drop out: prepending <|bos|> targets changes nothing."""
    tok = fineweb_tokenizer
    graphdef, params = split_params(model)
    ids = np.asarray(tok.encode("The river flows through the ancient city in Peru."), np.int32)
    plain = {"inputs": ids[None, :-1], "targets": ids[None, 1:]}
    with_bos = {"inputs": ids[None, :-1], "targets": np.where(np.arange(len(ids) - 1) == 0, tok.bos_token_id,
                                                               ids[1:])[None].astype(np.int32)}
    a = bpb.evaluate_bpb(graphdef, params, [plain], tok.token_bytes)
    b = bpb.evaluate_bpb(graphdef, params, [with_bos], tok.token_bytes)
    lp = log_softmax(model_logits(model, ids[:-1]))
    keep = np.arange(1, len(ids) - 1)
    expected = -lp[keep, ids[1:][keep]].sum() / (math.log(2) * tok.token_bytes[ids[1:][keep]].sum())
    assert b == pytest.approx(expected, rel=1e-5)
    assert a != pytest.approx(b, rel=1e-4)


def test_evaluate_loss_is_token_weighted_mean(model):
    graphdef, params = split_params(model)
    batches = hand_batches(model.config.vocab_size, [1, 2, 3], n=2, seed=3)
    batches[1]["targets"][:, 4:] = -1  # far fewer targets in batch 1: a batch mean would differ
    total, count, per_batch = 0.0, 0, []
    for b in batches:
        lp = log_softmax(forward(model, b["inputs"]))
        idx = np.argwhere(b["targets"] != -1)
        nll = [-lp[r, t, b["targets"][r, t]] for r, t in idx]
        total, count = total + sum(nll), count + len(nll)
        per_batch.append(np.mean(nll))
    got = bpb.evaluate_loss(graphdef, params, batches)
    assert got == pytest.approx(total / count, rel=1e-5)
    assert got != pytest.approx(np.mean(per_batch), rel=1e-3)


def test_bpb_and_loss_errors(model):
    graphdef, params = split_params(model)
    vocab = model.config.vocab_size
    with pytest.raises(JaxchatError, match="no target token with bytes"):
        bpb.evaluate_bpb(graphdef, params, [], np.ones(vocab, np.int32))
    with pytest.raises(JaxchatError, match=r"token_bytes has shape \(10,\)"):
        bpb.evaluate_bpb(graphdef, params, hand_batches(vocab, [1, 2, 3]), np.ones(10, np.int32))
    with pytest.raises(JaxchatError, match="'inputs' and 'targets'"):
        bpb.evaluate_loss(graphdef, params, [{"inputs": np.zeros((1, 4), np.int32)}])
    no_targets = {"inputs": np.zeros((1, 4), np.int32), "targets": np.full((1, 4), -1, np.int32)}
    with pytest.raises(JaxchatError, match="no target token"):
        bpb.evaluate_loss(graphdef, params, [no_targets])


def test_bpb_of_a_model_with_a_padded_vocabulary():
    """A 2026 model pads wte to a multiple of 64 rows; token_bytes covers the real vocabulary."""
    from flax import nnx

    from jaxchat.model import GPT, GPTConfig

    config = GPTConfig.from_depth_2026(1, vocab_size=300, sequence_len=64)
    assert config.padded_vocab_size == 320
    graphdef, params = split_params(GPT(config, rngs=nnx.Rngs(0)))
    value = bpb.evaluate_bpb(graphdef, params, hand_batches(300, [1, 2, 3]), np.ones(300, np.int32))
    assert math.isfinite(value) and value > 0


# ---- CORE: bundle, data order, prompts -----------------------------------------------------------


def test_load_bundle_reads_the_fixture(task_cache):
    tasks = core.load_bundle()
    assert [(t.label, t.task_type, t.num_fewshot, t.delimiter, t.random_baseline, len(t.items)) for t in tasks] == [
        ("hellaswag_zeroshot", "multiple_choice", 0, " ", 25.0, 6),
        ("winograd", "schema", 0, " ", 50.0, 5),
        ("lambada_openai", "language_modeling", 0, " ", 0.0, 5),
        ("squad", "language_modeling", 10, "\nAnswer: ", 0.0, 10),
    ]


def test_bundle_errors_name_file_and_fix(tmp_path):
    from tests.fixtures.tasks import write_eval_bundle

    with pytest.raises(JaxchatError, match=r"core.yaml is missing.*python -m jaxchat.data.download --only eval"):
        core.load_bundle(tmp_path / "nowhere")
    root = write_eval_bundle(tmp_path / "b1")
    (root / "eval_data/commonsense_reasoning/winograd_wsc.jsonl").write_text('{"context_options": ["a"], "gold": 0}\n')
    with pytest.raises(JaxchatError, match=r"winograd_wsc.jsonl line 1: schema item lacks continuation"):
        core.load_bundle(root)
    root = write_eval_bundle(tmp_path / "b2")
    text = (root / "eval_meta_data.csv").read_text().replace("winograd,", "winograd_renamed,")
    (root / "eval_meta_data.csv").write_text(text)
    with pytest.raises(JaxchatError, match=r"eval_meta_data.csv: no 'Eval Task' row for CORE task 'winograd'"):
        core.load_bundle(root)
    root = write_eval_bundle(tmp_path / "b3")
    (root / "core.yaml").write_text((root / "core.yaml").read_text().replace("icl_task_type: schema", "icl_task_type: cloze"))
    with pytest.raises(JaxchatError, match=r"icl_task_type 'cloze'"):
        core.load_bundle(root)


def test_prepare_items_shuffles_with_1337_then_crops():
    items = [{"i": i} for i in range(20)]
    full = core.prepare_items(items)
    expected = list(items)
    random.Random(1337).shuffle(expected)
    assert full == expected and full != items
    assert core.prepare_items(items, max_per_task=5) == expected[:5]
    assert [it["i"] for it in items] == list(range(20))  # the input is not mutated


def test_fewshot_examples_drawn_from_the_other_items():
    data = [{"i": i} for i in range(8)]
    shots = core.fewshot_examples(data, 3, 4)
    expected = random.Random(1234 + 3).sample([0, 1, 2, 4, 5, 6, 7], 4)
    assert [s["i"] for s in shots] == expected
    assert core.fewshot_examples(data, 3, 0) == []
    # More shots than other items: capped at len(data) - 1 (nanochat would raise).
    assert sorted(s["i"] for s in core.fewshot_examples(data[:4], 0, 10)) == [1, 2, 3]


def test_render_prompts_hand_written():
    mc_shot = {"query": "Q1: sky?", "choices": ["red", "blue"], "gold": 1}
    mc = {"query": "Q2: grass?", "choices": ["green", "pink"], "gold": 0}
    assert core.render_prompts(mc, "multiple_choice", " A: ", [mc_shot, mc_shot]) == [
        "Q1: sky? A: blue\n\nQ1: sky? A: blue\n\nQ2: grass? A: green",
        "Q1: sky? A: blue\n\nQ1: sky? A: blue\n\nQ2: grass? A: pink",
    ]
    sc_shot = {"context_options": ["Ann ran", "Bob ran"], "continuation": "fast.", "gold": 1}
    sc = {"context_options": ["It rained", "It shone"], "continuation": "today.", "gold": 0}
    assert core.render_prompts(sc, "schema", " ", [sc_shot]) == [
        "Bob ran fast.\n\nIt rained today.",
        "Bob ran fast.\n\nIt shone today.",
    ]
    lm_shot = {"context": "  Paris is in ", "continuation": "France"}
    lm = {"context": "Rome is in  ", "continuation": "Italy"}
    assert core.render_prompts(lm, "language_modeling", "\nAnswer: ", [lm_shot]) == [
        "Paris is in\nAnswer: France\n\nRome is in\nAnswer:",  # contexts trimmed, then the whole prompt stripped
        "Paris is in\nAnswer: France\n\nRome is in\nAnswer: Italy",
    ]


def test_render_prompts_match_nanochats_jinja_templates():
    jinja2 = pytest.importorskip("jinja2")
    # nanochat/core_eval.py's templates, verbatim.
    mc_t = jinja2.Template("""
{%- for example in fewshot_examples -%}
{{ example.query }}{{ continuation_delimiter }}{{ example.choices[example.gold] }}

{% endfor -%}
{{ item.query }}{{ continuation_delimiter }}{{ choice }}""".strip())
    sc_t = jinja2.Template("""
{%- for example in fewshot_examples -%}
{{ example.context_options[example.gold] }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ context }}{{ continuation_delimiter }}{{ item.continuation }}""".strip())
    lm_t = jinja2.Template("""
{%- for example in fewshot_examples -%}
{{ example.context | trim }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ item.context | trim }}{{ continuation_delimiter }}{% if include_continuation %}{{ item.continuation }}{% endif %}""".strip())
    rng = random.Random(0)
    words = ["alpha", " beta", "gamma ", "\tdelta", "eps\n", "zeta."]
    text = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 4)))  # noqa: E731
    for _ in range(30):
        k, delim = rng.randint(0, 3), rng.choice([" ", "\nAnswer: ", ": "])
        mcs = [{"query": text(), "choices": [text() for _ in range(3)], "gold": rng.randint(0, 2)} for _ in range(k + 1)]
        ctx = {"fewshot_examples": mcs[1:], "continuation_delimiter": delim, "item": mcs[0]}
        assert core.render_prompts(mcs[0], "multiple_choice", delim, mcs[1:]) == [
            mc_t.render(choice=c, **ctx) for c in mcs[0]["choices"]]
        scs = [{"context_options": [text(), text()], "continuation": text(), "gold": rng.randint(0, 1)}
               for _ in range(k + 1)]
        ctx = {"fewshot_examples": scs[1:], "continuation_delimiter": delim, "item": scs[0]}
        assert core.render_prompts(scs[0], "schema", delim, scs[1:]) == [
            sc_t.render(context=c, **ctx) for c in scs[0]["context_options"]]
        lms = [{"context": text(), "continuation": text()} for _ in range(k + 1)]
        ctx = {"fewshot_examples": lms[1:], "continuation_delimiter": delim, "item": lms[0]}
        assert core.render_prompts(lms[0], "language_modeling", delim, lms[1:]) == [
            lm_t.render(include_continuation=False, **ctx).strip(), lm_t.render(include_continuation=True, **ctx)]


# ---- CORE: token rows and spans ------------------------------------------------------------------


def test_common_length():
    assert core.common_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]], "left") == 2
    assert core.common_length([[9, 1, 2], [8, 7, 1, 2]], "right") == 2
    assert core.common_length([[1, 2], [1, 2, 3]], "left") == 2


def test_build_rows_multiple_choice(fineweb_tokenizer):
    tok = fineweb_tokenizer
    bos = tok.bos_token_id
    item = {"query": "A man is", "choices": [" happy.", " sad."], "gold": 0}
    rows = core.build_rows(tok, item, "multiple_choice", "", [], max_len=64)
    prefix = [bos, 65, 287, 285, 771]  # <|bos|> "A man is"
    assert rows.tokens == [prefix + tok.encode(" happy."), prefix + tok.encode(" sad.")]
    assert rows.starts == [5, 5]  # the continuation starts after the common prefix
    assert rows.ends == [len(t) for t in rows.tokens]


def test_build_rows_schema_uses_common_suffix(fineweb_tokenizer):
    tok = fineweb_tokenizer
    item = {"context_options": ["The trophy fit because the trophy", "The trophy fit because the case"],
            "continuation": "was small.", "gold": 1}
    rows = core.build_rows(tok, item, "schema", " ", [], max_len=64)
    suffix = tok.encode(" was small.")  # [326, 906, 732, 46]
    assert rows.tokens == [[tok.bos_token_id] + tok.encode(f"{o} was small.") for o in item["context_options"]]
    assert [t[s:e] for t, s, e in zip(rows.tokens, rows.starts, rows.ends)] == [suffix, suffix]
    assert rows.ends == [21, 20]


def test_build_rows_language_modeling(fineweb_tokenizer):
    tok = fineweb_tokenizer
    item = {"context": "She looked at the sky for a long ", "continuation": "time"}
    rows = core.build_rows(tok, item, "language_modeling", " ", [], max_len=64)
    context = tok.encode("She looked at the sky for a long")
    assert rows.tokens == [[tok.bos_token_id] + tok.encode("She looked at the sky for a long time")]
    assert rows.starts == [1 + len(context)] and rows.ends == [len(rows.tokens[0])]
    assert rows.tokens[0][rows.starts[0]:] == tok.encode(" time")


def test_build_rows_crop_keeps_the_last_tokens(fineweb_tokenizer):
    tok = fineweb_tokenizer
    item = {"query": "A man is", "choices": [" happy.", " sad."], "gold": 0}
    full = core.build_rows(tok, item, "multiple_choice", "", [], max_len=64)
    cropped = core.build_rows(tok, item, "multiple_choice", "", [], max_len=7)
    for t, c, s, cs, e, ce in zip(full.tokens, cropped.tokens, full.starts, cropped.starts, full.ends, cropped.ends):
        crop = max(0, len(t) - 7)
        assert c == t[-7:] if crop else c == t
        assert (cs, ce) == (s - crop, e - crop)
        assert c[cs:ce] == t[s:e]  # the same continuation tokens
    # A span cut at the front still keeps a predicting position (start >= 1).
    tiny = core.build_rows(tok, item, "multiple_choice", "", [], max_len=3)
    assert tiny.starts == [1, 1] and tiny.tokens[0] == full.tokens[0][-3:]


# ---- CORE: batched scoring vs an unbatched reference ---------------------------------------------


def test_score_all_matches_unpadded_reference(model):
    rng = np.random.default_rng(0)
    rows = core.Rows([], [], [])
    for length in (5, 9, 40, 70, 100, 128, 3):  # two buckets (64, 128), several calls, padding rows
        t = rng.integers(0, 1015, length).tolist()
        rows.tokens.append(t)
        rows.starts.append(int(rng.integers(1, length)))
        rows.ends.append(length)
    # A row whose continuation is exactly the model's greedy prediction: greedy_ok must be True.
    prompt = rng.integers(0, 1015, 10).tolist()
    seq = list(prompt)
    for _ in range(4):
        seq.append(int(np.argmax(model_logits(model, seq)[-1])))
    rows.tokens += [seq, seq[:-1] + [(seq[-1] + 1) % 1015]]
    rows.starts += [10, 10]
    rows.ends += [14, 14]
    rows.tokens.append([5, 6, 7])  # empty span: +inf loss, never correct
    rows.starts.append(3)
    rows.ends.append(3)

    graphdef, params = split_params(model)
    mean_loss, greedy_ok = core.score_all(graphdef, params, rows, pad_id=1015, max_len=128, tokens_per_batch=256)
    for i, (t, s, e) in enumerate(zip(rows.tokens[:-1], rows.starts, rows.ends)):
        logits = model_logits(model, t)
        lp = log_softmax(logits)
        nll = [-lp[p - 1, t[p]] for p in range(s, e)]
        assert mean_loss[i] == pytest.approx(np.mean(nll), rel=1e-4), i
        assert greedy_ok[i] == all(np.argmax(logits[p - 1]) == t[p] for p in range(s, e)), i
    assert greedy_ok[-3] and not greedy_ok[-2]
    assert mean_loss[-1] == np.inf and not greedy_ok[-1]


def test_buckets():
    assert core.buckets_for(2048) == [64, 128, 256, 512, 1024, 2048]
    assert core.buckets_for(100) == [64, 100]
    assert core.buckets_for(32) == [32]


def write_bundle(root: Path, tasks: list[dict], items: dict[str, list[dict]], baselines: dict[str, float]) -> Path:
    import yaml

    (root / "eval_data").mkdir(parents=True)
    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": tasks}))
    for uri, rows in items.items():
        (root / "eval_data" / uri).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval_meta_data.csv").write_text(
        "Eval Task,Random baseline\n" + "".join(f"{k},{v}\n" for k, v in baselines.items()))
    return root


@pytest.fixture
def controlled_bundle(tmp_path):
    tasks = [
        {"label": "mc", "dataset_uri": "mc.jsonl", "num_fewshot": [0], "icl_task_type": "multiple_choice"},
        {"label": "sc", "dataset_uri": "sc.jsonl", "num_fewshot": [1, 5], "icl_task_type": "schema"},
        {"label": "lm", "dataset_uri": "lm.jsonl", "num_fewshot": [0], "icl_task_type": "language_modeling"},
    ]
    items = {
        # The model below prefers the choice with the word "good"; gold is right for 3 of 4 items.
        "mc.jsonl": [{"query": f"Item {i} is", "choices": [" bad", " good", " ugly"], "gold": g}
                     for i, g in enumerate([1, 1, 0, 1])],
        "sc.jsonl": [{"context_options": [f"good {i}", f"meh {i}"], "continuation": "end.", "gold": 0}
                     for i in range(2)],
        "lm.jsonl": [{"context": f"Context {i}", "continuation": "good" if i < 1 else "other"} for i in range(4)],
    }
    return write_bundle(tmp_path / "bundle", tasks, items, {"mc": 33.333, "sc": 50, "lm": 0})


def test_scoring_rules_and_centring_with_controlled_losses(controlled_bundle, fineweb_tokenizer, model, monkeypatch):
    tok = fineweb_tokenizer
    seen = []

    def fake_score_all(graphdef, params, rows, pad_id, max_len, tokens_per_batch=0):
        # Loss 1 for rows mentioning "good", 2 otherwise, a tie-breaking 5 for "ugly"; greedy right on "good".
        texts = [tok.decode(t[s:e]) for t, s, e in zip(rows.tokens, rows.starts, rows.ends)]
        seen.extend(tok.decode(t) for t in rows.tokens)
        loss = np.array([1.0 if "good" in tok.decode(t) else 5.0 if "ugly" in x else 2.0
                         for t, x in zip(rows.tokens, texts)])
        return loss, np.array(["good" in x for x in texts])

    monkeypatch.setattr(core, "score_all", fake_score_all)
    graphdef, params = split_params(model)
    result = core.evaluate_core(graphdef, params, tok, controlled_bundle, progress=False)
    tasks = result["tasks"]
    assert tasks["mc"]["accuracy"] == pytest.approx(0.75)
    assert tasks["mc"]["centered"] == pytest.approx((0.75 - 0.33333) / (1 - 0.33333))
    # schema: 1-shot; option 0 ("good i") always wins -> gold 0 -> all correct.
    assert tasks["sc"] == {"accuracy": 1.0, "centered": 1.0}
    assert tasks["lm"]["accuracy"] == pytest.approx(0.25)
    assert result["core"] == pytest.approx(np.mean([t["centered"] for t in tasks.values()]))
    # schema prompts carry one few-shot example (num_fewshot [1, 5] -> 1) followed by a blank line.
    assert any(s.startswith("<|bos|>good ") and "end.\n\n" in s for s in seen)


def test_ties_pick_the_first_option(controlled_bundle, fineweb_tokenizer, model, monkeypatch):
    monkeypatch.setattr(core, "score_all", lambda g, p, rows, *a, **k: (np.zeros(len(rows.tokens)),
                                                                        np.zeros(len(rows.tokens), bool)))
    graphdef, params = split_params(model)
    tasks = core.evaluate_core(graphdef, params, fineweb_tokenizer, controlled_bundle, progress=False)["tasks"]
    assert tasks["mc"]["accuracy"] == pytest.approx(0.25)  # only the gold-0 item
    assert tasks["sc"]["accuracy"] == 1.0


def test_centered():
    assert core.centered(0.5, 25) == pytest.approx(1 / 3)
    assert core.centered(0.25, 25) == pytest.approx(0.0)
    assert core.centered(0.0, 50) == pytest.approx(-1.0)


def test_evaluate_core_real_model_matches_unbatched_reference(task_cache, fineweb_tokenizer, model):
    """The batched, bucketed, padded path equals scoring each item alone with the plain model."""
    tok = fineweb_tokenizer
    graphdef, params = split_params(model)
    result = core.evaluate_core(graphdef, params, tok, max_per_task=4, progress=False, tokens_per_batch=512)
    assert list(result["tasks"]) == ["hellaswag_zeroshot", "winograd", "lambada_openai", "squad"]
    for task in core.load_bundle():
        data = core.prepare_items(task.items, 4)
        correct = 0
        for idx, item in enumerate(data):
            rows = core.build_rows(tok, item, task.task_type, task.delimiter,
                                   core.fewshot_examples(data, idx, task.num_fewshot), model.config.sequence_len)
            scores, greedy = [], []
            for t, s, e in zip(rows.tokens, rows.starts, rows.ends):
                logits = model_logits(model, t)
                lp = log_softmax(logits)
                scores.append(np.mean([-lp[p - 1, t[p]] for p in range(s, e)]))
                greedy.append(all(np.argmax(logits[p - 1]) == t[p] for p in range(s, e)))
            correct += greedy[0] if task.task_type == "language_modeling" else int(np.argmin(scores)) == item["gold"]
        accuracy = correct / len(data)
        assert result["tasks"][task.label]["accuracy"] == pytest.approx(accuracy), task.label
        assert result["tasks"][task.label]["centered"] == pytest.approx(core.centered(accuracy, task.random_baseline))


def test_evaluate_core_missing_bundle(tmp_path, monkeypatch, model, fineweb_tokenizer):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    graphdef, params = split_params(model)
    with pytest.raises(JaxchatError, match=r"eval_bundle/core.yaml is missing.*--only eval"):
        core.evaluate_core(graphdef, params, fineweb_tokenizer, progress=False)
    with pytest.raises(JaxchatError, match="max_per_task is 0"):
        core.evaluate_core(graphdef, params, fineweb_tokenizer, max_per_task=0, progress=False)


# ---- chat eval -----------------------------------------------------------------------------------


class ListTask:
    """A minimal task over given conversations that records what it was asked to evaluate."""

    def __init__(self, conversations, eval_type="categorical", judge=None):
        self.conversations, self.eval_type, self.name = conversations, eval_type, "list"
        self.judge = judge or (lambda conv, completion: completion == conv["messages"][-1]["content"])
        self.seen = []

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, i):
        return self.conversations[i]

    def evaluate(self, conv, completion):
        self.seen.append(completion)
        return self.judge(conv, completion)


def mc_conversation(question: str, answer: str, letters=("A", "B", "C", "D")):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "letters": list(letters)}


def test_run_categorical_picks_the_argmax_allowed_letter(fineweb_tokenizer, model, monkeypatch):
    tok = fineweb_tokenizer
    letter_id = {x: tok.encode(x)[0] for x in "ABCD"}
    calls = []

    def fake_logits(graphdef, params, tokens, positions):
        calls.append(tokens.shape)
        logits = np.zeros((tokens.shape[0], 1024), np.float32)
        logits[:, letter_id["A"]] = 1.0
        logits[:, letter_id["C"]] = 3.0  # best allowed letter when C is allowed
        logits[:, letter_id["D"]] = 9.0  # best overall, but only some rows allow D
        logits[:, 500] = 20.0  # not a letter: never chosen
        return logits

    monkeypatch.setattr(chat, "answer_logits", fake_logits)
    convs = [mc_conversation("q1", "C", "ABC"), mc_conversation("q2", "D"), mc_conversation("q3", "C"),
             mc_conversation("q4", "A", "AB"), mc_conversation("q5", "B", "AB")]
    task = ListTask(convs)
    graphdef, params = split_params(model)
    acc = chat.run_categorical(graphdef, params, tok, task, batch_size=2)
    assert task.seen == ["C", "D", "D", "A", "A"]
    assert acc == pytest.approx(3 / 5)
    assert calls == [(2, 64)] * 3  # static shapes: the last batch is padded to 2 rows
    assert chat.run_categorical(graphdef, params, tok, task, batch_size=2, max_problems=2) == 1.0


def test_run_categorical_real_model_matches_direct_logits(task_cache, fineweb_tokenizer, model):
    from jaxchat.tasks import ARC

    tok = fineweb_tokenizer
    task = ListTask([ARC("ARC-Easy", "test")[i] for i in range(7)])  # labels 1-4, 3 and 5 choices included
    graphdef, params = split_params(model)
    acc = chat.run_categorical(graphdef, params, tok, task, batch_size=3)
    expected, lengths = [], []
    for conv in task.conversations:
        prompt = tok.render_for_completion(conv)
        lengths.append(len(prompt))
        logits = model_logits(model, prompt[-model.config.sequence_len:])[-1]  # longer prompts keep their end
        ids = [tok.encode(x)[0] for x in conv["letters"]]
        expected.append(conv["letters"][int(np.argmax(logits[ids]))])
    assert task.seen == expected
    assert acc == pytest.approx(np.mean([e == c["messages"][-1]["content"] for e, c in zip(expected, task.conversations)]))
    assert max(lengths) > model.config.sequence_len > min(lengths)  # both the cropped and the plain case ran


def test_run_categorical_rejects_multi_token_letters(fineweb_tokenizer, model):
    graphdef, params = split_params(model)
    task = ListTask([mc_conversation("q", "AB", ("AB", "CD"))])
    with pytest.raises(JaxchatError, match="answer letter 'AB' encodes to 2 tokens"):
        chat.run_categorical(graphdef, params, fineweb_tokenizer, task)


class FakeEngine:
    """Returns given completions (as text) for every prompt: pass@k logic without sampling."""

    def __init__(self, tokenizer, completions, max_len=100):
        self.tokenizer, self.completions, self.max_len = tokenizer, completions, max_len
        self.calls = []

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        self.calls.append((num_samples, kwargs))
        rows = [list(tokens) + self.tokenizer.encode(c) for c in self.completions[:num_samples]]
        return rows, [[0] * len(r) for r in rows]


def test_run_generative_pass_at_k(fineweb_tokenizer):
    tok = fineweb_tokenizer
    convs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "#### 4"}]}
             for i in range(3)]
    task = ListTask(convs, "generative", judge=lambda conv, c: c == "#### 4")
    engine = FakeEngine(tok, ["#### 3", "#### 4", "#### 5"])
    assert chat.run_generative(engine, tok, task, num_samples=1) == 0.0
    assert chat.run_generative(engine, tok, task, num_samples=3, temperature=0.7, top_k=10) == 1.0
    assert engine.calls[-1] == (3, {"max_tokens": 512, "temperature": 0.7, "top_k": 10})
    assert task.seen[-2:] == ["#### 3", "#### 4"]  # any(): stops at the first passing sample
    # A prompt with no room under the engine's max_len counts as failed (no crash).
    assert chat.run_generative(FakeEngine(tok, ["#### 4"], max_len=5), tok, task) == 0.0


def test_run_generative_through_the_real_engine(task_cache, fineweb_tokenizer, model):
    from jaxchat.engine import Engine

    tok = fineweb_tokenizer
    ends = {tok.encode_special("<|assistant_end|>"), tok.bos_token_id}
    convs = [{"messages": [{"role": "user", "content": f"How many r are in {w}?"},
                           {"role": "assistant", "content": "#### 1"}]} for w in ("strawberry", "apple")]
    task = ListTask(convs, "generative", judge=lambda conv, c: True)
    acc = chat.run_generative(Engine(model, tok), tok, task, max_new_tokens=6)
    assert acc == 1.0
    for conv, completion in zip(convs, task.seen):  # greedy decoding, checked with the plain model
        seq = tok.render_for_completion(conv)
        n = len(seq)
        for _ in range(6):
            nxt = int(np.argmax(model_logits(model, seq)[-1]))
            if nxt in ends:
                break
            seq.append(nxt)
        assert completion == tok.decode(seq[n:])


def test_chatcore():
    assert chat.chatcore({"ARC-Easy": 0.5, "GSM8K": 0.1}) == pytest.approx(((0.5 - 0.25) / 0.75 + 0.1) / 2)
    assert chat.chatcore({"MMLU": 0.25, "HumanEval": 0.0, "SpellingBee": 0.0}) == 0.0
    with pytest.raises(JaxchatError, match="unknown task"):
        chat.chatcore({"TriviaQA": 0.3})


def test_parse_task_names():
    assert chat.parse_task_names("all") == list(chat.ALL_TASKS)
    assert chat.parse_task_names("GSM8K,ARC-Easy,GSM8K") == ["GSM8K", "ARC-Easy"]
    assert chat.parse_task_names("GSM8K|ARC-Easy") == ["GSM8K", "ARC-Easy"]  # the old separator still works
    with pytest.raises(JaxchatError, match="unknown task 'arc'"):
        chat.parse_task_names("arc")


@pytest.mark.slow
def test_evaluate_chat_all_tasks(task_cache, fineweb_tokenizer, model):
    result = chat.evaluate_chat(model, fineweb_tokenizer, chat.ALL_TASKS, max_problems=2, max_new_tokens=4,
                                progress=False)
    assert set(result["tasks"]) == set(chat.ALL_TASKS)
    assert result["chatcore"] == pytest.approx(chat.chatcore(result["tasks"]))


# ---- CLIs ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_checkpoint(monkeypatch, fineweb_tokenizer, model):
    """``load_model`` (where the CLIs import it from) returns the tiny model; there is no mid checkpoint."""
    import jaxchat.model.load

    calls = []

    def load_model(stage, tag=None, step=None, **kwargs):
        calls.append((stage, tag, step))
        if stage == "mid":
            raise JaxchatError("no mid checkpoint in /x/checkpoints/mid; train one with `...`")
        return model, fineweb_tokenizer, {"step": 7, "checkpoint": f"/x/checkpoints/{stage}/d1/7"}

    monkeypatch.setattr(jaxchat.model.load, "load_model", load_model)
    return calls


@pytest.fixture
def report_home(tmp_path, monkeypatch) -> Path:
    """Report files go to a temp dir (the task cache template is shared and read-only)."""
    import jaxchat.report

    monkeypatch.setattr(jaxchat.report, "report_dir", lambda home=None: tmp_path / "report")
    return tmp_path / "report"


def test_chat_cli(task_cache, fake_checkpoint, report_home, capsys):
    assert chat.main(["--chat_eval.source=sft", "--chat_eval.tasks=ARC-Easy,MMLU", "--chat_eval.max_problems", "3",
                      "--tag=d1", "--step=7"]) == 0
    assert fake_checkpoint == [("sft", "d1", 7)]
    out = capsys.readouterr().out
    assert "ARC-Easy" in out and "MMLU" in out and "ChatCORE" not in out
    saved = json.loads((report_home / "chat-eval-sft.json").read_text())
    assert set(saved["metrics"]) == {"ARC-Easy", "MMLU"}
    body = saved["sections"][0]["markdown"]
    assert "| MMLU |" in body and "tag: d1" in body and "step: 7" in body
    assert chat.main(["--chat_eval.source=mid", "--chat_eval.tasks=MMLU"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no mid checkpoint") and err.count("\n") == 1
    assert fake_checkpoint[-1] == ("mid", None, None)  # tag "" and step -1: the latest
    assert chat.main(["--chat_eval.tasks=ARC-Easy|Trivia"]) == 2
    assert "unknown task 'Trivia'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--chat_eval.source=rl"], ("--chat_eval.source", "'rl'", "base, mid, sft")),  # worded by jaxchat.stages
    (["--chat_eval.temperature=-1"], "--chat_eval.temperature=-1: expected a number >= 0"),
    (["--chat_eval.top_k=-5"], "--chat_eval.top_k=-5: expected a number >= 1, or 0"),
    (["--chat_eval.num_samples=0"], "--chat_eval.num_samples=0: expected a positive number"),
    (["--chat_eval.max_problems=0"], "--chat_eval.max_problems=0: expected -1 (all) or a positive number"),
    (["--step=-2"], "--step=-2: expected a checkpoint step >= 0, or -1"),
    (["--chat_eval.batch_size=x"], "chat_eval.batch_size='x': expected int"),
    (["--max_problems=3"], "unknown config key 'max_problems' (did you mean chat_eval.max_problems?)"),
    (["-i", "sft"], "unexpected argument '-i'; expected --key=value"),
])
def test_chat_cli_refuses_bad_settings_before_loading(fake_checkpoint, capsys, argv, message):
    assert chat.main(argv) == 2
    err = capsys.readouterr().err
    parts = (message,) if isinstance(message, str) else message
    assert err.startswith("error: ") and all(part in err for part in parts) and err.count("\n") == 1
    assert fake_checkpoint == []


def test_chat_cli_help_lists_its_keys(capsys):
    out = help_listing_every_key(chat.main, chat.ChatEvalConfig(), capsys)
    assert out.startswith(chat.__doc__.strip()[:40]) and "--chat_eval.tasks=" in out  # the usage examples
    assert "--chat_eval.source = 'sft'" in out and "--chat_eval.num_samples = 1" in out and "--step = -1" in out


def test_recipe_chat_eval_runs_the_eval_with_the_run_config(monkeypatch):
    """``train.py --stage=chat_eval`` / ``all``: the eval CLI's config built from cfg.chat_eval and the run tag."""
    from jaxchat import recipe
    from jaxchat.config import ChatEvalSection, RunConfig, override

    calls = []
    monkeypatch.setattr(chat, "run", calls.append)
    cfg = override(RunConfig(), {"tag": "t1", "chat_eval.max_problems": "5", "chat_eval.tasks": "GSM8K,MMLU",
                                 "chat_eval.num_samples": "2"})
    recipe.chat_eval(cfg, "mid")
    recipe.chat_eval(cfg)
    assert [c.chat_eval.source for c in calls] == ["mid", "sft"]
    assert calls[0] == chat.ChatEvalConfig(tag="t1", step=-1, chat_eval=ChatEvalSection(
        source="mid", tasks="GSM8K,MMLU", max_problems=5, num_samples=2))


def test_base_cli_core_only(task_cache, fake_checkpoint, report_home, capsys):
    from jaxchat.eval import base

    assert base.main(["--source=base", "--skip_bpb", "--core_max_per_task=3"]) == 0
    assert fake_checkpoint == [("base", None, None)]
    out = capsys.readouterr().out
    assert "hellaswag_zeroshot" in out and "CORE" in out and "val bpb" not in out
    saved = json.loads((report_home / "base-eval.json").read_text())
    core_line = re.search(r"^CORE\s+([-0-9.]+)$", out, re.MULTILINE)
    assert saved["metrics"] == {"CORE": pytest.approx(float(core_line.group(1)), abs=1e-4)}
    assert "| squad |" in saved["sections"][0]["markdown"]
    assert base.main(["--skip-bpb", "--skip-core"]) == 2  # dashes work too
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and err.count("\n") == 1
    assert base.main(["--source=mid", "--skip_bpb"]) == 2
    assert capsys.readouterr().err.startswith("error: no mid checkpoint")


@pytest.mark.parametrize("argv, message", [
    (["--source=rl"], ("--source", "'rl'", "base, mid, sft")),  # worded by jaxchat.stages
    (["--core_max_per_task=0"], "--core_max_per_task=0: expected -1 (all) or a positive number"),
    (["--bpb_tokens=0"], "--bpb_tokens=0: expected a positive number"),
    (["--device_batch_size=-3"], "--device_batch_size=-3: expected a positive number"),
    (["--step=-7"], "--step=-7: expected a checkpoint step"),
    (["--skip_core=maybe"], "skip_core='maybe': expected bool"),
    (["--core-max-per-tsk=5"], "unknown config key 'core_max_per_tsk'"),
])
def test_base_cli_refuses_bad_settings_before_loading(fake_checkpoint, capsys, argv, message):
    from jaxchat.eval import base

    assert base.main(argv) == 2
    err = capsys.readouterr().err
    parts = (message,) if isinstance(message, str) else message
    assert err.startswith("error: ") and all(part in err for part in parts) and err.count("\n") == 1
    assert fake_checkpoint == []


def test_base_cli_help_lists_its_keys(capsys):
    from jaxchat.eval import base

    out = help_listing_every_key(base.main, base.BaseEvalConfig(), capsys)
    assert "--core_max_per_task=500" in out  # the usage examples
    assert "--source = 'base'" in out and "--skip_core = False  [bool]" in out


def test_val_bpb_on_the_val_shard(fineweb_dir, fineweb_tokenizer, model):
    """val_bpb streams the LAST shard through the pretraining pipeline; checked against NumPy."""
    from jaxchat.data.pretrain import val_batches
    from jaxchat.eval import base

    tok = fineweb_tokenizer
    graphdef, params = split_params(model)
    got = base.val_bpb(graphdef, params, tok, seq_len=128, bpb_tokens=2 * 4 * 128, device_batch_size=4,
                       data_dir=fineweb_dir)
    batches = val_batches([sorted(fineweb_dir.glob("shard_*.parquet"))[-1]], tok, rows=4, seq_len=128, num_batches=2)
    nats = n_bytes = 0.0
    for b in batches:
        lp = log_softmax(forward(model, b["inputs"]))
        t = b["targets"]
        nll = -np.take_along_axis(lp, t[..., None], axis=-1)[..., 0]
        w = tok.token_bytes[t]
        nats, n_bytes = nats + nll[w > 0].sum(), n_bytes + w.sum()
    assert got == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)
    with pytest.raises(JaxchatError, match="lower the number of val tokens"):
        base.val_bpb(graphdef, params, tok, seq_len=128, bpb_tokens=10**9, device_batch_size=4, data_dir=fineweb_dir)


def test_base_cli_bpb_and_core(tmp_path, monkeypatch, fake_checkpoint, report_home, capsys):
    from tests.fixtures.fineweb import write_fineweb_shards
    from tests.fixtures.tasks import write_eval_bundle

    from jaxchat.eval import base

    write_fineweb_shards(tmp_path / "base_data", n_shards=2, docs_per_shard=60)
    write_eval_bundle(tmp_path / "eval_bundle")
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert base.main(["--source=base", "--bpb_tokens=1024", "--device_batch_size=4", "--core_max_per_task=2"]) == 0
    out = capsys.readouterr().out
    table_bpb = re.search(r"^val bpb\s+([0-9.]+)$", out, re.MULTILINE)  # the table's row
    assert table_bpb and 0 < float(table_bpb.group(1)) < 20
    assert "CORE" in out and "lambada_openai" in out
    assert set(json.loads((report_home / "base-eval.json").read_text())["metrics"]) == {"CORE", "val bpb"}


def test_load_bundle_is_cached_until_a_file_changes(tmp_path):
    from tests.fixtures.tasks import write_eval_bundle

    root = write_eval_bundle(tmp_path / "bundle")
    first = core.load_bundle(root)
    assert core.load_bundle(root) is first
    path = root / "eval_data/language_understanding/lambada_openai.jsonl"
    path.write_text('{"context": "One more", "continuation": " line"}\n' + path.read_text())
    again = core.load_bundle(root)
    assert again is not first and len(again[2].items) == 6
