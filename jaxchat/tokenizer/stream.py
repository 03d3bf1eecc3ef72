"""Streaming decode: token ids → text pieces that never split a multi-byte UTF-8 character."""

from __future__ import annotations

import codecs
from typing import Any


class StreamDecoder:
    """Token ids → text pieces that never split a multi-byte UTF-8 character.

    Equivalent to decoding ``decode_bytes`` of all ids so far and emitting the new complete
    characters, but incremental: a character whose bytes span several tokens is held back until its
    last byte arrives. Invalid bytes become U+FFFD; :meth:`flush` emits a dangling partial character.
    Used by the chat CLI and the web server.
    """

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (possibly '')."""
        return self._utf8.decode(self._tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """End of the stream: return whatever is left (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
