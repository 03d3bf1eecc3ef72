"""The web chat server: a FastAPI app streaming Engine output as server-sent events (SPEC §10).

Endpoints::

    POST /chat/completions   {"messages": [{"role": "user"|"assistant", "content": str}, ...],
                              "temperature"?, "top_k"?, "max_tokens"?, "seed"?}
                             → text/event-stream: data: {"token": "<text>"} ... data: {"done": true}
    GET  /                   the chat page (self-contained HTML, no external assets)
    GET  /health             {"status": "ok", "ready": bool}
    GET  /stats              requests served / active / rejected, tokens generated, decode tokens/s,
                             time to first token, model info, defaults and limits

Every request-limit violation (and malformed JSON) is HTTP 400 with
``{"error": "<one line>", "limit": "<name>", "value": <offending value>}``. Unknown fields, at the top
level or inside a message, are IGNORED (so OpenAI-style clients that send ``model`` / ``stream`` work);
only ``role`` and ``content`` of a message reach the model.

The Engine is synchronous JAX. Each request becomes a job on a single worker thread (a pool of one),
so generations never interleave on the device and run in arrival order; the worker pushes decoded
text into the request's own asyncio queue with ``call_soon_threadsafe``, so the event loop is never
blocked and each stream carries only its own tokens. A client that disconnects cancels its job (at
the next token, or before it starts if still queued).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from jaxchat.common import JaxchatError
from jaxchat.tokenizer.stream import StreamDecoder

log = logging.getLogger("jaxchat.web")

STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")
ROLES = ("user", "assistant")


# ---- request limits (SPEC §10) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request limits. The defaults are SPEC §10's; every violation is an HTTP 400 naming the limit."""

    max_messages: int = 500
    max_message_chars: int = 8000
    max_conversation_chars: int = 32000
    temperature: tuple[float, float] = (0.0, 2.0)
    top_k: tuple[int, int] = (1, 200)
    max_tokens: tuple[int, int] = (1, 4096)
    # Raw body cap, read incrementally so a huge upload is refused before it is buffered. 32000 chars
    # written as JSON \uXXXX escapes (6 bytes each, 12 for astral ones) plus 500 message envelopes fit.
    max_body_bytes: int = 1 << 20


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
    """A client mistake → HTTP 400 ``{"error": message, "limit": limit, "value": value}``."""

    def __init__(self, limit: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.limit, self.value, self.message = limit, value, message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "limit": self.limit, "value": _json_safe(self.value)}, 400)


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


def validate_request(body: Any, defaults: Sampling, limits: Limits = Limits()) -> ChatRequest:
    """Check a decoded JSON body against the limits; return the clean request or raise RequestError.

    ``temperature`` / ``top_k`` / ``max_tokens`` may be absent or null (server default). ``seed``
    (optional int ≥ 0) makes sampling reproducible; without it each request draws a fresh seed.
    """
    if not isinstance(body, dict):
        kind = type(body).__name__
        raise RequestError("body", kind, f"request body must be a JSON object, got {kind}")
    messages = body.get("messages")
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
        check_range("seed", seed, (0, 2**31 - 1), integer=True)
    return ChatRequest(clean, temperature, top_k, max_tokens, seed)


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


async def read_json_body(request: Request, limit: int) -> Any:
    """The request body decoded as JSON; RequestError (→ 400) if oversize, not UTF-8 or malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError("max_body_bytes", int(declared), f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("max_body_bytes", size, f"request body is over {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise RequestError("json", None, f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    except ValueError as e:
        raise RequestError("json", None, f"request body is not valid JSON: {e}") from None


# ---- streaming text ------------------------------------------------------------------------------


# ---- the generation worker -----------------------------------------------------------------------


class Stats:
    """Server counters, updated from the worker thread and the event loop (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.served = self.failed = self.cancelled = self.rejected = self.active = 0
        self.tokens = 0
        # Throughput counts only tokens after a request's first one, over the time since that first
        # token: prefill, compilation and queueing would otherwise drown the decode speed.
        self.decode_tokens = 0
        self.decode_s = 0.0
        self.first_token_s = 0.0  # summed time to first token (queue excluded), over `first_tokens`
        self.first_tokens = 0

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def admit(self, max_pending: int) -> bool:
        """Count a request as active if fewer than ``max_pending`` are; else count it rejected.

        Check and increment happen under one lock so concurrent arrivals cannot overshoot the cap.
        """
        with self._lock:
            if self.active >= max_pending:
                self.rejected += 1
                return False
            self.active += 1
            return True

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests_served": self.served,
                "requests_active": self.active,
                "requests_failed": self.failed,
                "requests_cancelled": self.cancelled,
                "requests_rejected": self.rejected,
                "tokens_generated": self.tokens,
                "tokens_per_second": round(self.decode_tokens / self.decode_s, 2) if self.decode_s > 0 else 0.0,
                "mean_time_to_first_token_s": (
                    round(self.first_token_s / self.first_tokens, 4) if self.first_tokens else None),
                "uptime_seconds": round(time.monotonic() - self.started, 1),
            }


