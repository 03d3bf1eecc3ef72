"""Chat with a trained model in the terminal (SPEC §10).

    python -m jaxchat.chat -i sft                       # interactive, multi-turn
    python -m jaxchat.chat -i sft --tag d20 -p "Why is the sky blue?"   # one answer, then exit

Type ``quit`` or ``exit`` (or Ctrl-D) to leave, ``clear`` to start a new conversation. The answer is
streamed as it is generated, never cutting a multi-byte UTF-8 character in half (upstream 4c3590c).
Calculator calls show as ``<|python_start|>…<|python_end|><|output_start|>…<|output_end|>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from jaxchat.common import JaxchatError
from jaxchat.tokenizer.stream import StreamDecoder

if TYPE_CHECKING:
    from jaxchat.engine import Engine
    from jaxchat.tokenizer import Tokenizer

QUIT_COMMANDS = ("quit", "exit")
CLEAR_COMMAND = "clear"


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


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="python -m jaxchat.chat", description="Chat with a jaxchat model.")
    parser.add_argument("-i", "--source", default="sft", choices=("base", "mid", "sft", "rl"),
                        help="which stage's checkpoint to load (default sft)")
    parser.add_argument("--tag", default=None, help="model tag, e.g. d20 (default: the latest)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last)")
    parser.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    parser.add_argument("-t", "--temperature", type=float, default=0.6, help="0 = greedy (default 0.6)")
    parser.add_argument("-k", "--top-k", type=int, default=50, help="sample from the k likeliest tokens; 0 = all")
    parser.add_argument("--max-tokens", type=int, default=512, help="longest reply in tokens (default 512)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    # Checked before loading a model, which can take a while.
    if not args.temperature >= 0:
        raise JaxchatError(f"--temperature is {args.temperature}, expected a number ≥ 0")
    if args.top_k < 0:
        raise JaxchatError(f"--top-k is {args.top_k}, expected ≥ 1 (or 0 for no limit)")
    if args.max_tokens < 1:
        raise JaxchatError(f"--max-tokens is {args.max_tokens}, expected ≥ 1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jaxchat.chat``; returns the exit code (1 with a one-line error)."""
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        from jaxchat.checkpoint import load_model  # lazy: importing orbax is slow and --help should be fast
        from jaxchat.engine import Engine

        model, tokenizer, _meta = load_model(args.source, tag=args.tag, step=args.step)
        engine = Engine(model, tokenizer)
        return chat_loop(engine, tokenizer, sys.stdin, sys.stdout, prompt=args.prompt,
                         temperature=args.temperature, top_k=args.top_k or None,
                         max_tokens=args.max_tokens, seed=args.seed)
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
