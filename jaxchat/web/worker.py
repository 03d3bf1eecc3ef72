"""The web chat's generation worker (docs/DESIGN.md §10): one thread that owns the Engine.

The Engine is synchronous JAX. Each request becomes a :class:`Job` on a single worker thread (a pool
of one), so generations never interleave on the device and run in arrival order. The worker hands
decoded text to the job's ``emit`` callback (the handler makes it put events on the request's own
asyncio queue with ``call_soon_threadsafe``), so the event loop is never blocked and each stream
carries only its own tokens. A job whose cancel flag is set stops at the next token, or is skipped
if it has not started yet.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from jaxchat.tokenizer.stream import StreamDecoder
from jaxchat.web.validation import MAX_SEED, ChatRequest, Sampling

log = logging.getLogger("jaxchat.web")

STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")


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
    """Runs jobs one at a time on a single worker thread: the device is never shared by two streams.

    ``base_seed`` is the seed of requests that set none: None draws a fresh random seed for each;
    an int ``s`` gives them ``s, s + 1, s + 2, ...`` in the order they run (a reproducible session).
    """

    def __init__(self, engine: Any, tokenizer: Any, stats: Stats, *, base_seed: int | None = None) -> None:
        self.engine, self.tokenizer, self.stats = engine, tokenizer, stats
        self.stop_ids = {tokenizer.encode_special(name) for name in STOP_TOKENS}
        self.base_seed = base_seed
        self._seeds_drawn = 0
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

    def next_seed(self) -> int:
        """The seed of a request that sets none (see the class docstring). Worker thread only."""
        if self.base_seed is None:
            return secrets.randbelow(MAX_SEED + 1)
        seed = (self.base_seed + self._seeds_drawn) % (MAX_SEED + 1)
        self._seeds_drawn += 1
        return seed

    def tokens(self, prompt: list[int], request: ChatRequest, cancel: threading.Event) -> Iterator[int]:
        """The reply's token ids, without the stop token; stops early when ``cancel`` is set."""
        seed = request.seed if request.seed is not None else self.next_seed()
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
        Uses seed 0, so it never advances the ``base_seed`` sequence.
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
