"""Request validation for the web chat (docs/DESIGN.md §10): limits, sampling settings, the JSON body.

Every request-limit violation (and malformed JSON) is a :class:`RequestError`, which the handler
turns into HTTP 400 ``{"error": "<one line>", "limit": "<name>", "value": <offending value>}``; a body
not received within ``body_timeout_s`` is 408, and a body that finds ``max_body_readers`` others being
read is 503 (both close the connection: the rest of the body is never read).
Unknown fields, at the top level or inside a message, are IGNORED (so OpenAI-style clients that send
``model`` / ``stream`` work); only ``role`` and ``content`` of a message reach the model.

Nothing here touches the engine or JAX: the functions take decoded JSON (or a request's byte
stream) and return plain dataclasses. :func:`read_json_body` logs one line (no traceback) for each
upload that times out or that the client aborts: they say nothing about the server's health, and a
traceback each would let anyone fill the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from jaxchat.common import JaxchatError

ROLES = ("user", "assistant")
MAX_SEED = 2**31 - 1  # seeds are int32 on the device

log = logging.getLogger("jaxchat.web")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request limits. The defaults are docs/DESIGN.md §10's; every violation is an HTTP 400 naming the limit."""

    max_messages: int = 500
    max_message_chars: int = 8000
    max_conversation_chars: int = 32000
    temperature: tuple[float, float] = (0.0, 2.0)
    top_k: tuple[int, int] = (1, 200)
    max_tokens: tuple[int, int] = (1, 4096)
    # Raw body cap, read incrementally so a huge upload is refused before it is buffered. 32000 chars
    # written as JSON \uXXXX escapes (6 bytes each, 12 for astral ones) plus 500 message envelopes fit.
    max_body_bytes: int = 1 << 20
    # The whole body must arrive within this many seconds (then HTTP 408, connection closed): a client
    # that declares a longer Content-Length than it sends would otherwise hold its connection forever.
    # 1 MiB in 10 s needs 100 KB/s; a chat message is a few KB.
    body_timeout_s: float = 10.0
    # Requests reading their body at once; one more is answered 503 at once (connection closed), so
    # stalled uploads cannot pile up connections and memory without bound.
    max_body_readers: int = 32

    def as_json(self, context_len: int | None) -> dict[str, Any]:
        """The limits as ``GET /stats`` shows them (ranges as ``[lo, hi]``, plus the model's context)."""
        return {
            "max_messages": self.max_messages,
            "max_message_chars": self.max_message_chars,
            "max_conversation_chars": self.max_conversation_chars,
            "temperature": list(self.temperature),
            "top_k": list(self.top_k),
            "max_tokens": list(self.max_tokens),
            "max_body_bytes": self.max_body_bytes,
            "body_timeout_s": self.body_timeout_s,
            "max_body_readers": self.max_body_readers,
            "context_len": context_len,
        }


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Generation settings: the server defaults, overridden per request."""

    temperature: float = 0.8
    top_k: int | None = 50
    max_tokens: int = 512


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated request: clean ``{"role", "content"}`` messages and the sampling settings."""

    messages: list[dict[str, str]]
    temperature: float
    top_k: int | None
    max_tokens: int
    seed: int | None


class RequestError(Exception):
    """A client mistake → HTTP ``status`` (400) ``{"error": message, "limit": limit, "value": value}``.

    ``close``: answered before the whole body was read, so the connection is closed after the
    response (``Connection: close``) rather than left to a client that may still be sending.
    """

    def __init__(self, limit: str, value: Any, message: str, *, status: int = 400, close: bool = False) -> None:
        super().__init__(message)
        self.limit, self.value, self.message = limit, value, message
        self.status, self.close = status, close

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "limit": self.limit, "value": _json_safe(self.value)},
                            self.status, headers={"Connection": "close"} if self.close else None)


class ClientGone(Exception):
    """The client closed its connection before its body arrived: there is no one to answer."""


class Uploads:
    """The requests reading their body now (at most ``max_readers``) and how past uploads ended.

    Used only from the server's event loop (one thread), so plain counters suffice.
    """

    def __init__(self, max_readers: int) -> None:
        self.max_readers = max_readers
        self.reading = self.timed_out = self.aborted = self.refused = 0

    def snapshot(self) -> dict[str, int]:
        return {"uploads_reading": self.reading, "uploads_timed_out": self.timed_out,
                "uploads_aborted": self.aborted, "uploads_refused": self.refused}


def _json_safe(value: Any) -> Any:
    """The offending value, as JSON; huge strings/lists are summarised (the client already has them)."""
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return value if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_range(name: str, value: Any, bounds: tuple[float, float], *, integer: bool) -> None:
    """Raise RequestError unless ``value`` is a (finite) number / int within ``bounds`` inclusive."""
    lo, hi = bounds
    kind = "an integer" if integer else "a number"
    if not (_is_int(value) if integer else _is_number(value)) or not lo <= value <= hi:
        raise RequestError(name, value, f"{name} is {value!r}; expected {kind} in [{lo}, {hi}]")


