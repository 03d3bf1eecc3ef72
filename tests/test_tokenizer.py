"""The BPE tokenizer: training, encoding, token_bytes, the on-disk format, the stage CLI and tok_eval."""

from __future__ import annotations

import base64
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load

from jaxchat.common import JaxchatError
from jaxchat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, load_tokenizer
from jaxchat.data import shards
from jaxchat.tokenizer import storage, tok_eval, train
from tests.fixtures.fineweb import fineweb_documents
from tests.cli_help import help_listing_every_key

MULTILINGUAL = [
    "日本語のテキストです。東京は日本の首都です。漢字、ひらがな、カタカナ。",
    "中文文本：北京是中国的首都。我们学习自然语言处理。",
    "한국어 문장입니다. 서울은 한국의 수도입니다.",
    "Emoji: 😀 👍🏽 👩‍👩‍👧‍👦 🇫🇷 — café, naïve, Ångström, e\u0301 (combining acute)",
    "Ελληνικά και русский текст; עברית; العربية",
    "def f(x):\r\n\treturn x ** 2  # windows line endings\r\n",
    "Numbers 1234567890, 3.14159, 1e-10, $1,000,000 and 99%.",
]
CORPUS = fineweb_documents(300, seed=7) + MULTILINGUAL * 20
VOCAB = 768


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_from_iterator(CORPUS, VOCAB)


# ---- vocabulary ---------------------------------------------------------------------------------


def test_spec_constants():
    assert SPECIAL_TOKENS == (
        "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
        "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>",
    )  # fmt: skip
    assert SPLIT_PATTERN == (  # docs/DESIGN.md §1, character for character
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
        r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
    )


