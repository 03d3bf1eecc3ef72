"""GPT shape configuration and the size arithmetic that depends on it (docs/DESIGN.md §3)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Shape of a nanochat GPT. Everything else (dtype, attention kernel) is a runtime choice."""

    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 20
    n_head: int = 10
    n_kv_head: int = 10
    n_embd: int = 1280

    def __post_init__(self):
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig.n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int = 65536, sequence_len: int = 2048) -> "GPTConfig":
        """nanochat's depth rule: n_embd = 64·depth, heads of dim 128 (rounded up), MHA."""
        n_embd = 64 * depth
        n_head = max(1, math.ceil(n_embd / 128))
        return cls(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                   n_head=n_head, n_kv_head=n_head, n_embd=n_embd)


def num_params(config: GPTConfig) -> int:
    """Parameter count (no biases, untied embeddings). d20 @ 65536 vocab = 560,988,160."""
    d, kv_dim = config.n_embd, config.n_kv_head * config.head_dim
    attention = d * d + 2 * d * kv_dim + d * d  # c_q, c_k, c_v, c_proj
    mlp = 2 * d * 4 * d  # c_fc, c_proj
    return 2 * config.vocab_size * d + config.n_layer * (attention + mlp)


def estimate_flops(config: GPTConfig) -> int:
    """Training FLOPs per token: 6·(params − wte) for the matmuls, plus causal attention (docs/DESIGN.md §3)."""
    matmul_params = num_params(config) - config.vocab_size * config.n_embd
    attention = 12 * config.n_layer * config.n_head * config.head_dim * config.sequence_len
    return 6 * matmul_params + attention
