"""The web chat's endpoints as plain functions over one :class:`AppState` (docs/DESIGN.md §10).

Each handler finds the state at ``request.app.state.web`` (:func:`app_state`), so it can be called
on its own with any object that has that attribute path; :func:`jaxchat.web.server.create_app`
builds the state and registers the handlers. The JSON shapes and status codes are described in
:mod:`jaxchat.web.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from jaxchat.common import JaxchatError
from jaxchat.web.page import PAGE
from jaxchat.web.validation import (
    ChatRequest, ClientGone, Limits, RequestError, Sampling, Uploads, read_json_body, validate_request)
from jaxchat.web.worker import GenerationWorker, Job, Stats

STATE_ATTR = "web"  # app.state.web holds the AppState
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclasses.dataclass(eq=False)
class AppState:
    """Everything the handlers read: the model side, the worker and its counters, the settings.

    ``ready`` / ``warmup_error`` are written once by the startup warmup (``jaxchat.web.server``).
    """

    engine: Any
    tokenizer: Any
    worker: GenerationWorker
    stats: Stats
    defaults: Sampling
    limits: Limits
    context_len: int | None  # None: prompts are not checked against a context
    max_pending: int
    model_info: dict[str, Any]
    warmup: bool  # compile at startup (the lifespan queues it first)
    ready: bool = False
    warmup_error: str | None = None
    uploads: Uploads | None = None  # the bodies being read (default: capped at limits.max_body_readers)

    def __post_init__(self) -> None:
        if self.uploads is None:
            self.uploads = Uploads(self.limits.max_body_readers)


def app_state(request: Request) -> AppState:
    """The AppState of the app serving ``request``."""
    return getattr(request.app.state, STATE_ATTR)


def _sse(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# ---- GET /, /health, /stats ----------------------------------------------------------------------


async def index(request: Request) -> HTMLResponse:
    """``GET /``: the chat page (self-contained HTML)."""
    return HTMLResponse(PAGE)


async def health(request: Request) -> dict[str, Any]:
    """``GET /health``: ``{"status": "ok", "ready": bool}``, plus ``"error"`` if the warmup failed."""
    state = app_state(request)
    out: dict[str, Any] = {"status": "ok", "ready": bool(state.ready)}
    if state.warmup_error:
        out["error"] = state.warmup_error
    return out


async def stats(request: Request) -> dict[str, Any]:
    """``GET /stats``: the counters, readiness, model info, default settings and limits."""
    state = app_state(request)
    return {
        **state.stats.snapshot(),
        **state.uploads.snapshot(),
        "ready": bool(state.ready),
        "model": state.model_info,
        "defaults": dataclasses.asdict(state.defaults),
        "limits": state.limits.as_json(state.context_len),
    }


# ---- POST /chat/completions ----------------------------------------------------------------------


def _fit_context(state: AppState, chat: ChatRequest, prompt: list[int]) -> ChatRequest:
    """Refuse a prompt that fills the context; clamp ``max_tokens`` so prompt + reply fit."""
    if state.context_len is None:
        return chat
    if len(prompt) >= state.context_len:
        raise RequestError(
            "context_len", len(prompt),
            f"the conversation is {len(prompt)} tokens; the model's context is {state.context_len} tokens",
        )
    return dataclasses.replace(chat, max_tokens=min(chat.max_tokens, state.context_len - len(prompt)))


async def _events(queue: asyncio.Queue[tuple[str, Any]], job: Job) -> AsyncIterator[str]:
    """The job's events as SSE frames, ending with ``{"done": true}`` or ``{"error": ...}``."""
    try:
        while True:
            kind, payload = await queue.get()
            if kind == "token":
                yield _sse({"token": payload})
            elif kind == "error":
                yield _sse({"error": payload})
                return
            else:
                yield _sse({"done": True})
                return
    finally:
        job.cancel.set()  # no-op when finished; stops the worker when the client went away


async def chat_completions(request: Request) -> Response:
    """``POST /chat/completions``: 400 on a bad request, 408 on a body that does not arrive in time,
    503 when busy, else a stream of events."""
    state = app_state(request)
    try:
        body = await read_json_body(request, state.limits, state.uploads)
        chat = validate_request(body, state.defaults, state.limits)
        try:
            prompt = state.tokenizer.render_for_completion({"messages": chat.messages})
        except JaxchatError as e:  # validation above should make this unreachable
            raise RequestError("messages", None, str(e)) from None
        chat = _fit_context(state, chat, prompt)
    except RequestError as e:
        state.stats.add(rejected=1)
        return e.response()
    except ClientGone:  # counted and logged in one line by read_json_body
        return Response(status_code=400, headers={"Connection": "close"})  # nobody reads it: the client left

    if not state.stats.admit(state.max_pending):
        return JSONResponse(
            {"error": f"server busy: {state.max_pending} requests in flight; retry later",
             "limit": "max_pending", "value": state.max_pending}, 503,
        )

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def emit(kind: str, payload: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

    job = Job(prompt, chat, emit)
    try:
        state.worker.submit_job(job)
    except RuntimeError:  # pool shut down
        state.stats.add(active=-1)
        return JSONResponse({"error": "server is shutting down", "limit": None, "value": None}, 503)
    return StreamingResponse(_events(queue, job), media_type="text/event-stream", headers=SSE_HEADERS)
