"""Small things every stage needs: the cache directory and the user-facing error type."""

from __future__ import annotations

import os
from pathlib import Path


class JaxchatError(Exception):
    """A user mistake or bad input, reported as one clear line (no traceback) by the CLIs.

    The message must name the file / field / value at fault and what was expected.
    """


def jaxchat_home() -> Path:
    """The cache directory: ``$JAXCHAT_HOME``, default ``~/.cache/jaxchat`` (docs/DESIGN.md §0)."""
    return Path(os.environ.get("JAXCHAT_HOME") or Path.home() / ".cache" / "jaxchat")
