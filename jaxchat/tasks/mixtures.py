"""The task mixtures of the recipe (docs/DESIGN.md §6, §7), by name, so every stage and test builds the same ones.

``scale`` multiplies every row count that the recipe fixes (synthetic task sizes and ``stop``
limits; at least 1 each) so that tests can build the same structure on tiny fixture data; datasets
used whole (SmolTalk train, MMLU auxiliary_train, GSM8K train, identity) are whatever the cache holds.

Before building anything, a mixture checks that all of its files are in the cache and reports every
missing one in a single error (not one per run). ``custom_json`` adds the user's own conversation
files (``CustomJSON``, one JSON list of messages per line) to the train mixtures of mid and SFT.

**Offline mode** (``offline=True``; the ``data.offline`` key, ``jaxchat.data.offline``): the same
mixtures built from what this machine has. A recipe task whose files are not in the cache is skipped
with one line naming it and why; the identity conversations come from the package
(``JaxchatIdentity``) when ``identity_conversations.jsonl`` is absent, the spelling tasks use the
local word list when ``words_alpha.txt`` is absent, and the validation sets get held-out identity and
spelling examples, since their recipe datasets (SmolTalk, MMLU, GSM8K, ARC) need the network.
``describe`` names the tasks and rows of a mixture (for the stage plan and the report card).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.data.cache import IDENTITY_FILE, WORDS_FILE, WORDS_OFFLINE_FILE, Need, require_available, task_file
from jaxchat.tasks.arc import ARC
from jaxchat.tasks.base import Task, TaskMixture
from jaxchat.tasks.customjson import CustomJSON, identity_conversations
from jaxchat.tasks.gsm8k import GSM8K
from jaxchat.tasks.identity import JaxchatIdentity
from jaxchat.tasks.mmlu import MMLU
from jaxchat.tasks.smoltalk import SmolTalk
from jaxchat.tasks.spelling import SimpleSpelling, SpellingBee

MIXTURE_SEED = 42
WORDS = "words"  # the need of the spelling tasks: words_alpha.txt, or offline words_offline.txt

# What each chat-eval task reads (names as in jaxchat.eval.chat.ALL_TASKS, in that order).
CHAT_EVAL_NEEDS: dict[str, Need] = {
    "ARC-Easy": ("arc", "ARC-Easy", "test"),
    "ARC-Challenge": ("arc", "ARC-Challenge", "test"),
    "MMLU": ("mmlu", "all", "test"),
    "GSM8K": ("gsm8k", "main", "test"),
    "HumanEval": ("humaneval", None, "test"),
    "SpellingBee": WORDS,
}


def _n(count: int, scale: float) -> int:
    if scale <= 0:
        raise JaxchatError(f"scale {scale}: expected a positive number")
    return max(1, round(count * scale))


@dataclass(frozen=True)
class _Part:
    """One task of a mixture: what it reads, how to build it, how many times it is listed."""

    label: str
    needs: tuple[Need, ...]
    build: Callable[[], Task]
    times: int = 1


def _home(home: str | Path | None) -> Path:
    return Path(home) if home is not None else jaxchat_home()


def _missing(need: Need, home: Path) -> str | None:
    """Why ``need`` cannot be had from the cache (a short reason), or None when it can."""
    if need == WORDS:
        if (home / WORDS_FILE).is_file() or (home / WORDS_OFFLINE_FILE).is_file():
            return None
        return (f"neither {WORDS_FILE} (downloaded) nor {WORDS_OFFLINE_FILE} (made by `python -m "
                f"jaxchat.data.offline`) is in {home}")
    if need == "identity":
        return None if (home / IDENTITY_FILE).is_file() else f"{IDENTITY_FILE} is not in {home}"
    name, config, split = need  # type: ignore[misc]
    path = task_file(name, config, split, home)
    if path.is_file():
        return None
    return f"{path.relative_to(home)} is not in the cache (it is downloaded from the Hugging Face Hub)"


def _strict_needs(parts: Sequence[_Part]) -> list[Need]:
    return [n for part in parts for n in part.needs]


def _build(mixture: str, parts: Sequence[_Part], home: str | Path | None, offline: bool) -> list[Task]:
    """The tasks of ``parts`` (each listed ``times`` times). Not offline: every missing file is reported
    in one error first. Offline: a part that cannot be had is skipped with one line on stderr."""
    root = _home(home)
    if not offline:
        require_available(_strict_needs(parts), root)
        return [task for part in parts for task in [part.build()] * part.times]
    tasks: list[Task] = []
    for part in parts:
        reasons = [r for r in (_missing(n, root) for n in part.needs) if r is not None]
        if reasons:
            print(f"{mixture} (offline): skipping {part.label}: {'; '.join(reasons)}", file=sys.stderr)
            continue
        task = part.build()
        tasks += [task] * part.times
    if not tasks:
        raise JaxchatError(f"{mixture}: no task of the mixture can be built from {root} (see the lines above)")
    return tasks


def _identity(mixture: str, home: str | Path | None, offline: bool, times: int = 1) -> _Part:
    """nanochat's identity conversations; offline without them, jaxchat's shipped ones (one line says so)."""
    root = _home(home)
    if offline and not (root / IDENTITY_FILE).is_file():
        print(f"{mixture} (offline): {IDENTITY_FILE} is not in the cache: using jaxchat's own identity "
              "conversations (shipped with the package) instead", file=sys.stderr)
        return _Part("JaxchatIdentity(train)", (), lambda: JaxchatIdentity("train"), times)
    return _Part("identity", ("identity",), lambda: identity_conversations(home), times)


CustomFiles = str | Sequence[str | Path]


def custom_json_paths(spec: CustomFiles) -> list[Path]:
    """``custom_json`` as paths: a sequence, or one string of paths separated by commas ("" = none)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [Path(str(p).strip()).expanduser() for p in items if str(p).strip()]


