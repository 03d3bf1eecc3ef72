"""nanochat 92d63d4's BOS-aligned best-fit pretraining loader (``packing="bestfit"``): identical batches to
nanochat's (golden batches made by ``tools/parity_loader_nanochat.py`` from nanochat's own loader, no torch
needed here), exact resume, and the edge cases."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxchat.common import JaxchatError
from jaxchat.data.bestfit import BestFitDataset
from jaxchat.data.pretrain import pretrain_dataset, val_batches
from jaxchat.data.shards import list_shards, split_shards
from tests.fixtures import loader_parity as lp


def roundtrip(state):
    """What a checkpoint does to the state: JSON and back."""
    return json.loads(json.dumps(state))


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


def bestfit(paths, tok, rows, seq, *, buffer_size=50, batch_docs=16, loop=True, threads=1):
    return BestFitDataset(paths, tok, rows, seq, loop=loop, tokenizer_threads=threads, buffer_size=buffer_size,
                          tokenizer_batch_size=batch_docs)


def reference_batches(paths, tok, rows, seq, n, *, buffer_size, batch_docs):
    """nanochat's algorithm transcribed with plain lists (one process): the order of its
    ``_document_batches``, the buffer refill and the best-fit / crop loop of its loader."""

    def slices():
        for epoch in itertools.count():
            for path in paths:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg).column("text").to_pylist()
                    for i in range(0, len(texts), batch_docs):
                        yield [[tok.bos_token_id, *tok.encode(t)] for t in texts[i:i + batch_docs] if t is not None]

    source, buffer, out = slices(), [], []
    for _ in range(n):
        batch = []
        for _ in range(rows):
            row = []
            while len(row) < seq + 1:
                while len(buffer) < buffer_size:
                    buffer.extend(next(source))
                remaining = seq + 1 - len(row)
                best, best_len = -1, 0
                for i, doc in enumerate(buffer):
                    if best_len < len(doc) <= remaining:
                        best, best_len = i, len(doc)
                if best >= 0:
                    row += buffer.pop(best)
                else:
                    row += buffer.pop(min(range(len(buffer)), key=lambda i: len(buffer[i])))[:remaining]
            batch.append(row)
        arr = np.asarray(batch, dtype=np.int32)
        out.append({"inputs": arr[:, :-1], "targets": arr[:, 1:]})
    return out


# ---- parity with nanochat 92d63d4 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    with np.load(lp.GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def parity_shards(tmp_path_factory):
    return split_shards(list_shards(lp.write_parity_shards(tmp_path_factory.mktemp("parity") / "base_data")[0].parent))


def test_golden_file_describes_these_shards_and_runs(golden):
    assert json.loads(str(golden["params"])) == json.loads(lp.params_json())
    assert lp.GOLDEN.stat().st_size < 1 << 20


@pytest.mark.parametrize("name", list(lp.RUNS))
def test_bestfit_batches_are_nanochats(golden, parity_shards, name):
    """The first N train batches (across an epoch boundary) and the val batches, token for token."""
    run, (train, val) = lp.RUNS[name], parity_shards
    tok = lp.tokenizer_from_arrays(golden)
    kw = {"buffer_size": run["buffer_size"], "batch_docs": run["tokenizer_batch_size"], "threads": 2}
    if name == "default":  # nanochat's defaults are the pipeline's
        assert (run["buffer_size"], run["tokenizer_batch_size"]) == (1000, 128)
        it = iter(pretrain_dataset(train, tok, run["rows"], run["seq_len"], packing="bestfit"))
        vb = val_batches(val, tok, run["rows"], run["seq_len"], run["val_batches"], packing="bestfit")
    else:
        it = iter(bestfit(train, tok, run["rows"], run["seq_len"], **kw))
        vb = [next(v) for v in [iter(bestfit(val, tok, run["rows"], run["seq_len"], **kw))]
              for _ in range(run["val_batches"])]
    batches = [next(it) for _ in range(run["batches"])]
    assert it.get_state()["cursor"]["epoch"] == 1 and it.max_epoch_placed == 1  # the stream wrapped around
    for k, b in enumerate(batches[:run["full"]]):
        np.testing.assert_array_equal(lp.rows_of(b["inputs"], b["targets"]), golden[f"{name}/rows"][k], f"batch {k}")
    digests = np.stack([lp.digest(b["inputs"], b["targets"]) for b in batches])
    differ = np.flatnonzero((digests != golden[f"{name}/digests"]).any(axis=1))
    assert not len(differ), f"batches {differ[:10].tolist()} differ from nanochat's"
    assert batches[0]["inputs"].shape == (run["rows"], run["seq_len"]) and batches[0]["inputs"].dtype == np.int32
    assert all((b["inputs"][:, 0] == tok.bos_token_id).all() for b in batches)  # every row starts with BOS
    for k, b in enumerate(vb):
        np.testing.assert_array_equal(lp.rows_of(b["inputs"], b["targets"]), golden[f"{name}/val_rows"][k], f"val {k}")
    it.close()


def test_bestfit_matches_the_reference_with_nulls_empty_texts_and_empty_shards(tmp_path, fineweb_tokenizer):
    tok = fineweb_tokenizer
    docs = [t for i in range(40) for t in ["alpha beta " * (i % 13), None, "", "gamma delta epsilon " * (i % 29)]]
    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), tmp_path / "shard_00000.parquet",
                   row_group_size=37)
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), tmp_path / "shard_00001.parquet")
    pq.write_table(pa.table({"text": pa.array(docs[::-1], type=pa.string())}), tmp_path / "shard_00002.parquet",
                   row_group_size=50)
    paths = list_shards(tmp_path)
    for rows, seq, buffer_size, batch_docs in ((2, 40, 20, 8), (3, 100, 7, 3), (1, 9, 1, 1), (4, 64, 500, 128)):
        ours = list(itertools.islice(iter(bestfit(paths, tok, rows, seq, buffer_size=buffer_size,
                                                  batch_docs=batch_docs, threads=2)), 60))
        ref = reference_batches(paths, tok, rows, seq, 60, buffer_size=buffer_size, batch_docs=batch_docs)
        assert_batches_equal(ours, ref)


def test_one_batch_of_k_rows_is_k_batches(fineweb_dir, fineweb_tokenizer):
    """Gradient accumulation: rows × k in one batch are nanochat's k micro-batches of rows."""
    train, _ = split_shards(list_shards(fineweb_dir))
    small = list(itertools.islice(iter(bestfit(train, fineweb_tokenizer, 2, 100)), 12))
    big = list(itertools.islice(iter(bestfit(train, fineweb_tokenizer, 6, 100)), 4))
    np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in big]),
                                  np.concatenate([b["inputs"] for b in small]))


