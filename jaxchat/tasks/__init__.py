"""Chat tasks (docs/DESIGN.md §8): datasets of conversations with evaluators, views and mixtures.

Every task reads only the local cache written by ``python -m jaxchat.data.download`` and raises a
JaxchatError with that command when its files are missing; the mixtures report every missing file
at once. ``JaxchatIdentity`` needs no file (its conversations ship with the package), and the
mixtures' offline mode (``offline=True``) builds what can be built without network.
"""

from jaxchat.tasks.arc import ARC
from jaxchat.tasks.base import Task, TaskMixture, TaskSequence, conversation_problem, render_mc
from jaxchat.tasks.customjson import CustomJSON, identity_conversations
from jaxchat.tasks.gsm8k import GSM8K, extract_answer
from jaxchat.tasks.humaneval import HumanEval
from jaxchat.tasks.identity import JaxchatIdentity
from jaxchat.tasks.mixtures import (describe, mid_train_mixture, mid_val_mixture, sft_train_mixture,
                                    sft_train_mixture_2026, sft_val_mixture_2026, sft_val_tasks)
from jaxchat.tasks.mmlu import MMLU
from jaxchat.tasks.sandbox import ExecutionResult, execute_code
from jaxchat.tasks.smoltalk import SmolTalk
from jaxchat.tasks.spelling import SimpleSpelling, SpellingBee

__all__ = [
    "ARC",
    "GSM8K",
    "MMLU",
    "CustomJSON",
    "ExecutionResult",
    "HumanEval",
    "JaxchatIdentity",
    "SimpleSpelling",
    "SmolTalk",
    "SpellingBee",
    "Task",
    "TaskMixture",
    "TaskSequence",
    "conversation_problem",
    "describe",
    "execute_code",
    "extract_answer",
    "identity_conversations",
    "mid_train_mixture",
    "mid_val_mixture",
    "render_mc",
    "sft_train_mixture",
    "sft_train_mixture_2026",
    "sft_val_mixture_2026",
    "sft_val_tasks",
]
