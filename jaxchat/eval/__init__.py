"""Evaluation: val bpb / loss, the CORE metric, chat evaluation (docs/DESIGN.md §5, §9).

    from jaxchat.eval import evaluate_bpb, evaluate_loss, evaluate_core
    from jaxchat.eval import run_categorical, run_generative, chatcore

CLIs: ``python -m jaxchat.eval.base`` (val bpb + CORE), ``python -m jaxchat.eval.chat`` (chat tasks);
``--help`` lists their keys. Their work is the typed functions ``jaxchat.eval.base.run(BaseEvalConfig)``
and ``jaxchat.eval.chat.run(ChatEvalConfig)`` (what ``train.py --stage=chat_eval`` calls).
Names are imported lazily so that ``python -m jaxchat.eval.chat`` does not import its own module
twice (runpy warns when the package already imported it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate_bpb": "jaxchat.eval.bpb",
    "evaluate_loss": "jaxchat.eval.bpb",
    "evaluate_core": "jaxchat.eval.core",
    "load_bundle": "jaxchat.eval.core",
    "run_categorical": "jaxchat.eval.chat",
    "run_generative": "jaxchat.eval.chat",
    "chatcore": "jaxchat.eval.chat",
    "evaluate_chat": "jaxchat.eval.chat",
    "evaluate_base": "jaxchat.eval.base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxchat.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
