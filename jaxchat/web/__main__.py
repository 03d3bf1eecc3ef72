"""``python -m jaxchat.web -i sft [--tag d20] [--step N] [--host 127.0.0.1] [--port 8000] ...``

Loads a checkpoint, builds the Engine and serves the chat app with uvicorn. A bad argument or a
missing checkpoint is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from jaxchat.common import JaxchatError

STAGES = ("base", "mid", "sft", "rl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: sft checkpoint, latest tag and step, 127.0.0.1:8000)."""
    p = argparse.ArgumentParser(prog="python -m jaxchat.web", description="Chat with a jaxchat model in the browser.")
    p.add_argument("-i", "--source", choices=STAGES, default="sft", help="which stage's checkpoint (default sft)")
    p.add_argument("--tag", default=None, help="model tag, e.g. d20 (default: the latest)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--temperature", type=float, default=0.8, help="default temperature, 0-2 (0 = greedy)")
    p.add_argument("--top-k", type=int, default=50, help="default top-k, 1-200; 0 = the whole vocabulary")
    p.add_argument("--max-tokens", type=int, default=512, help="default reply length cap, 1-4096")
    p.add_argument("--no-warmup", action="store_true", help="skip compiling at startup")
    return p.parse_args(argv)


def _model_info(args: argparse.Namespace, model: Any, meta: Any) -> dict[str, Any]:
    import jax
    from flax import nnx

    meta = meta if isinstance(meta, dict) else {}
    config = model.config
    # The checkpoint path is .../checkpoints/<stage>/<tag>/<step>: the tag actually loaded, even
    # when --tag was left to default to the latest.
    checkpoint = meta.get("checkpoint")
    tag = meta.get("tag") or (Path(checkpoint).parent.name if checkpoint else args.tag)
    return {
        "stage": args.source,
        "tag": tag,
        "step": meta.get("step", args.step),
        "checkpoint": checkpoint,
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "sequence_len": config.sequence_len,
        "vocab_size": config.vocab_size,
    }


def main(argv: list[str] | None = None) -> int:
    """Load the model, build the app, serve until interrupted. Returns the exit status."""
    args = parse_args(argv)
    try:
        if not 0 < args.port < 65536:
            raise JaxchatError(f"--port is {args.port}; expected 1-65535")
        from jaxchat.web.server import check_defaults, create_app

        check_defaults(args.temperature, args.top_k or None, args.max_tokens)  # before the slow load
        import uvicorn

        from jaxchat.checkpoint import load_model
        from jaxchat.engine import Engine

        model, tokenizer, meta = load_model(args.source, args.tag, args.step)
        app = create_app(
            Engine(model, tokenizer), tokenizer,
            temperature=args.temperature, top_k=args.top_k or None, max_tokens=args.max_tokens,
            context_len=model.config.sequence_len, model_info=_model_info(args, model, meta),
            warmup=not args.no_warmup,
        )
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: listening on {args.host}: the chat API has no authentication", file=sys.stderr)
    print(f"jaxchat web: http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
