"""jaxchat: the nanochat recipe in JAX/Flax for one GPU.

    from jaxchat import load_model, Engine
    model, tokenizer, meta = load_model("sft")
    engine = Engine(model, tokenizer)
"""

import importlib

from jaxchat.common import JaxchatError, jaxchat_home

# Everything that imports JAX (or Orbax, tiktoken, grain) loads on first use, so `import jaxchat` and
# the command lines' --help stay fast and a Ctrl-C at start-up never lands inside JAX's import.
_LAZY = {
    "GPT": "jaxchat.model",
    "GPTConfig": "jaxchat.model",
    "KVCache": "jaxchat.model",
    "estimate_flops": "jaxchat.model",
    "num_params": "jaxchat.model",
    "Engine": "jaxchat.engine",
    "Tokenizer": "jaxchat.tokenizer",
    "load_tokenizer": "jaxchat.tokenizer",
    "load_model": "jaxchat.model.load",
    "RunConfig": "jaxchat.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxchat' has no attribute {name!r}")


__all__ = ["GPT", "Engine", "GPTConfig", "JaxchatError", "KVCache", "RunConfig", "Tokenizer", "estimate_flops",
           "jaxchat_home", "load_model", "load_tokenizer", "num_params"]
