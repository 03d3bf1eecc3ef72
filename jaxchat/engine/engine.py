"""Autoregressive generation with a static KV cache, sampling and calculator tool use (docs/DESIGN.md §10).

The device side is two jitted pure functions of ``(params, cache, tokens, key, temperature)``, built
once per architecture and shared by every Engine on it:

- ``prefill``: run the right-padded prompt (batch 1) through the model into a fresh cache, copy the
  cache to ``num_samples`` rows and sample each row's OWN first token (upstream bug 8f979a8 gave all
  rows the same first token);
- ``step``: feed one token per row, append to the cache (donated, so it is updated in place) and
  sample the next token of every row.

Shapes are static: prompts are padded to a power-of-two bucket and the cache is allocated at the
bucket of ``prompt + max_tokens`` (capped at ``max_len``), so a whole generation compiles at most
one prefill and one step, and a session only a handful of each. The host reads the sampled column
once per step — it must, to force tool output and to notice stop tokens — and dispatches the next
step before handing the column to the caller, so the device works while the caller prints.

The tool-use state machine and the ``generate`` / ``generate_batch`` contract are nanochat's
``Engine``: every step yields one token per row and a mask (1 sampled, 0 forced tool output); rows
keep stepping in lockstep after they finish until all are done or ``max_tokens`` is reached.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxchat.common import JaxchatError
from jaxchat.engine.calculator import use_calculator
from jaxchat.model.gpt import GPT, KVCache, split_params

if TYPE_CHECKING:
    from jaxchat.tokenizer import Tokenizer

__all__ = ["Engine", "sample_next_token", "bucket_length", "MIN_BUCKET"]

# Smallest padded prompt / cache length: tiny prompts share one compilation.
MIN_BUCKET = 16


def bucket_length(n: int, cap: int) -> int:
    """The static length used for ``n`` positions: the next power of two ≥ n (≥ MIN_BUCKET), at most ``cap``."""
    return min(cap, max(MIN_BUCKET, 1 << max(0, n - 1).bit_length()))


def sample_next_token(logits: jax.Array, key: jax.Array, temperature: jax.Array, *,
                      top_k: int | None, greedy: bool) -> jax.Array:
    """Sample one token per row from float32 logits (B, V) → int32 (B,), rows independent.

    ``greedy`` (temperature 0) takes the argmax; otherwise logits are divided by ``temperature``
    and, with ``top_k``, sampling is restricted to the k largest (nanochat's rule).
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k is not None and top_k < logits.shape[-1]:
        values, indices = jax.lax.top_k(logits, top_k)
        choice = jax.random.categorical(key, values / temperature, axis=-1)
        return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def _fetch(sampled: jax.Array) -> list[int]:
    """The one device→host sync of each step: the sampled column as Python ints."""
    return np.asarray(sampled).tolist()


@functools.lru_cache(maxsize=8)
def _device_functions(graphdef: nnx.GraphDef, config, cache_dtype) -> tuple[Callable, Callable]:
    """The jitted ``(prefill, step)`` pair for one architecture (hashing a graphdef costs ~ms: once here)."""

    def prefill(params, tokens, length, key, temperature, *, num_samples: int, cache_len: int,
                top_k: int | None, greedy: bool):
        model = nnx.merge(graphdef, params)
        cache = KVCache.create(config, 1, cache_len, cache_dtype)
        logits, cache = model.decode(tokens, cache, length)
        last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)  # (1, V)
        # One draw per row from the same distribution: rows may start differently.
        rows = jnp.broadcast_to(last, (num_samples, last.shape[-1]))
        key, sub = jax.random.split(key)
        first = sample_next_token(rows, sub, temperature, top_k=top_k, greedy=greedy)
        return first, cache.repeat_rows(num_samples), key

    def step(params, cache, tokens, key, temperature, *, top_k: int | None, greedy: bool):
        model = nnx.merge(graphdef, params)
        logits, cache = model.decode(tokens[:, None], cache)
        key, sub = jax.random.split(key)
        return sample_next_token(logits[:, -1], sub, temperature, top_k=top_k, greedy=greedy), cache, key

    return (jax.jit(prefill, static_argnames=("num_samples", "cache_len", "top_k", "greedy")),
            jax.jit(step, static_argnames=("top_k", "greedy"), donate_argnames=("cache",)))