def _check_messages(messages: Any, limits: Limits) -> list[dict[str, str]]:
    """The conversation as clean ``{"role", "content"}`` dicts; RequestError naming the broken limit."""
    if not isinstance(messages, list):
        raise RequestError("messages", messages, "'messages' must be a list of {role, content} objects")
    if not messages:
        raise RequestError("max_messages", 0, "'messages' is empty; expected at least one user message")
    if len(messages) > limits.max_messages:
        raise RequestError(
            "max_messages", len(messages), f"{len(messages)} messages; the limit is {limits.max_messages}"
        )
    clean: list[dict[str, str]] = []
    total = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RequestError("message", msg, f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        expected = ROLES[i % 2]
        if role not in ROLES:
            raise RequestError("role", role, f"messages[{i}].role is {role!r}; expected 'user' or 'assistant'")
        if role != expected:
            raise RequestError(
                "role_order", role,
                f"messages[{i}].role is {role!r}, expected {expected!r} "
                "(roles alternate user/assistant, starting with user)",
            )
        if not isinstance(content, str):
            kind = type(content).__name__
            raise RequestError("content", content, f"messages[{i}].content must be a string, got {kind}")
        if not content.strip():
            raise RequestError("content", content, f"messages[{i}].content is empty or blank; expected text")
        if len(content) > limits.max_message_chars:
            raise RequestError(
                "max_message_chars", len(content),
                f"messages[{i}].content is {len(content)} chars; the limit is {limits.max_message_chars}",
            )
        total += len(content)
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user":
        raise RequestError("role_order", "assistant", "the last message must be the user's (the model replies to it)")
    if total > limits.max_conversation_chars:
        raise RequestError(
            "max_conversation_chars", total,
            f"the conversation is {total} chars; the limit is {limits.max_conversation_chars}",
        )
    return clean


def validate_request(body: Any, defaults: Sampling, limits: Limits = Limits()) -> ChatRequest:
    """Check a decoded JSON body against the limits; return the clean request or raise RequestError.

    ``temperature`` / ``top_k`` / ``max_tokens`` may be absent or null (server default). ``seed``
    (optional int ≥ 0) makes sampling reproducible; without it the server picks the seed.
    """
    if not isinstance(body, dict):
        kind = type(body).__name__
        raise RequestError("body", kind, f"request body must be a JSON object, got {kind}")
    messages = _check_messages(body.get("messages"), limits)

    def setting(name: str, default: Any, bounds: tuple[float, float], integer: bool) -> Any:
        value = body.get(name)
        if value is None:
            return default
        check_range(name, value, bounds, integer=integer)
        return value

    temperature = float(setting("temperature", defaults.temperature, limits.temperature, False))
    top_k = setting("top_k", defaults.top_k, limits.top_k, True)
    max_tokens = setting("max_tokens", defaults.max_tokens, limits.max_tokens, True)
    seed = body.get("seed")
    if seed is not None:
        check_range("seed", seed, (0, MAX_SEED), integer=True)
    return ChatRequest(messages, temperature, top_k, max_tokens, seed)


def check_defaults(temperature: float, top_k: int | None, max_tokens: int, limits: Limits = Limits()) -> Sampling:
    """The server's default sampling settings, or JaxchatError when one is outside the request limits."""
    for name, value, bounds, integer in (
        ("temperature", temperature, limits.temperature, False),
        ("max_tokens", max_tokens, limits.max_tokens, True),
        *((("top_k", top_k, limits.top_k, True),) if top_k is not None else ()),
    ):
        try:
            check_range(name, value, bounds, integer=integer)
        except RequestError as e:
            raise JaxchatError(f"default {e.message}") from None
    return Sampling(float(temperature), top_k, max_tokens)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN / Infinity, which are not JSON: refuse them like any malformed body.
    raise ValueError(f"{name} is not valid JSON")


def _client(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown client"


async def read_json_body(request: Request, limits: Limits, uploads: Uploads | None = None) -> Any:
    """The request body decoded as JSON.

    RequestError: 400 if oversize, not UTF-8 or malformed; 503 (``max_body_readers``) when
    ``uploads`` already counts that many bodies being read; 408 (``body_timeout_s``) when the body
    has not arrived within ``limits.body_timeout_s`` (one log line). ClientGone (one log line) when
    the client disconnects first. ``uploads`` (default: a fresh one) counts the bodies being read.
    """
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError("max_body_bytes", int(declared), f"request body is {declared} bytes; the limit is {limit}",
                           close=True)
    uploads = uploads if uploads is not None else Uploads(limits.max_body_readers)
    if uploads.reading >= uploads.max_readers:
        uploads.refused += 1
        raise RequestError("max_body_readers", uploads.max_readers,
                           f"server busy: {uploads.max_readers} requests are sending their body; retry later",
                           status=503, close=True)
    expected = f"{declared} bytes" if declared is not None else "a chunked body"
    chunks, size = [], 0
    uploads.reading += 1
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError("max_body_bytes", size,
                                       f"request body is over {limit} bytes; the limit is {limit}", close=True)
                chunks.append(chunk)
    except TimeoutError:
        uploads.timed_out += 1
        log.warning("upload from %s timed out after %g s with %d of %s received; answered 408 and closed "
                    "the connection", _client(request), limits.body_timeout_s, size, expected)
        raise RequestError("body_timeout_s", limits.body_timeout_s,
                           f"request body not received within {limits.body_timeout_s:g} s ({size} of {expected} "
                           "arrived)", status=408, close=True) from None
    except ClientDisconnect:
        uploads.aborted += 1
        log.warning("upload from %s aborted: the client disconnected after %d of %s", _client(request), size,
                    expected)
        raise ClientGone() from None
    finally:
        uploads.reading -= 1
    raw = b"".join(chunks)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise RequestError("json", None, f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    except ValueError as e:
        raise RequestError("json", None, f"request body is not valid JSON: {e}") from None
