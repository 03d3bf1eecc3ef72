"""FineWeb shard discovery, the train/val split and in-order document streaming."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxchat.common import JaxchatError
from jaxchat.data import shards
from jaxchat.data.shards import iter_texts, list_shards, split_shards
from tests.fixtures.fineweb import fineweb_documents, write_fineweb_shards


def test_fixture_shards_match_the_fineweb_schema(fineweb_dir):
    paths = list_shards(fineweb_dir)
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    pf = pq.ParquetFile(paths[0])
    assert pf.schema_arrow == pa.schema([pa.field("text", pa.string())])
    assert pf.num_row_groups > 1
    docs = pf.read().column("text").to_pylist()
    assert docs == fineweb_documents(200, 0) and len(set(docs)) == len(docs)
    assert any(c.isdigit() for c in docs[0] + docs[1]) and "\n\n" in "".join(docs[:5])


def test_list_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    with pytest.raises(JaxchatError, match=r"no shard_\*\.parquet files in .*base_data; .*--only=fineweb --num_shards=8"):
        list_shards()
    write_fineweb_shards(tmp_path / "base_data", n_shards=2, docs_per_shard=5)
    (tmp_path / "base_data" / "shard_00005.parquet.tmp").write_text("partial download")
    (tmp_path / "base_data" / "notes.txt").write_text("x")
    assert list_shards() == [tmp_path / "base_data" / f"shard_0000{i}.parquet" for i in range(2)]


def test_split_shards():
    paths = [Path(f"shard_{i:05d}.parquet") for i in range(4)]
    assert split_shards(paths) == (paths[:3], paths[3:])
    with pytest.raises(JaxchatError, match="found 1 shard.*at least 2"):
        split_shards(paths[:1])


def test_iter_texts_in_order_with_caps(fineweb_dir):
    paths = list_shards(fineweb_dir)
    docs = fineweb_documents(200, 0) + fineweb_documents(200, 1)
    assert list(iter_texts(paths[:2])) == docs
    assert list(iter_texts(paths[:2], doc_cap=100)) == [d[:100] for d in docs]
    # max_chars is exact: the last document is cut to fit.
    limit = len(docs[0]) + len(docs[1]) + 10
    assert list(iter_texts(paths, max_chars=limit)) == [docs[0], docs[1], docs[2][:10]]
    capped = list(iter_texts(paths, max_chars=12_345, doc_cap=300))
    assert sum(map(len, capped)) == 12_345 and max(map(len, capped)) <= 300


def test_iter_texts_stops_before_opening_more_files(fineweb_dir, monkeypatch):
    opened = []
    real = shards.pq.ParquetFile
    monkeypatch.setattr(shards.pq, "ParquetFile", lambda p, *a, **k: opened.append(Path(p)) or real(p, *a, **k))
    paths = list_shards(fineweb_dir)
    first = sum(len(d) for d in fineweb_documents(200, 0))
    assert sum(map(len, iter_texts(paths, max_chars=first))) == first
    assert opened == paths[:1]


def test_iter_texts_bad_files(tmp_path):
    wrong = tmp_path / "shard_00000.parquet"
    pq.write_table(pa.table({"content": ["a"], "id": [1]}), wrong)
    with pytest.raises(JaxchatError, match=rf"{wrong}: no 'text' column \(columns: \['content', 'id'\]\)"):
        list(iter_texts([wrong]))
    ints = tmp_path / "shard_00001.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    with pytest.raises(JaxchatError, match=rf"{ints}: column 'text' has type int64, expected string"):
        list(iter_texts([ints]))
    garbage = tmp_path / "shard_00002.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(JaxchatError, match=rf"{garbage}: cannot read as parquet"):
        list(iter_texts([garbage]))
    nulls = tmp_path / "shard_00003.parquet"
    pq.write_table(pa.table({"text": pa.array(["a", None, "b"], type=pa.string())}), nulls)
    assert list(iter_texts([nulls])) == ["a", "b"]


def corrupt_row_group(path: Path, row_group: int) -> None:
    """Overwrite the bytes of one row group's column chunk (its pages: headers, dictionary, data) in place;
    the footer, and with it the schema and every row group's offsets, stays intact."""
    column = pq.ParquetFile(path).metadata.row_group(row_group).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + column.total_compressed_size] = b"\xab" * column.total_compressed_size
    path.write_bytes(bytes(data))


def test_corrupt_row_group_is_one_line_naming_the_file_and_row_group(fineweb_dir):
    paths = list_shards(fineweb_dir)
    corrupt_row_group(paths[1], 2)
    assert pq.ParquetFile(paths[1]).num_row_groups == 4  # the footer still reads
    texts = iter_texts(paths[:2])
    assert [next(texts) for _ in range(200)] == fineweb_documents(200, 0)
    with pytest.raises(JaxchatError) as info:
        list(texts)
    message = str(info.value)
    assert message.startswith(f"{paths[1]}: row group 2 (of 4) is corrupt (") and "\n" not in message, message
    assert "delete the file and download it again" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_tokenizer_cli_reports_a_corrupt_shard_in_one_line(tmp_path, monkeypatch, capsys):
    from jaxchat.tokenizer import train

    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    paths = write_fineweb_shards(tmp_path / "base_data", n_shards=2, docs_per_shard=100, row_group_size=25)
    corrupt_row_group(paths[0], 1)
    assert train.main(["--tokenizer.vocab_size=300"]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the progress bar, which tqdm closes with a newline
    assert last.startswith(f"error: {paths[0]}: row group 1 (of 4) is corrupt (") and err.endswith(last + "\n"), err
    assert err.count("error:") == 1 and "Traceback" not in err