@dataclasses.dataclass
class _RowState:
    """Host-side tool-use state of one row."""

    forced: collections.deque = dataclasses.field(default_factory=collections.deque)
    in_python: bool = False
    python_tokens: list[int] = dataclasses.field(default_factory=list)
    completed: bool = False


class Engine:
    """Generate from a GPT with a KV cache: ``Engine(model, tokenizer).generate(prompt_ids, ...)``.

    Args:
      model: the GPT (split once here; the engine keeps its param arrays, not the module — so do not
        donate those arrays to a train step afterwards; build the engine from a merged copy instead).
      tokenizer: supplies the special ids and encodes calculator results.
      max_len: most positions a sequence (prompt + generated) may occupy; default the model's
        ``sequence_len``. Generation stops early when a sequence reaches it.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, max_len: int | None = None):
        config = model.config
        if tokenizer.get_vocab_size() > config.vocab_size:
            raise JaxchatError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model's "
                               f"vocab_size is {config.vocab_size}; expected a tokenizer that fits the model")
        max_len = config.sequence_len if max_len is None else max_len
        if not isinstance(max_len, int) or max_len < 2:
            raise JaxchatError(f"Engine max_len is {max_len!r}, expected an int ≥ 2")
        self.config = config
        self.tokenizer = tokenizer
        self.max_len = max_len
        # The cache holds keys/values in the compute dtype (bf16 on GPU halves its memory).
        self.cache_dtype = model.runtime.dtype
        self._graphdef, self._params = split_params(model)
        special = tokenizer.encode_special
        self._bos = tokenizer.bos_token_id
        self._assistant_end = special("<|assistant_end|>")
        self._python_start, self._python_end = special("<|python_start|>"), special("<|python_end|>")
        self._output_start, self._output_end = special("<|output_start|>"), special("<|output_end|>")
        # Shared by every engine on the same architecture: a new Engine does not recompile.
        self._prefill, self._step = _device_functions(self._graphdef, config, jnp.dtype(self.cache_dtype))

    # ---- host loop ------------------------------------------------------------------------------

    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42
                 ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield, per step, ``(token_column, token_masks)``: one token per row, mask 1 sampled / 0 forced.

        ``tokens`` is the prompt (e.g. ``render_for_completion`` output). Stops after ``max_tokens``
        steps (None: until ``max_len``), or once every row has produced ``<|assistant_end|>`` or
        ``<|bos|>``. ``temperature`` 0 is greedy; ``top_k`` restricts sampling to the k likeliest
        tokens. The same ``seed`` gives the same output. Raises JaxchatError for a bad argument or a
        prompt that leaves no room under ``max_len``.
        """
        prompt = self._check_prompt(tokens)
        max_new = self._check_args(len(prompt), num_samples, max_tokens, temperature, top_k)
        greedy = temperature == 0
        top_k = None if top_k is None else min(int(top_k), self.config.vocab_size)
        temp = jnp.float32(1.0 if greedy else temperature)
        prompt_len = bucket_length(len(prompt), self.max_len)
        cache_len = bucket_length(len(prompt) + max_new, self.max_len)

        padded = np.full((1, prompt_len), self._bos, np.int32)
        padded[0, :len(prompt)] = prompt
        sampled, cache, key = self._prefill(self._params, padded, np.int32(len(prompt)), jax.random.key(seed),
                                            temp, num_samples=num_samples, cache_len=cache_len, top_k=top_k,
                                            greedy=greedy)
        rows = [self._initial_state(prompt) for _ in range(num_samples)]
        for generated in range(1, max_new + 1):
            column, masks = self._advance(rows, _fetch(sampled))
            done = generated == max_new or all(row.completed for row in rows)
            if not done:  # dispatch before yielding: the device computes while the caller consumes
                sampled, cache, key = self._step(self._params, cache, np.asarray(column, np.int32), key, temp,
                                                 top_k=top_k, greedy=greedy)
            yield column, masks
            if done:
                return

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs
                       ) -> tuple[list[list[int]], list[list[int]]]:
        """Run :meth:`generate` to the end: ``(results, masks)``, one list per row, prompt included.

        Each row stops at (and excludes) its first ``<|assistant_end|>`` / ``<|bos|>``, or at the
        length limit. Prompt positions have mask 0. kwargs: as :meth:`generate`.
        """
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        completed = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if completed[i]:
                    continue
                if token in (self._assistant_end, self._bos):
                    completed[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
            if all(completed):
                break
        return results, masks

    def _advance(self, rows: list[_RowState], sampled: list[int]) -> tuple[list[int], list[int]]:
        """Pick each row's next token (forced tool output first) and run the tool-use state machine."""
        column, masks = [], []
        for row, token in zip(rows, sampled):
            forced = bool(row.forced)
            if forced:
                token = row.forced.popleft()
            column.append(token)
            masks.append(0 if forced else 1)
            if row.completed:
                continue  # the caller ignores finished rows; no calculator calls for them
            if token in (self._assistant_end, self._bos):
                row.completed = True
            elif token == self._python_start:
                row.in_python, row.python_tokens = True, []
            elif token == self._python_end and row.in_python:
                row.in_python = False
                self._run_tool(row)
            elif row.in_python:
                row.python_tokens.append(token)
        return column, masks

    def _run_tool(self, row: _RowState) -> None:
        """Evaluate the finished python block; queue ``<|output_start|> result <|output_end|>``."""
        if row.python_tokens:
            result = use_calculator(self.tokenizer.decode(row.python_tokens))
            if result is not None:
                row.forced.extend([self._output_start, *self.tokenizer.encode(result), self._output_end])
        row.python_tokens = []

    def _initial_state(self, prompt: list[int]) -> _RowState:
        """A prompt that stops inside a python block (a partial assistant turn) continues that block."""
        row = _RowState()
        for token in prompt:
            if token == self._python_start:
                row.in_python, row.python_tokens = True, []
            elif token == self._python_end:
                row.in_python, row.python_tokens = False, []
            elif row.in_python:
                row.python_tokens.append(token)
        return row

    # ---- argument checks ------------------------------------------------------------------------

    def _check_prompt(self, tokens) -> list[int]:
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise JaxchatError(f"generate() needs a non-empty list of token ids, got {tokens!r:.80}")
        vocab = self.config.vocab_size
        prompt = []
        for i, t in enumerate(tokens):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < vocab:
                raise JaxchatError(f"prompt token #{i} is {t!r}, expected an int id in [0, {vocab})")
            prompt.append(int(t))
        return prompt

    def _check_args(self, prompt_len: int, num_samples, max_tokens, temperature, top_k) -> int:
        """Validate; return how many steps may run (max_tokens capped by the room left under max_len)."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise JaxchatError(f"num_samples is {num_samples!r}, expected an int ≥ 1")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise JaxchatError(f"max_tokens is {max_tokens!r}, expected an int ≥ 1 or None")
        if not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise JaxchatError(f"temperature is {temperature!r}, expected a number ≥ 0")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise JaxchatError(f"top_k is {top_k!r}, expected an int ≥ 1 or None")
        room = self.max_len - prompt_len
        if room < 1:
            raise JaxchatError(f"the prompt has {prompt_len} tokens, the engine's max_len is {self.max_len}; "
                               "expected a shorter prompt (start a new conversation)")
        return room if max_tokens is None else min(max_tokens, room)
