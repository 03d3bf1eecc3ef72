"""The offline mode: the default corpus, the word list, the shipped identity conversations, the
offline mixtures, what ``data.offline`` changes in a run, and the CPU demo's script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig
from jaxchat.data import corpus, offline
from jaxchat.data.cache import download_command, fineweb_command
from jaxchat.data.shards import iter_texts, list_shards
from jaxchat.tasks import SpellingBee
from jaxchat.tasks.base import conversation_problem
from jaxchat.tasks.identity import JaxchatIdentity, identity_conversations_jaxchat
from jaxchat.tasks.mixtures import (
    CHAT_EVAL_NEEDS,
    available_chat_eval_tasks,
    describe,
    mid_train_mixture,
    mid_val_mixture,
    sft_train_mixture,
    sft_val_tasks,
)
from tests.fixtures.fineweb import fineweb_documents, write_fineweb_shards
from tests.fixtures.tasks import identity_rows

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- identity conversations


def test_identity_conversations_are_shipped_deterministic_and_valid():
    every = identity_conversations_jaxchat()
    assert len(every) == 400 and len({json.dumps(c) for c in every}) == 400
    assert all(conversation_problem([dict(m) for m in c]) is None for c in every)
    assert every == identity_conversations_jaxchat.__wrapped__()  # the same on every call (no global state)
    train, test = JaxchatIdentity("train"), JaxchatIdentity("test")
    assert len(train) + len(test) == 400 and 20 <= len(test) <= 60
    assert not {json.dumps(c["messages"]) for c in train} & {json.dumps(c["messages"]) for c in test}
    assert len(JaxchatIdentity("all")) == 400 and train[0] == JaxchatIdentity("train")[0]
    text = " ".join(m["content"] for c in every for m in c)
    assert "jaxchat" in text and "nanochat" in text
    with pytest.raises(JaxchatError, match="split"):
        JaxchatIdentity("validation")


# --------------------------------------------------------------------------- the default corpus


def test_stdlib_docstrings_read_with_ast(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    long = "Long enough documentation. " * 8
    (lib / "mod.py").write_text(
        f'"""Module doc. {long}"""\n\nclass Thing(Base):\n    """Thing doc."""\n\n'
        f'    def method(self, a, b=2):\n        """Method doc."""\n\n'
        f'def helper(x, *, y=None):\n    """Thing doc."""\n\nraise SystemExit("never imported")\n')
    (lib / "pkg" / "__init__.py").write_text(f'"""Package doc. {long}"""\n')
    (lib / "test" / "test_mod.py").write_text(f'"""Test doc. {long}"""\n')
    (lib / "tiny.py").write_text('"""Too short."""\n')
    (lib / "broken.py").write_text('print "python 2"\n')
    docs = corpus.stdlib_docstrings(lib)
    assert [d.name for d in docs] == ["module:mod", "module:pkg"]
    text = docs[0].text
    assert text.startswith("Module mod\n\nModule doc.") and "class Thing(Base)\nThing doc." in text
    assert "Thing.method(self, a, b=2)\nMethod doc." in text
    assert "helper(" not in text  # the same docstring twice is kept once


@pytest.fixture(scope="module")
def python_docs():
    return corpus.python_docs()


def test_default_corpus_is_big_enough_english_and_deterministic(python_docs):
    docs = python_docs
    stats = corpus.measure(d.text for d in docs)
    assert stats["documents"] >= 300 and stats["characters"] >= 1_500_000
    assert stats["function_word_share"] > 0.25  # prose: docstrings and the Language Reference
    names = [d.name for d in docs]
    assert len(set(names)) == len(names)
    assert any(n.startswith("help:") for n in names) and "module:json.decoder" in names
    assert "extension:builtins" in names or "extension:math" in names
    assert not any(n.startswith(("module:test.", "module:idlelib.idle_test")) for n in names)
    assert all(d.text.strip() and len(d.text) >= corpus.MIN_DOC_CHARS for d in docs)
    assert names == sorted(names, key=lambda n: (zlib.crc32(n.encode()), n))  # a fixed shuffle
    assert [d.text for d in corpus.stdlib_docstrings()[:20]] == [d.text for d in corpus.stdlib_docstrings()[:20]]


def test_measure_tells_prose_from_code():
    prose = corpus.measure(["The cat sat on the mat, and it was happy in the sun for a while."])
    code = corpus.measure(["def f(x):\n    return g(x)[0]\nclass A(B):\n    pass\n"])
    assert prose["function_word_share"] > 0.3 > code["function_word_share"]
    assert code["code_like_line_share"] > prose["code_like_line_share"]
    assert prose["documents"] == 1 and prose["top_words"][0] == "the"


# --------------------------------------------------------------------------- the word list


def test_word_lists(tmp_path):
    text = ("The quick brown fox jumps. The quick fox. the QUICK fox, quick_sort and obj.attr and call( "
            "Brown fox — brown café") * 3
    words = offline.corpus_words([text])
    assert words == ["and", "brown", "fox", "jumps", "quick", "the"]  # no snake_case, .attr, call(, CAPS, café
    dictionary = tmp_path / "words"
    dictionary.write_text("apple\nApple\nbanana's\nbanana\ncafé\nx\nzebra\n", encoding="utf-8")
    assert offline.dictionary_words(dictionary) == ["apple", "banana", "zebra"]


# --------------------------------------------------------------------------- prepare


def _small_docs(monkeypatch):
    docs = [corpus.Document(f"module:m{i}", f"Module m{i}\n\nThe module does spelling. {text}")
            for i, text in enumerate(fineweb_documents(30, seed=3))]
    monkeypatch.setattr(corpus, "python_docs", lambda: docs)
    monkeypatch.setattr(offline, "SYSTEM_DICTIONARY", Path("/nonexistent/words"))
    return docs


def test_prepare_makes_everything_once(tmp_path, monkeypatch, capsys):
    docs = _small_docs(monkeypatch)
    home = tmp_path / "home"
    manifest = offline.prepare(home)
    out = capsys.readouterr().out
    assert "corpus: wrote 2 shards" in out and "words: wrote" in out and "400 conversations" in out
    shards = list_shards(home / "base_data")
    assert list(iter_texts(shards)) == [d.text for d in docs]
    assert pq.ParquetFile(shards[1]).metadata.num_rows == 6  # the last 20 % are the validation shard
    assert manifest["corpus"]["documents"] == 30 and manifest["corpus"]["stats"]["documents"] == 30
    assert manifest["words"]["file"] == "words_offline.txt" and manifest["identity"]["train"] > 300
    assert json.loads((home / "offline.json").read_text()) == manifest and offline.is_offline_home(home)
    words = (home / "words_offline.txt").read_text().split()
    assert "spelling" in words and "module" in words and words == sorted(words)
    # Hints to remake the shards name the offline command, not the FineWeb download.
    assert fineweb_command(home / "base_data") == "python -m jaxchat.data.offline"
    assert download_command("fineweb", home) == "python -m jaxchat.data.offline"
    # Again: nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in [*shards, home / "words_offline.txt"]}
    offline.prepare(home)
    assert "using the 2 shards already in" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # The spelling tasks read the offline list when words_alpha.txt is absent.
    bee = SpellingBee(size=5, split="test", home=home)
    assert all(w in words for w in bee.words)


def test_prepare_with_your_text_and_a_system_dictionary(tmp_path, monkeypatch, capsys):
    src = tmp_path / "mine"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.md").write_text(f"# Note {i}\n\nSome text of mine.", encoding="utf-8")
    dictionary = tmp_path / "words"
    dictionary.write_text("".join(f"w{c}{d}\n" for c in "abcde" for d in "fghij") + "Alpha\n", encoding="utf-8")
    monkeypatch.setattr(offline, "SYSTEM_DICTIONARY", dictionary)
    home = tmp_path / "home"
    manifest = offline.prepare(home, from_text=str(src))
    assert manifest["corpus"]["source"] == str(src.resolve()) and manifest["words"]["source"] == str(dictionary)
    assert len(list_shards(home / "base_data")) == 2
    assert download_command("fineweb", home).endswith(f"--from_text={src.resolve()}")
    # Another source into the same home: refused (the shards are someone's corpus).
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x y z", encoding="utf-8")
    with pytest.raises(JaxchatError, match="already holds 2 shard"):
        offline.prepare(home, from_text=str(other))


def test_prepare_uses_shards_already_there(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "python_docs", lambda: pytest.fail("the shards are there already"))
    monkeypatch.setattr(offline, "SYSTEM_DICTIONARY", Path("/nonexistent/words"))
    home = tmp_path / "home"
    write_fineweb_shards(home / "base_data", n_shards=2, docs_per_shard=40)
    manifest = offline.prepare(home)
    assert "FineWeb-Edu or of unknown origin" in capsys.readouterr().out and manifest["corpus"]["shards"] == 2
    assert manifest["words"]["words"] > 20


# --------------------------------------------------------------------------- offline mixtures


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """A home with nothing but the offline word list: what a machine without network has."""
    home = tmp_path / "home"
    home.mkdir()
    words = sorted({f"{a}{b}{c}" for a in "bcdfg" for b in "aeiou" for c in "lmnrst"})
    (home / "words_offline.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    return home


def test_offline_mixtures_skip_what_needs_the_network_one_line_each(offline_home, capsys):
    mid = mid_train_mixture(scale=0.01, offline=True)
    err = capsys.readouterr().err
    for name in ("SmolTalk(train)", "MMLU(auxiliary_train)", "GSM8K(train)"):
        assert err.count(f"mid train mixture (offline): skipping {name}:") == 1
    assert "tasks/smoltalk/default/train.parquet is not in the cache" in err
    assert err.count("jaxchat's own identity conversations") == 1 and len(err.splitlines()) == 4
    assert [t.name for t in mid.tasks] == ["JaxchatIdentity(train)", "JaxchatIdentity(train)",
                                           "SimpleSpelling(train)", "SpellingBee(train)"]
    assert mid.lengths[2:] == [2000, 800] and mid.tasks[0] is mid.tasks[1]
    assert describe(mid) == (f"JaxchatIdentity(train) 2×{mid.lengths[0]}, SimpleSpelling(train) 2,000, "
                             f"SpellingBee(train) 800 ({len(mid):,} rows)")
    assert [mid[i] for i in range(10)] == [mid_train_mixture(scale=0.01, offline=True)[i] for i in range(10)]
    capsys.readouterr()
    val = mid_val_mixture(scale=0.01, offline=True)
    assert [t.name for t in val.tasks] == ["JaxchatIdentity(test)", "SimpleSpelling(test)", "SpellingBee(test)"]
    assert capsys.readouterr().err.count("skipping") == 3
    sft = sft_train_mixture(scale=0.05, offline=True)
    assert [t.name for t in sft.tasks] == ["JaxchatIdentity(train)", "SimpleSpelling(train)", "SpellingBee(train)"]
    assert capsys.readouterr().err.count("skipping") == 4
    val_tasks = sft_val_tasks(scale=0.05, offline=True)
    assert set(val_tasks) == {"loss"} and len(val_tasks["loss"]) > 30
    err = capsys.readouterr().err
    assert "skipping MMLU(test) accuracy (mmlu_acc)" in err and "skipping ARC-Easy(test) accuracy" in err


def test_recipe_mixtures_report_every_missing_file_at_once(offline_home):
    with pytest.raises(JaxchatError) as info:
        mid_train_mixture(scale=0.01)
    message = str(info.value)
    for needle in ("tasks/smoltalk/default/train.parquet", "tasks/mmlu/auxiliary_train/train.parquet",
                   "tasks/gsm8k/main/train.parquet", "identity_conversations.jsonl"):
        assert needle in message
    assert message.startswith("4 file(s) missing") and "--only tasks" in message
    with pytest.raises(JaxchatError, match=r"^3 file\(s\) missing"):
        sft_val_tasks(scale=0.01)


def test_offline_mode_uses_the_recipe_tasks_that_are_there(task_cache, capsys):
    """Offline with a full cache: the recipe's mixtures, plus the held-out offline validation examples."""
    assert [t.name for t in mid_train_mixture(scale=1e-4, offline=True).tasks] == \
        [t.name for t in mid_train_mixture(scale=1e-4).tasks]
    assert capsys.readouterr().err == ""
    val = mid_val_mixture(scale=1e-3, offline=True)
    assert val.lengths[:3] == mid_val_mixture(scale=1e-3).lengths and len(val.tasks) == 6
    assert set(sft_val_tasks(scale=0.01, offline=True)) == {"loss", "mmlu", "arc_easy"}


