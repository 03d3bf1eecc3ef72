"""The inference Engine: KV-cache decoding vs full recompute, sampling, seeds, tool use, static shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxchat import GPT, GPTConfig, JaxchatError
from jaxchat.engine import Engine, bucket_length
from jaxchat.engine import engine as engine_module


def tiny_config(vocab_size: int, sequence_len: int = 64) -> GPTConfig:
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=64)


def random_model(vocab_size: int, seed: int = 0, sequence_len: int = 64) -> GPT:
    """A tiny float32 GPT with every weight random (nanochat zero-inits lm_head and the c_projs,
    which would make every logit 0)."""
    model = GPT(tiny_config(vocab_size, sequence_len), rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [jax.random.normal(k, a.shape, a.dtype) * (0.3 if a.shape[-1] == vocab_size else 0.1)
              if not np.any(a) else a for k, a in zip(keys, leaves)]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, leaves))
    return nnx.merge(graphdef, state)


def scripted_model(vocab_size: int, transitions: dict[int, int], default: int, sequence_len: int = 64) -> GPT:
    """A real GPT whose greedy next token is ``transitions.get(current_token, default)``.

    At init the attention and MLP output projections are zero, so every block is the identity and
    the model is a bigram table: logits = rmsnorm(rmsnorm(wte[token])) @ lm_head. Each scripted token
    gets its own embedding axis, every other token shares axis 0, and lm_head maps axes to successors.
    """
    config = tiny_config(vocab_size, sequence_len)
    assert len(transitions) < config.n_embd
    model = GPT(config, rngs=nnx.Rngs(0))
    embedding = np.zeros((vocab_size, config.n_embd), np.float32)
    embedding[:, 0] = 1.0
    head = np.zeros((config.n_embd, vocab_size), np.float32)
    head[0, default] = 10.0
    for axis, (token, successor) in enumerate(transitions.items(), start=1):
        embedding[token] = 0.0
        embedding[token, axis] = 1.0
        head[axis, successor] = 10.0
    model.wte.embedding[...] = jnp.asarray(embedding)
    model.lm_head.kernel[...] = jnp.asarray(head)
    return model


def chain(*tokens: int) -> dict[int, int]:
    """Transitions making the model walk ``tokens`` in order."""
    return dict(zip(tokens[:-1], tokens[1:]))


@pytest.fixture(scope="module")
def tok(fineweb_tokenizer):
    return fineweb_tokenizer


@pytest.fixture(scope="module")
def special(tok):
    return {name.strip("<|>"): tok.encode_special(name) for name in tok.special_tokens}


@pytest.fixture(scope="module")
def random_engine(tok):
    model = random_model(tok.get_vocab_size())
    return model, Engine(model, tok)


# Jitted: run eagerly, each of the model's ops would compile on its own (seconds on 2 cores).
forward = nnx.jit(GPT.__call__)


def prompt_ids(tok, text: str = "The student explains the history of the river.") -> list[int]:
    return tok.render_for_completion({"messages": [{"role": "user", "content": text}]})


def reference_greedy(model: GPT, prompt: list[int], steps: int, stop: set[int]) -> list[int]:
    """Recompute the full forward for every new token: argmax of model(idx)[:, -1].

    idx is right-padded to the model's sequence_len so one compilation serves every length; by
    causality the logits at position len(idx)-1 are those of model(idx)[:, -1].
    """
    seq = model.config.sequence_len
    last_logits = jax.jit(lambda padded, n: model(padded)[0, n - 1])
    idx = list(prompt)
    out = []
    for _ in range(steps):
        padded = np.zeros((1, seq), np.int32)
        padded[0, :len(idx)] = idx
        token = int(jnp.argmax(last_logits(padded, len(idx))))
        out.append(token)
        if token in stop:
            break
        idx.append(token)
    return out


def test_reference_padding_is_causal(random_engine, tok):
    """The padded reference really is model(idx)[:, -1] (unpadded)."""
    model, _ = random_engine
    prompt = prompt_ids(tok)
    expected = int(jnp.argmax(forward(model, jnp.asarray([prompt], jnp.int32))[0, -1]))
    assert reference_greedy(model, prompt, 1, set()) == [expected]


# ---- greedy KV-cache decoding is exact --------------------------------------------------------------

@pytest.mark.parametrize("text", ["Hello there", "The student explains the history of the river."])
def test_greedy_kv_cache_matches_full_recompute(random_engine, tok, special, text):
    model, engine = random_engine
    prompt = prompt_ids(tok, text)
    max_tokens = 64 - len(prompt) - 1
    stop = {special["assistant_end"], special["bos"]}
    expected = reference_greedy(model, prompt, max_tokens, stop)
    columns = [column for column, _ in engine.generate(prompt, num_samples=3, max_tokens=max_tokens, temperature=0.0)]
    assert special["python_start"] not in expected  # pure sampling path: no tool output forced
    for row in range(3):  # every row of the repeated cache decodes the same
        assert [column[row] for column in columns] == expected
    assert len(expected) > 20  # a long run crossing cache positions beyond the prompt bucket


def test_generate_batch_includes_prompt_and_stops_at_assistant_end(tok, special):
    a, b = tok.encode("hello")[:2]
    model = scripted_model(tok.get_vocab_size(), chain(special["assistant_start"], a, b, special["assistant_end"]),
                           default=special["bos"])
    engine = Engine(model, tok)
    prompt = prompt_ids(tok)
    results, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=10, temperature=0.0)
    assert results == [prompt + [a, b]] * 2
    assert masks == [[0] * len(prompt) + [1, 1]] * 2
    cut, cut_masks = engine.generate_batch(prompt, max_tokens=1, temperature=0.0)
    assert cut == [prompt + [a]] and cut_masks == [[0] * len(prompt) + [1]]


def test_bos_also_stops_a_row(tok, special):
    a = tok.encode("hello")[0]
    model = scripted_model(tok.get_vocab_size(), chain(special["assistant_start"], a, special["bos"]), default=a)
    steps = list(Engine(model, tok).generate(prompt_ids(tok), max_tokens=10, temperature=0.0))
    assert [column for column, _ in steps] == [[a], [special["bos"]]]


# ---- tool use --------------------------------------------------------------------------------------

def test_tool_call_forces_calculator_output_through_the_model(tok, special):
    expr = tok.encode("7*6")
    assert len(set(expr)) == len(expr)
    filler = tok.encode("x")[0]
    transitions = chain(special["assistant_start"], special["python_start"], *expr, special["python_end"], filler)
    transitions[special["output_end"]] = special["assistant_end"]  # only reachable if forced tokens are fed
    model = scripted_model(tok.get_vocab_size(), transitions, default=filler)
    engine = Engine(model, tok)
    steps = list(engine.generate(prompt_ids(tok), max_tokens=30, temperature=0.0))
    tokens = [column[0] for column, _ in steps]
    masks = [m[0] for _, m in steps]
    forced = [special["output_start"], *tok.encode("42"), special["output_end"]]
    assert tokens == [special["python_start"], *expr, special["python_end"], *forced, special["assistant_end"]]
    assert masks == [1] * (len(expr) + 2) + [0] * len(forced) + [1]
    results, result_masks = engine.generate_batch(prompt_ids(tok), num_samples=2, max_tokens=30, temperature=0.0)
    assert [r[-len(forced):] for r in results] == [forced, forced]
    assert [m[-len(forced):] for m in result_masks] == [[0] * len(forced)] * 2


def test_prompt_ending_inside_a_python_block_continues_it(tok, special):
    seven, times, six = tok.encode("7*6")
    filler = tok.encode("x")[0]
    transitions = chain(times, six, special["python_end"], filler)
    transitions[special["output_end"]] = special["assistant_end"]
    model = scripted_model(tok.get_vocab_size(), transitions, default=filler)
    prompt = prompt_ids(tok) + [special["python_start"], seven, times]
    tokens = [column[0] for column, _ in Engine(model, tok).generate(prompt, max_tokens=20, temperature=0.0)]
    # "7*" came from the prompt, "6" from the model: the calculator sees 7*6, not 6.
    assert tokens == [six, special["python_end"], special["output_start"], *tok.encode("42"),
                      special["output_end"], special["assistant_end"]]


def test_refused_tool_call_forces_nothing(tok, special):
    name = tok.encode("x")[0]  # a bare name: the calculator refuses it
    after = tok.encode("hello")[0]
    transitions = chain(special["assistant_start"], special["python_start"], name, special["python_end"], after,
                        special["assistant_end"])
    model = scripted_model(tok.get_vocab_size(), transitions, default=after)
    steps = list(Engine(model, tok).generate(prompt_ids(tok), max_tokens=20, temperature=0.0))
    assert [c[0] for c, _ in steps] == [special["python_start"], name, special["python_end"], after,
                                        special["assistant_end"]]
    assert all(m == [1] for _, m in steps)


def test_rows_finish_independently(tok, special, monkeypatch):
    """Row 0 stops at once, row 1 keeps going; generation ends when both are done."""
    a = tok.encode("hello")[0]
    end = special["assistant_end"]
    model = scripted_model(tok.get_vocab_size(), chain(special["assistant_start"], a, a), default=a)
    engine = Engine(model, tok)
    script = iter([[end, a], [a, a], [a, end], [a, a]])
    real_advance = engine._advance
    monkeypatch.setattr(engine, "_advance", lambda rows, sampled: real_advance(rows, next(script)))
    results, _ = engine.generate_batch(prompt_ids(tok), num_samples=2, max_tokens=10, temperature=0.0)
    prompt = prompt_ids(tok)
    assert results == [prompt, prompt + [a, a]]


# ---- sampling ---------------------------------------------------------------------------------------

def test_seed_reproducible_and_rows_differ(random_engine, tok):
    _, engine = random_engine
    prompt = prompt_ids(tok)
    kwargs = dict(num_samples=4, max_tokens=12, temperature=1.0)
    first, _ = engine.generate_batch(prompt, seed=1, **kwargs)
    again, _ = engine.generate_batch(prompt, seed=1, **kwargs)
    other, _ = engine.generate_batch(prompt, seed=2, **kwargs)
    assert first == again
    assert first != other
    assert len({tuple(row) for row in first}) == 4


def test_each_row_samples_its_own_first_token(random_engine, tok):
    """Upstream 8f979a8 broadcast row 0's first token to every row."""
    _, engine = random_engine
    (column, masks), = engine.generate(prompt_ids(tok), num_samples=16, max_tokens=1, temperature=2.0)
    assert len(set(column)) > 4 and masks == [1] * 16


