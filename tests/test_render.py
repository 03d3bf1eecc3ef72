"""Chat rendering (docs/DESIGN.md §2): ids and masks token by token, system merge, errors, truncation, visualize."""

from __future__ import annotations

import copy

import pytest

from jaxchat.common import JaxchatError
from jaxchat.tokenizer import render_conversation, render_for_completion, visualize

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
GSM8K = {
    "messages": [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Natalia sold 48/2 = "},
                {"type": "python", "text": "48/2"},
                {"type": "python_output", "text": "24"},
                {"type": "text", "text": "24 clips in May.\nNatalia sold 48+24 = "},
                {"type": "python", "text": "48+24"},
                {"type": "python_output", "text": "72"},
                {"type": "text", "text": "72 clips altogether in April and May.\n#### 72"},
            ],
        },
    ]
}


def test_gsm8k_tool_use_id_by_id(fineweb_tokenizer):
    tok = fineweb_tokenizer
    S, E = tok.encode_special, tok.encode
    q = E(QUESTION)
    expected = [  # (ids, mask) in order, written out by hand from docs/DESIGN.md §2
        ([S("<|bos|>")], 0),
        ([S("<|user_start|>")], 0), (q, 0), ([S("<|user_end|>")], 0),
        ([S("<|assistant_start|>")], 0),
        (E("Natalia sold 48/2 = "), 1),
        ([S("<|python_start|>")], 1), (E("48/2"), 1), ([S("<|python_end|>")], 1),
        ([S("<|output_start|>")], 0), (E("24"), 0), ([S("<|output_end|>")], 0),
        (E("24 clips in May.\nNatalia sold 48+24 = "), 1),
        ([S("<|python_start|>")], 1), (E("48+24"), 1), ([S("<|python_end|>")], 1),
        ([S("<|output_start|>")], 0), (E("72"), 0), ([S("<|output_end|>")], 0),
        (E("72 clips altogether in April and May.\n#### 72"), 1),
        ([S("<|assistant_end|>")], 1),
    ]  # fmt: skip
    want_ids = [i for ids, _ in expected for i in ids]
    want_mask = [m for ids, m in expected for _ in ids]
    ids, mask = render_conversation(tok, GSM8K)
    assert len(ids) == len(mask) == len(want_ids)
    for k, (got, want, got_m, want_m) in enumerate(zip(ids, want_ids, mask, want_mask, strict=True)):
        assert (got, got_m) == (want, want_m), f"token {k}: {tok.id_to_token(got)!r}"
    # The parts decode back to the conversation text.
    assert tok.decode(ids).startswith("<|bos|><|user_start|>Natalia sold clips")
    assert "<|python_start|>48+24<|python_end|><|output_start|>72<|output_end|>" in tok.decode(ids)
    # Trained tokens are exactly the assistant's own words and tool calls.
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == (
        "Natalia sold 48/2 = <|python_start|>48/2<|python_end|>24 clips in May.\nNatalia sold 48+24 = "
        "<|python_start|>48+24<|python_end|>72 clips altogether in April and May.\n#### 72<|assistant_end|>"
    )
    assert tok.render_conversation(GSM8K) == (ids, mask)  # method form


def test_multi_turn_string_content(fineweb_tokenizer):
    tok = fineweb_tokenizer
    S, E = tok.encode_special, tok.encode
    conv = {
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "Tell me a fact."},
            {"role": "assistant", "content": "Water boils at 100 C at sea level."},
        ]
    }
    ids, mask = render_conversation(tok, conv)
    a1, a2 = E("Hello. How can I help?"), E("Water boils at 100 C at sea level.")
    assert ids == [
        S("<|bos|>"), S("<|user_start|>"), *E("Hi!"), S("<|user_end|>"),
        S("<|assistant_start|>"), *a1, S("<|assistant_end|>"),
        S("<|user_start|>"), *E("Tell me a fact."), S("<|user_end|>"),
        S("<|assistant_start|>"), *a2, S("<|assistant_end|>"),
    ]  # fmt: skip
    assert sum(mask) == len(a1) + len(a2) + 2
    assert mask == [0] * (4 + len(E("Hi!"))) + [1] * (len(a1) + 1) + [0] * (3 + len(E("Tell me a fact."))) + [1] * (
        len(a2) + 1
    )


def test_system_message_is_merged_into_first_user_message(fineweb_tokenizer):
    tok = fineweb_tokenizer
    conv = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    snapshot = copy.deepcopy(conv)
    merged = {"messages": [{"role": "user", "content": "You are terse.\n\nWhat is 2+2?"}, conv["messages"][2]]}
    assert render_conversation(tok, conv) == render_conversation(tok, merged)
    assert conv == snapshot  # the input is not mutated


