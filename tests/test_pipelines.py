"""The grain input pipelines: pretraining windows, mid packing, SFT rows, exact resume, prefetching."""

from __future__ import annotations

import itertools
import json
import random
import time

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxchat.common import JaxchatError
from jaxchat.data.chat import default_buckets, mid_dataset, sft_dataset
from jaxchat.data.prefetch import device_prefetch, split_microbatches
from jaxchat.data.pretrain import pretrain_dataset, val_batches
from jaxchat.data.shards import iter_texts, list_shards, split_shards
from jaxchat.tasks import mid_train_mixture, sft_train_mixture
from tests.fixtures.tasks import ListTask

ROWS, SEQ = 4, 63  # windows of 64 tokens


# ---- helpers ---------------------------------------------------------------------------------------


def token_stream(paths, tok) -> np.ndarray:
    """The reference stream, built independently: every document as <|bos|> + tokens, in file order."""
    return np.concatenate([np.asarray([tok.bos_token_id, *tok.encode(t)], np.int32) for t in iter_texts(paths)])


def windows(stream: np.ndarray, k: int, rows: int = ROWS, seq: int = SEQ) -> np.ndarray:
    n = rows * (seq + 1)
    return stream[k * n:(k + 1) * n].reshape(rows, seq + 1)


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
            else:
                assert x[key] == y[key], key


def roundtrip(state):
    """What a checkpoint does to the state: JSON and back."""
    return json.loads(json.dumps(state))


def varied_conversations(n: int, seed: int = 0, long_every: int = 9) -> list[dict]:
    rng = random.Random(seed)
    words = "the river and a small school of bright students learns about energy".split()
    out = []
    for i in range(n):
        size = 80 if i % long_every == long_every - 1 else rng.randint(1, 25)
        messages = []
        for _ in range(rng.randint(1, 2)):
            messages.append({"role": "user", "content": " ".join(rng.choices(words, k=size))})
            messages.append({"role": "assistant", "content": f"answer {i}: " + " ".join(rng.choices(words, k=3))})
        out.append({"messages": messages})
    return out


# ---- pretraining ---------------------------------------------------------------------------------


def test_pretrain_batches_are_windows_of_the_train_stream_and_loop(fineweb_dir, fineweb_tokenizer):
    train, val = split_shards(list_shards(fineweb_dir))
    assert [p.name for p in train] == ["shard_00000.parquet", "shard_00001.parquet"]
    stream = token_stream(train, fineweb_tokenizer)
    per_epoch = len(stream) // (ROWS * (SEQ + 1))
    it = iter(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ, tokenizer_threads=2))
    looped = np.concatenate([stream, stream])  # infinite: after the last shard comes the first again
    for k in range(per_epoch + 3):
        batch = next(it)
        assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (ROWS, SEQ)
        w = windows(looped, k)
        np.testing.assert_array_equal(batch["inputs"], w[:, :-1])
        np.testing.assert_array_equal(batch["targets"], w[:, 1:])
    assert it.get_state()["epoch"] == 1
    # The val shard is not part of the train stream, and val_batches reads exactly it.
    val_stream = token_stream(val, fineweb_tokenizer)
    vb = val_batches(val, fineweb_tokenizer, ROWS, SEQ, 5)
    assert len(vb) == 5
    for k, batch in enumerate(vb):
        np.testing.assert_array_equal(batch["inputs"], windows(val_stream, k)[:, :-1])
    assert_batches_equal(vb, val_batches(val, fineweb_tokenizer, ROWS, SEQ, 5))
    assert not np.array_equal(vb[0]["inputs"], windows(stream, 0)[:, :-1])
    too_many = len(val_stream) // (ROWS * (SEQ + 1)) + 1
    with pytest.raises(JaxchatError, match=r"shard_00002\.parquet hold\(s\) only \d+ batch"):
        val_batches(val, fineweb_tokenizer, ROWS, SEQ, too_many)