def test_special_ids_are_the_last_nine_in_spec_order(tok):
    assert tok.get_vocab_size() == VOCAB
    assert tok.n_merge_tokens == VOCAB - 9
    assert [tok.encode_special(name) for name in SPECIAL_TOKENS] == list(range(VOCAB - 9, VOCAB))
    assert tok.bos_token_id == VOCAB - 9
    assert tok.special_tokens == {name: VOCAB - 9 + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert [tok.id_to_token(i) for i in range(VOCAB - 9, VOCAB)] == list(SPECIAL_TOKENS)
    # The first 256 ids are the single bytes (rustbpe's layout).
    assert [tok.id_to_bytes(i) for i in range(256)] == [bytes([b]) for b in range(256)]
    with pytest.raises(JaxchatError, match="unknown special token '<|eos|>'"):
        tok.encode_special("<|eos|>")


def test_token_bytes_are_raw_byte_lengths(tok):
    tb = tok.token_bytes
    assert tb.dtype == np.int32 and tb.shape == (VOCAB,)
    raw = [len(tok._enc.decode_single_token_bytes(i)) for i in range(tok.n_merge_tokens)]
    assert tb[: tok.n_merge_tokens].tolist() == raw
    assert tb[tok.n_merge_tokens :].tolist() == [0] * 9
    # Tokens that are not valid UTF-8 on their own (upstream #693 measured them through str, where
    # each U+FFFD counts 3 bytes). Byte 0xE6 is the lead byte of many CJK characters.
    partial = [i for i in range(tok.n_merge_tokens) if _invalid_utf8(tok.id_to_bytes(i))]
    assert 0xE6 in partial and tb[0xE6] == 1 and len(tok.id_to_token(0xE6).encode()) == 3
    merged_partial = [i for i in partial if tb[i] > 1]  # e.g. the first 2 bytes of a CJK character
    assert merged_partial, "the CJK in the corpus should produce merged tokens that split a character"
    for i in merged_partial:
        assert tb[i] == len(tok.id_to_bytes(i)) != len(tok.id_to_token(i).encode())
    with pytest.raises(ValueError):
        tb[0] = 5  # the cached array is read-only


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# ---- encode / decode ----------------------------------------------------------------------------

TRICKY = [
    "",
    "hello world",
    *MULTILINGUAL,
    "never seen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ᚠᛇᚻ 🦜🧬",
    "a" + " " * 1000 + "b" + "\n" * 50 + "\t\t \r\n\r\n" + " " * 7,
    "trailing spaces   ",
    "line one\r\nline two\r\n\r\nline four\n",
    "control \x00\x01\x7f and BOM \ufeff and nbsp\u00a0.",
    "A\u030a vs \u00c5 (NFD vs NFC), Z\u0351\u0358\u0367\u0310a\u0315\u0322l\u0338g\u036do\u0341",
    "x" * 5000,
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.n_merge_tokens for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_lone_surrogates_become_replacement_char(tok):
    # Not encodable as UTF-8: replaced by U+FFFD (tiktoken's rule), never an exception.
    assert tok.decode(tok.encode("a\ud800b\udfff")) == "a\ufffdb\ufffd"
    assert tok.encode(["x\udc00"]) == [tok.encode("x\ufffd")]
    # Training on such text works too (rustbpe alone would raise UnicodeEncodeError).
    trained = Tokenizer.train_from_iterator([*CORPUS[:50], "bad \ud800 text " * 20], 300)
    assert trained.decode(trained.encode("bad \ud800")) == "bad \ufffd"


def test_special_token_text_is_ordinary(tok):
    text = "<|bos|>Hi<|assistant_end|> <|user_start|>"
    for ids in (tok.encode(text), tok.encode([text])[0], tok.encode(text, prepend="<|bos|>")[1:]):
        assert not any(tok.is_special(i) for i in ids)
        assert tok.decode(ids) == text


def test_prepend_and_append(tok):
    ids = tok.encode("hello")
    bos, end = tok.bos_token_id, tok.encode_special("<|assistant_end|>")
    assert tok.encode("hello", prepend="<|bos|>", append=end) == [bos, *ids, end]
    assert tok.encode("hello", prepend=bos) == [bos, *ids]
    assert tok.encode(["hello", ""], prepend=bos, append="<|assistant_end|>") == [[bos, *ids, end], [bos, end]]
    assert tok("hello", append=np.int64(end)) == [*ids, end]
    with pytest.raises(JaxchatError, match="unknown special token"):
        tok.encode("x", prepend="<|nope|>")
    with pytest.raises(JaxchatError, match="outside the vocabulary"):
        tok.encode("x", append=VOCAB)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("threads", [1, 4])
def test_batch_equals_single(tok, threads):
    texts = TRICKY + CORPUS[:20]
    assert tok.encode(texts, num_threads=threads) == [tok.encode(t) for t in texts]
    assert tok.encode([]) == []


def test_decode_specials_and_numpy(tok):
    ids = np.array([tok.bos_token_id, *tok.encode("hi")], dtype=np.int32)
    assert tok.decode(ids) == "<|bos|>hi"


# ---- training -----------------------------------------------------------------------------------


def test_training_is_deterministic(tok):
    again = Tokenizer.train_from_iterator(iter(CORPUS), VOCAB)  # a one-shot iterator works too
    assert again.mergeable_tokens() == tok.mergeable_tokens()
    assert again.fingerprint() == tok.fingerprint() and again == tok
    other = Tokenizer.train_from_iterator(CORPUS[::-1][:250], VOCAB)
    assert other.fingerprint() != tok.fingerprint()


def test_training_learns_frequent_words(tok):
    # Frequent corpus words become single tokens: BPE actually merged something.
    assert len(tok.encode(" the")) == 1
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0].encode()) / 2


def test_training_rejects_bad_sizes():
    with pytest.raises(JaxchatError, match="at least 265"):
        Tokenizer.train_from_iterator(["abc"], 264)
    with pytest.raises(JaxchatError, match="only supports .* tokens"):
        Tokenizer.train_from_iterator(["tiny text"], 4096)
    with pytest.raises(JaxchatError, match="training text #1 is a bytes"):
        Tokenizer.train_from_iterator(["ok", b"bytes"], 300)  # type: ignore[list-item]


