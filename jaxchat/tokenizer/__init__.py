"""The tokenizer stage: byte-level BPE (rustbpe + tiktoken), its on-disk format, chat rendering.

    from jaxchat.tokenizer import Tokenizer, load_tokenizer
    tok = load_tokenizer()                      # $JAXCHAT_HOME/tokenizer
    ids = tok.encode("Hello", prepend="<|bos|>")
    ids, mask = tok.render_conversation({"messages": [...]})

Train with ``python -m jaxchat.tokenizer.train``; evaluate with ``python -m jaxchat.tokenizer.tok_eval``.
"""

from __future__ import annotations

from pathlib import Path

from jaxchat.common import jaxchat_home
from jaxchat.tokenizer.bpe import Tokenizer
from jaxchat.tokenizer.constants import SPECIAL_TOKENS, SPLIT_PATTERN
from jaxchat.tokenizer.render import render_conversation, render_for_completion, visualize


def default_tokenizer_dir() -> Path:
    """Where the tokenizer stage writes and later stages read: ``$JAXCHAT_HOME/tokenizer``."""
    return jaxchat_home() / "tokenizer"


def load_tokenizer(directory: str | Path | None = None) -> Tokenizer:
    """Load the trained tokenizer (default ``$JAXCHAT_HOME/tokenizer``); JaxchatError if absent or bad."""
    return Tokenizer.from_directory(default_tokenizer_dir() if directory is None else directory)


__all__ = [
    "SPECIAL_TOKENS",
    "SPLIT_PATTERN",
    "Tokenizer",
    "default_tokenizer_dir",
    "load_tokenizer",
    "render_conversation",
    "render_for_completion",
    "visualize",
]