def test_top_k_restricts_to_the_k_likeliest(random_engine, tok):
    model, engine = random_engine
    prompt = prompt_ids(tok)
    logits = forward(model, jnp.asarray([prompt], jnp.int32))[0, -1]
    top3 = set(np.argsort(np.asarray(logits))[-3:].tolist())
    (column, _), = engine.generate(prompt, num_samples=32, max_tokens=1, temperature=5.0, top_k=3)
    assert set(column) <= top3 and len(set(column)) > 1
    (column, _), = engine.generate(prompt, num_samples=8, max_tokens=1, temperature=5.0, top_k=1)
    assert column == [int(np.argmax(logits))] * 8


# ---- shapes, limits, errors --------------------------------------------------------------------------

def test_bucket_length():
    assert [bucket_length(n, 2048) for n in (1, 16, 17, 33, 100, 1024, 1025)] == [16, 16, 32, 64, 128, 1024, 2048]
    assert bucket_length(3000, 2048) == 2048 and bucket_length(70, 100) == 100


def test_static_shapes_compile_once_per_bucket(tok, special):
    model = random_model(tok.get_vocab_size(), seed=3, sequence_len=128)
    engine = Engine(model, tok)

    def compilations():
        return engine._prefill._cache_size(), engine._step._cache_size()

    before = compilations()
    base = [special["bos"], special["user_start"]]
    for n in (0, 3, 6):  # prompts of 2, 5, 8 tokens: one prompt bucket (16), one cache bucket (16)
        list(engine.generate(base + tok.encode("hello world again")[:n], max_tokens=5, temperature=0.0))
    assert compilations() == (before[0] + 1, before[1] + 1)
    list(engine.generate(base, max_tokens=5, temperature=0.7, seed=9))  # greedy → sampling: one more
    list(engine.generate(base, max_tokens=5, temperature=1.3, seed=9))  # another temperature: none
    assert compilations() == (before[0] + 2, before[1] + 2)
    # Another engine on the same architecture shares the compilations.
    other = Engine(random_model(tok.get_vocab_size(), seed=4, sequence_len=128), tok)
    list(other.generate(base, max_tokens=5, temperature=0.0))
    assert compilations() == (before[0] + 2, before[1] + 2)


