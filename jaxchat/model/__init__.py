"""The nanochat GPT in Flax NNX: config, module, size arithmetic."""

from jaxchat.model.config import GPTConfig, estimate_flops, num_params, num_scaling_params
from jaxchat.model.gpt import GPT, KVCache, cross_entropy, split_params

__all__ = ["GPT", "GPTConfig", "KVCache", "cross_entropy", "estimate_flops", "num_params", "num_scaling_params",
           "split_params"]
