"""CustomJSON: conversations from a jsonl file, one JSON list of messages per line.

Used for the identity conversations (``$JAXCHAT_HOME/identity_conversations.jsonl``) and for anyone's
own chat data. Lines that are not valid JSON or not a valid conversation are SKIPPED and counted
(``num_skipped``; one warning with the first line numbers and reasons): this is training data, and
one bad line in a hand-made file should not stop a run. Blank lines are ignored. ``strict=True``
raises instead; a file with no valid conversation always raises.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jaxchat.common import JaxchatError
from jaxchat.data.cache import IDENTITY_FILE, download_command, ensure_available
from jaxchat.tasks.base import ConversationList, conversation_problem

logger = logging.getLogger(__name__)


class CustomJSON(ConversationList):
    """Conversations read from ``path`` (jsonl of message lists), in file order."""

    def __init__(self, path: str | Path, *, strict: bool = False, **view: int | None):
        super().__init__(**view)
        self.path = Path(path)
        if not self.path.is_file():
            is_identity = self.path.name == IDENTITY_FILE
            hint = (f"download it with `{download_command('identity')}` (or, without network, train with "
                    "--data.offline=true: jaxchat's own identity conversations are used)") if is_identity \
                else "expected a jsonl file of conversations (one JSON list of messages per line)"
            raise JaxchatError(f"{self.path} is missing; {hint}")
        self.conversations: list[list[dict]] = []
        problems: list[str] = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    messages = json.loads(line)
                except json.JSONDecodeError as e:
                    problems.append(f"line {lineno}: invalid JSON ({e.msg})")
                    continue
                problem = conversation_problem(messages)
                if problem is not None:
                    problems.append(f"line {lineno}: {problem}")
                    continue
                self.conversations.append(messages)
        self.num_skipped = len(problems)
        if problems:
            message = f"{self.path}: {len(problems)} malformed conversation(s) ({'; '.join(problems[:3])})"
            if strict or not self.conversations:
                raise JaxchatError(message + ("" if self.conversations else "; no valid conversation left"))
            logger.warning("%s; skipped", message)
        elif not self.conversations:
            raise JaxchatError(f"{self.path}: no conversations (the file is empty)")

    @property
    def name(self) -> str:
        return f"CustomJSON({self.path.name})"


def identity_conversations(home: str | Path | None = None, **view: int | None) -> CustomJSON:
    """The identity conversations of the cache (``identity_conversations.jsonl``)."""
    return CustomJSON(ensure_available("identity", home), **view)