def test_pretrain_resume_is_exact_mid_document_row_group_shard_and_epoch(fineweb_dir, fineweb_tokenizer):
    train, _ = split_shards(list_shards(fineweb_dir))
    seq = 200  # windows of 201 tokens: positions land everywhere
    ds = pretrain_dataset(train, fineweb_tokenizer, ROWS, seq, tokenizer_threads=1)
    it = iter(ds)
    states, batches = [it.get_state()], []
    for _ in range(130):  # > one epoch (~110 batches)
        batches.append(next(it))
        states.append(roundtrip(it.get_state()))
    assert any(s["token"] > 0 for s in states)  # mid-document
    assert any(s["doc"] > 0 and s["row_group"] > 0 for s in states)  # mid row group, not the first one
    assert any(s["shard"] == 1 for s in states) and states[-1]["epoch"] == 1
    # Restore each state into a FRESH iterator (another thread count too): the same batches follow.
    for k in (0, 1, 7, 31, 56, 57, 108, 109, 110, 125):
        fresh = iter(pretrain_dataset(train, fineweb_tokenizer, ROWS, seq, tokenizer_threads=2))
        fresh.set_state(states[k])
        assert_batches_equal([next(fresh) for _ in range(5)], batches[k:k + 5])
        assert fresh.get_state() == states[k + 5]
        fresh.close()
    # The state is a token position: another batch shape resumes at the same token.
    other = iter(pretrain_dataset(train, fineweb_tokenizer, 1, 9))
    other.set_state(states[3])
    np.testing.assert_array_equal(next(other)["inputs"][0], batches[3]["inputs"][0, :9])


def test_pretrain_state_from_other_shards_or_malformed_is_rejected(fineweb_dir, fineweb_tokenizer):
    train, _ = split_shards(list_shards(fineweb_dir))
    it = iter(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ))
    next(it)
    state = it.get_state()
    with pytest.raises(JaxchatError, match=r"shard 0 = shard_00007\.parquet, but here shard 0 is shard_00000"):
        it.set_state({**state, "shard_name": "shard_00007.parquet"})
    with pytest.raises(JaxchatError, match="malformed"):
        it.set_state({"epoch": 0})
    with pytest.raises(JaxchatError, match=r"token 99999 of document"):
        it.set_state({**state, "token": 99999})
        next(it)


def test_pretrain_null_and_empty_documents_and_bad_arguments(tmp_path, fineweb_tokenizer):
    tok = fineweb_tokenizer
    path = tmp_path / "shard_00000.parquet"
    texts = ["alpha beta", None, "", "gamma delta epsilon"] * 20
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), path, row_group_size=7)
    expected = np.concatenate([[tok.bos_token_id, *tok.encode(t)] for t in texts if t is not None]).astype(np.int32)
    it = iter(pretrain_dataset([path], tok, 2, 5))
    got = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1).ravel()
                          for b in itertools.islice(it, len(expected) // 12)])
    np.testing.assert_array_equal(got, expected[: len(got)])
    with pytest.raises(JaxchatError, match=r"rows=0, expected a positive integer"):
        pretrain_dataset([path], tok, 0, 5)
    bad = tmp_path / "shard_00001.parquet"
    bad.write_text("not parquet")
    with pytest.raises(JaxchatError, match=r"shard_00001\.parquet: cannot read as parquet"):
        pretrain_dataset([path, bad], tok, 2, 5)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([None, None], type=pa.string())}), empty)
    with pytest.raises(JaxchatError, match="hold no non-empty documents"):
        next(iter(pretrain_dataset([empty], tok, 2, 5)))


# ---- prefetching ---------------------------------------------------------------------------------


