"""jaxchat's tokenizer as Hugging Face tokenizer files, and back (docs/DESIGN.md §1, §2).

Written by hand as JSON, so exporting needs neither ``tokenizers`` nor ``transformers``:

``tokenizer.json``        a ``tokenizers`` BPE that encodes exactly like jaxchat's tiktoken encoding:
                          - vocab: every ordinary token in GPT-2's byte-level alphabet, id = rank;
                          - merges: for every token, EVERY split into two tokens, ordered by the
                            token's rank. tiktoken merges any adjacent pair whose concatenation is a
                            token, lowest rank first; listing every split gives HF's BPE the same rule
                            (a single "training" split per token would miss pairs tiktoken merges);
                          - ``ignore_merges``: a whole regex piece that is a token is taken as is,
                            tiktoken's shortcut;
                          - pre-tokenizer: Split on jaxchat's regex (Isolated), then
                            ByteLevel(use_regex=False); decoder: ByteLevel;
                          - the 9 special tokens as special added tokens, ids n…n+8;
                          - post-processor: ``<|bos|> $A`` (only with ``add_special_tokens=True``: a
                            document starts with ``<|bos|>``, as in pretraining and CORE).
``tokenizer_config.json`` bos ``<|bos|>``, eos ``<|assistant_end|>`` (what ends an assistant turn), pad
                          ``<|bos|>`` (nanochat pads with it; pad = eos would hide the end of a turn
                          from HF collators' labels), no space clean-up, and ``chat_template``.
``special_tokens_map.json`` the same special tokens (older transformers read it).

The chat template renders ``render_conversation`` / ``render_for_completion``'s format token for
token: ``add_generation_prompt=True`` on a conversation ending with a user message gives
``render_for_completion``'s ids; ``False`` on a whole conversation gives ``render_conversation``'s
(uncut), and ``return_assistant_tokens_mask=True`` its mask (``{% generation %}`` spans). Two limits
that come from HF, not from the template:
  - special-token text inside a message (``"<|bos|>"`` typed by a user) becomes the special token
    unless ``apply_chat_template(..., sanitize_control_tokens=True)`` (jaxchat always encodes it as
    text); plain ``tokenizer(text)`` likewise needs ``split_special_tokens=True``;
  - two ADJACENT ``text`` parts are encoded as one string (jaxchat encodes each part alone), which
    differs only if a regex piece spans their boundary (jaxchat's tasks: never, their boundaries
    are at whitespace).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from jaxchat.common import JaxchatError
from jaxchat.tokenizer.constants import SPECIAL_TOKENS

BOS, EOS, PAD = "<|bos|>", "<|assistant_end|>", "<|bos|>"

# Every special token is written as a literal: the template needs no variables from transformers, so
# plain jinja2 renders it too (tests). Whitespace control (``-``) everywhere: nothing outside the
# expressions reaches the output, whatever trim/lstrip settings the renderer uses.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages | length < 2 or messages[1]['role'] != 'user' -%}"
    "{{- raise_exception('a system message must be followed by a user message') -}}"
    "{%- endif -%}"
    "{%- set system = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "<|bos|>"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
    "{{- raise_exception('roles must alternate user/assistant, starting with user; only message 0 may be system') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<|user_start|>' + (system if loop.first else '') + message['content'] + '<|user_end|>' -}}"
    "{%- else -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- if message['content'] is string -%}"
    "{%- generation -%}{{- message['content'] -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}"
    "{%- generation -%}{{- part['text'] -}}{%- endgeneration -%}"
    "{%- elif part['type'] == 'python' -%}"
    "{%- generation -%}{{- '<|python_start|>' + part['text'] + '<|python_end|>' -}}{%- endgeneration -%}"
    "{%- elif part['type'] == 'python_output' -%}"
    "{{- '<|output_start|>' + part['text'] + '<|output_end|>' -}}"
    "{%- else -%}"
    "{{- raise_exception('unknown assistant part type ' + part['type']"
    " + '; expected text, python or python_output') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- generation -%}{{- '<|assistant_end|>' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map to U+0100…"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def token_str(token: bytes) -> str:
    """A token's bytes in the byte-level alphabet (its key in tokenizer.json's vocab)."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def token_bytes_of(text: str, where: str = "tokenizer.json") -> bytes:
    """Inverse of ``token_str``; JaxchatError for a character outside the byte-level alphabet."""
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise JaxchatError(f"{where}: vocab entry {text!r} has {e.args[0]!r}, not a byte-level character; "
                           "expected a byte-level BPE") from None


