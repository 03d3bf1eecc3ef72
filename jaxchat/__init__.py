"""jaxchat: the nanochat recipe in JAX/Flax for one GPU.

    from jaxchat import load_model, Engine
    model, tokenizer, meta = load_model("sft")
    engine = Engine(model, tokenizer)
"""

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.model import GPT, GPTConfig, KVCache, estimate_flops, num_params

# Heavier entry points (Orbax, tiktoken, grain) load on first use, so `import jaxchat` stays fast.
_LAZY = {
    "Engine": "jaxchat.engine",
    "Tokenizer": "jaxchat.tokenizer",
    "load_tokenizer": "jaxchat.tokenizer",
    "load_model": "jaxchat.model.load",
    "RunConfig": "jaxchat.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # lazy: only the lazy names need it

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxchat' has no attribute {name!r}")


__all__ = ["GPT", "Engine", "GPTConfig", "JaxchatError", "KVCache", "RunConfig", "Tokenizer", "estimate_flops",
           "jaxchat_home", "load_model", "load_tokenizer", "num_params"]