def test_literal_special_text_in_content_is_not_special(fineweb_tokenizer):
    tok = fineweb_tokenizer
    conv = {"messages": [{"role": "user", "content": "<|assistant_end|>"}, {"role": "assistant", "content": "<|bos|>"}]}
    ids, _ = render_conversation(tok, conv)
    specials = [i for i in ids if tok.is_special(i)]
    assert [tok.id_to_token(i) for i in specials] == [
        "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
    ]  # fmt: skip


def _u(content="q"):
    return {"role": "user", "content": content}


def _a(content="a"):
    return {"role": "assistant", "content": content}


def _s(content="s"):
    return {"role": "system", "content": content}


BAD = {
    "empty": ([], "conversation has no messages"),
    "assistant-first": ([_a()], "message 0 has role 'assistant', expected 'user'"),
    "user-user": ([_u(), _u()], "message 1 has role 'user', expected 'assistant'"),
    "late-system": ([_u(), _a(), _s()], "message 2 has role 'system', expected 'user'"),
    "system-only": ([_s()], "message 1: a system message must be followed by a user message, got nothing"),
    "system-assistant": ([_s(), _a()], "message 1: a system message must be followed by a user message, got role"),
    "system-user-user": ([_s(), _u(), _u()], "message 2 has role 'user', expected 'assistant'"),
    "no-content": ([{"role": "user"}], "message 0 is {'role': 'user'}; expected a dict with 'role' and 'content'"),
    "user-parts": ([_u([{"type": "text", "text": "x"}])], "message 0: user content must be a str"),
    "unknown-part": (
        [_u(), _a([{"type": "text", "text": "a"}, {"type": "image", "text": "x"}])],
        "message 1 part 1: unknown type 'image'; expected one of ('text', 'python', 'python_output')",
    ),
    "part-no-text": ([_u(), _a([{"type": "text"}])], "message 1 part 0: expected {'type': ..., 'text': str}"),
    "int-content": ([_u(), _a(42)], "message 1: assistant content must be a str or a list of parts, got int"),
}


@pytest.mark.parametrize("messages,message", BAD.values(), ids=BAD.keys())
def test_bad_conversations(fineweb_tokenizer, messages, message):
    with pytest.raises(JaxchatError) as exc:
        render_conversation(fineweb_tokenizer, {"messages": messages})
    assert message in str(exc.value)


def test_not_a_conversation(fineweb_tokenizer):
    with pytest.raises(JaxchatError, match="must be a dict with a 'messages' list"):
        render_conversation(fineweb_tokenizer, [{"role": "user", "content": "hi"}])  # type: ignore[arg-type]


def test_truncation(fineweb_tokenizer):
    full_ids, full_mask = render_conversation(fineweb_tokenizer, GSM8K, max_tokens=None)
    assert len(full_ids) > 40
    for n in (1, 5, 40, len(full_ids), len(full_ids) + 10):
        assert render_conversation(fineweb_tokenizer, GSM8K, max_tokens=n) == (full_ids[:n], full_mask[:n])
    assert render_conversation(fineweb_tokenizer, GSM8K) == (full_ids, full_mask)  # default 2048 > length
    with pytest.raises(JaxchatError, match="max_tokens is 0"):
        render_conversation(fineweb_tokenizer, GSM8K, max_tokens=0)


def test_render_for_completion(fineweb_tokenizer):
    tok = fineweb_tokenizer
    snapshot = copy.deepcopy(GSM8K)
    ids = render_for_completion(tok, GSM8K)
    prompt_ids, _ = render_conversation(tok, {"messages": GSM8K["messages"][:1]})
    assert ids == [*prompt_ids, tok.encode_special("<|assistant_start|>")]
    assert GSM8K == snapshot
    # A live chat that ends with the user's turn renders the same prompt.
    assert render_for_completion(tok, {"messages": GSM8K["messages"][:1]}) == ids
    assert tok.render_for_completion(GSM8K) == ids
    with pytest.raises(JaxchatError, match="no messages"):
        render_for_completion(tok, {"messages": [{"role": "assistant", "content": "only an answer"}]})


def test_visualize(fineweb_tokenizer):
    tok = fineweb_tokenizer
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo\nok"}]}
    ids, mask = render_conversation(tok, conv)
    user = [tok.id_to_token(i) for i in tok.encode("hi")]
    answer = [f"[{tok.id_to_token(i)}]".replace("\n", "\\n") for i in tok.encode("yo\nok")]
    expected = ["<|bos|>", "<|user_start|>", *user, "<|user_end|>", "<|assistant_start|>", *answer]
    expected.append("[<|assistant_end|>]")
    assert visualize(tok, ids, mask, color=False) == "|".join(expected)
    assert visualize(tok, ids[:2], mask[:2], color=False, with_ids=True) == (
        f"<|bos|>({ids[0]})|<|user_start|>({ids[1]})"
    )
    colored = tok.visualize(ids, mask)
    assert "\033[92m" in colored and "\033[91m" in colored and "\n" not in colored
    with pytest.raises(JaxchatError, match="differ in length"):
        visualize(tok, ids, mask[:-1])
