"""Markdown report sections for the tokenizer stage (``$JAXCHAT_HOME/report/tokenizer.md``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from jaxchat.common import jaxchat_home


def report_path() -> Path:
    """``$JAXCHAT_HOME/report/tokenizer.md``."""
    return jaxchat_home() / "report" / "tokenizer.md"


def write_section(heading: str, body: str, *, fresh: bool = False, path: Path | None = None) -> Path:
    """Put ``## heading`` + ``body`` into the report file, replacing a section with the same heading.

    ``fresh=True`` starts the file over (a new tokenizer makes older sections stale). The file is
    replaced atomically.
    """
    path = path or report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = "" if fresh or not path.exists() else path.read_text(encoding="utf-8")
    section = f"## {heading}\n\n{body.strip()}\n"
    # A section runs from its heading to the next "## " heading or the end of the file.
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: section + "\n", old, count=1).rstrip("\n") + "\n"
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return path