def all_split_merges(tokens: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) with left, right and left+right all tokens, ordered by the rank of left+right
    (ties: the left part's rank): tiktoken's merge rule written as a BPE merge list."""
    ranks = {tok: rank for rank, tok in enumerate(tokens)}
    merges = []
    for rank, tok in enumerate(tokens):
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], left, right))
    merges.sort(key=lambda m: (m[0], m[1]))
    return [(left, right) for _, _, left, right in merges]


def _added_token(token_id: int, content: str) -> dict[str, Any]:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_json(tokens: Sequence[bytes], pattern: str) -> dict[str, Any]:
    """tokenizer.json's content for merge tokens in rank order and the split pattern."""
    n = len(tokens)
    bos_id = n + SPECIAL_TOKENS.index(BOS)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(n + i, name) for i, name in enumerate(SPECIAL_TOKENS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
            "vocab": {token_str(tok): rank for rank, tok in enumerate(tokens)},
            "merges": [[token_str(a), token_str(b)] for a, b in all_split_merges(tokens)],
        },
    }


def special_tokens_map() -> dict[str, Any]:
    others = [t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD)]
    return {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": others}


def tokenizer_config(n_merge_tokens: int, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the fast tokenizer class, the special tokens and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map(),
        "added_tokens_decoder": {str(n_merge_tokens + i): {k: v for k, v in _added_token(0, name).items() if k != "id"}
                                 for i, name in enumerate(SPECIAL_TOKENS)},
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # decoding must give the text back byte for byte
        "add_bos_token": True,  # what the post-processor does with add_special_tokens=True
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }


# ---- back: tokenizer.json → jaxchat's tokens and pattern --------------------------------------------


def _split_pattern(pre_tokenizer: Any, where: str) -> str:
    """The regex of a Split pre-tokenizer followed by ByteLevel(use_regex=False)."""
    steps = pre_tokenizer.get("pretokenizers", []) if isinstance(pre_tokenizer, dict) else []
    if (isinstance(pre_tokenizer, dict) and pre_tokenizer.get("type") == "Sequence" and len(steps) == 2
            and steps[0].get("type") == "Split" and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and isinstance(steps[0].get("pattern"), dict)
            and isinstance(steps[0]["pattern"].get("Regex"), str)
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex") is False
            and not steps[1].get("add_prefix_space")):
        return steps[0]["pattern"]["Regex"]
    raise JaxchatError(f"{where}: pre_tokenizer is {str(pre_tokenizer)[:120]}; expected a Sequence of "
                       "Split(Regex, Isolated) and ByteLevel(use_regex=false) (a tiktoken-style BPE)")


def tokens_from_tokenizer_json(data: dict[str, Any], where: str = "tokenizer.json") -> tuple[list[bytes], str]:
    """(merge tokens in rank order, split pattern) of a tokenizer.json in jaxchat's layout: a byte-level
    BPE whose ids 0…n-1 are the ordinary tokens (ranks), followed by jaxchat's 9 special tokens in
    order, whose merges follow the ranks. Anything else is refused (one JaxchatError line): jaxchat
    could not encode like it."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise JaxchatError(f"{where}: model is not a BPE with a vocab; expected a byte-level BPE")
    if data.get("normalizer") is not None:
        raise JaxchatError(f"{where}: has a normalizer ({data['normalizer'].get('type')}); jaxchat's BPE has none")
    pattern = _split_pattern(data.get("pre_tokenizer"), where)
    vocab = model["vocab"]
    n = len(vocab)
    by_id = sorted((int(i), s) for s, i in vocab.items())
    if [i for i, _ in by_id] != list(range(n)):
        raise JaxchatError(f"{where}: vocab ids are not 0…{n - 1}; expected contiguous ranks")
    tokens = [token_bytes_of(s, where) for _, s in by_id]
    added = {t.get("id"): t.get("content") for t in data.get("added_tokens") or []}
    expected = {n + i: name for i, name in enumerate(SPECIAL_TOKENS)}
    if added != expected:
        raise JaxchatError(f"{where}: added tokens {added} are not jaxchat's special tokens after the {n} merge "
                           f"tokens; expected {expected}")
    # The vocab's order is the truth (ranks, as tiktoken trained them). Its merges must be derivable
    # from it: each merge joins two tokens into a token, in rank order. Our own files list every
    # split; a converter that lists one split per token is accepted too (jaxchat applies tiktoken's
    # rule, which is what such a vocabulary was trained and converted from).
    ranks = {tok: rank for rank, tok in enumerate(tokens)}
    previous = -1
    for k, merge in enumerate(model.get("merges") or []):
        parts = merge.split(" ") if isinstance(merge, str) else list(merge)
        pair = [token_bytes_of(p, where) for p in parts] if len(parts) == 2 else None
        rank = ranks.get(pair[0] + pair[1]) if pair and pair[0] in ranks and pair[1] in ranks else None
        if rank is None or rank < previous:
            raise JaxchatError(f"{where}: merge {k} {merge!r} does not join two tokens into a later-ranked token "
                               "in vocab order; expected a tiktoken-style BPE whose vocab ids are its ranks")
        previous = rank
    return tokens, pattern
