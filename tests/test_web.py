"""The web chat server over real HTTP on loopback: streaming, limits, health/stats, concurrency.

The helpers here (tiny_model, ScriptedEngine, serve, chat, ...) are shared by the other web tests:
``test_web_handlers.py`` (each handler alone, the worker) and ``test_web_cli.py`` (the command line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import jax
import numpy as np
import pytest
import uvicorn
from flax import nnx

from jaxchat.common import JaxchatError
from jaxchat.model import GPT, GPTConfig
from jaxchat.tokenizer.stream import StreamDecoder
from jaxchat.web import Limits, RequestError, create_app, validate_request
from jaxchat.web.validation import Sampling

TIMEOUT = httpx.Timeout(30.0)


# ---- helpers -------------------------------------------------------------------------------------


def tiny_model(vocab_size: int, seed: int = 0) -> GPT:
    """A 1-layer random GPT whose zero-initialised projections are randomised too.

    nanochat zero-inits lm_head and the c_proj's; left at zero every prompt would greedily give the
    same reply. Random weights make each prompt's greedy reply its own, and reproducible.
    """
    config = GPTConfig(sequence_len=128, vocab_size=vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32)
    model = GPT(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for module in (model.lm_head, model.h[0].attn.c_proj, model.h[0].mlp.c_proj):
        shape = module.kernel[...].shape
        module.kernel[...] = jax.numpy.asarray(rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape), jax.numpy.float32)
    return model


@pytest.fixture(scope="module")
def engine(fineweb_tokenizer):
    from jaxchat.engine import Engine

    return Engine(tiny_model(fineweb_tokenizer.get_vocab_size()), fineweb_tokenizer)


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yield its base URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: uvicorn's dictConfig would close every existing logging handler, among them
    # absl's (imported with orbax), which then closes the stream pytest captured stderr into.
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down"


def wait_ready(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.get("/health").json()["ready"]:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.05)


def parse_sse(raw: str) -> list[dict]:
    """Split a complete event stream into its JSON payloads, checking the framing strictly."""
    assert raw.endswith("\n\n"), f"stream does not end with a blank line: {raw[-40:]!r}"
    events = []
    for block in raw[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, f"malformed event {block!r}"
        events.append(json.loads(block[len("data: "):]))
    return events


def chat(client: httpx.Client, messages, **settings) -> tuple[str, list[dict]]:
    """POST one chat request; return (reply text, events). Checks the stream is complete and well formed."""
    with client.stream("POST", "/chat/completions", json={"messages": messages, **settings}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode("utf-8")
    events = parse_sse(raw)
    assert events[-1] == {"done": True}, events[-3:]
    assert all(set(e) == {"token"} and isinstance(e["token"], str) and e["token"] for e in events[:-1]), events
    return "".join(e["token"] for e in events[:-1]), events


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def expected_reply(engine, tokenizer, messages, max_tokens: int) -> str:
    """The greedy reply computed directly with the Engine (no server): the ground truth for streams."""
    stops = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id}
    prompt = tokenizer.render_for_completion({"messages": messages})
    out = []
    for column, _ in engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=0.0, top_k=None, seed=1):
        if column[0] in stops:
            break
        out.append(column[0])
    return tokenizer.decode_bytes(out).decode("utf-8", errors="replace")


class ScriptedEngine:
    """Emits a fixed token list (then <|assistant_end|>), optionally slowly, and records what it did."""

    def __init__(self, tokenizer, tokens: list[int], delay: float = 0.0, block: threading.Event | None = None):
        self.tokens, self.delay, self.block = tokens, delay, block
        self.end = tokenizer.encode_special("<|assistant_end|>")
        self.calls: list[dict] = []
        self.steps = 0
        self.closed = threading.Event()

    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        self.calls.append(dict(tokens=list(tokens), max_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, seed=seed))
        try:
            if self.block is not None:
                self.block.wait(10)
            for t in [*self.tokens, self.end][: max_tokens if max_tokens else None]:
                if self.delay:
                    time.sleep(self.delay)
                self.steps += 1
                yield [t], [1]
        finally:
            self.closed.set()


def byte_token_ids(tokenizer) -> dict[int, int]:
    """byte value → the id of the single-byte token (every byte-level BPE vocab has all 256)."""
    return {tok[0]: i for i, tok in enumerate(tokenizer.mergeable_tokens()) if len(tok) == 1}


# ---- streaming -----------------------------------------------------------------------------------


def test_streamed_reply_matches_engine(engine, fineweb_tokenizer):
    app = create_app(engine, fineweb_tokenizer, temperature=0.0, max_tokens=20, context_len=128,
                     model_info={"stage": "sft", "tag": "tiny", "step": 7, "params": 123})
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        wait_ready(client)
        messages = [{"role": "user", "content": "What is a river?"}, {"role": "assistant", "content": "Water."},
                    {"role": "user", "content": "Tell me more about the river."}]
        text, events = chat(client, messages)
        assert text == expected_reply(engine, fineweb_tokenizer, messages, 20)
        assert text and len(events) >= 2
        # The request's own settings override the defaults.
        short, _ = chat(client, messages, max_tokens=3)
        assert short == expected_reply(engine, fineweb_tokenizer, messages, 3)
        assert len(short) < len(text)


def test_stream_never_splits_utf8_characters(fineweb_tokenizer):
    text = "héllo wörld 😀 ok 中文"
    ids = byte_token_ids(fineweb_tokenizer)
    tokens = [ids[b] for b in text.encode("utf-8")]  # one token per BYTE: characters arrive in pieces
    scripted = ScriptedEngine(fineweb_tokenizer, tokens)
    with serve(create_app(scripted, fineweb_tokenizer, warmup=False)) as url, \
            httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        reply, events = chat(client, user("hi"))
    assert reply == text
    chunks = [e["token"] for e in events[:-1]]
    assert "😀" in chunks and "中" in chunks and "é" in chunks  # whole characters, never halves
    assert not any("\ufffd" in c for c in chunks)


def test_text_stream_holds_incomplete_characters(fineweb_tokenizer):
    ids = byte_token_ids(fineweb_tokenizer)
    stream = StreamDecoder(fineweb_tokenizer)
    emoji = "😀".encode("utf-8")
    assert [stream.push(ids[b]) for b in emoji] == ["", "", "", "😀"]
    assert stream.push(ids[emoji[0]]) == ""   # a dangling lead byte at the very end ...
    assert stream.flush() == "\ufffd"        # ... becomes one replacement character
    multi = fineweb_tokenizer.encode(" the river")
    stream = StreamDecoder(fineweb_tokenizer)
    assert "".join(stream.push(t) for t in multi) == " the river"


def test_stop_token_is_not_shown_and_generation_settings_reach_engine(fineweb_tokenizer):
    hello = fineweb_tokenizer.encode("Hello")
    end = fineweb_tokenizer.encode_special("<|assistant_end|>")
    scripted = ScriptedEngine(fineweb_tokenizer, [*hello, end, *hello])
    app = create_app(scripted, fineweb_tokenizer, temperature=0.5, top_k=7, max_tokens=30, context_len=40, warmup=False)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        reply, _ = chat(client, user("hi"), seed=5)
        assert reply == "Hello"  # stops at the first <|assistant_end|>, which is not shown
        chat(client, user("hi"), temperature=1.5, top_k=3, max_tokens=2)
    first, second = scripted.calls
    prompt = fineweb_tokenizer.render_for_completion({"messages": user("hi")})
    assert first["tokens"] == prompt and prompt[-1] == fineweb_tokenizer.encode_special("<|assistant_start|>")
    # max_tokens is clamped so prompt + reply fit the 40-token context.
    assert first == dict(tokens=prompt, max_tokens=min(30, 40 - len(prompt)), temperature=0.5, top_k=7, seed=5)
    assert (second["temperature"], second["top_k"], second["max_tokens"]) == (1.5, 3, 2)
    assert isinstance(second["seed"], int)  # a fresh seed when the request sets none


# ---- request limits ------------------------------------------------------------------------------

U, A = "user", "assistant"


def msgs(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


BAD_REQUESTS = [
    ("missing messages", {}, "messages"),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("no messages", {"messages": []}, "max_messages"),
    ("501 messages", {"messages": msgs(*([(U, "a"), (A, "b")] * 250), (U, "c"))}, "max_messages"),
    ("8001-char message", {"messages": msgs((U, "x" * 8001))}, "max_message_chars"),
    ("32001-char conversation", {"messages": msgs(*([(U, "x" * 8000), (A, "y" * 8000)] * 2), (U, "z"))},
     "max_conversation_chars"),
    ("starts with assistant", {"messages": msgs((A, "hi"), (U, "hi"))}, "role_order"),
    ("two users in a row", {"messages": msgs((U, "hi"), (U, "hi"))}, "role_order"),
    ("ends with assistant", {"messages": msgs((U, "hi"), (A, "hello"))}, "role_order"),
    ("system role", {"messages": msgs(("system", "be nice"), (U, "hi"))}, "role"),
    ("unknown role", {"messages": msgs(("robot", "hi"))}, "role"),
    ("message not an object", {"messages": ["hi"]}, "message"),
    ("empty content", {"messages": msgs((U, ""))}, "content"),
    ("blank content", {"messages": msgs((U, "  \n"))}, "content"),
    ("content not a string", {"messages": [{"role": U, "content": ["hi"]}]}, "content"),
    ("missing content", {"messages": [{"role": U}]}, "content"),
    ("temperature < 0", {"messages": msgs((U, "hi")), "temperature": -0.1}, "temperature"),
    ("temperature > 2", {"messages": msgs((U, "hi")), "temperature": 2.01}, "temperature"),
    ("temperature a string", {"messages": msgs((U, "hi")), "temperature": "hot"}, "temperature"),
    ("top_k 0", {"messages": msgs((U, "hi")), "top_k": 0}, "top_k"),
    ("top_k 201", {"messages": msgs((U, "hi")), "top_k": 201}, "top_k"),
    ("top_k fractional", {"messages": msgs((U, "hi")), "top_k": 2.5}, "top_k"),
    ("max_tokens 0", {"messages": msgs((U, "hi")), "max_tokens": 0}, "max_tokens"),
    ("max_tokens 4097", {"messages": msgs((U, "hi")), "max_tokens": 4097}, "max_tokens"),
    ("max_tokens bool", {"messages": msgs((U, "hi")), "max_tokens": True}, "max_tokens"),
    ("negative seed", {"messages": msgs((U, "hi")), "seed": -1}, "seed"),
    ("body not an object", [1, 2], "body"),
]


@pytest.fixture(scope="module")
def limits_server(fineweb_tokenizer):
    scripted = ScriptedEngine(fineweb_tokenizer, fineweb_tokenizer.encode("ok"))
    app = create_app(scripted, fineweb_tokenizer, context_len=128, warmup=False)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client, scripted


@pytest.mark.parametrize("body,limit", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_each_limit_violation_is_400_naming_the_limit(limits_server, body, limit):
    client, scripted = limits_server
    before = len(scripted.calls)
    resp = client.post("/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()
    assert err["limit"] == limit and isinstance(err["error"], str) and err["error"]
    assert "value" in err
    assert len(scripted.calls) == before  # nothing reached the engine


def test_limit_errors_report_the_value(limits_server):
    client, _ = limits_server
    resp = client.post("/chat/completions", json={"messages": msgs((U, "x" * 8001))})
    assert resp.json()["value"] == 8001 and "8000" in resp.json()["error"]
    resp = client.post("/chat/completions", json={"messages": msgs((U, "hi")), "top_k": 201})
    assert resp.json()["value"] == 201 and "top_k" in resp.json()["error"]
    resp = client.post("/chat/completions", json={"messages": msgs(*([(U, "a"), (A, "b")] * 250), (U, "c"))})
    assert resp.json()["value"] == 501


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"messages": [}', b'{"messages": NaN}', b"\xff\xfe{}"],
                         ids=["garbage", "empty", "truncated", "nan", "not-utf8"])
def test_malformed_json_is_400(limits_server, raw):
    client, _ = limits_server
    resp = client.post("/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["limit"] == "json"
    assert "not valid JSON" in resp.json()["error"] or "not UTF-8" in resp.json()["error"]


def test_oversize_body_and_context_are_400(limits_server, fineweb_tokenizer):
    client, _ = limits_server
    resp = client.post("/chat/completions", content=b"[" + b"0," * 600_000 + b"0]",
                       headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["limit"] == "max_body_bytes"
    # Within the char limits but longer than the 128-token context of the model.
    resp = client.post("/chat/completions", json={"messages": msgs((U, "the river and the mountain " * 30))})
    assert resp.status_code == 400 and resp.json()["limit"] == "context_len"


def test_limits_accept_their_boundaries():
    d = Sampling()
    edge = {"messages": msgs(*([(U, "x" * 8000), (A, "y" * 8000)] * 2)[:3], (A, "a"), (U, "b" * 7998)),
            "temperature": 2, "top_k": 200, "max_tokens": 4096, "model": "ignored", "stream": True}
    req = validate_request(edge, d)  # exactly 32000 chars; unknown fields are ignored
    assert (req.temperature, req.top_k, req.max_tokens) == (2.0, 200, 4096)
    low = validate_request({"messages": msgs((U, "hi")), "temperature": 0, "top_k": 1, "max_tokens": 1}, d)
    assert (low.temperature, low.top_k, low.max_tokens) == (0.0, 1, 1)
    assert validate_request({"messages": msgs(*([(U, "a"), (A, "b")] * 249), (U, "c"))}, d)  # 499 messages
    extra = validate_request({"messages": [{"role": U, "content": "hi", "name": "bob"}]}, d)
    assert extra.messages == [{"role": U, "content": "hi"}]  # only role/content reach the model
    with pytest.raises(RequestError) as e:
        validate_request({"messages": msgs((U, "hi"))}, d, Limits(max_messages=0))
    assert e.value.limit == "max_messages"


def test_bad_server_defaults_are_a_jaxchat_error(fineweb_tokenizer):
    scripted = ScriptedEngine(fineweb_tokenizer, [])
    with pytest.raises(JaxchatError, match="temperature"):
        create_app(scripted, fineweb_tokenizer, temperature=3.0)
    with pytest.raises(JaxchatError, match="top_k"):
        create_app(scripted, fineweb_tokenizer, top_k=0)


# ---- health, stats, page -------------------------------------------------------------------------


def test_health_stats_and_page(engine, fineweb_tokenizer):
    info = {"stage": "sft", "tag": "tiny", "step": 7, "params": 99_000}
    app = create_app(engine, fineweb_tokenizer, temperature=0.0, max_tokens=10, context_len=128, model_info=info)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and isinstance(health["ready"], bool)
        wait_ready(client)
        stats = client.get("/stats").json()
        assert stats["requests_served"] == 0 and stats["tokens_generated"] == 0 and stats["model"] == info
        replies = [chat(client, user(q))[0] for q in ("What is a cell?", "Why is the sky dark?")]
        client.post("/chat/completions", json={"messages": []})
        stats = client.get("/stats").json()
        assert stats["requests_served"] == 2 and stats["requests_active"] == 0 and stats["requests_rejected"] == 1
        n_tokens = sum(len(fineweb_tokenizer.encode(r)) for r in replies)
        assert 2 <= stats["tokens_generated"] <= 20 and n_tokens >= 1
        assert stats["tokens_per_second"] > 0 and stats["mean_time_to_first_token_s"] > 0
        assert stats["limits"]["max_messages"] == 500 and stats["limits"]["context_len"] == 128
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        for needle in ("<textarea", "/chat/completions", "New conversation", "getReader"):
            assert needle in html
        assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere


def test_warmup_failure_keeps_server_not_ready(fineweb_tokenizer):
    class Broken:
        def generate(self, *a, **k):
            raise RuntimeError("device on fire")
            yield  # pragma: no cover

    with serve(create_app(Broken(), fineweb_tokenizer)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        deadline = time.monotonic() + 10
        while "error" not in (health := c.get("/health").json()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health["ready"] is False and "device on fire" in health["error"]
        # A request still gets a well-formed stream that reports the failure in-band.
        with c.stream("POST", "/chat/completions", json={"messages": user("hi")}) as resp:
            events = parse_sse(resp.read().decode())
        assert events == [{"error": "generation failed: RuntimeError: device on fire"}]
        assert c.get("/stats").json()["requests_failed"] == 1


# ---- concurrency ---------------------------------------------------------------------------------


def test_twenty_concurrent_streams_each_get_their_own_reply(engine, fineweb_tokenizer):
    questions = [f"Question {i}: why does the {w} change?" for i, w in enumerate(
        "river city plant cell star ocean king poem engine atom map song forest road bridge farmer "
        "queen market island molecule".split())]
    app = create_app(engine, fineweb_tokenizer, temperature=0.0, max_tokens=12, context_len=128)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        wait_ready(client)
        alone = {q: chat(client, user(q))[0] for q in questions}
        assert len(set(alone.values())) >= 10, alone  # the prompts really do get different replies

        def one(q: str) -> str:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as own:  # its own connection
                return chat(own, user(q))[0]

        with ThreadPoolExecutor(max_workers=20) as pool:
            together = dict(zip(questions, pool.map(one, questions), strict=True))
        assert together == alone
        stats = client.get("/stats").json()
        assert stats["requests_served"] == 40 and stats["requests_active"] == 0


def test_generations_never_overlap_on_the_device(fineweb_tokenizer):
    class Tracking(ScriptedEngine):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.lock, self.running, self.most = threading.Lock(), 0, 0

        def generate(self, *a, **k):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                yield from super().generate(*a, **k)
            finally:
                with self.lock:
                    self.running -= 1

    word = fineweb_tokenizer.encode(" star")
    tracking = Tracking(fineweb_tokenizer, word * 5, delay=0.004)
    with serve(create_app(tracking, fineweb_tokenizer, warmup=False)) as url:
        def one(i: int) -> str:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as own:
                return chat(own, user(f"q{i}"))[0]

        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = list(pool.map(one, range(8)))
    assert replies == [" star" * 5] * 8
    assert len(tracking.calls) == 8 and tracking.most == 1  # queued one after another, never interleaved


def test_disconnect_cancels_generation(fineweb_tokenizer):
    word = fineweb_tokenizer.encode(" river")
    slow = ScriptedEngine(fineweb_tokenizer, word * 2000, delay=0.005)
    with serve(create_app(slow, fineweb_tokenizer, warmup=False)) as url, \
            httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        with client.stream("POST", "/chat/completions", json={"messages": user("hi"), "max_tokens": 4096}) as resp:
            first = next(resp.iter_lines())
            assert first.startswith("data: ")
        # The client went away: the engine's generator is closed long before its 2000 words.
        assert slow.closed.wait(10)
        assert slow.steps < 1000
        deadline = time.monotonic() + 10
        while (stats := client.get("/stats").json())["requests_active"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert stats["requests_cancelled"] == 1 and stats["requests_served"] == 0


def test_busy_server_answers_503(fineweb_tokenizer):
    gate = threading.Event()
    blocked = ScriptedEngine(fineweb_tokenizer, fineweb_tokenizer.encode("ok"), block=gate)
    app = create_app(blocked, fineweb_tokenizer, max_pending=1, warmup=False)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: chat(httpx.Client(base_url=url, timeout=TIMEOUT), user("a"))[0])
            deadline = time.monotonic() + 10
            while client.get("/stats").json()["requests_active"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            resp = client.post("/chat/completions", json={"messages": user("b")})
            assert resp.status_code == 503 and resp.json()["limit"] == "max_pending"
            gate.set()
            assert first.result(timeout=10) == "ok"


# ---- stalled and aborted uploads -----------------------------------------------------------------


def open_upload(url: str, declared: int, body: bytes) -> socket.socket:
    """A raw connection that POSTs headers declaring ``declared`` body bytes, then sends only ``body``."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + body)
    return sock


