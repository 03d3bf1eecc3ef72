"""Serve a jaxchat model in the browser: ``python -m jaxchat.web [--key=value ...]``.

Loads a checkpoint, builds the Engine and serves the chat app (a page at ``/`` and a streaming API
at ``/chat/completions``) with uvicorn. Examples::

    python -m jaxchat.web                                   # latest sft checkpoint on 127.0.0.1:8000
    python -m jaxchat.web --source=mid --tag=d20 --step=800 --port=8080
    python -m jaxchat.web --sampling.temperature=0 --sampling.max_tokens=256 --warmup=false

``sampling.*`` are the defaults of requests that do not set them; ``sampling.seed`` -1 gives each
such request a fresh random seed, ``s >= 0`` gives them ``s, s + 1, ...`` in the order they run.
A request's body must arrive within ``body_timeout_s`` (else HTTP 408), at most ``max_body_readers``
bodies are read at once and ``max_connections`` connections are open (beyond either: HTTP 503).
A bad value or a missing checkpoint is one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import jax
import uvicorn
from flax import nnx

from jaxchat import cli
from jaxchat.engine import Engine
from jaxchat.model import load as model_load
from jaxchat.web.config import WebConfig, check
from jaxchat.web.server import create_app

PROG = "python -m jaxchat.web"


def _model_info(config: WebConfig, model: Any, meta: Any) -> dict[str, Any]:
    """What ``GET /stats`` shows about the model: the checkpoint actually loaded and its shape."""
    meta = meta if isinstance(meta, dict) else {}
    _, tag, step = config.checkpoint
    model_config = model.config
    # The checkpoint path is .../checkpoints/<stage>/<tag>/<step>: the tag actually loaded, even
    # when the tag was left to default to the latest.
    checkpoint = meta.get("checkpoint")
    return {
        "stage": config.source,
        "tag": meta.get("tag") or (Path(checkpoint).parent.name if checkpoint else tag),
        "step": meta.get("step", step),
        "checkpoint": checkpoint,
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "n_layer": model_config.n_layer,
        "n_embd": model_config.n_embd,
        "sequence_len": model_config.sequence_len,
        "vocab_size": model_config.vocab_size,
    }


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(config: WebConfig) -> int:
    """Load the model, build the app, serve until interrupted (JaxchatError on a bad setting)."""
    check(config)  # every value, before the slow model load
    model, tokenizer, meta = model_load.load_model(*config.checkpoint)
    app = create_app(Engine(model, tokenizer), tokenizer, context_len=model.config.sequence_len,
                     model_info=_model_info(config, model, meta), **config.app_settings())
    if not _is_loopback(config.host):
        print(f"warning: listening on {config.host}: the chat API has no authentication", file=sys.stderr)
    print(f"jaxchat web: http://{config.host}:{config.port}/", file=sys.stderr)
    uvicorn.run(app, **config.uvicorn_settings())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) onto :class:`WebConfig` and serve; the exit status."""
    return cli.main(run, WebConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