def test_custom_json_files_join_the_train_mixtures(offline_home, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps(m) + "\n" for m in identity_rows()), encoding="utf-8")
    mid = mid_train_mixture(scale=0.01, offline=True, custom_json=f" {mine} ")
    assert mid.tasks[-1].name == "CustomJSON(mine.jsonl)" and mid.lengths[-1] == len(identity_rows())
    sft = sft_train_mixture(scale=0.01, offline=True, custom_json=[mine, mine])
    assert [t.name for t in sft.tasks[-2:]] == ["CustomJSON(mine.jsonl)"] * 2
    with pytest.raises(JaxchatError, match="nope.jsonl is missing; expected a jsonl file"):
        sft_train_mixture(scale=0.01, offline=True, custom_json=str(tmp_path / "nope.jsonl"))


def test_nothing_to_build_offline_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    val = mid_val_mixture(scale=0.01, offline=True)  # identity test needs nothing
    assert [t.name for t in val.tasks] == ["JaxchatIdentity(test)"]
    with pytest.raises(JaxchatError, match="words_offline.txt"):
        SpellingBee(3, home=tmp_path)


# --------------------------------------------------------------------------- what data.offline changes in a run


def test_chat_eval_needs_match_the_evaluator():
    from jaxchat.eval.chat import ALL_TASKS

    assert tuple(CHAT_EVAL_NEEDS) == ALL_TASKS


