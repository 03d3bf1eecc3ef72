"""The byte-level BPE tokenizer: trained with rustbpe, encoded with tiktoken.

Ids ``0 … n-1`` are the merge ranks learned by rustbpe (the first 256 are the single bytes) and the
9 special tokens come LAST, in ``SPECIAL_TOKENS`` order, so ``get_vocab_size() == n + 9``.

Plain text is always encoded with tiktoken's ``encode_ordinary``: a document that happens to contain
the characters ``<|bos|>`` gets ordinary tokens, never the special id. Special ids only enter a
sequence through ``encode_special``, ``prepend`` / ``append`` or the chat renderer.

Lone surrogates (``"\\ud800"``: not encodable as UTF-8) are replaced by U+FFFD, both when training and
when encoding — tiktoken's own rule — so encoding never fails and training sees what encoding sees.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rustbpe
import tiktoken

from jaxchat.common import JaxchatError
from jaxchat.tokenizer import render, storage
from jaxchat.tokenizer.constants import MIN_VOCAB_SIZE, SPECIAL_TOKENS, SPLIT_PATTERN


def sanitize_text(text: str) -> str:
    """Return ``text`` unchanged, or with lone surrogates replaced by U+FFFD (tiktoken's rule)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _sanitized(texts: Iterable[str]) -> Iterator[str]:
    # rustbpe converts each str to a Rust String and aborts the whole run on a lone surrogate.
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise JaxchatError(f"training text #{i} is a {type(text).__name__}, expected str")
        yield sanitize_text(text)


class Tokenizer:
    """A trained BPE vocabulary: merges (ids ``0…n-1``) followed by the 9 special tokens.

    Build one with :meth:`train_from_iterator` or :meth:`from_directory`. Instances pickle cheaply
    (the token list and the pattern; the tiktoken tables are rebuilt on unpickling), so they can be
    sent to data-loader worker processes.
    """

    def __init__(self, tokens: Sequence[bytes], pattern: str = SPLIT_PATTERN) -> None:
        """Wrap merge tokens given in rank order (``tokens[r]`` is the bytes of id ``r``).

        Raises JaxchatError if a token is empty or repeated, a single byte is missing, or the
        pattern is not a valid regex.
        """
        tokens = [bytes(t) for t in tokens]
        ranks: dict[bytes, int] = {}
        for rank, tok in enumerate(tokens):
            if not tok:
                raise JaxchatError(f"token {rank} is empty; every merge token needs at least one byte")
            if tok in ranks:
                raise JaxchatError(f"token {rank} ({tok!r}) repeats token {ranks[tok]}; tokens must be unique")
            ranks[tok] = rank
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            # Without every single byte some texts would be unencodable (tiktoken panics).
            raise JaxchatError(f"vocabulary lacks the single-byte token(s) {missing[:8]}; expected all 256 bytes")
        self._tokens: list[bytes] = tokens
        self._pattern = pattern
        self._special: dict[str, int] = {name: len(tokens) + i for i, name in enumerate(SPECIAL_TOKENS)}
        try:
            self._enc = tiktoken.Encoding(
                name="jaxchat",
                pat_str=pattern,
                mergeable_ranks=ranks,
                special_tokens=self._special,
            )
        except ValueError as e:
            raise JaxchatError(f"split pattern {pattern!r} is not a valid regex: {e}") from e
        self._token_bytes: np.ndarray | None = None
        self._fingerprint: str | None = None

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train_from_iterator(
        cls, texts: Iterable[str], vocab_size: int, *, pattern: str = SPLIT_PATTERN, buffer_size: int = 8192
    ) -> Tokenizer:
        """Train byte-level BPE on ``texts`` so that the vocabulary, specials included, is ``vocab_size``.

        rustbpe learns ``vocab_size - 9`` tokens; the special tokens are appended after them.
        Training is deterministic: the same texts give the same ranks. Raises JaxchatError if
        ``vocab_size`` is too small or the text is too small to learn that many merges.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise JaxchatError(f"vocab_size {vocab_size} is too small; expected at least {MIN_VOCAB_SIZE}")
        n_merge_tokens = vocab_size - len(SPECIAL_TOKENS)
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(_sanitized(texts), n_merge_tokens, buffer_size=buffer_size, pattern=pattern)
        pairs = sorted(bpe.get_mergeable_ranks(), key=lambda kv: kv[1])
        if len(pairs) < n_merge_tokens:
            raise JaxchatError(
                f"the training text only supports {len(pairs)} tokens, vocab_size {vocab_size} needs "
                f"{n_merge_tokens} (+{len(SPECIAL_TOKENS)} special); give more text or a smaller vocab_size"
            )
        if [rank for _, rank in pairs] != list(range(len(pairs))):
            raise JaxchatError("rustbpe returned non-contiguous ranks; expected 0..n-1")  # never seen; guard anyway
        return cls([bytes(tok) for tok, _ in pairs], bpe.get_pattern())

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer written by :meth:`save` (validated; JaxchatError names the bad file)."""
        tokens, pattern = storage.read_tokenizer_dir(Path(directory))
        try:
            return cls(tokens, pattern)
        except JaxchatError as e:  # e.g. a pattern tiktoken cannot compile: say where it came from
            raise JaxchatError(f"{directory}: {e}") from None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.tiktoken``, ``token_bytes.npy`` and ``tokenizer.json`` atomically; return the dir."""
        return storage.write_tokenizer_dir(Path(directory), self._tokens, self._pattern, self.token_bytes)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle the token list, not tiktoken's tables; unpickling rebuilds them (~0.1 s at 65K).
        return (type(self), (self._tokens, self._pattern))

    # ---- vocabulary -----------------------------------------------------------------------------

    @property
    def pattern(self) -> str:
        """The regex that splits text before BPE."""
        return self._pattern

    @property
    def n_merge_tokens(self) -> int:
        """Number of ordinary (non-special) tokens: ids ``0 … n_merge_tokens-1``."""
        return len(self._tokens)

    def get_vocab_size(self) -> int:
        """Total vocabulary size, special tokens included."""
        return len(self._tokens) + len(SPECIAL_TOKENS)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token name → id, in ``SPECIAL_TOKENS`` order."""
        return dict(self._special)

    @property
    def bos_token_id(self) -> int:
        """Id of ``<|bos|>``, which starts every document and conversation."""
        return self._special["<|bos|>"]

    def encode_special(self, name: str) -> int:
        """Id of the special token ``name`` (e.g. ``"<|assistant_end|>"``)."""
        try:
            return self._special[name]
        except (KeyError, TypeError):
            raise JaxchatError(f"unknown special token {name!r}; expected one of {', '.join(SPECIAL_TOKENS)}") from None

    def is_special(self, token_id: int) -> bool:
        """True for the 9 special ids."""
        return len(self._tokens) <= token_id < self.get_vocab_size()

    def id_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of a token (a special token gives its name as UTF-8)."""
        return self._enc.decode_single_token_bytes(int(token_id))

    def id_to_token(self, token_id: int) -> str:
        """A token as text; bytes that are not valid UTF-8 on their own show as U+FFFD."""
        return self.id_to_bytes(token_id).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> np.ndarray:
        """int32 array, one entry per id: the RAW byte length of the token, 0 for special tokens.

        Used to turn a loss in nats/token into bits per byte. Computed from the bytes themselves, not
        from a decoded str (which would count a partial character's U+FFFD as 3 bytes).
        """
        if self._token_bytes is None:
            lengths = [len(t) for t in self._tokens] + [0] * len(SPECIAL_TOKENS)
            arr = np.asarray(lengths, dtype=np.int32)
            arr.setflags(write=False)  # shared cache: callers must not mutate it
            self._token_bytes = arr
        return self._token_bytes

    def mergeable_tokens(self) -> list[bytes]:
        """The ordinary tokens in id order (a copy)."""
        return list(self._tokens)

    # ---- encode / decode ------------------------------------------------------------------------

    def _special_or_id(self, token: int | str) -> int:
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            token = int(token)
            if not 0 <= token < self.get_vocab_size():
                raise JaxchatError(f"token id {token} is outside the vocabulary [0, {self.get_vocab_size()})")
            return token
        if isinstance(token, str):
            return self.encode_special(token)
        raise JaxchatError(f"prepend/append must be a token id or a special token name, got {token!r}")

    def encode(
        self,
        text: str | list[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int | None = None,
    ) -> list[int] | list[list[int]]:
        """Encode a str (→ list of ids) or a list of str (→ list of id lists, threaded).

        Special-token text inside ``text`` is encoded as ordinary text. ``prepend`` / ``append`` add
        one token, given as an id or a special token name (e.g. ``prepend="<|bos|>"``), to each
        sequence. ``num_threads`` (default min(8, cores)) only matters for list input.
        """
        first = None if prepend is None else self._special_or_id(prepend)
        last = None if append is None else self._special_or_id(append)
        if isinstance(text, str):
            ids = self._enc.encode_ordinary(text)
            if first is not None:
                ids.insert(0, first)
            if last is not None:
                ids.append(last)
            return ids
        if isinstance(text, list):
            threads = num_threads or min(8, os.cpu_count() or 1)
            batch = self._enc.encode_ordinary_batch(text, num_threads=threads)
            if first is not None or last is not None:
                head = [] if first is None else [first]
                tail = [] if last is None else [last]
                batch = [head + ids + tail for ids in batch]
            return batch
        raise TypeError(f"encode() takes a str or a list of str, got {type(text).__name__}")

    __call__ = encode

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. Special tokens appear as their names; invalid UTF-8 becomes U+FFFD."""
        return self._enc.decode([int(i) for i in ids])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids → the exact bytes (use when streaming text that may stop mid-character)."""
        return self._enc.decode_bytes([int(i) for i in ids])

    # ---- chat rendering -------------------------------------------------------------------------

    def render_conversation(
        self, conversation: dict[str, Any], max_tokens: int | None = 2048
    ) -> tuple[list[int], list[int]]:
        """See :func:`jaxchat.tokenizer.render.render_conversation`."""
        return render.render_conversation(self, conversation, max_tokens)

    def render_for_completion(self, conversation: dict[str, Any]) -> list[int]:
        """See :func:`jaxchat.tokenizer.render.render_for_completion`."""
        return render.render_for_completion(self, conversation)

    def visualize(self, ids: Sequence[int], mask: Sequence[int], *, color: bool = True, with_ids: bool = False) -> str:
        """See :func:`jaxchat.tokenizer.render.visualize`."""
        return render.visualize(self, ids, mask, color=color, with_ids=with_ids)

    # ---- identity -------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 (hex) of the saved content: identical for a tokenizer and its saved/loaded copy.

        Later stages store it in checkpoints to detect a model paired with another tokenizer.
        """
        if self._fingerprint is None:
            tiktoken_data = storage.tiktoken_file_bytes(self._tokens)
            self._fingerprint = storage.fingerprint(tiktoken_data, self._pattern, self._special)
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._pattern == other._pattern and self._tokens == other._tokens

    __hash__ = None  # type: ignore[assignment]  # mutable caches; equality is by content

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.get_vocab_size()}, fingerprint={self.fingerprint()[:12]})"
