"""Tasks (docs/DESIGN.md §8) on the miniature task cache of tests/fixtures/tasks.py."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pyarrow as pa
import pytest

from jaxchat.common import JaxchatError
from jaxchat.tasks import (
    ARC,
    GSM8K,
    MMLU,
    CustomJSON,
    HumanEval,
    SimpleSpelling,
    SmolTalk,
    SpellingBee,
    Task,
    TaskMixture,
    TaskSequence,
    conversation_problem,
    describe,
    identity_conversations,
    mid_train_mixture,
    mid_val_mixture,
    render_mc,
    sft_train_mixture,
    sft_val_tasks,
)
from jaxchat.tasks._data import bad_conversations
from jaxchat.tasks.gsm8k import extract_answer, solution_parts
from jaxchat.tasks.humaneval import extract_program
from jaxchat.tasks.spelling import is_test_word, load_words
from tests.fixtures.tasks import (
    ARC_SCHEMA,
    GSM8K_SCHEMA,
    HUMANEVAL_PROBLEMS,
    HUMANEVAL_SCHEMA,
    MMLU_SCHEMA,
    SMOLTALK_SCHEMA,
    arc_rows,
    gsm8k_rows,
    mmlu_rows,
    write_parquet,
    write_task_cache,
)

DOWNLOAD_TASKS = "python -m jaxchat.data.download --only tasks"


def _perm(n: int) -> np.ndarray:
    return np.random.default_rng(42).permutation(n)


class _Range(Task):
    """A trivial task: example i is {"messages": [...], "i": i}."""

    def __init__(self, n: int, tag: str = "r", **view):
        super().__init__(**view)
        self.n, self.tag = n, tag

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return self.n

    def get_example(self, index: int) -> dict:
        return {"messages": [{"role": "user", "content": f"{self.tag}{index}"}, {"role": "assistant", "content": "ok"}], "i": index, "tag": self.tag}


# --------------------------------------------------------------------------- base: views, mixtures


def test_views_match_python_slicing():
    full = [ex["i"] for ex in _Range(23)]
    for start, stop, step in ((0, None, 1), (3, 17, 1), (2, None, 5), (5, 6, 3), (7, 7, 1), (4, 100, 4)):
        view = _Range(23, start=start, stop=stop, step=step)
        assert [ex["i"] for ex in view] == full[start:stop:step]
        assert len(view) == len(full[start:stop:step])
    view = _Range(23, start=2, step=3)
    assert view[-1]["i"] == full[2::3][-1]
    with pytest.raises(IndexError):
        view[len(view)]
    with pytest.raises(TypeError):
        view[1.0]
    for bad in ({"start": -1}, {"start": 5, "stop": 2}, {"step": 0}):
        with pytest.raises(JaxchatError, match="bad view"):
            _Range(5, **bad)


def test_mixture_is_deterministic_interleaved_and_complete():
    a, b, c = _Range(50, "a"), _Range(30, "b"), _Range(20, "c")
    mix = TaskMixture([a, b, c, b])  # b listed twice: included twice
    assert len(mix) == 130
    seen = [(ex["tag"], ex["i"]) for ex in mix]
    assert sorted(seen) == sorted([("a", i) for i in range(50)] + [("b", i) for i in range(30)] * 2 + [("c", i) for i in range(20)])
    assert seen == [(ex["tag"], ex["i"]) for ex in TaskMixture([a, b, c, b])]  # deterministic
    assert seen != [(ex["tag"], ex["i"]) for ex in TaskMixture([a, b, c, b], seed=7)]
    # Interleaved: every quarter of the mixture holds every task in roughly its proportion.
    for q in range(4):
        tags = [t for t, _ in seen[q * 32:(q + 1) * 32]]
        assert {"a", "b", "c"} <= set(tags)
    # Same order as nanochat: Random(42).shuffle of the (task, local index) list.
    index_map = [(t, i) for t, n in enumerate((50, 30, 20, 30)) for i in range(n)]
    random.Random(42).shuffle(index_map)
    assert [mix.locate(k) for k in range(len(mix))] == index_map
    # Views apply to mixtures too.
    assert [ex["i"] for ex in TaskMixture([a, b, c, b], stop=10)] == [i for _, i in seen[:10]]


def test_sequence_concatenates_in_order():
    seq = TaskSequence([_Range(3, "a"), _Range(2, "b")])
    assert [(ex["tag"], ex["i"]) for ex in seq] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert seq.eval_type == "generative"


def test_render_mc_exact():
    text = render_mc("What is 2+2?", ["A", "B", "C"], ["3", "4", "5"])
    assert text == "Multiple Choice question: What is 2+2?\n- 3=A\n- 4=B\n- 5=C\n\nRespond only with the letter of the correct answer."


def test_conversation_validators_agree():
    """The vectorised SmolTalk checker and conversation_problem give the same verdicts."""
    rng = random.Random(0)
    roles = ("system", "user", "assistant", "tool")
    convs = []
    for _ in range(400):
        n = rng.randint(0, 5)
        msgs = [{"content": None if rng.random() < 0.05 else "x", "role": rng.choice(roles) if rng.random() < 0.3 else ("user", "assistant")[k % 2]} for k in range(n)]
        if rng.random() < 0.2:
            msgs.insert(0, {"content": "sys", "role": "system"})
        convs.append(None if rng.random() < 0.02 else msgs)
    col = pa.chunked_array([pa.array(convs[:150], type=SMOLTALK_SCHEMA.field("messages").type),
                            pa.array(convs[150:], type=SMOLTALK_SCHEMA.field("messages").type)])
    vectorised = bad_conversations(col)
    expected = [conversation_problem(c) is not None for c in convs]
    assert vectorised.tolist() == expected
    assert 20 < sum(expected) < 380  # both kinds present


# --------------------------------------------------------------------------- dataset tasks


def test_mmlu_all_rendering_and_order(task_cache):
    rows = mmlu_rows(24, seed=4)
    task = MMLU("all", "test")
    assert len(task) == 24 and task.eval_type == "categorical"
    perm = _perm(24)
    for i in (0, 5, 23):
        row, ex = rows[perm[i]], task[i]
        choices = "".join(f"- {c}={letter}\n" for c, letter in zip(row["choices"], "ABCD"))
        assert ex["messages"][0] == {"role": "user", "content": f"Multiple Choice question: {row['question']}\n{choices}\nRespond only with the letter of the correct answer."}
        assert ex["messages"][1] == {"role": "assistant", "content": "ABCD"[row["answer"]]}
        assert ex["subject"] == row["subject"] and tuple(ex["letters"]) == ("A", "B", "C", "D")
        assert task.evaluate(ex, "ABCD"[row["answer"]]) and task.evaluate(ex, f" {'ABCD'[row['answer']]}\n")
        assert not task.evaluate(ex, "ABCD"[(row["answer"] + 1) % 4]) and not task.evaluate(ex, "the answer is A")


def test_order_equals_datasets_shuffle(task_cache):
    """Our order is exactly ``Dataset.shuffle(seed=42)`` (nanochat's), e.g. for 'MMLU test first 5.2K'."""
    task = MMLU("all", "test")
    shuffled = task.ds.shuffle(seed=42, keep_in_memory=True)
    assert [task[i]["messages"][0]["content"].split("\n")[0] for i in range(len(task))] == [
        f"Multiple Choice question: {q}" for q in shuffled["question"]
    ]


def test_mmlu_auxiliary_train_is_unwrapped(task_cache):
    rows = mmlu_rows(30, seed=3)
    task = MMLU("auxiliary_train", "train")
    assert len(task) == 30
    ex = task[0]
    row = rows[_perm(30)[0]]
    assert ex["subject"] == row["subject"]
    assert ex["messages"][0]["content"].startswith(f"Multiple Choice question: {row['question']}\n- {row['choices'][0]}=A\n")
    with pytest.raises(JaxchatError, match="no cached split 'test'"):
        MMLU("auxiliary_train", "test")
    with pytest.raises(JaxchatError, match="subset"):
        MMLU("college", "test")


def test_arc_labels_and_choice_counts(task_cache):
    rows = arc_rows(12, seed=10)
    task = ARC("ARC-Easy", "train")
    by_id = {}
    for i in range(len(task)):
        ex = task[i]
        by_id[ex["messages"][0]["content"].split(")")[0]] = ex
    numeric = by_id["Multiple Choice question: (10.0"]  # labels 1-4
    assert numeric["letters"] == ["1", "2", "3", "4"]
    assert "\n- option 0 about" in numeric["messages"][0]["content"] and "=1\n" in numeric["messages"][0]["content"]
    assert numeric["messages"][1]["content"] == rows[0]["answerKey"]
    assert task.evaluate(numeric, rows[0]["answerKey"])
    assert not task.evaluate(numeric, next(lab for lab in "1234" if lab != rows[0]["answerKey"]))
    three, five = by_id["Multiple Choice question: (10.1"], by_id["Multiple Choice question: (10.2"]
    assert three["letters"] == ["A", "B", "C"] and three["messages"][0]["content"].count("\n- ") == 3
    assert five["letters"] == list("ABCDE") and "=E\n\nRespond only" in five["messages"][0]["content"]
    assert len(ARC("ARC-Challenge", "test")) == 4


def test_gsm8k_calculator_parts_and_answers(task_cache):
    parts = solution_parts("Ann has 2+3=<<2+3=5>>5 boxes.\nWorth 5*7=<<5*7=35>>35.\n#### 35")
    assert parts == [
        {"type": "text", "text": "Ann has 2+3="},
        {"type": "python", "text": "2+3"},
        {"type": "python_output", "text": "5"},
        {"type": "text", "text": "5 boxes.\nWorth 5*7="},
        {"type": "python", "text": "5*7"},
        {"type": "python_output", "text": "35"},
        {"type": "text", "text": "35.\n#### 35"},
    ]
    assert solution_parts("<<a=b=c>>x") == [{"type": "python", "text": "a=b"}, {"type": "python_output", "text": "c"}, {"type": "text", "text": "x"}]
    assert extract_answer("so #### 1,250 dollars") == "1250" and extract_answer("no marker 12") is None

    rows = gsm8k_rows(10, seed=8)
    task = GSM8K("main", "test")
    ex = task[0]
    row = rows[_perm(10)[0]]
    assert ex["messages"][0] == {"role": "user", "content": row["question"]}
    assert ex["messages"][1]["content"] == solution_parts(row["answer"])
    final = extract_answer(row["answer"])
    assert "," in row["answer"].split("#### ")[1] or int(final) < 1000
    assert task.evaluate(ex, f"blah\n#### {final}") is True
    assert task.evaluate(ex, f"#### {int(final):,}.") is True  # commas and a trailing period still match
    assert task.evaluate(ex, f"#### {int(final) + 1}") is False
    assert task.evaluate(ex, final) is False  # no marker, no credit
    with pytest.raises(JaxchatError, match="only 'main'"):
        GSM8K("socratic", "test")


def test_smoltalk_and_identity(task_cache):
    task = SmolTalk("train")
    assert len(task) == 40 and task.num_skipped == 0
    assert all(conversation_problem(ex["messages"]) is None for ex in task)
    assert len(SmolTalk("test")) == 12 and len(SmolTalk("train", stop=10)) == 10
    ident = identity_conversations()
    assert len(ident) == 5 and ident[2]["messages"][0]["content"] == "hola, ¿qué eres?"


def test_every_task_renders(task_cache, fineweb_tokenizer):
    """All conversations go through the chat renderer; tool output is masked, python calls are not."""
    from jaxchat.tokenizer.render import render_conversation

    tasks = [SmolTalk("test"), MMLU("all", "dev"), MMLU("auxiliary_train", "train", stop=5), GSM8K("main", "train"),
             ARC("ARC-Challenge", "train"), HumanEval(), identity_conversations(), SpellingBee(20), SimpleSpelling(20)]
    output_start = fineweb_tokenizer.encode_special("<|output_start|>")
    python_start = fineweb_tokenizer.encode_special("<|python_start|>")
    for task in tasks:
        for ex in task:
            ids, mask = render_conversation(fineweb_tokenizer, ex, max_tokens=None)
            assert len(ids) == len(mask) and sum(mask) > 0
            if isinstance(task, (GSM8K, SpellingBee)):
                assert mask[ids.index(output_start)] == 0 and mask[ids.index(python_start)] == 1


# --------------------------------------------------------------------------- spelling


def test_spelling_words_are_disjoint_and_deterministic(task_cache):
    words = load_words()
    assert "strawberry" in words and not any("\r" in w or not w.isalpha() for w in words)
    train_bee, test_bee = SpellingBee(300, "train"), SpellingBee(100, "test")
    train_simple, test_simple = SimpleSpelling(300, "train"), SimpleSpelling(100, "test")
    assert set(train_bee.words).isdisjoint(test_bee.words) and set(train_bee.words) | set(test_bee.words) == set(words)
    assert set(train_simple.words) == set(train_bee.words)
    used = {split: set() for split in ("train", "test")}
    for task in (train_bee, test_bee, train_simple, test_simple):
        for ex in task:
            used[task.split].add(ex["messages"][0]["content"].split(": ")[-1] if isinstance(task, SimpleSpelling) else
                                 ex["messages"][1]["content"][2]["text"].split("'")[1])
    assert used["train"].isdisjoint(used["test"])
    assert all(is_test_word(w) for w in used["test"]) and not any(is_test_word(w) for w in used["train"])
    assert SpellingBee(10, "train")[7] == train_bee[7] and SimpleSpelling(10, "test")[3] == test_simple[3]
    assert train_bee[7] != test_bee[7]


def test_spelling_bee_answer_is_right(task_cache):
    task = SpellingBee(200, "train")
    zero_seen = False
    for ex in task:
        user, (manual, _bridge, call, output, final) = ex["messages"][0]["content"], ex["messages"][1]["content"]
        assert call["type"] == "python" and output["type"] == "python_output"
        word, letter = call["text"].split("'")[1], call["text"].split("'")[3]
        assert word in user and letter in user
        count = word.count(letter)
        zero_seen |= count == 0
        assert eval(call["text"]) == count and output["text"] == str(count)  # the call is a plain str.count
        assert f"{word}:{','.join(word)}" in manual["text"] and manual["text"].endswith(f"This gives {count}.")
        assert final["text"].endswith(f"#### {count}")
        assert task.evaluate(ex, f"I think\n#### {count}") and not task.evaluate(ex, f"#### {count + 1}")
    assert zero_seen  # sometimes a letter that is not in the word


def test_simple_spelling_format(task_cache):
    task = SimpleSpelling(50, "train")
    for ex in task:
        word = ex["messages"][0]["content"].removeprefix("Spell the word: ")
        assert ex["messages"][0]["content"] == f"Spell the word: {word}"
        assert ex["messages"][1]["content"] == ",".join(word)
    ex = task[0]
    assert task.evaluate(ex, ex["messages"][1]["content"]) and task.evaluate(ex, " " + ex["messages"][1]["content"].replace(",", ", "))
    assert not task.evaluate(ex, ex["messages"][1]["content"] + ",x")


# --------------------------------------------------------------------------- mixtures


def test_named_mixtures(task_cache):
    mid = mid_train_mixture(scale=1e-4)
    assert mid.lengths == [40, 30, 16, 5, 5, 20, 8]  # identity listed twice; spelling 200K/80K scaled
    assert len(mid) == sum(mid.lengths)
    assert [mid[i] for i in range(5)] == [mid_train_mixture(scale=1e-4)[i] for i in range(5)]
    val = mid_val_mixture(scale=1e-3)
    assert val.lengths == [12, 5, 1]  # SmolTalk test, MMLU test first 5.2K, GSM8K test first 420 (scaled)
    sft = sft_train_mixture(scale=0.01)
    assert sft.lengths == [12, 6, 16, 40, 5, 3, 3]
    full = sft_train_mixture()
    assert full.lengths[3] == 40 and full.lengths[5:] == [300, 300]
    val_tasks = sft_val_tasks(scale=0.01)
    assert set(val_tasks) == {"loss", "mmlu", "arc_easy"} and len(val_tasks["mmlu"]) == 10 and len(val_tasks["arc_easy"]) == 8
    # What the stage plan and the report card say about a mixture: each task and its rows.
    assert describe(mid) == ("SmolTalk 40, MMLU(auxiliary_train/train) 30, GSM8K(train) 16, "
                             "CustomJSON(identity_conversations.jsonl) 2×5, SimpleSpelling(train) 20, "
                             "SpellingBee(train) 8 (124 rows)")
    with pytest.raises(JaxchatError, match="scale"):
        mid_train_mixture(scale=0)


# --------------------------------------------------------------------------- bad rows, missing files


def test_missing_dataset_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    for build, needle in ((lambda: SmolTalk("train"), "tasks/smoltalk/default/train.parquet"),
                          (lambda: MMLU("all", "test"), "cais/mmlu"),
                          (lambda: GSM8K("main", "train"), "openai/gsm8k"),
                          (lambda: ARC("ARC-Easy", "test"), "ARC-Easy"),
                          (lambda: HumanEval(), "openai_humaneval"),
                          (lambda: SpellingBee(3), "words_alpha.txt"),
                          (lambda: identity_conversations(), "identity_conversations.jsonl")):
        with pytest.raises(JaxchatError) as info:
            build()
        assert needle in str(info.value) and DOWNLOAD_TASKS in str(info.value), str(info.value)


def test_damaged_file_is_reported(tmp_path, monkeypatch):
    home = write_task_cache(tmp_path)
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    (home / "tasks/gsm8k/main/test.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(JaxchatError, match="cannot be read as parquet.*--only tasks"):
        GSM8K("main", "test")
    write_parquet(home / "tasks/gsm8k/main/test.parquet", [{"q": "x"}], pa.schema([("q", pa.string())]))
    with pytest.raises(JaxchatError, match="no column 'question'"):
        GSM8K("main", "test")


def test_smoltalk_skips_and_counts_bad_rows(tmp_path, monkeypatch, caplog):
    home = write_task_cache(tmp_path)
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [
        {"messages": good, "source": "ok"},
        {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}], "source": "swapped"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "source": "null"},
        {"messages": [{"role": "user", "content": "alone"}], "source": "short"},
        {"messages": [{"role": "system", "content": "s"}, *good], "source": "ok"},
        {"messages": [*good, {"role": "system", "content": "late"}], "source": "late system"},
        {"messages": None, "source": "none"},
    ]
    write_parquet(home / "tasks/smoltalk/default/test.parquet", rows, SMOLTALK_SCHEMA)
    with caplog.at_level(logging.WARNING):
        task = SmolTalk("test")
    assert task.num_skipped == 5 and len(task) == 2
    assert all(ex["messages"][-1]["content"] == "hello" for ex in task)
    assert "5 malformed" in caplog.text and "row 1: message 0: role 'assistant', expected 'user'" in caplog.text
    with pytest.raises(JaxchatError, match=r"SmolTalk test .*test.parquet.*row 1"):
        SmolTalk("test", strict=True)


