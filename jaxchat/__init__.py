"""jaxchat: the nanochat recipe in JAX/Flax for one GPU."""

from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.model import GPT, GPTConfig, KVCache, estimate_flops, num_params

__all__ = ["GPT", "GPTConfig", "JaxchatError", "KVCache", "estimate_flops", "jaxchat_home", "num_params"]