# ---- exact resume --------------------------------------------------------------------------------


def test_bestfit_resume_is_exact_across_slices_row_groups_shards_and_epochs(fineweb_dir, fineweb_tokenizer):
    train, _ = split_shards(list_shards(fineweb_dir))  # 2 × 200 documents, row groups of 64
    it = iter(bestfit(train, fineweb_tokenizer, 4, 150, buffer_size=60, batch_docs=24))
    states, batches = [roundtrip(it.get_state())], []
    for _ in range(160):
        batches.append(next(it))
        states.append(roundtrip(it.get_state()))
    cursors = [s["cursor"] for s in states]
    assert any(c["doc"] > 0 and c["row_group"] > 0 for c in cursors) and any(c["shard"] == 1 for c in cursors)
    assert cursors[-1]["epoch"] >= 1 and any(r[0] != states[-1]["buffer"][0][0] for r in states[-1]["buffer"])
    for k in (0, 1, 9, 40, 77, 78, 100, 131, 150):
        fresh = iter(bestfit(train, fineweb_tokenizer, 4, 150, buffer_size=60, batch_docs=24, threads=2))
        fresh.set_state(states[k])
        assert_batches_equal([next(fresh) for _ in range(10)], batches[k:k + 10])
        assert fresh.get_state() == states[k + 10]
        fresh.close()
    # The state does not depend on the batch shape: one row at a time resumes at the same row.
    other = iter(bestfit(train, fineweb_tokenizer, 1, 150, buffer_size=60, batch_docs=24))
    other.set_state(states[3])
    np.testing.assert_array_equal(next(other)["inputs"][0], batches[3]["inputs"][0])


def test_bestfit_resume_with_nanochats_buffer(parity_shards, golden):
    """buffer_size 1000 (documents from many row groups stay buffered): resume via the pipeline API."""
    tok, (train, _) = lp.tokenizer_from_arrays(golden), parity_shards
    it = iter(pretrain_dataset(train, tok, 8, 256, packing="bestfit"))
    states, batches = [], []
    for _ in range(100):
        states.append(roundtrip(it.get_state()))
        batches.append(next(it))
    assert 900 < sum(len(r[3]) for r in states[60]["buffer"]) and len(states[60]["buffer"]) > 3
    for k in (0, 60, 95):
        fresh = iter(pretrain_dataset(train, tok, 8, 256, packing="bestfit", tokenizer_threads=2))
        fresh.set_state(states[k])
        assert_batches_equal([next(fresh) for _ in range(5)], batches[k:k + 5])