def test_constructor_validates_tokens():
    singles = [bytes([b]) for b in range(256)]
    with pytest.raises(JaxchatError, match="repeats token"):
        Tokenizer([*singles, b"ab", b"ab"])
    with pytest.raises(JaxchatError, match="lacks the single-byte"):
        Tokenizer(singles[1:] + [b"ab"])
    with pytest.raises(JaxchatError, match="empty"):
        Tokenizer([*singles, b""])


# ---- save / load --------------------------------------------------------------------------------


def test_save_load_identity(tok, tmp_path):
    out = tok.save(tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == ["token_bytes.npy", "tokenizer.json", "tokenizer.tiktoken"]
    loaded = Tokenizer.from_directory(out)
    assert loaded == tok and loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(TRICKY) == tok.encode(TRICKY)
    assert np.array_equal(loaded.token_bytes, tok.token_bytes)
    assert np.array_equal(np.load(out / "token_bytes.npy"), tok.token_bytes)
    meta = json.loads((out / "tokenizer.json").read_text())
    assert meta["format_version"] == 1 and meta["vocab_size"] == VOCAB and meta["pattern"] == SPLIT_PATTERN
    assert meta["special_tokens"] == tok.special_tokens and meta["fingerprint"] == tok.fingerprint()
    # The .tiktoken file is tiktoken's own format: tiktoken's reader agrees with ours.
    ranks = tiktoken.load.load_tiktoken_bpe(str(out / "tokenizer.tiktoken"))
    assert ranks == {t: i for i, t in enumerate(tok.mergeable_tokens())}
    # Saving again over the same directory is fine and byte-identical.
    before = (out / "tokenizer.tiktoken").read_bytes()
    tok.save(out)
    assert (out / "tokenizer.tiktoken").read_bytes() == before
    assert load_tokenizer(out) == tok


def test_default_location(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    with pytest.raises(JaxchatError, match="jaxchat.tokenizer.train"):
        load_tokenizer()
    tok.save(tmp_path / "tokenizer")
    assert load_tokenizer() == tok


def test_pickle_is_cheap_and_exact(tok):
    blob = pickle.dumps(tok)
    assert len(blob) < 50 * VOCAB  # the token list, not tiktoken's internal tables
    clone = pickle.loads(blob)
    assert clone == tok and clone.encode(TRICKY) == tok.encode(TRICKY)
    assert clone.fingerprint() == tok.fingerprint()


def _saved(tok: Tokenizer, tmp_path: Path) -> Path:
    return tok.save(tmp_path / "tok")


def _rewrite_json(directory: Path, **changes) -> None:
    meta = json.loads((directory / "tokenizer.json").read_text())
    meta.update(changes)
    (directory / "tokenizer.json").write_text(json.dumps(meta))


def _rewrite_tiktoken(directory: Path, text: str) -> None:
    """Replace the .tiktoken file and fix the checksum so only the content check can fail."""
    (directory / "tokenizer.tiktoken").write_text(text)
    (directory / "token_bytes.npy").unlink()
    import hashlib

    _rewrite_json(directory, tiktoken_sha256=hashlib.sha256(text.encode()).hexdigest())


def _lines(directory: Path) -> list[str]:
    return (directory / "tokenizer.tiktoken").read_text().splitlines()


def _corrupt_cases():
    def missing_json(d):
        (d / "tokenizer.json").unlink()

    def missing_tiktoken(d):
        (d / "tokenizer.tiktoken").unlink()

    def bad_json(d):
        (d / "tokenizer.json").write_text("{not json")

    def json_list(d):
        (d / "tokenizer.json").write_text("[1, 2]")

    def version(d):
        _rewrite_json(d, format_version=2)

    def no_pattern(d):
        _rewrite_json(d, pattern=None)

    def malformed_line(d):
        lines = _lines(d)
        lines[300] = "garbage-without-rank"
        _rewrite_tiktoken(d, "\n".join(lines) + "\n")

    def bad_base64(d):
        lines = _lines(d)
        lines[300] = "!!!! 300"
        _rewrite_tiktoken(d, "\n".join(lines) + "\n")

    def gap_in_ranks(d):
        lines = _lines(d)
        del lines[400]
        _rewrite_tiktoken(d, "\n".join(lines) + "\n")

    def duplicate_token(d):
        lines = _lines(d)
        lines[400] = lines[399].split()[0] + " 400"
        _rewrite_tiktoken(d, "\n".join(lines) + "\n")

    def missing_byte(d):
        lines = _lines(d)
        lines[65] = base64.b64encode(b"not A").decode() + " 65"
        _rewrite_tiktoken(d, "\n".join(lines) + "\n")

    def bad_pattern(d):
        _rewrite_json(d, pattern="(unclosed")

    def binary(d):
        (d / "tokenizer.tiktoken").write_bytes(b"\x80\x81 0\n")

    def checksum(d):
        lines = _lines(d)
        lines[300] = base64.b64encode(b"zzzqqq").decode() + " 300"
        (d / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n")

    def specials_shifted(d):
        _rewrite_json(d, special_tokens={n: VOCAB - 8 + i for i, n in enumerate(SPECIAL_TOKENS)})

    def specials_renamed(d):
        _rewrite_json(d, special_tokens={"<|endoftext|>": VOCAB - 9})

    def vocab_size(d):
        _rewrite_json(d, vocab_size=65536)

    def token_bytes(d):
        np.save(d / "token_bytes.npy", np.ones(VOCAB, dtype=np.int32))

    def nanochat_pickle(d):
        (d / "tokenizer.json").unlink()
        (d / "tokenizer.tiktoken").unlink()
        (d / "tokenizer.pkl").write_bytes(pickle.dumps({"not": "a tokenizer"}))

    return [
        (missing_json, "tokenizer.json", "is missing (an interrupted save)"),
        (missing_tiktoken, "tokenizer.tiktoken", "is missing (it goes with"),
        (bad_json, "tokenizer.json", ": not valid JSON"),
        (json_list, "tokenizer.json", ": top level is a list"),
        (version, "tokenizer.json", ": format_version 2, expected 1"),
        (no_pattern, "tokenizer.json", ": field 'pattern' is None, expected a str"),
        (malformed_line, "tokenizer.tiktoken", " line 301: 'garbage-without-rank' is malformed"),
        (bad_base64, "tokenizer.tiktoken", " line 301: '!!!!' is not valid base64"),
        (gap_in_ranks, "tokenizer.tiktoken", " line 401: rank 401, expected 400"),
        (duplicate_token, "tokenizer.tiktoken", " line 401: token"),
        (missing_byte, "tokenizer.tiktoken", ": no single-byte token for byte(s) [65]"),
        (bad_pattern, "", "is not a valid regex"),
        (binary, "tokenizer.tiktoken", ": non-ASCII byte at offset 0"),
        (checksum, "tokenizer.tiktoken", " does not match the tiktoken_sha256"),
        (specials_shifted, "tokenizer.json", "do not follow the 759 merge tokens"),
        (specials_renamed, "tokenizer.json", ": special_tokens {'<|endoftext|>': 759}"),
        (vocab_size, "tokenizer.json", ": vocab_size 65536, expected 768"),
        (token_bytes, "token_bytes.npy", " disagrees with tokenizer.tiktoken"),
        (nanochat_pickle, "", "holds a pickled (nanochat) tokenizer.pkl"),
    ]


@pytest.mark.parametrize(
    "corrupt,filename,message", _corrupt_cases(), ids=[case[0].__name__ for case in _corrupt_cases()]
)
def test_corrupt_or_foreign_files_are_rejected(tok, tmp_path, corrupt, filename, message):
    directory = _saved(tok, tmp_path)
    corrupt(directory)
    with pytest.raises(JaxchatError) as exc:
        Tokenizer.from_directory(directory)
    text = str(exc.value)
    assert str(directory / filename) in text and message in text, text


def test_missing_directory(tmp_path):
    with pytest.raises(JaxchatError, match=f"{tmp_path / 'nope'} does not exist"):
        Tokenizer.from_directory(tmp_path / "nope")


def test_interrupted_save_never_loads(tok, tmp_path, monkeypatch):
    directory = _saved(tok, tmp_path)
    other = Tokenizer.train_from_iterator(CORPUS[:200], 600)
    real_write = storage._atomic_write

    def crash_on_json(path: Path, data: bytes) -> None:
        if path.name == "tokenizer.json":
            raise KeyboardInterrupt  # killed after the new .tiktoken landed, before the marker
        real_write(path, data)

    monkeypatch.setattr(storage, "_atomic_write", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        other.save(directory)
    with pytest.raises(JaxchatError, match="interrupted save"):
        Tokenizer.from_directory(directory)
    monkeypatch.undo()
    other.save(directory)  # a rerun repairs it
    assert Tokenizer.from_directory(directory) == other


# ---- the stage: train_tokenizer / CLI -----------------------------------------------------------


def test_train_tokenizer_end_to_end(fineweb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert fineweb_dir == tmp_path / "base_data"
    opened: list[Path] = []
    real_open = shards.pq.ParquetFile

    def spy(path, *args, **kwargs):
        opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(shards.pq, "ParquetFile", spy)
    tok = train.train_tokenizer(max_chars=10**9, doc_cap=500, vocab_size=512)
    # A budget larger than the data: every train shard is read in full, the val shard never.
    assert opened == [fineweb_dir / "shard_00000.parquet", fineweb_dir / "shard_00001.parquet"]
    loaded = load_tokenizer()
    assert loaded == tok and tok.get_vocab_size() == 512
    out = capsys.readouterr().out
    assert "shard_00002.parquet held out" in out and tok.fingerprint() in out
    train_chars = sum(min(len(t), 500) for seed in (0, 1) for t in fineweb_documents(200, seed))
    assert f"| characters trained on | {train_chars:,} (400 documents) |" in out
    report = (tmp_path / "report" / "tokenizer.md").read_text()
    assert report.startswith("## Tokenizer training")
    assert "| vocab size | 512 (503 merge tokens + 9 special) |" in report


def test_train_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert train.main(["--tokenizer.vocab_size=512"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no shard_*.parquet files in") and "\n" not in err
    assert "python -m jaxchat.data.download --only=fineweb --num_shards=8" in err


@pytest.mark.parametrize("argv, message", [
    (["--tokenizer.vocab_size=100"], "--tokenizer.vocab_size=100: expected at least 265"),
    (["--tokenizer.max_chars=0"], "--tokenizer.max_chars=0: expected a positive number"),
    (["--tokenizer.doc-cap=-1"], "--tokenizer.doc_cap=-1: expected a positive number"),
    (["--vocab_size=512"], "unknown config key 'vocab_size' (did you mean tokenizer.vocab_size?)"),
    (["--tokenizer.vocab_size=big"], "tokenizer.vocab_size='big': expected int"),
])
def test_train_cli_refuses_bad_settings_before_reading(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(train, "list_shards", lambda *a: pytest.fail("settings must be checked first"))
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_train_cli_help_lists_its_keys(capsys):
    out = help_listing_every_key(train.main, train.TokenizerTrainConfig(), capsys)
    assert "--tokenizer.vocab_size=8192" in out  # the usage example
    assert "--tokenizer.vocab_size = 65536  [int]" in out and "--data_dir = ''  [str]" in out


def test_train_cli_small_run(fineweb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert train.main(["--tokenizer.max_chars=100000", "--tokenizer.doc_cap=2000", "--tokenizer.vocab_size=400"]) == 0
    assert load_tokenizer().get_vocab_size() == 400
    assert train.main(["--tokenizer.vocab_size", "100"]) == 2
    assert "--tokenizer.vocab_size=100: expected at least" in capsys.readouterr().err
    other = tmp_path / "other_tokenizer"
    assert train.main([f"--data_dir={fineweb_dir}", f"--out_dir={other}", "--tokenizer.max_chars=50000",
                       "--tokenizer.vocab_size=300"]) == 0
    assert load_tokenizer(other).get_vocab_size() == 300 and load_tokenizer().get_vocab_size() == 400


def test_recipe_tokenizer_trains_the_config_section(monkeypatch):
    from jaxchat import recipe
    from jaxchat.config import RunConfig, override

    calls = []
    monkeypatch.setattr(train, "run", calls.append)
    cfg = override(RunConfig(), {"tokenizer.vocab_size": "4096", "tokenizer.max_chars": "1000"})
    recipe.tokenizer(cfg)
    assert calls == [train.TokenizerTrainConfig(tokenizer=cfg.tokenizer)]


# ---- tok_eval -----------------------------------------------------------------------------------


def test_compression_table_with_a_byte_level_reference(tok):
    byte_level = tiktoken.Encoding(
        "bytes", pat_str=r"\s+|\S+", mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={}
    )
    table = tok_eval.compression_table(tok, {"prose": CORPUS[0], "korean": MULTILINGUAL[2]}, {"bytes": byte_level})
    lines = table.splitlines()
    assert lines[0] == "| text | bytes | ours tokens | ours bytes/token | bytes tokens | bytes bytes/token |"
    n_bytes = len(CORPUS[0].encode())
    n_ours = len(tok.encode(CORPUS[0]))
    assert lines[2] == f"| prose | {n_bytes:,} | {n_ours:,} | {n_bytes / n_ours:.2f} | {n_bytes:,} | 1.00 |"
    assert lines[3].startswith("| korean |")


def test_tok_eval_offline_does_not_hang(tok, fineweb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    tok.save(tmp_path / "tokenizer")
    t0 = time.perf_counter()
    assert tok_eval.main(["--sample_chars=20000"]) == 0
    assert time.perf_counter() - t0 < 20
    out = capsys.readouterr().out
    for name in ("news", "korean", "code", "math", "science", "fineweb-train (shard_00000.parquet)",
                 "fineweb-val (shard_00002.parquet)"):  # fmt: skip
        assert f"| {name} |" in out
    assert "ours bytes/token" in out
    assert "Not available" in out or "GPT-4 bytes/token" in out  # offline here; a filled cache would work
    report = (tmp_path / "report" / "tokenizer.md").read_text()
    assert report.count("## Tokenizer evaluation") == 1
    assert tok_eval.main(["--sample-chars", "20000"]) == 0  # rerun replaces the section instead of appending
    assert (tmp_path / "report" / "tokenizer.md").read_text().count("## Tokenizer evaluation") == 1


def test_reference_download_times_out(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def blackhole(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(tok_eval.socket, "create_connection", blackhole)
    t0 = time.perf_counter()
    encodings, note = tok_eval.load_references(probe_s=0.2)
    assert time.perf_counter() - t0 < 5
    assert encodings == {} and "GPT-2 (TimeoutError)" in note and "GPT-4 (TimeoutError)" in note


def test_tok_eval_without_a_tokenizer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    assert tok_eval.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: tokenizer directory {tmp_path / 'tokenizer'} does not exist") and "\n" not in err
    assert tok_eval.main([f"--tokenizer_dir={tmp_path / 'elsewhere'}"]) == 2
    assert f"{tmp_path / 'elsewhere'} does not exist" in capsys.readouterr().err


def test_tok_eval_cli_help_and_bad_settings(tmp_path, monkeypatch, capsys):
    out = help_listing_every_key(tok_eval.main, tok_eval.TokEvalConfig(), capsys)
    assert "--sample_chars = 1000000  [int]" in out
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    for argv, message in ((["--sample_chars=0"], "--sample_chars=0: expected a positive number"),
                          (["--samples=5"], "unknown config key 'samples'")):
        assert tok_eval.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_tok_eval_without_shards(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    section = tok_eval.evaluate(tok, references={})
    assert "| news |" in section and "No shard rows: no shard_*.parquet files" in section
