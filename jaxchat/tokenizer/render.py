"""Chat conversations → token ids + training mask, and a debugging view of the result.

A conversation is ``{"messages": [{"role": ..., "content": ...}, ...]}``: an optional leading
``system`` message (merged into the first user message, separated by a blank line), then ``user`` and
``assistant`` alternating, starting with ``user``. User content is a str; assistant content is a str
or a list of parts ``{"type": "text" | "python" | "python_output", "text": str}``.

Mask 1 marks the tokens the assistant is trained to produce::

    <|bos|> 0   <|user_start|> text <|user_end|> 0   <|assistant_start|> 0
    assistant text 1   <|python_start|> code <|python_end|> 1
    <|output_start|> tool output <|output_end|> 0   <|assistant_end|> 1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jaxchat.common import JaxchatError

if TYPE_CHECKING:
    from jaxchat.tokenizer.bpe import Tokenizer

PART_TYPES = ("text", "python", "python_output")


def _short(obj: Any, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _messages(conversation: Any) -> list[tuple[int, str, Any]]:
    """Validate the structure; return (original index, role, content) with the system message merged."""
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise JaxchatError(f"conversation must be a dict with a 'messages' list, got {_short(conversation)}")
    raw = conversation["messages"]
    if not raw:
        raise JaxchatError("conversation has no messages; expected at least one user message")
    out: list[tuple[int, str, Any]] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise JaxchatError(f"message {i} is {_short(msg)}; expected a dict with 'role' and 'content'")
        out.append((i, msg["role"], msg["content"]))
    if out[0][1] == "system":
        if len(out) < 2 or out[1][1] != "user":
            got = "nothing" if len(out) < 2 else f"role {out[1][1]!r}"
            raise JaxchatError(f"message 1: a system message must be followed by a user message, got {got}")
        (_, _, system), (j, _, user) = out[0], out[1]
        for k, content in ((0, system), (j, user)):
            if not isinstance(content, str):
                raise JaxchatError(f"message {k}: content must be a str, got {type(content).__name__}")
        out = [(j, "user", system + "\n\n" + user)] + out[2:]
    for n, (i, role, _) in enumerate(out):
        expected = "user" if n % 2 == 0 else "assistant"
        if role != expected:
            raise JaxchatError(
                f"message {i} has role {role!r}, expected {expected!r} "
                "(roles alternate user/assistant, starting with user; only message 0 may be system)"
            )
    return out


def render_conversation(
    tokenizer: Tokenizer, conversation: dict[str, Any], max_tokens: int | None = 2048
) -> tuple[list[int], list[int]]:
    """Render a conversation for training: ``(ids, mask)``, both cut to ``max_tokens`` (None: no cut).

    ``mask[i] == 1`` where ``ids[i]`` is a token the assistant must learn to produce. Raises
    JaxchatError for an empty conversation, roles out of order (naming the message index and role),
    non-str user content or an unknown assistant part type.
    """
    if max_tokens is not None and max_tokens < 1:
        raise JaxchatError(f"max_tokens is {max_tokens}, expected a positive number or None")
    sp = tokenizer.encode_special
    user_start, user_end = sp("<|user_start|>"), sp("<|user_end|>")
    asst_start, asst_end = sp("<|assistant_start|>"), sp("<|assistant_end|>")
    python_start, python_end = sp("<|python_start|>"), sp("<|python_end|>")
    output_start, output_end = sp("<|output_start|>"), sp("<|output_end|>")

    ids: list[int] = [tokenizer.bos_token_id]
    mask: list[int] = [0]

    def add(tokens: list[int], m: int) -> None:
        ids.extend(tokens)
        mask.extend([m] * len(tokens))

    for i, role, content in _messages(conversation):
        if role == "user":
            if not isinstance(content, str):
                raise JaxchatError(f"message {i}: user content must be a str, got {type(content).__name__}")
            add([user_start, *tokenizer.encode(content), user_end], 0)
            continue
        add([asst_start], 0)
        if isinstance(content, str):
            add(tokenizer.encode(content), 1)
        elif isinstance(content, list):
            for k, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                    expected = "{'type': ..., 'text': str}"
                    raise JaxchatError(f"message {i} part {k}: expected {expected}, got {_short(part)}")
                kind, text_ids = part.get("type"), tokenizer.encode(part["text"])
                if kind == "text":
                    add(text_ids, 1)
                elif kind == "python":
                    add([python_start, *text_ids, python_end], 1)
                elif kind == "python_output":
                    # Tool output is forced in at inference time, so the model never learns to write it.
                    add([output_start, *text_ids, output_end], 0)
                else:
                    raise JaxchatError(f"message {i} part {k}: unknown type {kind!r}; expected one of {PART_TYPES}")
        else:
            raise JaxchatError(
                f"message {i}: assistant content must be a str or a list of parts, got {type(content).__name__}"
            )
        add([asst_end], 1)

    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_for_completion(tokenizer: Tokenizer, conversation: dict[str, Any]) -> list[int]:
    """Render a prompt that primes the assistant to answer: ids ending with ``<|assistant_start|>``.

    A final assistant message (the reference answer of a task) is dropped; a conversation that
    already ends with a user message (a live chat) is used as is. Never truncated: the caller knows
    the model's context length.
    """
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        if messages[-1].get("role") == "assistant":
            conversation = {**conversation, "messages": messages[:-1]}  # shallow: the input is not mutated
    ids, _ = render_conversation(tokenizer, conversation, max_tokens=None)
    ids.append(tokenizer.encode_special("<|assistant_start|>"))
    return ids


_GREEN, _RED, _GRAY, _RESET = "\033[92m", "\033[91m", "\033[90m", "\033[0m"


def visualize(
    tokenizer: Tokenizer, ids: Sequence[int], mask: Sequence[int], *, color: bool = True, with_ids: bool = False
) -> str:
    """Show each token, separated by ``|``: trained (mask 1) tokens green, others red.

    With ``color=False`` trained tokens are wrapped in ``[...]`` and the rest shown bare (for logs and
    tests). Newlines and tabs are escaped so one conversation stays on one line.
    """
    if len(ids) != len(mask):
        raise JaxchatError(f"ids and mask differ in length: {len(ids)} vs {len(mask)}")
    pieces = []
    for token_id, m in zip(ids, mask, strict=True):
        text = tokenizer.id_to_token(int(token_id)).replace("\n", "\\n").replace("\t", "\\t")
        suffix = f"({int(token_id)})" if with_ids else ""
        if color:
            tag = f"{_GRAY}{suffix}{_RESET}" if suffix else ""
            pieces.append(f"{_GREEN if m else _RED}{text}{_RESET}{tag}")
        else:
            pieces.append(f"[{text}]{suffix}" if m else f"{text}{suffix}")
    return "|".join(pieces)