def test_device_prefetch_checkpoints_the_consumed_position(fineweb_dir, fineweb_tokenizer):
    train, _ = split_shards(list_shards(fineweb_dir))
    uninterrupted = list(itertools.islice(iter(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ)), 12))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    it = device_prefetch(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ), sharding, size=2, host_size=2)
    k = 5
    for i in range(k):
        batch = next(it)
        assert isinstance(batch["inputs"], jax.Array) and batch["inputs"].sharding == sharding
        np.testing.assert_array_equal(np.asarray(batch["targets"]), uninterrupted[i]["targets"])
    time.sleep(0.3)  # let the threads run ahead: up to 2 + 2 (+2 in flight) batches are buffered now
    state = roundtrip(it.get_state())
    it.close()
    fresh = iter(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ))
    fresh.set_state(state)
    assert_batches_equal([next(fresh)], [uninterrupted[k]])  # batch k+1, not one prefetched beyond it
    # Restoring into a prefetching pipeline works the same, with micro-batches split off.
    again = device_prefetch(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ), microbatches=2)
    again.set_state(state)
    batch = next(again)
    assert batch["inputs"].shape == (2, ROWS // 2, SEQ)
    np.testing.assert_array_equal(np.asarray(batch["inputs"]).reshape(ROWS, SEQ), uninterrupted[k]["inputs"])
    again.close()
    with pytest.raises(JaxchatError, match="not divisible into 3 micro-batches"):
        split_microbatches(uninterrupted[0], 3)


def test_corrupt_row_group_stops_the_pipeline_with_one_line_naming_it(fineweb_dir, fineweb_tokenizer):
    """A row group whose pages are garbage (footer intact) is found only when the pipeline reaches it, in
    a prefetch thread: the trainer gets a JaxchatError naming the file and the row group, not pyarrow's
    OSError through grain's frames."""
    from tests.test_shards import corrupt_row_group

    train, _ = split_shards(list_shards(fineweb_dir))
    corrupt_row_group(train[0], 1)
    it = device_prefetch(pretrain_dataset(train, fineweb_tokenizer, ROWS, SEQ), microbatches=2)
    try:
        with pytest.raises(JaxchatError) as info:
            for _ in range(10_000):
                next(it)
    finally:
        it.close()
    message = str(info.value)
    assert message.startswith(f"{train[0]}: row group 1 (of 4) is corrupt (") and "\n" not in message, message
    with pytest.raises(JaxchatError, match=r"shard_00000\.parquet: row group 1 \(of 4\) is corrupt"):
        val_batches(train[:1], fineweb_tokenizer, ROWS, SEQ, num_batches=10_000)


# ---- midtraining ---------------------------------------------------------------------------------


def segments_of(batches: list[dict], bos: int) -> list[tuple[int, ...]]:
    """Rebuild the packed conversations from inputs/targets alone (padding is only at row ends)."""
    convs = []
    for b in batches:
        for inputs, targets in zip(b["inputs"], b["targets"]):
            real = targets != -1
            if not real.any():
                continue
            n = int(real.sum())
            assert real[:n].all(), "padding must only trail the row"
            row = [int(inputs[0]), *targets[:n].tolist()]
            assert row[0] == bos, "every packed row starts with a conversation"
            starts = [i for i, t in enumerate(row) if t == bos]
            convs += [tuple(row[a:b]) for a, b in zip(starts, starts[1:] + [len(row)])]
    return convs


def test_mid_packs_whole_conversations_without_losing_any(task_cache, fineweb_tokenizer):
    tok = fineweb_tokenizer
    task = mid_train_mixture(scale=0.0005)
    rows, seq = 4, 127
    expected, n_cut = [], 0
    for conv in task:
        ids, _ = tok.render_conversation(conv, max_tokens=None)
        n_cut += len(ids) > seq + 1
        expected.append(tuple(ids[: seq + 1]))
    assert 0 < n_cut < len(task)  # the fixture has conversations longer than the row: they get cut
    batches = list(iter(mid_dataset(task, tok, rows, seq)))
    for b in batches:
        assert b["inputs"].shape == b["targets"].shape == (rows, seq) and b["inputs"].dtype == np.int32
        # every real token is a target (mask not applied), except each row's very first input
        np.testing.assert_array_equal(b["inputs"][:, 1:][b["targets"][:, :-1] != -1],
                                      b["targets"][:, :-1][b["targets"][:, :-1] != -1])
    assert sorted(segments_of(batches, tok.bos_token_id)) == sorted(expected)
    progress = [b["progress"] for b in batches]
    assert progress == sorted(progress) and progress[-1] == 1.0 and progress[0] < 0.5
    counts = np.cumsum([len(segments_of([b], tok.bos_token_id)) for b in batches])
    np.testing.assert_allclose(progress, counts / len(task))  # fraction of conversations consumed
    assert batches[-1]["truncated"] == n_cut
    filled = np.mean([(b["targets"] != -1).mean() for b in batches[:-1]])
    assert filled > 0.8, filled  # best fit leaves little padding


def test_mid_last_batch_is_padded_with_masked_rows_and_resume_is_exact(fineweb_tokenizer):
    tok = fineweb_tokenizer
    task = ListTask(varied_conversations(37))
    rows, seq = 3, 47
    ds = mid_dataset(task, tok, rows, seq)
    it = iter(ds)
    states, batches = [it.get_state()], []
    for b in it:
        batches.append(b)
        states.append(roundtrip(it.get_state()))
    assert all(b["inputs"].shape == b["targets"].shape == (rows, seq) for b in batches)
    expected = [tuple(tok.render_conversation(c, max_tokens=None)[0][: seq + 1]) for c in task]
    assert sorted(segments_of(batches, tok.bos_token_id)) == sorted(expected)
    assert batches[-1]["truncated"] == sum(len(tok.render_conversation(c, None)[0]) > seq + 1 for c in task) > 0
    for k in range(len(batches)):
        fresh = iter(mid_dataset(task, tok, rows, seq))
        fresh.set_state(states[k])
        assert_batches_equal(list(fresh), batches[k:])
    # An epoch that does not fill the last batch: the missing rows are fully masked <|bos|> rows.
    (only,) = list(iter(mid_dataset(ListTask(task.conversations[:2]), tok, rows, seq)))
    assert only["progress"] == 1.0 and only["inputs"].shape == (rows, seq)
    assert (only["targets"][2:] == -1).all() and (only["inputs"][2:] == tok.bos_token_id).all()
    assert (only["targets"][:2] != -1).any(axis=1).all()


def test_mid_bad_rows_raise_the_tasks_errors(fineweb_tokenizer):
    good = varied_conversations(5)
    with pytest.raises(JaxchatError, match=r"listtask\.jsonl line 4: bad row"):
        list(iter(mid_dataset(ListTask(good[:3] + [None] + good[3:]), fineweb_tokenizer, 2, 31)))
    swapped = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]}
    with pytest.raises(JaxchatError, match=r"ListTask example 2: message 0 has role 'assistant'"):
        list(iter(mid_dataset(ListTask(good[:2] + [swapped]), fineweb_tokenizer, 2, 31)))
    with pytest.raises(JaxchatError, match=r"seq_len=0, expected a positive integer"):
        mid_dataset(ListTask(good), fineweb_tokenizer, 2, 0)
    with pytest.raises(JaxchatError, match="has no conversations"):
        mid_dataset(ListTask([]), fineweb_tokenizer, 2, 8)


