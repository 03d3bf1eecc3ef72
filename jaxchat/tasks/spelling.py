"""Synthetic spelling tasks built from words_alpha.txt (docs/DESIGN.md §8), generated deterministically.

The word list is ``$JAXCHAT_HOME/words_alpha.txt`` (downloaded); without it, the offline word list
``words_offline.txt`` that ``python -m jaxchat.data.offline`` makes on this machine (from
``/usr/share/dict/words`` or from the pretraining corpus) is used instead.

- ``SpellingBee``: "How many r are in strawberry?" → spell the word out, count letter by letter,
  double-check with a python ``'word'.count('r')`` call, then ``#### N``.
- ``SimpleSpelling``: "Spell the word: apple" → "a,p,p,l,e" (practice for the hard part of the above).

Example ``i`` is generated from ``random.Random(i)`` (train) or ``Random(10_000_000 + i)`` (test), so a
task of any size is reproducible without storing it. Train and test draw from DISJOINT word sets: a
word is a test word when ``crc32(word) % 10 == 0`` (~10 %), which stays stable if the list changes.
"""

from __future__ import annotations

import random
import string
import zlib
from functools import lru_cache
from pathlib import Path

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.data.cache import WORDS_FILE, WORDS_OFFLINE_FILE, download_command
from jaxchat.tasks.base import Conversation, Task
from jaxchat.tasks.gsm8k import evaluate_hash_answer

SPLITS = ("train", "test")
TEST_SEED_OFFSET = 10_000_000  # more than the number of words: train and test seeds never collide
TEST_BUCKETS = 10

# Phrasings of the question, {letter} and {word} filled in (quoted or not); a few other languages
# so that the skill is not tied to one template.
QUESTION_TEMPLATES = (
    "How many {letter} are in {word}",
    "How many {letter} are in the word {word}",
    "How many times does {letter} occur in {word}",
    "How often does the letter {letter} appear in {word}",
    "Count the {letter} in {word}",
    "Count how many times {letter} shows up in {word}",
    "What is the number of {letter} in {word}",
    "Number of {letter} in the word {word}",
    "How many {letter}'s does {word} have",
    "How many {letter}s does the word {word} contain",
    "In {word}, how many {letter} are there",
    "Tell me how many {letter} there are in {word}",
    "{word}: how many {letter}",
    "Could you count the letter {letter} in {word}",
    "I need the count of {letter} in {word}",
    "Please count the occurrences of {letter} in {word}",
    "Cuántas {letter} hay en {word}",
    "Combien de {letter} y a-t-il dans {word}",
    "Wie viele {letter} hat das Wort {word}",
    "Quantas letras {letter} tem {word}",
    "{word}中有几个{letter}",
    "{word}에 {letter}가 몇 개 있어요",
    "{word}に{letter}はいくつありますか",
)