def _custom(spec: CustomFiles) -> list[_Part]:
    """The user's CustomJSON files: always built (a configured file that is missing is an error)."""
    return [_Part(f"CustomJSON({p.name})", (), lambda p=p: CustomJSON(p)) for p in custom_json_paths(spec)]


def mid_train_mixture(scale: float = 1.0, home: str | Path | None = None, *, offline: bool = False,
                      custom_json: CustomFiles = ()) -> TaskMixture:
    """Midtraining (≈ 850K rows): SmolTalk train, MMLU auxiliary_train, GSM8K train, identity ×2,
    SimpleSpelling 200K, SpellingBee 80K, shuffled together with seed 42 (+ ``custom_json`` files)."""
    name = "mid train mixture"
    parts = [
        _Part("SmolTalk(train)", (("smoltalk", None, "train"),), lambda: SmolTalk("train", home=home)),
        _Part("MMLU(auxiliary_train)", (("mmlu", "auxiliary_train", "train"),),
              lambda: MMLU("auxiliary_train", "train", home=home)),
        _Part("GSM8K(train)", (("gsm8k", "main", "train"),), lambda: GSM8K("main", "train", home=home)),
        _identity(name, home, offline, times=2),  # listed twice: two epochs of the identity conversations
        _Part("SimpleSpelling(train)", (WORDS,),
              lambda: SimpleSpelling(size=_n(200_000, scale), split="train", home=home)),
        _Part("SpellingBee(train)", (WORDS,), lambda: SpellingBee(size=_n(80_000, scale), split="train", home=home)),
        *_custom(custom_json),
    ]
    return TaskMixture(_build(name, parts, home, offline), seed=MIXTURE_SEED)


def _offline_val_parts(scale: float, home: str | Path | None, count: int) -> list[_Part]:
    """Held-out examples that need no network: identity (test split) and the spelling tasks' test words."""
    return [
        _Part("JaxchatIdentity(test)", (), lambda: JaxchatIdentity("test")),
        _Part("SimpleSpelling(test)", (WORDS,), lambda: SimpleSpelling(size=_n(count, scale), split="test", home=home)),
        _Part("SpellingBee(test)", (WORDS,), lambda: SpellingBee(size=_n(count, scale), split="test", home=home)),
    ]


