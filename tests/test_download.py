"""The downloader against a loopback HTTP server (never a real host), and --from-text."""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jaxchat.common import JaxchatError
from jaxchat.data import download
from jaxchat.data.cache import HF_SOURCES, download_command, ensure_available, task_file
from jaxchat.data.download import download_eval_bundle, download_fineweb, download_hf_tasks, main
from jaxchat.data.shards import iter_texts, list_shards
from tests.cli_help import help_listing_every_key
from tests.fixtures.fineweb import write_fineweb_shards
from tests.fixtures.tasks import (
    ARC_SCHEMA,
    GSM8K_SCHEMA,
    HUMANEVAL_PROBLEMS,
    HUMANEVAL_SCHEMA,
    MMLU_AUX_SCHEMA,
    MMLU_SCHEMA,
    SMOLTALK_SCHEMA,
    arc_rows,
    gsm8k_rows,
    mmlu_rows,
    smoltalk_rows,
    write_eval_bundle,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; plays the failures queued in ``server.fail``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range"), self.headers.get("User-Agent")))
        queue = srv.fail.get(self.path)
        action = queue.pop(0) if queue else None
        if action in ("503", "500", "429"):
            self.send_error(int(action))
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if action == "truncate":  # announce the whole body, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.fail, srv.log, srv.honour_range = {}, {}, [], True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def dead_url():
    """A loopback URL where nothing listens (connection refused): 'no network'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def shard_bytes(tmp_path_factory):
    paths = write_fineweb_shards(tmp_path_factory.mktemp("src"), n_shards=3, docs_per_shard=150)
    return [p.read_bytes() for p in paths]


def _serve_shards(server, shard_bytes):
    for i, data in enumerate(shard_bytes):
        server.files[f"/shard_{i:05d}.parquet"] = data
    return server.url + "/shard_{i:05d}.parquet"


def _requests(server, name):
    return [(rng, ua) for path, rng, ua in server.log if path == f"/{name}"]


# --------------------------------------------------------------------------- FineWeb shards


def test_shards_download_with_retries(tmp_path, server, shard_bytes):
    url = _serve_shards(server, shard_bytes)
    server.fail = {"/shard_00001.parquet": ["503", "429"], "/shard_00002.parquet": ["truncate"]}
    report = download_fineweb(3, tmp_path, url=url, workers=2, backoff=0, progress=False)
    assert sorted(report.fetched) == [f"base_data/shard_{i:05d}.parquet" for i in range(3)] and not report.missing
    assert report.nbytes == sum(map(len, shard_bytes))
    for i, data in enumerate(shard_bytes):
        assert (tmp_path / "base_data" / f"shard_{i:05d}.parquet").read_bytes() == data
    assert not list((tmp_path / "base_data").glob("*.tmp"))
    assert len(_requests(server, "shard_00001.parquet")) == 3  # two failures, then success
    # The truncated body was kept and resumed with a Range request, not downloaded again.
    half = (len(shard_bytes[2])) // 2
    assert [rng for rng, _ in _requests(server, "shard_00002.parquet")] == [None, f"bytes={half}-"]
    assert all(ua and ua.startswith("jaxchat-downloader") for _, _, ua in server.log)
    assert [p.name for p in list_shards(tmp_path / "base_data")] == [f"shard_{i:05d}.parquet" for i in range(3)]
    assert next(iter_texts(list_shards(tmp_path / "base_data")))


def test_partial_tmp_resumes_and_complete_files_are_skipped(tmp_path, server, shard_bytes):
    url = _serve_shards(server, shard_bytes)
    base = tmp_path / "base_data"
    base.mkdir()
    (base / "shard_00000.parquet").write_bytes(shard_bytes[0])  # complete: must not be fetched again
    (base / "shard_00001.parquet.tmp").write_bytes(shard_bytes[1][:1000])  # partial: resume at byte 1000
    (base / "shard_00002.parquet.tmp").write_bytes(shard_bytes[2] + b"junk")  # longer than the file: restart
    report = download_fineweb(3, tmp_path, url=url, workers=1, backoff=0, progress=False)
    assert report.present == ["base_data/shard_00000.parquet"] and len(report.fetched) == 2
    assert _requests(server, "shard_00000.parquet") == []
    assert [rng for rng, _ in _requests(server, "shard_00001.parquet")] == ["bytes=1000-"]
    assert [rng for rng, _ in _requests(server, "shard_00002.parquet")] == [f"bytes={len(shard_bytes[2]) + 4}-", None]
    for i, data in enumerate(shard_bytes):
        assert (base / f"shard_{i:05d}.parquet").read_bytes() == data
    assert not list(base.glob("*.tmp"))


def test_server_ignoring_range_rewrites_the_file(tmp_path, server, shard_bytes):
    url = _serve_shards(server, shard_bytes)
    server.honour_range = False
    base = tmp_path / "base_data"
    base.mkdir()
    (base / "shard_00000.parquet.tmp").write_bytes(b"x" * 500)
    download_fineweb(1, tmp_path, url=url, backoff=0, progress=False)
    assert (base / "shard_00000.parquet").read_bytes() == shard_bytes[0]


def test_permanent_http_error_is_not_retried(tmp_path, server):
    report = download_fineweb(1, tmp_path, url=server.url + "/nothing_{i}.bin", backoff=0, progress=False)
    assert len(report.missing) == 1 and "HTTP 404" in report.missing[0]
    assert server.url + "/nothing_0.bin" in report.missing[0] and str(tmp_path / "base_data" / "shard_00000.parquet") in report.missing[0]
    assert len(server.log) == 1


def test_no_network_is_one_line_at_once(tmp_path, monkeypatch, capsys, dead_url):
    """Nothing answers: one probe, one `error:` line naming the offline route, exit 2, no retries, no files."""
    import time

    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    for name in ("FINEWEB_URL", "IDENTITY_URL", "WORDS_URL", "EVAL_BUNDLE_URL", "HF_ENDPOINT"):
        monkeypatch.setattr(download, name, dead_url + "/{i}" if name == "FINEWEB_URL" else dead_url + "/x")
    monkeypatch.setattr(download, "fetch", lambda *a, **k: pytest.fail("no download may start"))
    monkeypatch.setattr(download, "_default_load_fn", lambda: pytest.fail("no download may start"))
    t0 = time.monotonic()
    assert main(["--retries=5"]) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the network is unreachable (cannot connect to 127.0.0.1:")
    assert "runs/cpu_demo.sh --offline" in err and "--from_text=DIR" in err and "MISSING" not in err
    assert not list(tmp_path.iterdir())
    # train.py --stage=download: the same single line (the recipe's downloader call raises it).
    from jaxchat import recipe
    from jaxchat.config import load_toml

    with pytest.raises(JaxchatError, match="the network is unreachable"):
        recipe.download(load_toml("configs/cpu_demo.toml"))
    # A complete cache needs no network: nothing is probed, nothing fetched.
    write_fineweb_shards(tmp_path / "base_data", n_shards=2, docs_per_shard=5)
    monkeypatch.setattr(download, "probe", lambda *a, **k: pytest.fail("nothing to fetch: no probe"))
    assert main(["--only=fineweb", "--num_shards=2"]) == 0


def test_no_network_cli_reports_each_item(tmp_path, monkeypatch, capsys, dead_url):
    """When the probe passes (a host answers) but items fail, each one gets its own MISSING line."""
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(download, "FINEWEB_URL", dead_url + "/shard_{i:05d}.parquet")
    monkeypatch.setattr(download, "probe", lambda urls, timeout=3.0: None)
    assert main(["--only=fineweb", "--num_shards=3", "--workers=1", "--retries=0"]) == 1
    err = capsys.readouterr().err
    for i in range(3):
        assert f"MISSING base_data/shard_{i:05d}.parquet" in err
        assert f"{dead_url}/shard_{i:05d}.parquet" in err and f"put it at {tmp_path / 'base_data' / f'shard_{i:05d}.parquet'}" in err
    assert "not tried: the network looks unreachable" in err  # after the first shard, the others fail fast
    assert not list((tmp_path / "base_data").glob("shard_*"))
    with pytest.raises(JaxchatError, match=r"--only=fineweb --num_shards=8"):
        ensure_available("fineweb", tmp_path)


def test_no_network_tasks_and_eval(tmp_path, monkeypatch, capsys, dead_url):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    calls = []

    def offline_load(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline)")

    monkeypatch.setattr(download, "_default_load_fn", lambda: offline_load)
    monkeypatch.setattr(download, "probe", lambda urls, timeout=3.0: None)  # as if one host answered
    monkeypatch.setattr(download, "IDENTITY_URL", dead_url + "/identity_conversations.jsonl")
    monkeypatch.setattr(download, "WORDS_URL", dead_url + "/words_alpha.txt")
    monkeypatch.setattr(download, "EVAL_BUNDLE_URL", dead_url + "/eval_bundle.zip")
    assert main(["--only=tasks", "--retries=0"]) == 1
    err = capsys.readouterr().err
    assert len(calls) == 1  # the first failure shows the hub is unreachable; the rest are not tried
    for src in HF_SOURCES:
        for split in src.splits:
            assert f"MISSING tasks/{src.name}/{src.local_config}/{split}.parquet" in err
            assert f"put the file at {task_file(src.name, src.config, split, tmp_path)}" in err
    assert "https://huggingface.co/datasets/cais/mmlu" in err and "datasets.load_dataset('cais/mmlu', 'all', split='test').to_parquet('test.parquet')" in err
    assert f"MISSING identity_conversations.jsonl: could not download {dead_url}/identity_conversations.jsonl" in err
    assert "MISSING words_alpha.txt" in err
    assert main(["--only", "eval", "--retries", "0"]) == 1  # `--key value` works too
    err = capsys.readouterr().err
    assert f"{dead_url}/eval_bundle.zip" in err and str(tmp_path / "eval_bundle.zip") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing that could pass for a complete file
    with pytest.raises(JaxchatError, match="--only eval"):
        ensure_available("eval_bundle", tmp_path)


# --------------------------------------------------------------------------- HF datasets, small files, eval bundle


def _fake_hub():
    """A load_dataset stand-in returning fixture rows in each dataset's real schema."""
    import datasets
    import pyarrow as pa

    tables = {
        ("HuggingFaceTB/smol-smoltalk", None): (lambda split: smoltalk_rows(6, hash(split) % 100), SMOLTALK_SCHEMA),
        ("cais/mmlu", "auxiliary_train"): (lambda split: [{"train": r} for r in mmlu_rows(5, 1)], MMLU_AUX_SCHEMA),
        ("cais/mmlu", "all"): (lambda split: mmlu_rows(5, 2), MMLU_SCHEMA),
        ("openai/gsm8k", "main"): (lambda split: gsm8k_rows(4, 3), GSM8K_SCHEMA),
        ("allenai/ai2_arc", "ARC-Easy"): (lambda split: arc_rows(4, 4), ARC_SCHEMA),
        ("allenai/ai2_arc", "ARC-Challenge"): (lambda split: arc_rows(4, 5), ARC_SCHEMA),
        ("openai/openai_humaneval", None): (lambda split: HUMANEVAL_PROBLEMS, HUMANEVAL_SCHEMA),
    }
    calls = []

    def load(repo, config=None, *, split):
        calls.append((repo, config, split))
        rows, schema = tables[(repo, config)]
        return datasets.Dataset(pa.Table.from_pylist(rows(split), schema=schema))

    return load, calls


def test_hf_tasks_are_saved_in_the_documented_layout(tmp_path, monkeypatch):
    from jaxchat.tasks import ARC, MMLU, HumanEval, SmolTalk

    load, calls = _fake_hub()
    report = download_hf_tasks(tmp_path, load_fn=load)
    assert not report.missing and len(report.fetched) == sum(len(s.splits) for s in HF_SOURCES) == len(calls)
    assert ("cais/mmlu", "all", "test") in calls and ("openai/openai_humaneval", None, "test") in calls
    assert (tmp_path / "tasks/mmlu/auxiliary_train/train.parquet").is_file()
    assert (tmp_path / "tasks/arc/ARC-Challenge/validation.parquet").is_file()
    assert not list((tmp_path / "tasks").rglob("*.tmp"))
    assert pq.read_schema(tmp_path / "tasks/mmlu/auxiliary_train/train.parquet").field("train").type == MMLU_AUX_SCHEMA.field("train").type
    # The tasks read what the downloader wrote.
    assert len(SmolTalk("test", home=tmp_path)) == 6 and len(MMLU("auxiliary_train", "train", home=tmp_path)) == 5
    assert len(ARC("ARC-Easy", "validation", home=tmp_path)) == 4 and len(HumanEval(home=tmp_path)) == 3
    for name in ("smoltalk", "mmlu", "gsm8k", "arc", "humaneval"):
        assert ensure_available(name, tmp_path) == tmp_path / "tasks" / name
    # A second run skips everything.
    again = download_hf_tasks(tmp_path, load_fn=lambda *a, **k: pytest.fail("must not be called"))
    assert not again.fetched and len(again.present) == len(report.fetched)


def test_hf_failure_leaves_no_file(tmp_path):
    class Broken:
        def to_parquet(self, path):
            Path(path).write_bytes(b"half a parq")
            raise OSError("disk full")

    report = download_hf_tasks(tmp_path, load_fn=lambda *a, **k: Broken(), sources=HF_SOURCES[:1])
    assert len(report.missing) == 2 and "disk full" in report.missing[0]
    assert not list((tmp_path / "tasks").rglob("*.parquet*"))


def test_identity_words_and_eval_bundle(tmp_path, monkeypatch, server, task_cache_template):
    server.files["/identity_conversations.jsonl"] = (task_cache_template / "identity_conversations.jsonl").read_bytes()
    server.files["/words_alpha.txt"] = (task_cache_template / "words_alpha.txt").read_bytes()
    bundle = write_eval_bundle(tmp_path / "src" / "eval_bundle")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(bundle.rglob("*")):
            zf.write(p, Path("eval_bundle") / p.relative_to(bundle))
    server.files["/eval_bundle.zip"] = buf.getvalue()
    server.fail = {"/eval_bundle.zip": ["500"]}
    home = tmp_path / "home"
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    monkeypatch.setattr(download, "IDENTITY_URL", server.url + "/identity_conversations.jsonl")
    monkeypatch.setattr(download, "WORDS_URL", server.url + "/words_alpha.txt")
    monkeypatch.setattr(download, "EVAL_BUNDLE_URL", server.url + "/eval_bundle.zip")
    monkeypatch.setattr(download, "HF_ENDPOINT", server.url)  # the probe's host for the HF datasets
    monkeypatch.setattr(download, "download_hf_tasks", lambda home: download.DownloadReport())
    assert download_eval_bundle(home, url=server.url + "/eval_bundle.zip", backoff=0, progress=False).fetched == ["eval_bundle"]
    assert main(["--only=tasks"]) == 0 and main(["--only=eval"]) == 0
    assert (home / "identity_conversations.jsonl").read_bytes() == server.files["/identity_conversations.jsonl"]
    assert ensure_available("words", home).read_bytes() == server.files["/words_alpha.txt"]
    root = ensure_available("eval_bundle", home)
    assert (root / "core.yaml").read_text() == (bundle / "core.yaml").read_text()
    assert (root / "eval_data/language_understanding/hellaswag.jsonl").is_file()
    assert not (home / "eval_bundle.zip").exists() and not [p for p in home.iterdir() if p.name.startswith(".eval_bundle")]
    n_requests = len(server.log)
    assert main(["--only=eval"]) == 0 and main(["--only=tasks"]) == 0 and len(server.log) == n_requests  # all skipped


def test_bad_zip_is_deleted(tmp_path, server):
    server.files["/eval_bundle.zip"] = b"PK\x03\x04 not really a zip"
    report = download_eval_bundle(tmp_path, url=server.url + "/eval_bundle.zip", backoff=0, progress=False)
    assert len(report.missing) == 1 and "bad zip" in report.missing[0]
    assert not (tmp_path / "eval_bundle.zip").exists() and not (tmp_path / "eval_bundle").exists()


# --------------------------------------------------------------------------- --from-text


def test_from_text_makes_valid_shards(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path / "home"))
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("First document.\nWith two lines.", encoding="utf-8")
    (src / "b.md").write_text("# Title\n\nSome *markdown* — ünïcödé.", encoding="utf-8")
    (src / "c.jsonl").write_text("".join(json.dumps({"text": f"json doc {i} " + "x" * (i % 50)}) + "\n" for i in range(2500)) + "\n", encoding="utf-8")
    (src / "sub" / "d.txt").write_text("nested document", encoding="utf-8")
    (src / "sub" / "empty.txt").write_text("   \n", encoding="utf-8")
    (src / "notes.csv").write_text("ignored,file", encoding="utf-8")
    expected = ["First document.\nWith two lines.", "# Title\n\nSome *markdown* — ünïcödé."]
    expected += [f"json doc {i} " + "x" * (i % 50) for i in range(2500)] + ["nested document"]

    assert main([f"--from_text={src}"]) == 0  # fits in one shard: split into train + validation
    shards = list_shards()
    assert [p.name for p in shards] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert list(iter_texts(shards)) == expected
    first = pq.ParquetFile(shards[0])
    assert first.schema_arrow.names == ["text"] and str(first.schema_arrow.field("text").type) == "string"
    assert [first.metadata.row_group(k).num_rows for k in range(first.num_row_groups)] == [1024, 1024, 205]
    assert pq.ParquetFile(shards[1]).metadata.num_rows == 250
    assert "the validation shard" in capsys.readouterr().out

    # corpus.json: where the shards came from, their sizes, and the command that makes them again.
    marker = json.loads((tmp_path / "home" / "base_data" / "corpus.json").read_text())
    assert marker["source"] == str(src.resolve()) and marker["documents"] == len(expected)
    assert marker["characters"] == sum(map(len, expected)) and [s["documents"] for s in marker["shards"]] == [2253, 250]
    assert marker["command"] == f"python -m jaxchat.data.download --from_text={src.resolve()}"
    # Hints name that command, never the FineWeb download that would mix corpora.
    assert download_command("fineweb", tmp_path / "home") == marker["command"]
    with pytest.raises(JaxchatError, match=f"--from_text={src.resolve()}"):
        _one_shard_left(tmp_path / "home")

    # Again into the same place: the same corpus is already there, nothing is rewritten.
    before = [p.stat().st_mtime_ns for p in shards]
    assert main([f"--from_text={src}"]) == 0
    assert "already holds the 2 shards made from" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in shards] == before
    # Another source, or this one changed: refused, nothing overwritten.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("another corpus", encoding="utf-8")
    assert main([f"--from_text={other}"]) == 2
    err = capsys.readouterr().err
    assert "already holds 2 shard_*.parquet" in err and f"made from {src.resolve()}" in err
    (src / "sub" / "d.txt").write_text("nested document, edited", encoding="utf-8")
    assert main([f"--from_text={src}"]) == 2 and "already holds 2" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in shards] == before
    (src / "sub" / "d.txt").write_text("nested document", encoding="utf-8")

    out = tmp_path / "many"
    assert main([f"--from_text={src}", "--chars_per_shard=20000", f"--out={out}"]) == 0
    many = sorted(out.glob("shard_*.parquet"))
    assert len(many) > 2 and list(iter_texts(many)) == expected
    assert all(pq.ParquetFile(p).metadata.num_rows > 0 for p in many)
    assert not list(out.glob(".*"))  # no staging dir left


