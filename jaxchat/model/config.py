"""GPT shape configuration and the size arithmetic that depends on it (docs/DESIGN.md §3).

The defaults are nanochat's Nov 2025 model (commit 16788ee, the seed). Every feature nanochat added
since (its commit 92d63d4, the "2026" model) is a field whose default turns it off;
``GPTConfig.from_depth_2026`` turns them all on, as nanochat's ``scripts/base_train.py`` builds it.
"""

from __future__ import annotations

import dataclasses
import math

INITS = ("2025", "2026")  # nanochat 16788ee's init, nanochat 92d63d4's init (jaxchat.model.gpt)
VE_GATE_CHANNELS = 12  # the value-embedding gate reads the first 12 channels of the block input
SMEAR_CHANNELS = 24  # the smear gate reads the first 24 channels of the embedding


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Shape of a nanochat GPT. Everything else (dtype, attention kernel) is a runtime choice."""

    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 20
    n_head: int = 10
    n_kv_head: int = 10
    n_embd: int = 1280
    # ----- nanochat 92d63d4's features; each default is the seed model (16788ee) -----
    # Sliding-window attention: S/L per layer, the pattern tiled over layers, the last layer always L.
    # L = full context, S = sequence_len//4 rounded up to a multiple of 128. 92d63d4: "SSSL".
    window_pattern: str = "L"
    value_embeds: bool = False  # ResFormer value embeddings on alternating layers, gated per kv head
    qk_scale: float = 1.0  # q and k are multiplied by this after QK-norm (92d63d4: 1.2)
    layer_lambdas: bool = False  # x = resid_lambdas[i]·x + x0_lambdas[i]·x0 before block i
    smear: bool = False  # mix the previous token's embedding into each position (smear_gate/lambda)
    backout: bool = False  # subtract backout_lambda · (residual after layer n_layer//2) before the final norm
    pad_vocab_to: int = 1  # wte, lm_head, value embeds padded to a multiple of this (92d63d4: 64)
    rotary_base: float = 10000.0  # 92d63d4: 100000
    init: str = "2025"  # "2025" = 16788ee's init, "2026" = 92d63d4's (jaxchat.model.gpt.GPT)

    def __post_init__(self):
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "pad_vocab_to"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig.n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not self.window_pattern or set(self.window_pattern.upper()) - set("SL"):
            raise ValueError(f"GPTConfig.window_pattern={self.window_pattern!r}: use only S and L")
        if self.init not in INITS:
            raise ValueError(f"GPTConfig.init={self.init!r}: expected one of {INITS}")
        if self.value_embeds and self.n_embd < VE_GATE_CHANNELS or self.smear and self.n_embd < SMEAR_CHANNELS:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is narrower than the smear / value-embedding gates")
        if not self.qk_scale > 0 or not self.rotary_base > 0:
            raise ValueError("GPTConfig.qk_scale and rotary_base must be positive")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of wte / value embeds and columns of lm_head; logits are sliced back to vocab_size."""
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int = 65536, sequence_len: int = 2048) -> "GPTConfig":
        """nanochat's depth rule: n_embd = 64·depth, heads of dim 128 (rounded up), MHA."""
        n_embd = 64 * depth
        n_head = max(1, math.ceil(n_embd / 128))
        return cls(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                   n_head=n_head, n_kv_head=n_head, n_embd=n_embd)

    @classmethod
    def for_recipe(cls, recipe: str, depth: int, vocab_size: int, sequence_len: int = 2048,
                   window_pattern: str = "L") -> "GPTConfig":
        """The model a recipe trains at ``depth``: the seed's (``"2025"``, optionally windowed) or
        nanochat 92d63d4's (``"2026"``, every feature on)."""
        if recipe == "2026":
            return cls.from_depth_2026(depth, vocab_size=vocab_size, sequence_len=sequence_len,
                                       window_pattern=window_pattern)
        if recipe != "2025":
            raise ValueError(f"unknown recipe {recipe!r}; expected 2025 or 2026")
        return dataclasses.replace(cls.from_depth(depth, vocab_size=vocab_size, sequence_len=sequence_len),
                                   window_pattern=window_pattern)

    @classmethod
    def from_depth_2026(cls, depth: int, vocab_size: int = 32768, sequence_len: int = 2048, *,
                        aspect_ratio: int = 64, head_dim: int = 128, window_pattern: str = "SSSL") -> "GPTConfig":
        """nanochat 92d63d4's model (``scripts/base_train.py`` ``build_model_meta``), every feature on:
        n_embd = depth·aspect_ratio rounded UP to a multiple of head_dim, n_head = n_embd/head_dim
        (so heads are exactly head_dim wide), MHA."""
        n_embd = -(-depth * aspect_ratio // head_dim) * head_dim
        n_head = n_embd // head_dim
        return cls(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                   n_kv_head=n_head, n_embd=n_embd, window_pattern=window_pattern, value_embeds=True,
                   qk_scale=1.2, layer_lambdas=True, smear=True, backout=True, pad_vocab_to=64,
                   rotary_base=100000.0, init="2026")


def has_ve(layer: int, n_layer: int) -> bool:
    """nanochat's value-embedding layers: alternating, the last layer always included."""
    return layer % 2 == (n_layer - 1) % 2


def ve_layers(config: GPTConfig) -> tuple[int, ...]:
    """The layers with a value embedding (none unless ``config.value_embeds``)."""
    return tuple(i for i in range(config.n_layer) if config.value_embeds and has_ve(i, config.n_layer))


def window_sizes(config: GPTConfig) -> tuple[int | None, ...]:
    """Per layer: the left window (query i sees keys i−w … i, flash-attn's window (w, 0)) or None for
    full context. Pattern tiled over layers, last layer full.

    nanochat gives L layers the window (sequence_len, 0): the same as full context up to
    sequence_len; beyond it (decoding past the training context) jaxchat's L layers still see
    everything.
    """
    pattern = config.window_pattern.upper()
    short = -(-(config.sequence_len // 4) // 128) * 128  # ceil to a multiple of 128 (2048 → 512)
    windows = [short if pattern[i % len(pattern)] == "S" else None for i in range(config.n_layer)]
    windows[-1] = None
    return tuple(windows)


def num_params(config: GPTConfig) -> int:
    """Parameter count (no biases, untied embeddings). d20 @ 65536 vocab = 560,988,160.
    With 92d63d4's features: nanochat's ``num_scaling_params()['total']`` (padded vocab included)."""
    vocab, kv_dim = config.padded_vocab_size, config.n_kv_head * config.head_dim
    embeddings = vocab * config.n_embd + len(ve_layers(config)) * vocab * kv_dim  # wte, value embeds
    return embeddings + num_matmul_params(config) + _num_scalars(config)


def num_matmul_params(config: GPTConfig) -> int:
    """Parameters that multiply the token stream (nanochat 92d63d4's ``num_matmul_params``: every
    Linear, i.e. the block matrices, the gates and lm_head; not wte, value embeds or scalars)."""
    d, kv_dim = config.n_embd, config.n_kv_head * config.head_dim
    attention = d * d + 2 * d * kv_dim + d * d  # c_q, c_k, c_v, c_proj
    mlp = 2 * d * 4 * d  # c_fc, c_proj
    gates = len(ve_layers(config)) * VE_GATE_CHANNELS * config.n_kv_head + (SMEAR_CHANNELS if config.smear else 0)
    return config.padded_vocab_size * d + config.n_layer * (attention + mlp) + gates


def num_scaling_params(config: GPTConfig) -> int:
    """The parameters nanochat 92d63d4's scaling laws count (``base_train.get_scaling_params``): the
    transformer blocks' matrices (value-embedding gates included) and lm_head."""
    return num_matmul_params(config) - (SMEAR_CHANNELS if config.smear else 0)


def _num_scalars(config: GPTConfig) -> int:
    """resid_lambdas, x0_lambdas (n_layer each), smear_lambda, backout_lambda (1 each)."""
    return 2 * config.n_layer * config.layer_lambdas + config.smear + config.backout


def estimate_flops(config: GPTConfig) -> int:
    """Training FLOPs per token: 6 per matmul parameter, plus 12·n_head·head_dim·(effective length)
    per layer for attention, the effective length being min(window, sequence_len) (docs/DESIGN.md §3)."""
    t = config.sequence_len
    attention = sum(12 * config.n_head * config.head_dim * (t if w is None else min(w, t))
                    for w in window_sizes(config))
    return 6 * num_matmul_params(config) + attention