def test_customjson_skips_bad_lines(tmp_path, caplog):
    path = tmp_path / "mine.jsonl"
    good = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    parts = [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"}, {"type": "python", "text": "1+1"}]}]
    lines = [json.dumps(good), "", "{not json", json.dumps([{"role": "user", "content": "only"}]),
             json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), json.dumps(parts),
             json.dumps({"role": "user"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        task = CustomJSON(path)
    assert len(task) == 2 and task.num_skipped == 4 and task[1]["messages"] == parts
    assert "line 3: invalid JSON" in caplog.text and "line 5: message 1: role 'user', expected 'assistant'" in caplog.text
    with pytest.raises(JaxchatError, match="4 malformed"):
        CustomJSON(path, strict=True)
    path.write_text("{broken\n", encoding="utf-8")
    with pytest.raises(JaxchatError, match="no valid conversation"):
        CustomJSON(path)
    with pytest.raises(JaxchatError, match="missing"):
        CustomJSON(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "subdir, schema, rows, build, needle",
    [
        ("mmlu/all/test.parquet", MMLU_SCHEMA,
         [*mmlu_rows(3, 1), {"question": "q", "subject": "s", "choices": ["a", "b", "c"], "answer": 0}],
         lambda: MMLU("all", "test"), r"MMLU all/test .* row 3: expected 4 non-null choices"),
        ("mmlu/all/test.parquet", MMLU_SCHEMA,
         [{"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 4}],
         lambda: MMLU("all", "test"), r"row 0: answer 4 is not 0-3"),
        ("arc/ARC-Easy/test.parquet", ARC_SCHEMA,
         [*arc_rows(2, 1), {"id": "x", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}],
         lambda: ARC("ARC-Easy", "test"), r"row 2: answerKey 'C' is not one of the labels"),
        ("gsm8k/main/test.parquet", GSM8K_SCHEMA,
         [*gsm8k_rows(2, 1), {"question": "q", "answer": "42"}],
         lambda: GSM8K("main", "test"), r"GSM8K main/test .* row 2: answer has no '#### ' line"),
        ("humaneval/default/test.parquet", HUMANEVAL_SCHEMA,
         [HUMANEVAL_PROBLEMS[0], {**HUMANEVAL_PROBLEMS[1], "test": None}],
         lambda: HumanEval(), r"row 1: test is null"),
    ],
)
def test_benchmark_bad_rows_raise(tmp_path, monkeypatch, subdir, schema, rows, build, needle):
    home = write_task_cache(tmp_path)
    monkeypatch.setenv("JAXCHAT_HOME", str(home))
    write_parquet(home / "tasks" / subdir, rows, schema)
    with pytest.raises(JaxchatError, match=needle) as info:
        build()
    assert DOWNLOAD_TASKS in str(info.value) and subdir in str(info.value)


# --------------------------------------------------------------------------- HumanEval and the sandbox


def test_humaneval_evaluate(task_cache):
    task = HumanEval(timeout=5)
    assert len(task) == 3
    for ex in task:
        assert ex["messages"][1]["content"].startswith(ex["messages"][0]["content"])
        assert task.evaluate(ex, ex["messages"][1]["content"]) is True  # the canonical solution passes
        body = ex["messages"][1]["content"]
        assert task.evaluate(ex, f"Sure! Here it is:\n```python\n{body}\n```\nHope it helps.") is True
        signature = ex["messages"][0]["content"].split('"""')[0]
        assert task.evaluate(ex, signature + "    return None\n") is False
    assert extract_program("```py\nx = 1\n```") == "x = 1" and extract_program("x = 2\n") == "x = 2"


def test_humaneval_early_exit_is_a_failure(task_cache):
    """A wrong completion that exits with status 0 before the tests run (or fakes equality) fails; the full
    list of tricks and the sandbox's own tests are in tests/test_sandbox.py."""
    task = HumanEval(timeout=5)
    ex = task[0]
    wrong = ex["messages"][0]["content"] + "    return None\n"
    for trick in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()", "raise SystemExit",
                  "if __name__ == '__main__':\n    import sys\n    sys.exit(0)",
                  "import doctest, sys\nsys.exit(doctest.testmod().failed)",
                  "import atexit, os\natexit.register(os._exit, 0)",
                  "class Any:\n    def __eq__(self, other):\n        return True\n"
                  f"def {ex['entry_point']}(*args):\n    return Any()"):
        assert task.evaluate(ex, f"{wrong}\n{trick}\n") is False, trick
    result = task.run(ex, ex["messages"][1]["content"])
    assert result.success and result.isolation in ("namespaces", "audit-hook only")


def test_tasks_pickle_and_cache_items(task_cache):
    """Tasks survive pickling (data-loader worker processes) and the cache check finds every item."""
    import pickle

    from jaxchat.data.cache import ensure_available

    mix = sft_train_mixture(scale=0.01)
    clone = pickle.loads(pickle.dumps(mix))
    assert [clone[i] for i in range(len(mix))] == [mix[i] for i in range(len(mix))]
    for item in ("identity", "words", "eval_bundle", "smoltalk", "mmlu", "gsm8k", "arc", "humaneval"):
        assert ensure_available(item).exists()
    with pytest.raises(JaxchatError, match="unknown cache item"):
        ensure_available("imagenet")