def mid_val_mixture(scale: float = 1.0, home: str | Path | None = None, *, offline: bool = False) -> TaskMixture:
    """Midtraining validation: SmolTalk test + MMLU all/test first 5.2K + GSM8K test first 420
    (offline: those that are in the cache, + held-out identity and spelling examples, 5.2K each scaled)."""
    parts = [
        _Part("SmolTalk(test)", (("smoltalk", None, "test"),), lambda: SmolTalk("test", home=home)),
        _Part("MMLU(test)", (("mmlu", "all", "test"),), lambda: MMLU("all", "test", stop=_n(5_200, scale), home=home)),
        _Part("GSM8K(test)", (("gsm8k", "main", "test"),),
              lambda: GSM8K("main", "test", stop=_n(420, scale), home=home)),
    ]
    if offline:
        parts += _offline_val_parts(scale, home, 5_200)
    return TaskMixture(_build("mid val mixture", parts, home, offline), seed=MIXTURE_SEED)


def sft_train_mixture(scale: float = 1.0, home: str | Path | None = None, *, offline: bool = False,
                      custom_json: CustomFiles = ()) -> TaskMixture:
    """SFT (≈ 23K rows): ARC-Easy train, ARC-Challenge train, GSM8K train, SmolTalk train first 10K,
    identity, SimpleSpelling 300, SpellingBee 300, shuffled together with seed 42 (+ ``custom_json`` files)."""
    name = "sft train mixture"
    parts = [
        _Part("ARC-Easy(train)", (("arc", "ARC-Easy", "train"),), lambda: ARC("ARC-Easy", "train", home=home)),
        _Part("ARC-Challenge(train)", (("arc", "ARC-Challenge", "train"),),
              lambda: ARC("ARC-Challenge", "train", home=home)),
        _Part("GSM8K(train)", (("gsm8k", "main", "train"),), lambda: GSM8K("main", "train", home=home)),
        _Part("SmolTalk(train)", (("smoltalk", None, "train"),),
              lambda: SmolTalk("train", stop=_n(10_000, scale), home=home)),
        _identity(name, home, offline),
        _Part("SimpleSpelling(train)", (WORDS,), lambda: SimpleSpelling(size=_n(300, scale), split="train", home=home)),
        _Part("SpellingBee(train)", (WORDS,), lambda: SpellingBee(size=_n(300, scale), split="train", home=home)),
        *_custom(custom_json),
    ]
    return TaskMixture(_build(name, parts, home, offline), seed=MIXTURE_SEED)


def sft_train_mixture_2026(mmlu_epochs: int = 3, gsm8k_epochs: int = 4, scale: float = 1.0,
                           home: str | Path | None = None, *, offline: bool = False,
                           custom_json: CustomFiles = ()) -> TaskMixture:
    """nanochat 92d63d4's SFT (≈ 856K rows): SmolTalk train, MMLU auxiliary_train × ``mmlu_epochs``
    (multiple choice), GSM8K train × ``gsm8k_epochs`` (maths and the calculator tool), shuffled together
    with seed 42 (+ ``custom_json`` files). Offline, the held-out-free local tasks are added (jaxchat's
    identity conversations and the spelling tasks), so that a machine without the downloads still trains."""
    name = "sft train mixture (2026)"
    parts = [
        _Part("SmolTalk(train)", (("smoltalk", None, "train"),), lambda: SmolTalk("train", home=home)),
        _Part("MMLU(auxiliary_train)", (("mmlu", "auxiliary_train", "train"),),
              lambda: MMLU("auxiliary_train", "train", home=home), mmlu_epochs),
        _Part("GSM8K(train)", (("gsm8k", "main", "train"),), lambda: GSM8K("main", "train", home=home), gsm8k_epochs),
        *_custom(custom_json),
    ]
    if offline:
        parts += [_Part("JaxchatIdentity(train)", (), lambda: JaxchatIdentity("train")),
                  _Part("SimpleSpelling(train)", (WORDS,),
                        lambda: SimpleSpelling(size=_n(300, scale), split="train", home=home)),
                  _Part("SpellingBee(train)", (WORDS,),
                        lambda: SpellingBee(size=_n(300, scale), split="train", home=home))]
    return TaskMixture(_build(name, parts, home, offline), seed=MIXTURE_SEED)