@dataclasses.dataclass(eq=False)  # identity semantics: jobs live in a set while they run
class Job:
    """One generation: its prompt and settings, where its events go, and its cancel flag."""

    prompt: list[int]
    request: ChatRequest
    emit: Callable[[str, Any], None]  # thread-safe: schedules (kind, payload) onto the request's queue
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)


class GenerationWorker:
    """Runs jobs one at a time on a single worker thread: the device is never shared by two streams."""

    def __init__(self, engine: Any, tokenizer: Any, stats: Stats) -> None:
        self.engine, self.tokenizer, self.stats = engine, tokenizer, stats
        self.stop_ids = {tokenizer.encode_special(name) for name in STOP_TOKENS}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxchat-generate")
        self._jobs: set[Job] = set()  # submitted and not finished: cancelled together at shutdown
        self._jobs_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Queue ``fn(*args)`` on the worker thread (FIFO)."""
        return self._pool.submit(fn, *args)

    def submit_job(self, job: Job) -> None:
        """Queue one request's generation (FIFO behind the ones already waiting)."""
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            self._pool.submit(self.run, job)
        except RuntimeError:  # the pool is shut down
            with self._jobs_lock:
                self._jobs.discard(job)
            raise

    def tokens(self, prompt: list[int], request: ChatRequest, cancel: threading.Event) -> Iterator[int]:
        """The reply's token ids, without the stop token; stops early when ``cancel`` is set."""
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        steps = self.engine.generate(
            prompt, num_samples=1, max_tokens=request.max_tokens,
            temperature=request.temperature, top_k=request.top_k, seed=seed,
        )
        try:
            for column, _masks in steps:
                # Forced tool-output tokens (mask 0) are part of the reply text too, so they are shown.
                token = int(column[0])
                if token in self.stop_ids or cancel.is_set():
                    return
                yield token
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()  # release the engine's generator (and its device buffers) promptly

    def run(self, job: Job) -> None:
        """Worker-thread body of one request: stream text chunks, then 'done' (or 'error')."""
        try:
            self._run(job)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():  # the client left while the job was queued, or the server is stopping
            self.stats.add(cancelled=1, active=-1)
            job.emit("error", "generation cancelled")
            return
        text, count, start, first = StreamDecoder(self.tokenizer), 0, time.perf_counter(), None
        try:
            for token in self.tokens(job.prompt, job.request, job.cancel):
                if first is None:
                    first = time.perf_counter()
                count += 1
                chunk = text.push(token)
                if chunk:
                    job.emit("token", chunk)
            tail = text.flush()
            if tail:
                job.emit("token", tail)
        except Exception as e:  # the stream is already open: report in-band, keep the server alive
            log.exception("generation failed")
            outcome, final = "failed", ("error", f"generation failed: {type(e).__name__}: {e}")
        else:
            if job.cancel.is_set():  # a cut-short reply must not look complete
                outcome, final = "cancelled", ("error", "generation cancelled")
            else:
                outcome, final = "served", ("done", count)
        timing = {} if first is None else {"first_token_s": first - start, "first_tokens": 1,
                                           "decode_tokens": count - 1, "decode_s": time.perf_counter() - first}
        # Counted before the last event goes out: a client that reads /stats next sees its request.
        self.stats.add(active=-1, tokens=count, **{outcome: 1}, **timing)
        job.emit(*final)

    def warmup(self, defaults: Sampling) -> None:
        """Compile the engine's prefill and step for a short chat with the default settings.

        The engine's programs are specialised on the cache size and sampling mode, so the default
        settings compile exactly what a typical first request runs; two tokens reach the step.
        """
        prompt = self.tokenizer.render_for_completion({"messages": [{"role": "user", "content": "Hi"}]})
        request = ChatRequest([], defaults.temperature, defaults.top_k, defaults.max_tokens, 0)
        stop = threading.Event()
        for n, _ in enumerate(self.tokens(prompt, request, stop), start=1):
            if n >= 2:
                stop.set()

    def shutdown(self) -> None:
        """Cancel every job: queued ones are skipped, the running one stops after its current step."""
        with self._jobs_lock:
            for job in self._jobs:
                job.cancel.set()
        # Queued jobs still run, briefly: they see their cancel flag and end their client's stream.
        self._pool.shutdown(wait=False)