def test_resolve_config_skips_core_and_the_chat_evals_that_need_the_network(offline_home, capsys):
    cfg = RunConfig()
    assert offline.resolve_config(cfg, offline=False) is cfg
    resolved = offline.resolve_config(cfg, offline=True)
    assert resolved.base.core_every == 0 and resolved.chat_eval.tasks == "SpellingBee"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("offline: CORE skipped (base.core_every=0)")
    assert err[1].startswith("offline: chat_eval on SpellingBee only; skipped ARC-Easy, ARC-Challenge, MMLU, "
                             "GSM8K, HumanEval: their test sets are not in")
    assert resolved.mid == cfg.mid and resolved.model == cfg.model
    picked = offline.resolve_config(RunConfig(chat_eval=cfg.chat_eval.__class__(tasks="MMLU,SpellingBee")), offline=True)
    assert picked.chat_eval.tasks == "SpellingBee"
    with pytest.raises(JaxchatError, match="no chat-eval task of 'MMLU'"):
        offline.resolve_config(RunConfig(chat_eval=cfg.chat_eval.__class__(tasks="MMLU")), offline=True)
    have, skipped = available_chat_eval_tasks(list(CHAT_EVAL_NEEDS), offline_home)
    assert have == ["SpellingBee"] and len(skipped) == 5


