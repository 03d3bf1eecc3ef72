"""The chat CLI: UTF-8-safe streaming, the multi-turn loop, commands, one-shot mode, clean errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from jaxchat import JaxchatError
from jaxchat import chat
from jaxchat.chat import chat_loop
from jaxchat.tokenizer.stream import StreamDecoder
from jaxchat.engine import Engine
from tests.test_engine import chain, scripted_model
from tests.cli_help import help_listing_every_key

TEXT = "héllo 😀世界!"


@pytest.fixture(scope="module")
def tok(fineweb_tokenizer):
    return fineweb_tokenizer


class RecordingEngine:
    """Wraps a real Engine and records the prompt of every generate() call."""

    def __init__(self, engine: Engine):
        self.engine, self.prompts, self.kwargs = engine, [], []

    def generate(self, tokens, **kwargs):
        self.prompts.append(list(tokens))
        self.kwargs.append(kwargs)
        return self.engine.generate(tokens, **kwargs)


class WriteLog(io.StringIO):
    """A stdout that remembers every write (each is one streamed piece)."""

    def __init__(self):
        super().__init__()
        self.pieces: list[str] = []

    def write(self, s):
        self.pieces.append(s)
        return super().write(s)


@pytest.fixture(scope="module")
def emoji_reply(tok):
    """Token ids of TEXT: multi-byte characters are split over several single-byte tokens."""
    ids = tok.encode(TEXT)
    assert len(set(ids)) == len(ids)  # a bigram chain must not revisit a token
    assert any(not tok.id_to_bytes(i).decode("utf-8", "ignore") for i in ids)  # some tokens are partial chars
    return ids


@pytest.fixture(scope="module")
def engine(tok, emoji_reply):
    """A model that answers every user turn with TEXT then <|assistant_end|>."""
    sp = tok.encode_special
    model = scripted_model(tok.get_vocab_size(), chain(sp("<|assistant_start|>"), *emoji_reply, sp("<|assistant_end|>")),
                           default=sp("<|assistant_end|>"), sequence_len=128)
    return Engine(model, tok)


def test_stream_decoder_never_splits_characters(tok, emoji_reply):
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in emoji_reply]
    assert "".join(pieces) + decoder.flush() == TEXT
    assert "" in pieces  # some tokens completed no character and were held back
    assert all("\ufffd" not in p for p in pieces)
    # Each emitted prefix equals decoding the accumulated bytes up to a character boundary.
    for n in range(1, len(emoji_reply) + 1):
        accumulated = tok.decode_bytes(emoji_reply[:n]).decode("utf-8", "ignore")
        assert "".join(pieces[:n]) == accumulated


def test_stream_decoder_flushes_a_dangling_partial_character(tok):
    decoder = StreamDecoder(tok)
    first_byte = tok.encode("😀")[0]
    assert decoder.push(first_byte) == ""
    assert decoder.flush() == "\ufffd"


def test_multi_turn_loop_streams_and_keeps_history(tok, engine, emoji_reply):
    sp = tok.encode_special
    recording = RecordingEngine(engine)
    out = WriteLog()
    code = chat_loop(recording, tok, io.StringIO("hello\n\nsecond question\nquit\nnever read\n"), out,
                     temperature=0.0, top_k=None, max_tokens=64)
    assert code == 0
    text = out.getvalue()
    assert text.count(f"Assistant: {TEXT}\n") == 2
    assert "\ufffd" not in text and all("\ufffd" not in p for p in out.pieces)
    assert len(recording.prompts) == 2  # the empty line was ignored, 'quit' ended the loop
    first_turn = [sp("<|bos|>"), sp("<|user_start|>"), *tok.encode("hello"), sp("<|user_end|>"),
                  sp("<|assistant_start|>")]
    assert recording.prompts[0] == first_turn
    assert recording.prompts[1] == first_turn + emoji_reply + [sp("<|assistant_end|>"), sp("<|user_start|>"),
                                                               *tok.encode("second question"), sp("<|user_end|>"),
                                                               sp("<|assistant_start|>")]
    assert recording.kwargs[0]["seed"] != recording.kwargs[1]["seed"]


def test_clear_starts_a_new_conversation_and_eof_exits(tok, engine):
    recording = RecordingEngine(engine)
    out = io.StringIO()
    assert chat_loop(recording, tok, io.StringIO("hi\nCLEAR\nhi\n"), out, temperature=0.0, max_tokens=64) == 0
    assert "(new conversation)" in out.getvalue()
    assert recording.prompts[0] == recording.prompts[1]


def test_reply_cut_at_max_tokens_is_closed_in_the_history(tok, engine, emoji_reply):
    recording = RecordingEngine(engine)
    out = io.StringIO()
    chat_loop(recording, tok, io.StringIO("a\nb\nexit\n"), out, temperature=0.0, max_tokens=3)
    end = tok.encode_special("<|assistant_end|>")
    first = recording.prompts[0]
    assert recording.prompts[1][:len(first) + 4] == first + emoji_reply[:3] + [end]


def test_one_shot_prompt_answers_once_without_reading_input(tok, engine):
    recording = RecordingEngine(engine)
    out = io.StringIO()

    class NoInput(io.StringIO):
        def readline(self, *args):
            raise AssertionError("one-shot mode must not read input")

    assert chat_loop(recording, tok, NoInput(), out, prompt="hi there", temperature=0.0, max_tokens=64) == 0
    assert out.getvalue() == TEXT + "\n"
    assert len(recording.prompts) == 1


def test_conversation_longer_than_context_is_reported_not_fatal(tok, emoji_reply):
    sp = tok.encode_special
    model = scripted_model(tok.get_vocab_size(), chain(sp("<|assistant_start|>"), *emoji_reply, sp("<|assistant_end|>")),
                           default=sp("<|assistant_end|>"), sequence_len=128)
    small = Engine(model, tok, max_len=40)
    out = io.StringIO()
    long_message = " ".join(["student"] * 60)
    assert chat_loop(small, tok, io.StringIO(f"{long_message}\nhi\nquit\n"), out, temperature=0.0, max_tokens=8) == 0
    text = out.getvalue()
    assert "max_len is 40" in text and "clear" in text
    assert "Assistant: héllo" in text  # the next, short message still gets an answer


@pytest.fixture
def fake_load(monkeypatch):
    """Replace ``load_model`` where the CLI imports it from (``jaxchat.model.load``) with ``fn``."""
    import jaxchat.model.load

    def install(fn):
        monkeypatch.setattr(jaxchat.model.load, "load_model", fn)

    return install


def test_main_reports_load_errors_in_one_line(fake_load, capsys):
    def load_model(stage, tag=None, step=None):
        raise JaxchatError(f"no {stage} checkpoint under /nowhere/checkpoints/{stage}; expected one (run the sft stage)")

    fake_load(load_model)
    assert chat.main(["--source=sft", "--prompt=hi"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: no sft checkpoint under /nowhere/checkpoints/sft; expected one (run the sft stage)\n"
    assert captured.out == ""


@pytest.mark.parametrize("argv, match", [
    (["--sampling.temperature=-1"], "--sampling.temperature=-1: expected a number >= 0"),
    (["--sampling.top_k", "-5"], "--sampling.top_k=-5: expected a number >= 1, or 0 for the whole vocabulary"),
    (["--sampling.max-tokens=0"], "--sampling.max_tokens=0: expected a positive number"),
    (["--sampling.temperature=hot"], "sampling.temperature='hot': expected float"),
    (["--source=rl"], ("--source", "'rl'", "base, mid, sft")),  # worded by jaxchat.stages
    (["--step=-2"], "--step=-2: expected a checkpoint step >= 0, or -1 for the last"),
    (["--temperature=0"], "unknown config key 'temperature' (did you mean sampling.temperature?)"),
    (["-t", "0"], "unexpected argument '-t'; expected --key=value"),
])
def test_main_rejects_bad_arguments_before_loading(fake_load, capsys, argv, match):
    def load_model(*args, **kwargs):
        raise AssertionError("arguments must be checked before loading the model")

    fake_load(load_model)
    assert chat.main(argv + ["--prompt=hi"]) == 2
    err = capsys.readouterr().err
    parts = (match,) if isinstance(match, str) else match
    assert err.startswith("error: ") and all(part in err for part in parts) and err.count("\n") == 1


def test_main_runs_the_loop_with_the_loaded_model(fake_load, capsys, tok, engine):
    model = scripted_model(tok.get_vocab_size(), chain(tok.encode_special("<|assistant_start|>"),
                                                       *tok.encode(TEXT), tok.encode_special("<|assistant_end|>")),
                           default=tok.encode_special("<|assistant_end|>"), sequence_len=128)
    calls = []

    def load_model(stage, tag=None, step=None):
        calls.append((stage, tag, step))
        return model, tok, {}

    fake_load(load_model)
    assert chat.main(["--source=mid", "--tag=d4", "--step=7", "--prompt", "hi", "--sampling.temperature=0",
                      "--sampling.top_k=0"]) == 0
    assert calls == [("mid", "d4", 7)]
    assert capsys.readouterr().out == TEXT + "\n"
    # The defaults: the latest sft checkpoint (tag "" and step -1 mean the latest).
    assert chat.run(chat.ChatConfig(prompt="hi"), stdout=io.StringIO()) == 0
    assert calls[-1] == ("sft", None, None)


def test_help_lists_every_key_with_its_default(capsys):
    out = help_listing_every_key(chat.main, chat.ChatConfig(), capsys)
    assert '--prompt="Why is the sky blue?"' in out  # the usage examples
    assert "--source = 'sft'" in out and "--sampling.temperature = 0.6  [float]" in out


def test_cli_missing_checkpoint_is_one_line_without_traceback(tmp_path):
    """The real entry point and the real load_model, on an empty $JAXCHAT_HOME."""
    pytest.importorskip("jaxchat.checkpoint")
    env = {**os.environ, "JAXCHAT_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxchat.chat", "--source=sft", "--prompt=hi"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""
