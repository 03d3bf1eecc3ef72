"""nanochat 92d63d4's best-fit SFT loader (``jaxchat.data.chat_bestfit``): identical batches to nanochat's
(golden micro-batches made by ``tools/parity_sft_loader_nanochat.py`` from nanochat's own generator, no torch
needed here), one epoch, exact resume, padding masked, and the edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxchat.common import JaxchatError
from jaxchat.data.chat import ChatDataset
from jaxchat.data.chat_bestfit import RENDER_MAX_TOKENS, sft_bestfit_dataset
from tests.fixtures import loader_parity as lp
from tests.fixtures import sft_loader_parity as sp
from tests.fixtures.tasks import ListTask


def roundtrip(state):
    """What a checkpoint does to the state: JSON and back."""
    return json.loads(json.dumps(state))


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
            else:
                assert x[key] == y[key], key


def reference_epoch(convs, tok, rows, seq_len, buffer_size):
    """nanochat's loop transcribed with plain lists (one process), plus jaxchat's cut of a conversation
    longer than the row; returns the batches and each row's content length."""
    cap = seq_len + 1
    rendered = [tok.render_conversation(c, max_tokens=min(RENDER_MAX_TOKENS, cap)) for c in convs]
    buffer, cursor, consumed, out = [], 0, 0, []
    while consumed < len(convs):
        batch_ids, batch_mask, lengths = [], [], []
        for _ in range(rows):
            ids, mask = [], []
            while len(ids) < cap:
                while len(buffer) < buffer_size:
                    buffer.append(rendered[cursor])
                    cursor = (cursor + 1) % len(convs)
                best, best_len = -1, 0
                for i, (conv, _) in enumerate(buffer):
                    if best_len < len(conv) <= cap - len(ids):
                        best, best_len = i, len(conv)
                if best < 0:
                    break
                conv, conv_mask = buffer.pop(best)
                ids, mask, consumed = ids + conv, mask + conv_mask, consumed + 1
            lengths.append(len(ids))
            batch_ids.append(ids + [tok.bos_token_id] * (cap - len(ids)))
            batch_mask.append(mask + [0] * (cap - len(mask)))
        ids, mask = np.asarray(batch_ids), np.asarray(batch_mask)
        out.append((ids[:, :-1], np.where(mask[:, 1:] == 1, ids[:, 1:], -1), min(1.0, consumed / len(convs)), lengths))
    return out


@pytest.fixture(scope="module")
def golden():
    with np.load(sp.GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def tok(golden):
    return lp.tokenizer_from_arrays(golden)


# ---- parity with nanochat 92d63d4 ----------------------------------------------------------------


def test_golden_file_describes_these_runs(golden):
    assert json.loads(str(golden["params"])) == json.loads(sp.params_json())
    assert sp.GOLDEN.stat().st_size < 100 * 1024


@pytest.mark.parametrize("name", list(sp.RUNS))
def test_sft_bestfit_batches_are_nanochats(golden, tok, name):
    """A whole epoch (past the end of the task: the buffer wraps first): each batch of rows × accum rows is
    nanochat's accum consecutive micro-batches, token for token, with its progress and its last_step."""
    run, convs = sp.RUNS[name], sp.run_conversations(name)
    rows, accum = run["rows"], run["accum"]
    ds = sft_bestfit_dataset(convs, tok, rows * accum, run["seq_len"], run["buffer_size"])
    batches = list(iter(ds))
    micro = [(i, t) for b in batches for i, t in zip(np.split(b["inputs"], accum), np.split(b["targets"], accum))]
    assert len(micro) == len(golden[f"{name}/digests"])
    for k in range(run["full"]):
        want = sp.unpack_batch(golden[f"{name}/rows"][k], golden[f"{name}/valid"][k])
        np.testing.assert_array_equal(micro[k][0], want[0], f"micro-batch {k} inputs")
        np.testing.assert_array_equal(micro[k][1], want[1], f"micro-batch {k} targets")
    digests = np.stack([lp.digest(*m) for m in micro])
    differ = np.flatnonzero((digests != golden[f"{name}/digests"]).any(axis=1))
    assert not len(differ), f"micro-batches {differ[:10].tolist()} differ from nanochat's"
    # progress: nanochat's approx_progress after the batch's last micro-batch (which may pass 1 at the end)
    theirs = golden[f"{name}/progress"]
    assert [b["progress"] for b in batches] == [min(1.0, theirs[accum * (k + 1) - 1]) for k in range(len(batches))]
    assert theirs[-1] > 1.0 and batches[-1]["progress"] == 1.0
    assert int(golden[f"{name}/last_step"]) // accum == len(batches) - 1  # the epoch ends where nanochat's does
    b = batches[0]
    assert b["inputs"].shape == b["targets"].shape == (rows * accum, run["seq_len"])
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    assert all((b["inputs"][:, 0] == tok.bos_token_id).all() for b in batches)  # every row starts a conversation
    n_cut = sum(len(tok.render_conversation(c, max_tokens=None)[0]) > RENDER_MAX_TOKENS for c in convs)
    assert batches[-1]["truncated"] >= n_cut == (7 if name == "default" else 0)  # nanochat's 2048 cut, counted


# ---- behaviour -----------------------------------------------------------------------------------


def test_matches_the_reference_and_masks_padding(tok):
    """Rows cut to 64 tokens (many conversations are longer: jaxchat cuts them, the documented deviation)."""
    convs = sp.conversations(7, 60, 30)
    rows, seq_len, buffer_size = 3, 64, 8
    batches = list(iter(sft_bestfit_dataset(convs, tok, rows, seq_len, buffer_size)))
    want = reference_epoch(convs, tok, rows, seq_len, buffer_size)
    assert len(batches) == len(want)
    padded = 0
    for b, (inputs, targets, progress, lengths) in zip(batches, want):
        np.testing.assert_array_equal(b["inputs"], inputs)
        np.testing.assert_array_equal(b["targets"], targets)
        assert b["progress"] == progress
        for r, n in enumerate(lengths):  # padding: <|bos|> inputs, no targets from the last real token on
            assert 0 < n <= seq_len + 1
            assert (b["inputs"][r, n:] == tok.bos_token_id).all() and (b["targets"][r, max(n - 1, 0):] == -1).all()
            padded += n < seq_len + 1
    assert padded > len(batches)  # most rows end in padding at this size
    lengths = [len(tok.render_conversation(c, max_tokens=None)[0]) for c in convs]
    assert 0 < sum(n > seq_len + 1 for n in lengths) < len(convs)
    assert batches[-1]["truncated"] >= sum(n > seq_len + 1 for n in lengths)  # repeats of the wrap count too


def test_epoch_ends_with_stop_iteration_and_progress(tok):
    convs = sp.conversations(3, 40, 20)
    it = iter(sft_bestfit_dataset(convs, tok, 4, 96, 10))
    batches = list(it)
    with pytest.raises(StopIteration):
        next(it)
    progress = [b["progress"] for b in batches]
    assert progress == sorted(progress) and progress[-1] == 1.0 and progress[-2] < 1.0 and progress[0] > 0
    # A task smaller than one batch: one batch, the rest of it from the wrap-around (repeats).
    (only,) = list(iter(sft_bestfit_dataset(convs[:2], tok, 4, 96, 10)))
    assert only["progress"] == 1.0 and (only["targets"] != -1).any(axis=1).all()


def test_conversations_longer_than_the_row_are_cut_not_stuck(tok):
    """nanochat would never place these and pad forever; jaxchat cuts each to the row and ends the epoch."""
    seq_len = 32
    convs = [c for c in sp.conversations(5, 60, 60) if len(tok.render_conversation(c)[0]) > seq_len + 1][:5]
    batches = list(iter(sft_bestfit_dataset(convs, tok, 2, seq_len, 4)))
    assert len(batches) == 3 and batches[-1]["truncated"] == 5 + 1  # 5 + one repeat in the last row
    rows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in batches])
    for r, c in zip(rows, convs + convs[:1]):  # one conversation a row, its first seq_len + 1 tokens
        ids, mask = tok.render_conversation(c, max_tokens=seq_len + 1)
        np.testing.assert_array_equal(r[:-1], ids[:-1])