def sft_val_mixture_2026(scale: float = 1.0, home: str | Path | None = None, *, offline: bool = False) -> TaskMixture:
    """nanochat 92d63d4's SFT validation: the midtraining val mixture (SmolTalk test, MMLU test first
    5.2K, GSM8K test first 420; offline: + held-out identity and spelling examples)."""
    return mid_val_mixture(scale, home, offline=offline)


def sft_val_tasks(scale: float = 1.0, home: str | Path | None = None, *, offline: bool = False) -> dict[str, Task]:
    """SFT validation (docs/DESIGN.md §7): ``loss`` (SmolTalk test, val loss every 100 steps) and the accuracy
    tasks run every 200 steps, ``mmlu`` (MMLU all/test) and ``arc_easy`` (ARC-Easy test), each cut
    to its first 1024 (scaled) examples.

    Offline: ``loss`` is SmolTalk test when it is in the cache, else held-out identity and spelling
    examples; ``mmlu`` and ``arc_easy`` are present only when their files are (the trainer reports an
    ``<name>_acc`` for each key other than ``loss``)."""
    cap = _n(1024, scale)
    parts = {
        "loss": _Part("SmolTalk(test)", (("smoltalk", None, "test"),), lambda: SmolTalk("test", home=home)),
        "mmlu": _Part("MMLU(test)", (("mmlu", "all", "test"),), lambda: MMLU("all", "test", stop=cap, home=home)),
        "arc_easy": _Part("ARC-Easy(test)", (("arc", "ARC-Easy", "test"),),
                          lambda: ARC("ARC-Easy", "test", stop=cap, home=home)),
    }
    if not offline:
        require_available(_strict_needs(list(parts.values())), _home(home))
        return {key: part.build() for key, part in parts.items()}
    out: dict[str, Task] = {}
    for key, part in parts.items():
        built = _build("sft val", [part], home, offline) if _all_present(part, home) else []
        if built:
            out[key] = built[0]
        elif key == "loss":
            print("sft val (offline): SmolTalk(test) is not in the cache: the val loss is measured on held-out "
                  "identity and spelling examples instead", file=sys.stderr)
            out[key] = TaskMixture(_build("sft val", _offline_val_parts(scale, home, 1024), home, offline),
                                   seed=MIXTURE_SEED)
        else:
            reason = _missing(part.needs[0], _home(home))
            print(f"sft val (offline): skipping {part.label} accuracy ({key}_acc): {reason}", file=sys.stderr)
    return out


def _all_present(part: _Part, home: str | Path | None) -> bool:
    return all(_missing(n, _home(home)) is None for n in part.needs)


def available_chat_eval_tasks(names: Sequence[str], home: str | Path | None = None
                              ) -> tuple[list[str], dict[str, str]]:
    """(the tasks of ``names`` whose data is in the cache, {each other one: why it cannot be had})."""
    root = _home(home)
    have: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        need = CHAT_EVAL_NEEDS.get(name)
        if need is None:
            raise JaxchatError(f"unknown chat eval task {name!r}; expected one of {', '.join(CHAT_EVAL_NEEDS)}")
        reason = _missing(need, root)
        if reason is None:
            have.append(name)
        else:
            skipped[name] = reason
    return have, skipped


def describe(task: Task) -> str:
    """The tasks of a mixture with their rows, e.g. ``JaxchatIdentity(train) 2×366, SpellingBee(train) 800
    (3,532 rows)``; a task listed twice counts twice. Any other task: its name and length."""
    if not isinstance(task, TaskMixture):
        return f"{task.name} {len(task):,}"
    groups: dict[int, list] = {}
    for sub, length in zip(task.tasks, task.lengths):
        groups.setdefault(id(sub), [sub, length, 0])[2] += 1
    parts = [f"{sub.name} {times}×{length:,}" if times > 1 else f"{sub.name} {length:,}"
             for sub, length, times in groups.values()]
    return f"{', '.join(parts)} ({len(task):,} rows)"
