"""The web server's settings: one frozen :class:`WebConfig`, read by ``jaxchat.cli`` like every entry point.

    python -m jaxchat.web --source=sft --tag=d20 --port=8000 --sampling.temperature=0.7 --warmup=false

:func:`check` validates every value (one-line JaxchatError naming the key and what was expected)
before anything slow happens, so a typo never waits for the model to load.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxchat import stages
from jaxchat.common import JaxchatError
from jaxchat.config import SamplingSection
from jaxchat.web.validation import MAX_SEED, Limits

# The server's default sampling: SamplingSection's fields, with the web chat's own defaults.
# seed -1: every request that sets no seed gets a fresh random one (see WebConfig).
WEB_SAMPLING = SamplingSection(temperature=0.8, top_k=50, max_tokens=512, seed=-1)


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """Which checkpoint to serve, where to listen, and the default sampling of requests.

    ``sampling.temperature`` / ``top_k`` / ``max_tokens`` are the defaults of requests that do not
    set them (within the request limits: 0–2, 0 or 1–200, 1–4096; ``top_k`` 0 = the whole
    vocabulary). ``sampling.seed`` is the base seed of requests that set no ``seed``: -1 (default)
    draws a fresh random seed for each, as a chat server should; ``s >= 0`` gives them ``s, s + 1,
    s + 2, ...`` in the order they run, so a scripted session replays exactly after a restart. A
    request's own ``seed`` always wins.
    """

    source: str = "sft"  # which stage's checkpoint: a checkpointed stage (base | mid | sft)
    tag: str = ""  # model tag, e.g. d20; "" = the latest
    step: int = -1  # checkpoint step; -1 = the latest
    host: str = "127.0.0.1"  # address to listen on (127.0.0.1: this machine only)
    port: int = 8000
    warmup: bool = True  # compile with a short generation at startup (--warmup=false skips it)
    max_pending: int = 64  # requests generating or queued at once; beyond it → HTTP 503
    body_timeout_s: float = Limits.body_timeout_s  # a request's whole body must arrive in this time, else 408
    max_body_readers: int = Limits.max_body_readers  # requests sending their body at once; beyond it → 503
    max_connections: int = 512  # open connections (uvicorn's limit_concurrency); a request beyond it → 503
    sampling: SamplingSection = WEB_SAMPLING

    @property
    def checkpoint(self) -> tuple[str, str | None, int | None]:
        """``(stage, tag, step)`` as ``load_model`` takes them (None: the latest)."""
        return self.source, self.tag or None, None if self.step < 0 else self.step

    def app_settings(self) -> dict[str, Any]:
        """The keyword settings of ``create_app`` that this config decides."""
        s = self.sampling
        return {"temperature": s.temperature, "top_k": s.top_k or None, "max_tokens": s.max_tokens,
                "seed": None if s.seed < 0 else s.seed, "max_pending": self.max_pending, "warmup": self.warmup,
                "limits": dataclasses.replace(Limits(), body_timeout_s=self.body_timeout_s,
                                              max_body_readers=self.max_body_readers)}

    def uvicorn_settings(self) -> dict[str, Any]:
        """What ``uvicorn.run`` is given besides the app: where to listen and the connection limits.

        Bounded everywhere a client could hold the server: idle keep-alive connections close after 5 s,
        open connections are capped (each further request gets uvicorn's 503 and is closed), and a
        request's head (line + headers) may not exceed 16 KiB. The body's timeout and the cap on bodies
        read at once are the app's (``Limits``), which answer 408 / 503 in the API's JSON format.
        """
        return {"host": self.host, "port": self.port, "log_level": "info", "timeout_keep_alive": 5,
                "limit_concurrency": self.max_connections, "h11_max_incomplete_event_size": 16 * 1024}


def _check(key: str, value: float, lo: float, hi: float, expected: str | None = None) -> None:
    """JaxchatError ``key=value: expected ...`` unless ``lo <= value <= hi`` (types: ``config.override``)."""
    if not lo <= value <= hi:
        raise JaxchatError(f"{key}={value!r}: expected {expected or f'an integer in [{lo}, {hi}]'}")


def check(config: WebConfig, limits: Limits = Limits()) -> WebConfig:
    """``config`` if every value is usable; JaxchatError naming the key and the expected value.

    The sampling defaults must lie within the request ``limits`` (a default a request could not
    send itself is refused here, not at the first request).
    """
    stages.check_checkpointed(config.source, "source")
    _check("step", config.step, -1, float("inf"), "-1 (the latest) or a step number >= 0")
    if not config.host.strip():
        raise JaxchatError(f"host={config.host!r}: expected an address to listen on, e.g. 127.0.0.1")
    _check("port", config.port, 1, 65535)
    _check("max_pending", config.max_pending, 1, float("inf"), "an integer >= 1")
    _check("body_timeout_s", config.body_timeout_s, 0.001, 3600, "a number of seconds in [0.001, 3600]")
    _check("max_body_readers", config.max_body_readers, 1, float("inf"), "an integer >= 1")
    _check("max_connections", config.max_connections, 1, float("inf"), "an integer >= 1")
    s = config.sampling
    lo, hi = limits.temperature
    _check("sampling.temperature", s.temperature, lo, hi, f"a number in [{lo}, {hi}] (0 = greedy)")
    lo, hi = limits.top_k
    if s.top_k != 0:
        _check("sampling.top_k", s.top_k, lo, hi, f"0 (the whole vocabulary) or an integer in [{lo}, {hi}]")
    _check("sampling.max_tokens", s.max_tokens, *limits.max_tokens)
    _check("sampling.seed", s.seed, -1, MAX_SEED, f"-1 (a fresh seed per request) or an integer in [0, {MAX_SEED}]")
    return config
