"""Chat with a trained model in the terminal (docs/DESIGN.md §10).

    python -m jaxchat.chat                                          # the latest sft checkpoint, multi-turn
    python -m jaxchat.chat --source=mid --tag=d20 --step=7000       # another checkpoint
    python -m jaxchat.chat --prompt="Why is the sky blue?"          # one answer, then exit
    python -m jaxchat.chat --sampling.temperature=0                 # greedy

``--source`` is the stage whose checkpoint is loaded (a stage with checkpoints: base, mid, sft);
``--tag=""`` and ``--step=-1`` pick the latest tag and step; ``--prompt=""`` means interactive.
``sampling.*`` is how replies are sampled (the same section as ``python -m jaxchat.web``).
Type ``quit`` or ``exit`` (or Ctrl-D) to leave, ``clear`` to start a new conversation. The answer is
streamed as it is generated, never cutting a multi-byte UTF-8 character in half (upstream 4c3590c).
Calculator calls show as ``<|python_start|>…<|python_end|><|output_start|>…<|output_end|>``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import TextIO

from jaxchat import cli, stages
from jaxchat.common import JaxchatError
from jaxchat.config import SamplingSection
from jaxchat.engine import Engine
from jaxchat.model import load as model_load
from jaxchat.tokenizer import Tokenizer
from jaxchat.tokenizer.stream import StreamDecoder

PROG = "python -m jaxchat.chat"
QUIT_COMMANDS = ("quit", "exit")
CLEAR_COMMAND = "clear"


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """Which checkpoint ``python -m jaxchat.chat`` talks with, and how it samples."""

    source: str = "sft"  # the stage whose checkpoint is loaded (a stage with checkpoints)
    tag: str = ""  # model tag, e.g. d20; "" = the latest written
    step: int = -1  # checkpoint step; -1 = the last
    prompt: str = ""  # answer this one prompt and exit; "" = interactive
    sampling: SamplingSection = SamplingSection()


def _read_line(stdin: TextIO, stdout: TextIO, prompt: str) -> str:
    """One line of user input; EOFError at the end of the input."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        return input(prompt)  # readline line editing and history in a real terminal
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def stream_reply(engine: Engine, tokenizer: Tokenizer, conversation: list[int], stdout: TextIO, *,
                 temperature: float, top_k: int | None, max_tokens: int, seed: int) -> list[int]:
    """Generate the assistant's reply to ``conversation`` (ending in ``<|assistant_start|>``), print it
    as it comes, and return its tokens ending with ``<|assistant_end|>`` (appended if the reply was cut)."""
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    stop = (assistant_end, tokenizer.bos_token_id)
    decoder = StreamDecoder(tokenizer)
    reply: list[int] = []
    for column, _ in engine.generate(conversation, num_samples=1, max_tokens=max_tokens,
                                     temperature=temperature, top_k=top_k, seed=seed):
        token = column[0]
        if token in stop:
            break
        reply.append(token)
        stdout.write(decoder.push(token))
        stdout.flush()
    stdout.write(decoder.flush() + "\n")
    stdout.flush()
    return reply + [assistant_end]


def chat_loop(engine: Engine, tokenizer: Tokenizer, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, *,
              prompt: str | None = None, temperature: float = 0.6, top_k: int | None = 50,
              max_tokens: int = 512, seed: int = 42) -> int:
    """Run the conversation: multi-turn from ``stdin``, or one answer to ``prompt``. Returns an exit code.

    The conversation is kept as token ids (the model's own tool calls and their forced outputs
    included), so each turn only appends the new user message. A conversation that outgrows the
    engine's ``max_len`` is reported and its last message dropped; ``clear`` starts over.
    """
    special = tokenizer.encode_special
    user_start, user_end = special("<|user_start|>"), special("<|user_end|>")
    assistant_start = special("<|assistant_start|>")
    conversation = [tokenizer.bos_token_id]
    if prompt is None:
        stdout.write("jaxchat — type 'quit' or 'exit' to leave, 'clear' for a new conversation.\n")
    turn = 0
    while True:
        if prompt is not None:
            text = prompt
        else:
            try:
                text = _read_line(stdin, stdout, "\nUser: ").strip()
            except EOFError:
                stdout.write("\n")
                return 0
            if text.lower() in QUIT_COMMANDS:
                return 0
            if text.lower() == CLEAR_COMMAND:
                conversation = [tokenizer.bos_token_id]
                stdout.write("(new conversation)\n")
                continue
            if not text:
                continue
            stdout.write("\nAssistant: ")
        turn_tokens = [user_start, *tokenizer.encode(text), user_end, assistant_start]
        try:
            # A different seed each turn: the same question twice need not get the same answer.
            reply = stream_reply(engine, tokenizer, conversation + turn_tokens, stdout, temperature=temperature,
                                 top_k=top_k, max_tokens=max_tokens, seed=seed + turn)
        except JaxchatError as e:
            if prompt is not None:
                raise
            stdout.write(f"[{e}; type 'clear' to start over]\n")
            continue
        conversation += turn_tokens + reply
        turn += 1
        if prompt is not None:
            return 0


def validate(config: ChatConfig) -> ChatConfig:
    """``config`` if every value is usable; a one-line JaxchatError naming the key otherwise.
    (Checked before loading a model, which can take a while.)"""
    stages.check_checkpointed(config.source, "--source")
    if config.step < -1:
        raise JaxchatError(f"--step={config.step}: expected a checkpoint step >= 0, or -1 for the last")
    sampling = config.sampling
    if not sampling.temperature >= 0:
        raise JaxchatError(f"--sampling.temperature={sampling.temperature:g}: expected a number >= 0 (0 = greedy)")
    if sampling.top_k < 0:
        raise JaxchatError(f"--sampling.top_k={sampling.top_k}: expected a number >= 1, or 0 for the whole vocabulary")
    if sampling.max_tokens < 1:
        raise JaxchatError(f"--sampling.max_tokens={sampling.max_tokens}: expected a positive number")
    return config


def run(config: ChatConfig, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Load the checkpoint and chat on ``stdin`` / ``stdout`` (default the terminal); the exit status."""
    validate(config)
    model, tokenizer, _meta = model_load.load_model(config.source, tag=config.tag or None,
                                                    step=None if config.step == -1 else config.step)
    sampling = config.sampling
    return chat_loop(Engine(model, tokenizer), tokenizer, stdin or sys.stdin, stdout or sys.stdout,
                     prompt=config.prompt or None, temperature=sampling.temperature, top_k=sampling.top_k or None,
                     max_tokens=sampling.max_tokens, seed=sampling.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jaxchat.chat``; the exit status (2 with a one-line error)."""
    return cli.main(run, ChatConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