def test_resolve_config_keeps_what_is_there(task_cache, capsys):
    cfg = RunConfig()
    resolved = offline.resolve_config(cfg, offline=True)
    assert resolved.chat_eval == cfg.chat_eval and resolved.base == cfg.base  # bundle and task files present
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- a tiny corpus repeated


def test_repetition_warning(tmp_path, fineweb_tokenizer):
    from jaxchat.data.from_text import shards_from_text

    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(10):
        (src / f"{i}.txt").write_text("A small document about shards and tokens. " * 20, encoding="utf-8")
    paths = shards_from_text(src, tmp_path / "base_data")
    train = paths[:-1]
    chars = corpus.train_characters(train)
    assert chars == sum(len(t) for t in iter_texts(train))  # exact, from corpus.json
    per_token = corpus.characters_per_token(train, fineweb_tokenizer)
    tokens = chars / per_token
    assert corpus.repetition_warning(train, int(tokens * 5), fineweb_tokenizer) is None
    warning = corpus.repetition_warning(train, int(tokens * 2000), fineweb_tokenizer)
    assert warning.startswith("warning: the train shards hold about") and "about 2,000 times" in warning
    # Downloaded shards (no corpus.json): estimated from the parquet footers, within a few per cent.
    fineweb = write_fineweb_shards(tmp_path / "fw", n_shards=2, docs_per_shard=50)
    exact = sum(len(t) for t in iter_texts(fineweb[:1]))
    assert 0.95 * exact <= corpus.train_characters(fineweb[:1]) <= 1.1 * exact


# --------------------------------------------------------------------------- the command line and the demo


def test_check_network_is_one_line(monkeypatch, capsys):
    from jaxchat.data import download

    monkeypatch.setattr(download, "probe", lambda urls, timeout=3.0: "cannot connect to example.org:443: refused")
    assert offline.main(["--check_network"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the network is unreachable" in err and "--data.offline=true" in err
    monkeypatch.setattr(download, "probe", lambda urls, timeout=3.0: None)
    assert offline.main(["--check_network"]) == 0
    assert offline.main(["--timeout=0"]) == 2


def test_help_lists_the_keys(capsys):
    assert offline.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--from_text = ''" in out and "--check_network = False" in out


def test_cpu_demo_script_parses_and_routes(tmp_path):
    script = REPO / "runs" / "cpu_demo.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--check_network" in text and "--data.offline=true" in text and "offline.json" in text
    assert "python -m pip install -e ." in text and "is not installed" in text  # installs only when needed
    # The install check itself: this checkout is installed and up to date, so nothing is installed.
    check = text.split("python - <<'EOF' 2>&1\n", 1)[1].split("\nEOF\n", 1)[0]
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr


def test_describe_shards(tmp_path, monkeypatch):
    _small_docs(monkeypatch)
    offline.prepare(tmp_path)
    text = corpus.describe_shards(list_shards(tmp_path / "base_data"))
    assert text.startswith("the documentation of Python") and "30 documents" in text
    assert text.endswith("made by `python -m jaxchat.data.offline`)")
    fineweb = write_fineweb_shards(tmp_path / "fw", n_shards=2, docs_per_shard=3)
    assert corpus.describe_shards(fineweb) == "FineWeb-Edu shards (downloaded)"