# ---- the app -------------------------------------------------------------------------------------


def _sse(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(
    engine: Any,
    tokenizer: Any,
    *,
    temperature: float = 0.8,
    top_k: int | None = 50,
    max_tokens: int = 512,
    context_len: int | None = None,
    max_pending: int = 64,
    limits: Limits = Limits(),
    model_info: Mapping[str, Any] | None = None,
    warmup: bool = True,
) -> FastAPI:
    """Build the chat app around an Engine (``engine.generate(tokens, num_samples, max_tokens, ...)``).

    Args:
      engine, tokenizer: what generates and what renders/decodes.
      temperature, top_k, max_tokens: defaults for requests that do not set them (checked against
        ``limits``; JaxchatError if out of range). ``top_k=None`` samples from the whole vocabulary.
      context_len: the model's context (``config.sequence_len``). A prompt that fills it is refused
        (400, limit ``context_len``) and ``max_tokens`` is clamped so prompt + reply fit. Default:
        ``engine.max_len`` when the engine has one, else no check.
      max_pending: requests generating or queued at once; beyond it → 503 (back off and retry).
      model_info: shown by /stats (stage, tag, step, params, ...).
      warmup: compile with a short generation at startup (queued first); /health says ready once done.
    """
    defaults = check_defaults(temperature, top_k, max_tokens, limits)
    if max_pending < 1:
        raise JaxchatError(f"max_pending is {max_pending}; expected at least 1")
    if context_len is None:  # the Engine knows how long a sequence may be
        context_len = getattr(engine, "max_len", None)
    stats = Stats()
    worker = GenerationWorker(engine, tokenizer, stats)
    state = {"ready": not warmup, "warmup_error": None}
    info = dict(model_info or {})

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warmup:
            def done(future: concurrent.futures.Future) -> None:
                error = future.exception() if not future.cancelled() else None
                if error is not None:
                    log.error("warmup failed: %s: %s", type(error).__name__, error)
                    state["warmup_error"] = f"{type(error).__name__}: {error}"
                else:
                    state["ready"] = True
            # Queued first, so requests that arrive meanwhile simply wait behind it.
            worker.submit(worker.warmup, defaults).add_done_callback(done)
        yield
        worker.shutdown()

    app = FastAPI(title="jaxchat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        from jaxchat.web.page import PAGE

        return HTMLResponse(PAGE)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "ready": bool(state["ready"])}
        if state["warmup_error"]:
            out["error"] = state["warmup_error"]
        return out

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return {
            **stats.snapshot(),
            "ready": bool(state["ready"]),
            "model": info,
            "defaults": dataclasses.asdict(defaults),
            "limits": {
                "max_messages": limits.max_messages,
                "max_message_chars": limits.max_message_chars,
                "max_conversation_chars": limits.max_conversation_chars,
                "temperature": list(limits.temperature),
                "top_k": list(limits.top_k),
                "max_tokens": list(limits.max_tokens),
                "context_len": context_len,
            },
        }

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            chat = validate_request(await read_json_body(request, limits.max_body_bytes), defaults, limits)
            try:
                prompt = tokenizer.render_for_completion({"messages": chat.messages})
            except JaxchatError as e:  # validation above should make this unreachable
                raise RequestError("messages", None, str(e)) from None
            if context_len is not None:
                if len(prompt) >= context_len:
                    raise RequestError(
                        "context_len", len(prompt),
                        f"the conversation is {len(prompt)} tokens; the model's context is {context_len} tokens",
                    )
                chat = dataclasses.replace(chat, max_tokens=min(chat.max_tokens, context_len - len(prompt)))
        except RequestError as e:
            stats.add(rejected=1)
            return e.response()

        if not stats.admit(max_pending):
            return JSONResponse(
                {"error": f"server busy: {max_pending} requests in flight; retry later",
                 "limit": "max_pending", "value": max_pending}, 503,
            )

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

        job = Job(prompt, chat, emit)
        try:
            worker.submit_job(job)
        except RuntimeError:  # pool shut down
            stats.add(active=-1)
            return JSONResponse({"error": "server is shutting down", "limit": None, "value": None}, 503)

        async def events() -> AsyncIterator[str]:
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

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    app.state.stats = stats
    app.state.model_info = info
    app.state.worker = worker
    return app