def test_max_len_caps_generation(tok, special):
    a = tok.encode("hello")[0]
    model = scripted_model(tok.get_vocab_size(), {}, default=a)  # never stops by itself
    engine = Engine(model, tok, max_len=24)
    prompt = prompt_ids(tok, "hi")
    steps = list(engine.generate(prompt, max_tokens=None, temperature=0.0))
    assert len(steps) == 24 - len(prompt)
    with pytest.raises(JaxchatError, match="max_len is 24"):
        next(engine.generate(prompt + [a] * (24 - len(prompt)), temperature=0.0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_samples=0), "num_samples"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
])
def test_bad_arguments_are_clear_errors(random_engine, tok, kwargs, match):
    _, engine = random_engine
    with pytest.raises(JaxchatError, match=match):
        next(engine.generate(prompt_ids(tok), **kwargs))


def test_bad_prompts_are_clear_errors(random_engine, tok):
    _, engine = random_engine
    with pytest.raises(JaxchatError, match="non-empty list"):
        next(engine.generate([]))
    with pytest.raises(JaxchatError, match=r"prompt token #1 is 5000"):
        next(engine.generate([1, 5000]))


def test_tokenizer_larger_than_model_is_rejected(tok):
    with pytest.raises(JaxchatError, match="vocab_size"):
        Engine(GPT(tiny_config(512), rngs=nnx.Rngs(0)), tok)


def test_host_syncs_once_per_step(tok, monkeypatch):
    """The loop reads exactly one device array (the sampled column) per step."""
    a = tok.encode("hello")[0]
    engine = Engine(scripted_model(tok.get_vocab_size(), {}, default=a), tok)
    reads = []
    real_fetch = engine_module._fetch

    def counting_fetch(sampled):
        reads.append(sampled.shape)
        return real_fetch(sampled)

    monkeypatch.setattr(engine_module, "_fetch", counting_fetch)
    steps = list(engine.generate(prompt_ids(tok), num_samples=2, max_tokens=7, temperature=0.0))
    assert len(steps) == 7 and reads == [(2,)] * 7