def test_device_prefetch_checkpoints_the_consumed_best_fit_position(fineweb_dir, fineweb_tokenizer):
    import time

    import jax

    from jaxchat.data.prefetch import device_prefetch

    train, _ = split_shards(list_shards(fineweb_dir))
    uninterrupted = list(itertools.islice(iter(bestfit(train, fineweb_tokenizer, 4, 63)), 8))
    it = device_prefetch(bestfit(train, fineweb_tokenizer, 4, 63), size=2, host_size=2, microbatches=2)
    for i in range(5):
        batch = next(it)
        assert isinstance(batch["inputs"], jax.Array) and batch["inputs"].shape == (2, 2, 63)
        np.testing.assert_array_equal(np.asarray(batch["inputs"]).reshape(4, 63), uninterrupted[i]["inputs"])
    time.sleep(0.2)  # the threads run ahead
    state = roundtrip(it.get_state())
    it.close()
    fresh = iter(bestfit(train, fineweb_tokenizer, 4, 63))
    fresh.set_state(state)
    assert_batches_equal([next(fresh)], [uninterrupted[5]])


def test_states_of_the_other_packing_or_other_shards_are_rejected(fineweb_dir, fineweb_tokenizer):
    train, _ = split_shards(list_shards(fineweb_dir))
    stream = iter(pretrain_dataset(train, fineweb_tokenizer, 2, 31))
    packed = iter(bestfit(train, fineweb_tokenizer, 2, 31))
    next(stream), next(packed)
    with pytest.raises(JaxchatError, match=r"not a best-fit state \(packing='stream'\)"):
        packed.set_state(stream.get_state())
    with pytest.raises(JaxchatError, match=r"packing='bestfit', but this pipeline packs packing='stream'"):
        stream.set_state(packed.get_state())
    state = packed.get_state()
    with pytest.raises(JaxchatError, match=r"shard 0 = shard_00009\.parquet, but here shard 0 is shard_00000"):
        packed.set_state({**state, "shard_names": {**state["shard_names"], "0": "shard_00009.parquet"}})
    with pytest.raises(JaxchatError, match="malformed"):
        packed.set_state({"packing": "bestfit", "cursor": None})
    bad_doc = [[0, 0, 0, [999]]]
    with pytest.raises(JaxchatError, match=r"document 999 of row group 0 of shard_00000\.parquet"):
        packed.set_state({**state, "buffer": bad_doc})
    with pytest.raises(JaxchatError, match="packing='zigzag', expected one of stream, bestfit"):
        pretrain_dataset(train, fineweb_tokenizer, 2, 31, packing="zigzag")


# ---- validation and edge cases ---------------------------------------------------------------------


def test_bestfit_val_of_a_small_shard_never_repeats_a_document_and_refuses_too_many_batches(fineweb_dir,
                                                                                          fineweb_tokenizer):
    _, val = split_shards(list_shards(fineweb_dir))  # 200 documents, fewer than the 1000 buffered
    batches = val_batches(val, fineweb_tokenizer, 2, 32, 3, packing="bestfit")
    bos = fineweb_tokenizer.bos_token_id
    starts = [tuple(row[:8]) for batch in batches for row in batch["inputs"]]  # each row starts a document
    assert all(row[0] == bos for row in starts) and len(set(starts)) == len(starts)
    with pytest.raises(JaxchatError, match=r"shard_00002\.parquet hold\(s\) only \d+ best-fit batch\(es\) of 2×33"):
        val_batches(val, fineweb_tokenizer, 2, 32, 10_000, packing="bestfit")


def test_non_looping_stream_ends_when_a_row_cannot_be_filled(tmp_path, fineweb_tokenizer):
    tok = fineweb_tokenizer
    path = tmp_path / "shard_00000.parquet"
    docs = ["one two three four five six seven " * (1 + i % 5) for i in range(30)]
    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), path, row_group_size=8)
    n_tokens = sum(len(tok.encode(d)) + 1 for d in docs)
    batches = list(bestfit([path], tok, 2, 19, loop=False, buffer_size=6, batch_docs=4))
    assert 0 < len(batches) * 40 <= n_tokens
    # It is the looping stream up to the batch where that one places a document a second time.
    looping = iter(bestfit([path], tok, 2, 19, buffer_size=6, batch_docs=4))
    for k, batch in enumerate(batches):
        other = next(looping)
        if looping.max_epoch_placed > 0:
            break
        assert_batches_equal([batch], [other])
    assert 3 < k < len(batches)


def test_shards_without_documents_are_an_error(tmp_path, fineweb_tokenizer):
    path = tmp_path / "shard_00000.parquet"
    pq.write_table(pa.table({"text": pa.array([None, None], type=pa.string())}), path)
    with pytest.raises(JaxchatError, match="hold no non-null documents"):
        next(iter(bestfit([path], fineweb_tokenizer, 2, 5)))
    with pytest.raises(JaxchatError, match=r"buffer_size=0, expected a positive integer"):
        bestfit([path], fineweb_tokenizer, 2, 5, buffer_size=0)
