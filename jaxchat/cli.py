"""Every entry point's command line: a typed frozen config, ``--key=value`` overrides, ``--help``, one-line errors.

An entry point declares its settings as a frozen dataclass (top-level fields and sections, the
sections shared with ``RunConfig`` where the settings are the same) and calls :func:`main`::

    def run(config: ChatConfig) -> int: ...
    if __name__ == "__main__":
        sys.exit(cli.main(run, ChatConfig(), prog="python -m jaxchat.chat", doc=__doc__))

``--help`` lists every key with its default and type; ``--section.key=value`` (or ``--key value``,
or ``--flag`` for a true boolean) sets one; a user mistake is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from jaxchat.common import JaxchatError
from jaxchat.config import keys, override, parse_overrides

Config = TypeVar("Config")

USAGE_ERROR = 2  # exit status of a refused command line or input (argparse's convention)
INTERRUPTED = 130


def help_text(doc: str, config: Any, extra: Sequence[tuple[str, str]] = ()) -> str:
    """``doc``, then every key of ``config`` as ``--key = default  [type]`` (``extra`` rows first)."""
    lines = [doc.strip(), "", "options (key = default  [type]):"]
    lines += [f"  --{key} = {text}" for key, text in extra]
    lines += [f"  --{key} = {value!r}  [{type_name}]" for key, value, type_name in keys(config)]
    return "\n".join(lines)


def parse(config: Config, argv: Sequence[str], *, prog: str) -> Config:
    """``config`` with the ``--key=value`` overrides of ``argv`` applied (JaxchatError on a bad one)."""
    return override(config, parse_overrides(list(argv)), prog=prog)


def wants_help(argv: Sequence[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def report_errors(fn: Callable[[], Any]) -> int:
    """Run ``fn``; its int result is the exit status (anything else: 0). A JaxchatError becomes one
    ``error:`` line on stderr and exit status 2."""
    try:
        result = fn()
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as e:  # its message, when it has one, says what was saved
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return INTERRUPTED


def main(run: Callable[[Config], Any], config: Config, argv: Sequence[str] | None = None, *,
         prog: str, doc: str) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) onto ``config``, call ``run`` with it; the exit status
    (``run``'s result when it is an int, else 0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print(help_text(doc, config))
        return 0
    return report_errors(lambda: run(parse(config, argv, prog=prog)))
