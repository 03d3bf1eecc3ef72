"""The task mixtures of the recipe (docs/DESIGN.md §6, §7), by name, so every stage and test builds the same ones.

``scale`` multiplies every row count that the recipe fixes (synthetic task sizes and ``stop``
limits; at least 1 each) so that tests can build the same structure on tiny fixture data; datasets
used whole (SmolTalk train, MMLU auxiliary_train, GSM8K train, identity) are whatever the cache holds.
"""

from __future__ import annotations

from pathlib import Path

from jaxchat.common import JaxchatError
from jaxchat.tasks.arc import ARC
from jaxchat.tasks.base import Task, TaskMixture
from jaxchat.tasks.customjson import identity_conversations
from jaxchat.tasks.gsm8k import GSM8K
from jaxchat.tasks.mmlu import MMLU
from jaxchat.tasks.smoltalk import SmolTalk
from jaxchat.tasks.spelling import SimpleSpelling, SpellingBee

MIXTURE_SEED = 42


def _n(count: int, scale: float) -> int:
    if scale <= 0:
        raise JaxchatError(f"scale {scale}: expected a positive number")
    return max(1, round(count * scale))


def mid_train_mixture(scale: float = 1.0, home: str | Path | None = None) -> TaskMixture:
    """Midtraining (≈ 850K rows): SmolTalk train, MMLU auxiliary_train, GSM8K train, identity ×2,
    SimpleSpelling 200K, SpellingBee 80K, shuffled together with seed 42."""
    identity = identity_conversations(home)
    return TaskMixture(
        [
            SmolTalk("train", home=home),
            MMLU("auxiliary_train", "train", home=home),
            GSM8K("main", "train", home=home),
            identity,
            identity,  # listed twice: two epochs of the identity conversations
            SimpleSpelling(size=_n(200_000, scale), split="train", home=home),
            SpellingBee(size=_n(80_000, scale), split="train", home=home),
        ],
        seed=MIXTURE_SEED,
    )


def mid_val_mixture(scale: float = 1.0, home: str | Path | None = None) -> TaskMixture:
    """Midtraining validation: SmolTalk test + MMLU all/test first 5.2K + GSM8K test first 420."""
    return TaskMixture(
        [
            SmolTalk("test", home=home),
            MMLU("all", "test", stop=_n(5_200, scale), home=home),
            GSM8K("main", "test", stop=_n(420, scale), home=home),
        ],
        seed=MIXTURE_SEED,
    )


def sft_train_mixture(scale: float = 1.0, home: str | Path | None = None) -> TaskMixture:
    """SFT (≈ 23K rows): ARC-Easy train, ARC-Challenge train, GSM8K train, SmolTalk train first 10K,
    identity, SimpleSpelling 300, SpellingBee 300, shuffled together with seed 42."""
    return TaskMixture(
        [
            ARC("ARC-Easy", "train", home=home),
            ARC("ARC-Challenge", "train", home=home),
            GSM8K("main", "train", home=home),
            SmolTalk("train", stop=_n(10_000, scale), home=home),
            identity_conversations(home),
            SimpleSpelling(size=_n(300, scale), split="train", home=home),
            SpellingBee(size=_n(300, scale), split="train", home=home),
        ],
        seed=MIXTURE_SEED,
    )


def sft_val_tasks(scale: float = 1.0, home: str | Path | None = None) -> dict[str, Task]:
    """SFT validation (docs/DESIGN.md §7): ``loss`` (SmolTalk test, val loss every 100 steps) and the accuracy
    tasks run every 200 steps, ``mmlu`` (MMLU all/test) and ``arc_easy`` (ARC-Easy test), each cut
    to its first 1024 (scaled) examples."""
    cap = _n(1024, scale)
    return {
        "loss": SmolTalk("test", home=home),
        "mmlu": MMLU("all", "test", stop=cap, home=home),
        "arc_easy": ARC("ARC-Easy", "test", stop=cap, home=home),
    }