@lru_cache(maxsize=4)
def _read_words(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    del mtime_ns, size  # part of the cache key only: a changed file is read again
    with open(path, encoding="utf-8", errors="replace") as f:
        words = [w.strip().lower() for w in f]
    return tuple(w for w in words if w.isascii() and w.isalpha())


def words_path(home: str | Path | None = None) -> Path:
    """``words_alpha.txt`` when it is in the cache, else the offline word list ``words_offline.txt``
    when that is; JaxchatError naming both routes otherwise."""
    root = Path(home) if home is not None else jaxchat_home()
    for name in (WORDS_FILE, WORDS_OFFLINE_FILE):
        if (root / name).is_file():
            return root / name
    raise JaxchatError(
        f"{root / WORDS_FILE} is missing; download it with `{download_command('words')}`, or, without "
        f"network, make a local word list ({WORDS_OFFLINE_FILE}) with `python -m jaxchat.data.offline`"
    )


def load_words(home: str | Path | None = None) -> tuple[str, ...]:
    """The words of ``words_alpha.txt`` (or of the offline list, see ``words_path``): lowercase ASCII
    letters only; CRLF and blank lines handled."""
    path = words_path(home)
    st = path.stat()
    words = _read_words(str(path), st.st_mtime_ns, st.st_size)
    if not words:
        again = ("delete it and make it again with `python -m jaxchat.data.offline`" if path.name == WORDS_OFFLINE_FILE
                 else f"re-download it with `{download_command('words')}`")
        raise JaxchatError(f"{path} has no words (expected one lowercase word per line); {again}")
    return words


def is_test_word(word: str) -> bool:
    """The deterministic train/test assignment of a word (~10 % test)."""
    return zlib.crc32(word.encode("ascii")) % TEST_BUCKETS == 0


def split_words(words: tuple[str, ...], split: str) -> list[str]:
    """The words of ``split`` ('train' or 'test'); the two sets are disjoint."""
    chosen = [w for w in words if is_test_word(w) == (split == "test")]
    if not chosen:
        raise JaxchatError(f"the word list ({len(words)} words) has no {split} words; is words_alpha.txt complete?")
    return chosen


class _SpellingTask(Task):
    def __init__(self, size: int, split: str, home: str | Path | None, **view: int | None):
        super().__init__(**view)
        if split not in SPLITS:
            raise JaxchatError(f"{type(self).__name__} split {split!r}: expected one of {SPLITS}")
        if size < 0:
            raise JaxchatError(f"{type(self).__name__} size {size}: expected a non-negative number of examples")
        self.size, self.split = size, split
        self.words = split_words(load_words(home), split)

    @property
    def name(self) -> str:
        return f"{type(self).__name__}({self.split})"

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return self.size

    def _rng(self, index: int) -> random.Random:
        return random.Random(index if self.split == "train" else TEST_SEED_OFFSET + index)


class SpellingBee(_SpellingTask):
    """Count a letter in a word: manual spelling + a python ``.count()`` check, answer after ``#### ``."""

    def __init__(self, size: int = 1000, split: str = "train", *, home: str | Path | None = None, **view: int | None):
        super().__init__(size, split, home, **view)

    def get_example(self, index: int) -> Conversation:
        rng = self._rng(index)
        word = rng.choice(self.words)
        # Mostly a letter of the word; sometimes any letter, so that 0 is a possible answer.
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        count = word.count(letter)
        template = rng.choice(QUESTION_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()  # people often do not capitalise
        lq, wq = rng.choice(("", "'", '"')), rng.choice(("", "'", '"'))
        question = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}")
        if rng.random() < 0.5:
            question += "?"

        # "i:c" with no space: " a" and "a" are different tokens, and the spelled word uses "a".
        steps, running = [], 0
        for i, char in enumerate(word, 1):
            if char == letter:
                running += 1
                steps.append(f"{i}:{char} hit! count={running}")
            else:
                steps.append(f"{i}:{char}")
        manual = (
            f"We need to count the letter '{letter}' in the word '{word}'. First I spell the word out:\n\n"
            f"{word}:{','.join(word)}\n\n"
            f"Now I go through the letters one at a time and count '{letter}':\n"
            + "\n".join(steps)
            + f"\n\nThis gives {running}."
        )
        parts = [
            {"type": "text", "text": manual},
            {"type": "text", "text": "\n\nLet me double check this with Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nPython also gives {count}.\n\nMy final answer is:\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        """True when the number after ``#### `` in ``completion`` is the right count."""
        return evaluate_hash_answer(conversation, completion)


class SimpleSpelling(_SpellingTask):
    """Spell a word: "Spell the word: apple" → "a,p,p,l,e"."""

    def __init__(self, size: int = 1000, split: str = "train", *, home: str | Path | None = None, **view: int | None):
        super().__init__(size, split, home, **view)
        # Another word order than SpellingBee's, so the same index gives a different word.
        random.Random(42).shuffle(self.words)

    def get_example(self, index: int) -> Conversation:
        word = self._rng(index).choice(self.words)
        return {
            "messages": [
                {"role": "user", "content": f"Spell the word: {word}"},
                {"role": "assistant", "content": ",".join(word)},
            ]
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        """True when the completion spells the word (spaces around the commas ignored)."""
        expected = conversation["messages"][-1]["content"]
        return isinstance(completion, str) and "".join(completion.split()) == expected
