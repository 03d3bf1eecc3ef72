"""Each web handler alone, called with an AppState (no app, no server); the warmup and the worker's seeds."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.requests import Request

from jaxchat.common import JaxchatError
from jaxchat.web import handlers
from jaxchat.web.handlers import AppState, app_state
from jaxchat.web.server import build_state, create_app, start_warmup
from jaxchat.web.validation import Limits
from tests.test_web import ScriptedEngine, parse_sse, user

BOUND_S = 20.0  # every awaited handler call and every wait below gives up after this long


def make_request(state: AppState, body: bytes = b"", method: str = "POST", path: str = "/chat/completions",
                 headers: dict[str, str] | None = None) -> Request:
    """A real Starlette request whose ``app`` is only a holder of ``state`` (``app.state.web``)."""
    app = SimpleNamespace(state=SimpleNamespace(web=state))
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    raw_headers = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "app": app,
             "headers": [(k.encode(), v.encode()) for k, v in raw_headers.items()]}
    return Request(scope, receive)


def call(handler, state: AppState, **request: Any) -> Any:
    """Run ``handler`` on one request in a fresh event loop; a stream is read to its end there too."""
    async def go() -> Any:
        response = await handler(make_request(state, **request))
        if isinstance(response, StreamingResponse):
            chunks = [c if isinstance(c, str) else c.decode() async for c in response.body_iterator]
            return response, parse_sse("".join(chunks))
        return response, None

    return asyncio.run(asyncio.wait_for(go(), BOUND_S))


def post(state: AppState, body: Any) -> tuple[Any, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(handlers.chat_completions, state, body=raw)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def make_state(fineweb_tokenizer):
    """``make_state(engine=None, **settings)`` → an AppState (warmup off by default); workers stopped after."""
    made: list[AppState] = []

    def make(engine=None, **settings: Any) -> AppState:
        engine = engine or ScriptedEngine(fineweb_tokenizer, fineweb_tokenizer.encode("Hello there"))
        state = build_state(engine, fineweb_tokenizer, **{"warmup": False, **settings})
        made.append(state)
        return state

    yield make
    for state in made:
        state.worker.shutdown()


# ---- GET / ---------------------------------------------------------------------------------------


def test_index_handler_serves_the_self_contained_page(make_state):
    response, _ = call(handlers.index, make_state(), method="GET", path="/")
    assert isinstance(response, HTMLResponse) and response.status_code == 200
    html = response.body.decode()
    assert html.startswith("<!doctype html>") and "/chat/completions" in html
    assert "http://" not in html and "https://" not in html


# ---- GET /health ---------------------------------------------------------------------------------


def test_health_handler_follows_the_state(make_state):
    state = make_state(warmup=True)  # not started: nothing compiles, the state just says not ready
    assert call(handlers.health, state, method="GET")[0] == {"status": "ok", "ready": False}
    state.ready = True
    assert call(handlers.health, state, method="GET")[0] == {"status": "ok", "ready": True}
    state.ready, state.warmup_error = False, "RuntimeError: no device"
    assert call(handlers.health, state, method="GET")[0] == {
        "status": "ok", "ready": False, "error": "RuntimeError: no device"}


# ---- GET /stats ----------------------------------------------------------------------------------


def test_stats_handler_reports_counters_settings_and_limits(make_state):
    info = {"stage": "sft", "tag": "tiny", "step": 3}
    state = make_state(temperature=0.3, top_k=None, max_tokens=99, context_len=256, model_info=info,
                       limits=Limits(max_messages=10))
    state.stats.add(served=2, tokens=7, rejected=1)
    out, _ = call(handlers.stats, state, method="GET")
    assert set(out) == {"requests_served", "requests_active", "requests_failed", "requests_cancelled",
                        "requests_rejected", "tokens_generated", "tokens_per_second", "mean_time_to_first_token_s",
                        "uptime_seconds", "uploads_reading", "uploads_timed_out", "uploads_aborted",
                        "uploads_refused", "ready", "model", "defaults", "limits"}
    assert (out["requests_served"], out["tokens_generated"], out["requests_rejected"]) == (2, 7, 1)
    assert out["ready"] is True and out["model"] == info  # warmup off: ready at once
    assert out["defaults"] == {"temperature": 0.3, "top_k": None, "max_tokens": 99}
    assert out["limits"] == {"max_messages": 10, "max_message_chars": 8000, "max_conversation_chars": 32000,
                             "temperature": [0.0, 2.0], "top_k": [1, 200], "max_tokens": [1, 4096],
                             "max_body_bytes": 1 << 20, "body_timeout_s": 10.0, "max_body_readers": 32,
                             "context_len": 256}
    json.dumps(out)  # all of it is JSON


# ---- POST /chat/completions ----------------------------------------------------------------------


def test_chat_completions_handler_streams_the_reply(make_state, fineweb_tokenizer):
    scripted = ScriptedEngine(fineweb_tokenizer, fineweb_tokenizer.encode("Hello there"))
    state = make_state(scripted, temperature=0.5, top_k=9, max_tokens=30, context_len=64)
    response, events = post(state, {"messages": user("hi"), "seed": 4, "model": "ignored"})
    assert response.status_code == 200 and response.media_type == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert events[-1] == {"done": True} and "".join(e["token"] for e in events[:-1]) == "Hello there"
    prompt = fineweb_tokenizer.render_for_completion({"messages": user("hi")})
    assert scripted.calls == [dict(tokens=prompt, max_tokens=min(30, 64 - len(prompt)), temperature=0.5,
                                   top_k=9, seed=4)]
    wait_until(lambda: state.stats.snapshot()["requests_served"] == 1, "the request was never counted")
    assert state.stats.snapshot()["requests_active"] == 0


def test_chat_completions_handler_refuses_bad_requests_with_400(make_state, fineweb_tokenizer):
    scripted = ScriptedEngine(fineweb_tokenizer, [])
    state = make_state(scripted, context_len=16)
    for body, limit in [({"messages": []}, "max_messages"), (b"{oops", "json"),
                        ({"messages": user("hi"), "top_k": 0}, "top_k"),
                        ({"messages": user("the river and the mountain " * 10)}, "context_len")]:
        response, _ = post(state, body)
        assert isinstance(response, JSONResponse) and response.status_code == 400
        err = json.loads(response.body)
        assert set(err) == {"error", "limit", "value"} and err["limit"] == limit, err
    response, _ = call(handlers.chat_completions, state, body=b"{}", headers={"content-length": str(2 << 20)})
    assert response.status_code == 400 and json.loads(response.body)["limit"] == "max_body_bytes"
    assert response.headers["connection"] == "close"  # the body was never read
    assert scripted.calls == [] and state.stats.snapshot()["requests_rejected"] == 5


def test_chat_completions_handler_times_out_or_drops_an_incomplete_body(make_state, caplog):
    """A body that never completes is 408 after body_timeout_s; a client that leaves mid-body gets no
    answer; past max_body_readers bodies at once → 503. Each stalled/aborted upload: one log line."""
    state = make_state(limits=Limits(body_timeout_s=0.2, max_body_readers=1))
    part = {"type": "http.request", "body": b'{"messages"', "more_body": True}

    def request(after_part: dict[str, Any] | None) -> Request:
        sent = []

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append(part)
                return part
            if after_part is None:  # the client says nothing more
                await asyncio.sleep(BOUND_S)
            return after_part

        req = make_request(state, headers={"content-length": "500"})
        return Request({**req.scope, "client": ("10.0.0.7", 5151)}, receive)

    async def go(after_part) -> Any:
        return await handlers.chat_completions(request(after_part))

    started = time.monotonic()
    response = asyncio.run(asyncio.wait_for(go(None), BOUND_S))
    assert response.status_code == 408 and time.monotonic() - started < 0.2 + 5
    assert response.headers["connection"] == "close"
    assert json.loads(response.body) == {"error": "request body not received within 0.2 s (11 of 500 bytes arrived)",
                                         "limit": "body_timeout_s", "value": 0.2}
    response = asyncio.run(asyncio.wait_for(go({"type": "http.disconnect"}), BOUND_S))
    assert response.status_code == 400 and response.body == b""  # never sent: uvicorn drops it

    async def two_at_once() -> list[Any]:
        first = asyncio.ensure_future(go(None))
        await asyncio.sleep(0.05)  # the first is reading its body now
        second = await go(None)
        return [second, await first]

    busy, late = asyncio.run(asyncio.wait_for(two_at_once(), BOUND_S))
    assert busy.status_code == 503 and busy.headers["connection"] == "close"
    assert json.loads(busy.body)["limit"] == "max_body_readers" and late.status_code == 408
    assert state.uploads.snapshot() == {"uploads_reading": 0, "uploads_timed_out": 2, "uploads_aborted": 1,
                                        "uploads_refused": 1}
    assert [r.getMessage() for r in caplog.records if r.name == "jaxchat.web"] == [
        "upload from 10.0.0.7:5151 timed out after 0.2 s with 11 of 500 bytes received; answered 408 and "
        "closed the connection",
        "upload from 10.0.0.7:5151 aborted: the client disconnected after 11 of 500 bytes",
        "upload from 10.0.0.7:5151 timed out after 0.2 s with 11 of 500 bytes received; answered 408 and "
        "closed the connection"]
    assert "Traceback" not in caplog.text and state.stats.snapshot()["requests_active"] == 0


def test_chat_completions_handler_answers_503_when_full_or_stopping(make_state):
    state = make_state(max_pending=1)
    assert state.stats.admit(1)  # one request already in flight
    response, _ = post(state, {"messages": user("hi")})
    assert response.status_code == 503
    assert json.loads(response.body) == {"error": "server busy: 1 requests in flight; retry later",
                                         "limit": "max_pending", "value": 1}
    state.stats.add(active=-1)
    state.worker.shutdown()
    response, _ = post(state, {"messages": user("hi")})
    assert response.status_code == 503
    assert json.loads(response.body) == {"error": "server is shutting down", "limit": None, "value": None}
    assert state.stats.snapshot()["requests_active"] == 0


def test_handlers_find_the_state_on_the_app(make_state, fineweb_tokenizer):
    app = create_app(ScriptedEngine(fineweb_tokenizer, []), fineweb_tokenizer, warmup=False)
    try:
        state = app.state.web
        assert isinstance(state, AppState) and app_state(SimpleNamespace(app=app)) is state
        routes = {(route.path, method) for route in app.routes for method in getattr(route, "methods", ())}
        assert {("/", "GET"), ("/health", "GET"), ("/stats", "GET"), ("/chat/completions", "POST")} <= routes
    finally:
        app.state.web.worker.shutdown()


# ---- warmup and seeds ----------------------------------------------------------------------------


def test_warmup_marks_the_state_ready_or_records_its_error(make_state, fineweb_tokenizer):
    scripted = ScriptedEngine(fineweb_tokenizer, fineweb_tokenizer.encode("ok"))
    state = make_state(scripted, warmup=True, temperature=0.0, top_k=None, max_tokens=7)
    assert not state.ready
    start_warmup(state).result(timeout=BOUND_S)
    wait_until(lambda: state.ready, "warmup never marked the state ready")
    assert state.warmup_error is None
    assert (scripted.calls[0]["temperature"], scripted.calls[0]["top_k"], scripted.calls[0]["max_tokens"]) == (
        0.0, None, 7)  # compiled with the default settings

    class Broken:
        def generate(self, *a, **k):
            raise RuntimeError("device on fire")
            yield  # pragma: no cover

    broken = make_state(Broken(), warmup=True)
    with pytest.raises(RuntimeError):
        start_warmup(broken).result(timeout=BOUND_S)
    wait_until(lambda: broken.warmup_error is not None, "the warmup error was never recorded")
    assert broken.warmup_error == "RuntimeError: device on fire" and not broken.ready


def test_requests_without_a_seed_get_fresh_or_sequential_seeds(make_state, fineweb_tokenizer):
    fresh = ScriptedEngine(fineweb_tokenizer, [])
    state = make_state(fresh)
    for _ in range(3):
        post(state, {"messages": user("hi")})
    seeds = [c["seed"] for c in fresh.calls]
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds) and len(set(seeds)) == 3

    sequential = ScriptedEngine(fineweb_tokenizer, [])
    state = make_state(sequential, seed=2**31 - 2)
    for body in ({"messages": user("a")}, {"messages": user("b"), "seed": 5}, {"messages": user("c")},
                 {"messages": user("d")}):
        post(state, body)
    # The request's own seed wins and does not use up one of the sequence; the sequence wraps at 2^31.
    assert [c["seed"] for c in sequential.calls] == [2**31 - 2, 5, 2**31 - 1, 0]


def test_bad_settings_are_refused_when_the_state_is_built(fineweb_tokenizer):
    scripted = ScriptedEngine(fineweb_tokenizer, [])
    with pytest.raises(JaxchatError, match="max_tokens"):
        build_state(scripted, fineweb_tokenizer, max_tokens=0)
    with pytest.raises(JaxchatError, match="max_pending"):
        build_state(scripted, fineweb_tokenizer, max_pending=0)

    with pytest.raises(JaxchatError, match=r"body_timeout_s is nan; expected a number of seconds > 0"):
        build_state(scripted, fineweb_tokenizer, limits=Limits(body_timeout_s=float("nan")))
    with pytest.raises(JaxchatError, match=r"max_body_readers is 0; expected at least 1"):
        build_state(scripted, fineweb_tokenizer, limits=Limits(max_body_readers=0))