# ---- SFT -----------------------------------------------------------------------------------------


def expected_sft(task, tok, rows, seq, buckets):
    """Build the SFT batches independently of the pipeline."""
    pad = tok.encode_special("<|assistant_end|>")
    out = []
    for start in range(0, len(task), rows):
        stop = min(start + rows, len(task))
        rendered = [tok.render_conversation(task[i], max_tokens=seq + 1) for i in range(start, stop)]
        width = min(b for b in buckets if b >= max(len(ids) - 1 for ids, _ in rendered))
        inputs = np.full((rows, width), pad, np.int32)
        targets = np.full((rows, width), -1, np.int32)
        for r, (ids, mask) in enumerate(rendered):
            inputs[r, : len(ids) - 1] = ids[:-1]
            targets[r, : len(ids) - 1] = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        out.append((inputs, targets, stop / len(task)))
    return out


def test_sft_one_conversation_per_row_bucketed_and_masked(task_cache, fineweb_tokenizer):
    tok = fineweb_tokenizer
    task = sft_train_mixture(scale=0.005)
    rows, seq = 2, 200
    buckets = default_buckets(seq)
    assert buckets == (25, 50, 100, 150, 200)
    batches = list(iter(sft_dataset(task, tok, rows, seq)))
    want = expected_sft(task, tok, rows, seq, buckets)
    assert len(batches) == len(want) == -(-len(task) // rows)
    for b, (inputs, targets, progress) in zip(batches, want):
        np.testing.assert_array_equal(b["inputs"], inputs)
        np.testing.assert_array_equal(b["targets"], targets)
        assert b["progress"] == pytest.approx(progress) and b["inputs"].shape[1] in buckets
    assert len({b["inputs"].shape[1] for b in batches}) > 1  # several buckets are really used
    assert batches[-1]["progress"] == 1.0
    n_cut = sum(len(tok.render_conversation(c, max_tokens=None)[0]) > seq + 1 for c in task)
    assert batches[-1]["truncated"] == n_cut > 0


def test_sft_last_batch_padding_resume_and_buckets(fineweb_tokenizer):
    tok = fineweb_tokenizer
    task = ListTask(varied_conversations(10, seed=3))
    rows, seq = 4, 40
    it = iter(sft_dataset(task, tok, rows, seq, buckets=[16, 32]))  # 40 gets added as the top bucket
    states, batches = [it.get_state()], []
    for b in it:
        batches.append(b)
        states.append(roundtrip(it.get_state()))
    assert len(batches) == 3 and {b["inputs"].shape[1] for b in batches} <= {16, 32, 40}
    last = batches[-1]
    assert last["inputs"].shape[0] == rows and (last["targets"][2:] == -1).all()  # 10 = 4 + 4 + 2
    assert (last["inputs"][2:] == tok.encode_special("<|assistant_end|>")).all()
    for k in range(len(batches)):
        fresh = iter(sft_dataset(task, tok, rows, seq, buckets=[16, 32]))
        fresh.set_state(states[k])
        assert_batches_equal(list(fresh), batches[k:])
    with pytest.raises(JaxchatError, match=r"sft buckets \[16, 64\]: expected positive lengths no larger than seq_len"):
        sft_dataset(task, tok, rows, seq, buckets=[16, 64])
    with pytest.raises(JaxchatError, match=r"listtask\.jsonl line 2: bad row"):
        list(iter(sft_dataset(ListTask([task[0], None]), tok, rows, seq)))
