"""Vocabulary layout shared by the tokenizer modules: the special tokens and the split pattern.

A leaf module (no jaxchat imports): ``bpe`` and ``storage`` both need these, and importing them
from here keeps the imports between the tokenizer modules one-directional.
"""

from __future__ import annotations

# They come LAST in the vocabulary, after the merge tokens, in this order.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",  # starts every document / conversation
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # assistant calls the calculator tool
    "<|python_end|>",
    "<|output_start|>",  # tool output, forced in at inference time (never learned)
    "<|output_end|>",
)

# GPT-4's split pattern with numbers in groups of 1-2 (not 1-3), as nanochat.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# The smallest vocabulary that still holds every byte plus the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