def test_resume_is_exact_at_every_batch_including_across_the_wrap(tok):
    convs = sp.conversations(7, 60, 30)
    args = (convs, tok, 3, 64, 8)
    it = iter(sft_bestfit_dataset(*args))
    states, batches = [roundtrip(it.get_state())], []
    for b in it:
        batches.append(b)
        states.append(roundtrip(it.get_state()))
    assert batches[-1]["truncated"] > 0  # the running count is part of the state
    wrapped = [s for s in states if any(i < s["parent"]["cursor"] for i in s["parent"]["buffer"]) and
               any(i >= s["parent"]["cursor"] for i in s["parent"]["buffer"])]
    assert wrapped  # some states hold the end of the task and the start of the next pass
    assert len(json.dumps(states[-1])) < 400  # indices, not tokens
    for k, state in enumerate(states):
        fresh = iter(sft_bestfit_dataset(*args))
        fresh.set_state(state)
        assert_batches_equal(list(fresh), batches[k:])


def test_interface_errors_and_bad_rows(tok):
    convs = sp.conversations(3, 10, 20)
    ds = sft_bestfit_dataset(ListTask(convs), tok, 2, 64)
    assert isinstance(ds, ChatDataset) and ds.num_conversations == 10
    assert str(ds) == "sft_bestfit_dataset(10 conversations, rows=2, seq_len=64, buffer_size=100)"
    with pytest.raises(JaxchatError, match=r"listtask\.jsonl line 4: bad row"):
        list(iter(sft_bestfit_dataset(ListTask(convs[:3] + [None] + convs[3:]), tok, 2, 64)))
    swapped = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]}
    with pytest.raises(JaxchatError, match=r"ListTask example 2: message 0 has role 'assistant'"):
        list(iter(sft_bestfit_dataset(ListTask(convs[:2] + [swapped]), tok, 2, 64)))
    with pytest.raises(JaxchatError, match=r"buffer_size=0, expected a positive integer"):
        sft_bestfit_dataset(convs, tok, 2, 64, buffer_size=0)
    with pytest.raises(JaxchatError, match=r"rows=0, expected a positive integer"):
        sft_bestfit_dataset(convs, tok, 0, 64)
    with pytest.raises(JaxchatError, match="has no conversations"):
        sft_bestfit_dataset(ListTask([]), tok, 2, 64)
    it = iter(sft_bestfit_dataset(convs, tok, 2, 64))
    state = roundtrip(it.get_state())
    with pytest.raises(JaxchatError, match="a mixture of 10 conversations, this one has 9"):
        iter(sft_bestfit_dataset(convs[:9], tok, 2, 64)).set_state(state)
    with pytest.raises(JaxchatError, match="not a best-fit SFT state"):
        it.set_state({**state, "parent": {"next_index": 3}})
    with pytest.raises(JaxchatError, match="outside 0..9"):
        it.set_state({**state, "parent": {**state["parent"], "buffer": [10]}})