def _one_shard_left(home):
    """Hide all but one shard, check the hint, put them back."""
    directory = home / "base_data"
    moved = directory / "shard_00001.parquet"
    aside = home / "aside.parquet"
    moved.rename(aside)
    try:
        ensure_available("fineweb", home)
    finally:
        aside.rename(moved)


def test_from_text_corpus_is_left_alone_by_the_fineweb_download(tmp_path, monkeypatch, capsys, server):
    """`--stage=download` after `--from_text`: one line, FineWeb skipped; the rest downloads as usual."""
    home = tmp_path / "home"
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.txt").write_text(f"document {i} " * 20, encoding="utf-8")
    assert main([f"--from_text={src}"]) == 0
    monkeypatch.setattr(download, "FINEWEB_URL", server.url + "/shard_{i:05d}.parquet")
    monkeypatch.setattr(download, "probe", lambda *a, **k: pytest.fail("nothing to fetch: no probe"))
    capsys.readouterr()
    assert main(["--only=fineweb", "--num_shards=8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fineweb: skipped:") and f"made from {src.resolve()}" in out and out.count("\n") == 2
    assert len(list((home / "base_data").glob("shard_*.parquet"))) == 2 and not server.log
    # A damaged shard deleted: the same command makes the corpus again (the hint says which command).
    (home / "base_data" / "shard_00000.parquet").unlink()
    assert main([f"--from_text={src}"]) == 0 and len(list_shards(home / "base_data")) == 2


def test_from_text_bad_input_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path / "home"))
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("fine " * 100, encoding="utf-8")
    (src / "b.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    assert main(["--from-text", str(src), "--chars-per-shard", "10"]) == 2  # dashes work too
    err = capsys.readouterr().err
    assert f"{src / 'b.jsonl'}:2" in err and "'text'" in err
    assert not list((tmp_path / "home" / "base_data").glob("shard_*"))
    (src / "b.jsonl").unlink()
    assert main([f"--from_text={src}"]) == 2 and "at least 2 are needed" in capsys.readouterr().err
    assert main([f"--from_text={tmp_path / 'nope'}"]) == 2
    assert f"--from_text={tmp_path / 'nope'}: no such file" in capsys.readouterr().err


# --------------------------------------------------------------------------- the command line


def test_help_lists_every_key_with_its_default(capsys):
    out = help_listing_every_key(main, download.DownloadConfig(), capsys)
    assert "--num_shards=240" in out and "--from_text=DIR" in out  # the usage examples
    assert "--num_shards = 8  [int]" in out and "--only = ''  [str]" in out


@pytest.mark.parametrize("argv, message", [
    (["--num_shards=0"], "--num_shards=0: expected 1 … 1823 shards, or -1 for all of them"),
    (["--num_shards=5000"], "--num_shards=5000: expected 1 … 1823 shards"),
    (["--only=web"], "--only='web': expected one of fineweb, tasks, eval"),
    (["--workers=0"], "--workers=0: expected at least 1"),
    (["--retries=-1"], "--retries=-1: expected a number >= 0"),
    (["--chars_per_shard=0", "--from_text=x"], "--chars_per_shard=0: expected a positive number"),
    (["--out=somewhere"], "--out='somewhere': only used with --from_text=DIR"),
    (["--num_shards=many"], "num_shards='many': expected int"),
    (["--shards=3"], "unknown config key 'shards'"),
    (["-n", "3"], "unexpected argument '-n'; expected --key=value"),
])
def test_bad_settings_are_one_line_before_any_download(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(download, "download_fineweb", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.setattr(download, "download_hf_tasks", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.setattr(download, "shards_from_text", lambda *a, **k: pytest.fail("must not start"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_recipe_download_asks_for_the_shards_the_config_needs(monkeypatch, capsys):
    """``train.py --stage=download``: the downloader's function with the number of shards, typed."""
    from jaxchat import recipe
    from jaxchat.config import RunConfig

    calls = []

    def fake_run(config):
        calls.append(config)
        return download.DownloadReport(missing=["MISSING x"] if len(calls) > 1 else [])

    monkeypatch.setattr(download, "run", fake_run)
    cfg = RunConfig()
    recipe.download(cfg)
    assert calls == [download.DownloadConfig(num_shards=recipe.shards_needed(cfg))]
    with pytest.raises(JaxchatError, match="download incomplete"):
        recipe.download(cfg)


# --------------------------------------------------------------------------- the network probe, retries, hints


def test_probe_answers_within_its_timeout(server, dead_url, monkeypatch):
    import time

    from jaxchat.data import http

    assert http.probe([dead_url + "/a", server.url + "/b"]) is None  # one host answering is enough
    reason = http.probe([dead_url + "/a", dead_url + "/b"])
    assert reason.startswith(f"cannot connect to 127.0.0.1:{dead_url.rsplit(':', 1)[1]}") and "refused" in reason
    assert http.probe([]) is None
    # A name lookup that hangs (a machine with a broken resolver): the probe still returns on time.
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(http.socket, "create_connection", hang)
    t0 = time.monotonic()
    try:
        assert "no answer within 0.3 s" in http.probe(["https://example.invalid/x"], timeout=0.3)
        assert time.monotonic() - t0 < 2
    finally:
        release.set()


def test_probe_goes_through_the_proxy(server, dead_url, monkeypatch):
    from jaxchat.data import http

    monkeypatch.setenv("https_proxy", server.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert http._endpoint("https://huggingface.co/x") == ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    assert http.probe(["https://huggingface.co/x"]) is None  # the proxy answers for the host
    monkeypatch.setenv("https_proxy", dead_url)
    assert "127.0.0.1" in http.probe(["https://huggingface.co/x"])


def test_every_retry_is_one_line(tmp_path, server, shard_bytes, capsys):
    url = _serve_shards(server, shard_bytes)
    server.fail = {"/shard_00000.parquet": ["503", "503"]}
    report = download_fineweb(1, tmp_path, url=url, backoff=0, progress=False)
    assert report.fetched == ["base_data/shard_00000.parquet"]
    err = capsys.readouterr().err
    assert err.count("retry ") == 2 and "base_data/shard_00000.parquet: " in err and "HTTP 503" in err
    assert "retry 1/5 in 0 s" in err and "retry 2/5 in 0 s" in err


def test_hf_library_loggers_print_once():
    import logging

    logger = logging.getLogger("huggingface_hub")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        with download._hf_logs_once():
            assert logger.propagate is False  # its own handler prints; the root handler would print again
        assert logger.propagate is True
    finally:
        logger.removeHandler(handler)


def test_missing_cache_files_are_reported_all_at_once(tmp_path):
    from jaxchat.data.cache import missing_files, require_available

    with pytest.raises(JaxchatError) as info:
        ensure_available("mmlu", tmp_path)
    message = str(info.value)
    for split in ("auxiliary_train/train", "all/test", "all/validation", "all/dev"):
        assert f"tasks/mmlu/{split}.parquet" in message
    assert message.startswith("4 file(s) missing") and message.count("--only tasks") == 1
    with pytest.raises(JaxchatError) as info:
        require_available([("smoltalk", None, "train"), ("gsm8k", "main", "train"), "identity", "eval_bundle"], tmp_path)
    message = str(info.value)
    assert message.startswith("6 file(s) missing from the cache (smoltalk, gsm8k, identity, eval_bundle)")
    assert "identity_conversations.jsonl" in message and "core.yaml" in message
    assert "`python -m jaxchat.data.download --only tasks` and `python -m jaxchat.data.download --only eval`" in message
    require_available([], tmp_path)
    assert len(missing_files("fineweb", tmp_path)) == 2
    (tmp_path / "words_offline.txt").write_text("apple\n")
    assert missing_files("words", tmp_path) == []  # the spelling tasks read the offline list too
    assert download_command("fineweb", tmp_path) == "python -m jaxchat.data.download --only=fineweb --num_shards=8"


# --------------------------------------------------------------------------- ClimbMix shards (nanochat 92d63d4's data)


def _serve_climbmix(server, shard_bytes, indices=(0, 1, 6542)):
    for i, data in zip(indices, shard_bytes):
        server.files[f"/climbmix/shard_{i:05d}.parquet"] = data
    return server.url + "/climbmix/shard_{i:05d}.parquet"


def test_climbmix_is_nanochats_dataset():
    assert download.CLIMBMIX_URL.format(i=6542) == (
        "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_06542.parquet")
    assert download.CLIMBMIX_MAX_SHARD == 6542
    assert download.shard_indices("climbmix", 3) == [0, 1, 2, 6542]  # the val shard always comes too
    assert download.shard_indices("climbmix", -1) == list(range(6543))
    assert download.shard_indices("fineweb", 3) == [0, 1, 2]


def test_climbmix_shards_download_into_their_own_directory(tmp_path, monkeypatch, server, shard_bytes):
    url = _serve_climbmix(server, shard_bytes)
    server.fail = {"/climbmix/shard_00001.parquet": ["503"], "/climbmix/shard_06542.parquet": ["truncate"]}
    report = download.download_climbmix(2, tmp_path, url=url, workers=2, backoff=0, progress=False)
    names = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert report.fetched == [f"base_data_climbmix/{n}" for n in names] and not report.missing
    for name, data in zip(names, shard_bytes):
        assert (tmp_path / "base_data_climbmix" / name).read_bytes() == data
    assert not (tmp_path / "base_data").exists() and not list((tmp_path / "base_data_climbmix").glob("*.tmp"))
    half = len(shard_bytes[2]) // 2  # the truncated val shard resumed with a Range request
    assert [rng for rng, _ in _requests(server, "climbmix/shard_06542.parquet")] == [None, f"bytes={half}-"]
    # The pretraining stage finds them by corpus; the val shard is the last one, as in nanochat.
    from jaxchat.data.shards import split_shards

    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    train, val = split_shards(list_shards(corpus="climbmix"))
    assert [p.name for p in train] == names[:2] and [p.name for p in val] == ["shard_06542.parquet"]
    assert ensure_available("climbmix", tmp_path) == tmp_path / "base_data_climbmix"
    with pytest.raises(JaxchatError, match=r"--only=fineweb --num_shards=8"):
        list_shards()  # FineWeb-Edu's directory is another one, still empty


def test_climbmix_partial_tmp_resumes_and_complete_files_are_skipped(tmp_path, server, shard_bytes):
    url = _serve_climbmix(server, shard_bytes)
    base = tmp_path / "base_data_climbmix"
    base.mkdir()
    (base / "shard_00000.parquet").write_bytes(shard_bytes[0])
    (base / "shard_00001.parquet.tmp").write_bytes(shard_bytes[1][:1000])
    report = download.download_climbmix(2, tmp_path, url=url, workers=1, backoff=0, progress=False)
    assert report.present == ["base_data_climbmix/shard_00000.parquet"] and len(report.fetched) == 2
    assert _requests(server, "climbmix/shard_00000.parquet") == []
    assert [rng for rng, _ in _requests(server, "climbmix/shard_00001.parquet")] == ["bytes=1000-"]
    assert (base / "shard_00001.parquet").read_bytes() == shard_bytes[1] and not list(base.glob("*.tmp"))


def test_climbmix_cli(tmp_path, monkeypatch, capsys, server, shard_bytes):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(download, "CLIMBMIX_URL", _serve_climbmix(server, shard_bytes))
    monkeypatch.setattr(download, "FINEWEB_URL", server.url + "/nothing/{i}")
    assert main(["--only=climbmix", "--num_shards=2", "--workers=1"]) == 0
    out = capsys.readouterr().out
    assert f"climbmix: 3 of 3 shards in {tmp_path / 'base_data_climbmix'}" in out
    assert main(["--corpus=climbmix", "--only=fineweb", "--num_shards=2"]) == 2  # --only names the corpus
    assert "--only=fineweb with --corpus=climbmix" in capsys.readouterr().err
    # A complete cache needs no network: nothing is probed, nothing fetched.
    monkeypatch.setattr(download, "probe", lambda *a, **k: pytest.fail("nothing to fetch: no probe"))
    assert main(["--corpus=climbmix", "--only=climbmix", "--num_shards=2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base_data_climbmix"]


def test_climbmix_without_network(tmp_path, monkeypatch, capsys, dead_url):
    """No host answers: one line at once, nothing written; a host answers but the shards fail: one
    MISSING line each, naming the URL and where to put the file, and the cache check names the command."""
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(download, "CLIMBMIX_URL", dead_url + "/shard_{i:05d}.parquet")
    monkeypatch.setattr(download, "fetch", lambda *a, **k: pytest.fail("no download may start"))
    assert main(["--only=climbmix", "--num_shards=2", "--retries=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the network is unreachable (cannot connect to 127.0.0.1:")
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(download, "CLIMBMIX_URL", dead_url + "/shard_{i:05d}.parquet")
    monkeypatch.setattr(download, "probe", lambda urls, timeout=3.0: None)
    assert main(["--only=climbmix", "--num_shards=2", "--workers=1", "--retries=0"]) == 1
    err = capsys.readouterr().err
    for i in (0, 1, 6542):
        dest = tmp_path / "base_data_climbmix" / f"shard_{i:05d}.parquet"
        assert f"MISSING base_data_climbmix/shard_{i:05d}.parquet" in err and f"put it at {dest}" in err
    assert not list((tmp_path / "base_data_climbmix").iterdir())
    with pytest.raises(JaxchatError, match=r"download them with `python -m jaxchat.data.download --only=climbmix"):
        ensure_available("climbmix", tmp_path)
    assert download_command("climbmix") == "python -m jaxchat.data.download --only=climbmix --num_shards=8"


@pytest.mark.parametrize("argv, message", [
    (["--corpus=web"], "--corpus='web': expected one of fineweb, climbmix"),
    (["--only=climbmix", "--num_shards=6543"], "--num_shards=6543: expected 1 … 6542 ClimbMix train shards"),
    (["--corpus=climbmix", "--num_shards=0"], "--num_shards=0: expected 1 … 6542 ClimbMix train shards"),
    (["--corpus=climbmix", "--only=fineweb"], "--only=fineweb with --corpus=climbmix"),
])
def test_climbmix_bad_settings_are_one_line_before_any_download(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(download, "download_shards", lambda *a, **k: pytest.fail("must not start"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