def read_to_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if that takes over ``timeout``."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except TimeoutError:
        pytest.fail(f"the server neither answered nor closed within {timeout} s: {b''.join(chunks)[:200]!r}")
    finally:
        sock.close()
    return b"".join(chunks)


def wait_uploads(client: httpx.Client, n: int) -> None:
    """Until /stats counts ``n`` requests reading their body."""
    deadline = time.monotonic() + 10
    while client.get("/stats").json()["uploads_reading"] != n:
        assert time.monotonic() < deadline, f"never {n} uploads reading"
        time.sleep(0.01)


def test_stalled_and_aborted_uploads_are_bounded_and_logged_in_one_line_each(fineweb_tokenizer, caplog):
    """Clients that declare a long body and send a short one: each gets 408 and a closed connection
    within the body timeout, past max_body_readers they get 503 at once, the server keeps serving, and
    each stalled or aborted upload is one log line (no traceback)."""
    caplog.set_level(logging.INFO)
    scripted = ScriptedEngine(fineweb_tokenizer, fineweb_tokenizer.encode("ok"))
    limits = Limits(body_timeout_s=1.0, max_body_readers=4)
    with serve(create_app(scripted, fineweb_tokenizer, warmup=False, limits=limits)) as url, \
            httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        start = time.monotonic()
        stalled = [open_upload(url, 1000, b'{"messages": [') for _ in range(3)]
        wait_uploads(client, 3)
        assert chat(client, user("hi"))[0] == "ok"  # served meanwhile, with the 4th reader slot
        stalled.append(open_upload(url, 1000, b'{"mess'))
        wait_uploads(client, 4)
        busy = read_to_close(open_upload(url, 1000, b"{"), timeout=0.9)  # at once, not after the timeout
        assert busy.startswith(b"HTTP/1.1 503 ") and b'"limit":"max_body_readers"' in busy, busy
        for sock in stalled:
            answer = read_to_close(sock, timeout=limits.body_timeout_s + 3)
            assert answer.startswith(b"HTTP/1.1 408 ") and b'"limit":"body_timeout_s"' in answer, answer
            assert b"connection: close" in answer.lower()
        assert time.monotonic() - start < limits.body_timeout_s + 4
        wait_uploads(client, 0)
        aborted = [open_upload(url, 1000, b'{"messages": [{"role"') for _ in range(2)]
        wait_uploads(client, 2)
        for sock in aborted:
            sock.close()
        wait_uploads(client, 0)
        assert chat(client, user("still there?"))[0] == "ok"
        stats = client.get("/stats").json()
    assert stats["uploads_timed_out"] == 4 and stats["uploads_aborted"] == 2 and stats["uploads_refused"] == 1
    assert "Traceback" not in caplog.text and "ClientDisconnect" not in caplog.text, caplog.text
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxchat.web"]
    assert len(lines) == 6 and all("\n" not in line and len(line) < 200 for line in lines), lines
    assert sum("timed out" in line for line in lines) == 4 and sum("aborted" in line for line in lines) == 2
    assert all("of 1000 bytes" in line for line in lines), lines
