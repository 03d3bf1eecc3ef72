"""The web chat server: a FastAPI app streaming Engine output as server-sent events (docs/DESIGN.md §10).

Endpoints::

    POST /chat/completions   {"messages": [{"role": "user"|"assistant", "content": str}, ...],
                              "temperature"?, "top_k"?, "max_tokens"?, "seed"?}
                             → text/event-stream: data: {"token": "<text>"} ... data: {"done": true}
    GET  /                   the chat page (self-contained HTML, no external assets)
    GET  /health             {"status": "ok", "ready": bool}
    GET  /stats              requests served / active / rejected, tokens generated, decode tokens/s,
                             time to first token, model info, defaults and limits

Every request-limit violation (and malformed JSON) is HTTP 400 with
``{"error": "<one line>", "limit": "<name>", "value": <offending value>}``; more than ``max_pending``
requests at once is HTTP 503 with ``"limit": "max_pending"``. A body must arrive within
``Limits.body_timeout_s`` (else 408, ``"limit": "body_timeout_s"``), and at most
``Limits.max_body_readers`` bodies are read at once (one more: 503, ``"limit": "max_body_readers"``);
both close the connection, and a stalled or aborted upload is one log line on ``jaxchat.web``.
Unknown fields, at the top level or inside a message, are IGNORED (so OpenAI-style clients that send
``model`` / ``stream`` work); only ``role`` and ``content`` of a message reach the model.

The modules: :mod:`~jaxchat.web.validation` checks requests, :mod:`~jaxchat.web.worker` runs the
Engine on one thread (generations never interleave on the device and run in arrival order; a client
that disconnects cancels its job), :mod:`~jaxchat.web.handlers` holds the endpoints over one
:class:`~jaxchat.web.handlers.AppState`, and this module builds the app around them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from jaxchat.common import JaxchatError
from jaxchat.web import handlers
from jaxchat.web.handlers import STATE_ATTR, AppState
from jaxchat.web.validation import Limits, check_defaults
from jaxchat.web.worker import GenerationWorker, Stats

log = logging.getLogger("jaxchat.web")


def build_state(
    engine: Any,
    tokenizer: Any,
    *,
    temperature: float = 0.8,
    top_k: int | None = 50,
    max_tokens: int = 512,
    seed: int | None = None,
    context_len: int | None = None,
    max_pending: int = 64,
    limits: Limits = Limits(),
    model_info: Mapping[str, Any] | None = None,
    warmup: bool = True,
) -> AppState:
    """The handlers' state around an Engine; JaxchatError when a setting is out of range.

    Args:
      engine, tokenizer: what generates (``engine.generate(tokens, num_samples, max_tokens, ...)``)
        and what renders/decodes.
      temperature, top_k, max_tokens: defaults for requests that do not set them (0.8, 50, 512;
        checked against ``limits``). ``top_k=None`` samples from the whole vocabulary.
      seed: the seed of requests that set none: None (default) draws a fresh one per request; an
        int ``s`` gives them ``s, s + 1, ...`` in the order they run.
      context_len: the model's context (``config.sequence_len``). A prompt that fills it is refused
        (400, limit ``context_len``) and ``max_tokens`` is clamped so prompt + reply fit. Default:
        ``engine.max_len`` when the engine has one, else no check.
      max_pending: requests generating or queued at once (default 64); beyond it → 503.
      limits: the request :class:`~jaxchat.web.validation.Limits`.
      model_info: shown by /stats (stage, tag, step, params, ...).
      warmup: compile with a short generation at startup (queued first); /health says ready once done.
    """
    defaults = check_defaults(temperature, top_k, max_tokens, limits)
    if max_pending < 1:
        raise JaxchatError(f"max_pending is {max_pending}; expected at least 1")
    if not limits.body_timeout_s > 0:  # also refuses nan
        raise JaxchatError(f"body_timeout_s is {limits.body_timeout_s}; expected a number of seconds > 0")
    if limits.max_body_readers < 1:
        raise JaxchatError(f"max_body_readers is {limits.max_body_readers}; expected at least 1")
    if context_len is None:  # the Engine knows how long a sequence may be
        context_len = getattr(engine, "max_len", None)
    stats = Stats()
    return AppState(
        engine=engine, tokenizer=tokenizer, worker=GenerationWorker(engine, tokenizer, stats, base_seed=seed),
        stats=stats, defaults=defaults, limits=limits, context_len=context_len, max_pending=max_pending,
        model_info=dict(model_info or {}), warmup=warmup, ready=not warmup,
    )


def start_warmup(state: AppState) -> concurrent.futures.Future:
    """Queue the warmup compile on the worker (first, so early requests wait behind it); it sets
    ``state.ready``, or ``state.warmup_error`` if it fails."""

    def done(future: concurrent.futures.Future) -> None:
        error = future.exception() if not future.cancelled() else None
        if error is not None:
            log.error("warmup failed: %s: %s", type(error).__name__, error)
            state.warmup_error = f"{type(error).__name__}: {error}"
        else:
            state.ready = True

    future = state.worker.submit(state.worker.warmup, state.defaults)
    future.add_done_callback(done)
    return future


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Startup: queue the warmup (when asked). Shutdown: cancel every job and stop the worker."""
    state: AppState = getattr(app.state, STATE_ATTR)
    if state.warmup:
        start_warmup(state)
    yield
    state.worker.shutdown()


def create_app(engine: Any, tokenizer: Any, **settings: Any) -> FastAPI:
    """Build the chat app around an Engine: its state (settings as :func:`build_state`, e.g.
    ``temperature=0.0, max_tokens=64, model_info={...}``), the four routes and the lifespan.

    The state is ``app.state.web`` (an :class:`~jaxchat.web.handlers.AppState`).
    """
    state = build_state(engine, tokenizer, **settings)
    app = FastAPI(title="jaxchat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    setattr(app.state, STATE_ATTR, state)
    app.add_api_route("/", handlers.index, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/health", handlers.health, methods=["GET"])
    app.add_api_route("/stats", handlers.stats, methods=["GET"])
    app.add_api_route("/chat/completions", handlers.chat_completions, methods=["POST"])
    return app
