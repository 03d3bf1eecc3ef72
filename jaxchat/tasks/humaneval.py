"""HumanEval (openai/openai_humaneval, split test, 164 problems): write a Python function.

The user message is the problem's ``prompt`` (imports, signature, docstring); the reference answer
is ``prompt + canonical_solution``. ``evaluate`` runs the completion's code (after the prompt's
imports) in the sandbox of ``jaxchat.tasks.sandbox``, and the tests (the prompt's helpers, the
problem's ``check`` and ``check(entry_point)``) in a separate trusted process that calls the
completion's functions; a completion passes only when those tests ran to the end and passed.
Exiting early (``sys.exit(0)``…) is a failure, and the completion never sees the tests. Malformed
rows (a null field) RAISE a JaxchatError naming file, row and field when the task is built: it is a
fixed benchmark, so a bad row means a damaged download.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from jaxchat.tasks._data import (
    arrow_table,
    bad_row_error,
    check_columns,
    is_str,
    load_split,
    shuffled_order,
    to_numpy_bool,
)
from jaxchat.tasks.base import Conversation, DatasetTask
from jaxchat.tasks.sandbox import DEFAULT_MEMORY_BYTES, DEFAULT_TIMEOUT_S, ExecutionResult, execute_code

COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)\n?```", re.DOTALL)


def extract_imports(prompt: str) -> str:
    """The import lines at the top of a prompt (before the first other statement), comments skipped."""
    imports = []
    for line in prompt.splitlines():
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_program(completion: str) -> str:
    """The code of a completion: the first fenced code block if there is one, else the whole text."""
    match = _CODE_BLOCK.search(completion)
    return (match.group(1) if match else completion).strip()


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's code without the entry point's definition: its imports and the helpers some tests
    call (``poly`` in HumanEval/32, ``encode_cyclic`` in /38, ``encode_shift`` in /50). Empty if the
    prompt does not parse."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    lines = prompt.splitlines(keepends=True)
    for node in reversed(tree.body):  # bottom-up, so that earlier line numbers stay valid
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            del lines[first - 1 : node.end_lineno]
    return "".join(lines)


def program_and_tests(conversation: Conversation, completion: str) -> tuple[str, str]:
    """What the sandbox runs: the program (the prompt's imports + the completion's code), untrusted,
    and the tests, trusted: the prompt's helpers, the problem's ``check`` and ``check(entry_point)``.
    The helpers the tests call are the prompt's own, so a completion that redefines ``encode_cyclic``
    cannot change what ``decode_cyclic`` is checked against."""
    prompt, entry_point = conversation["messages"][0]["content"], conversation["entry_point"]
    program = f"{extract_imports(prompt)}\n\n{extract_program(completion)}\n"
    tests = f"{prompt_helpers(prompt, entry_point)}\n{conversation['test']}\ncheck({entry_point})\n"
    return program, tests


def build_program(conversation: Conversation, completion: str) -> str:
    """The prompt's imports + the completion's code + the tests + ``check(entry_point)`` as one text
    (for display; ``run`` keeps the program and the tests in separate processes)."""
    return (
        f"{extract_imports(conversation['messages'][0]['content'])}\n\n"
        f"{extract_program(completion)}\n\n"
        f"{conversation['test']}\n"
        f"check({conversation['entry_point']})\n"
    )


class HumanEval(DatasetTask):
    """HumanEval problems, shuffled with seed 42 like nanochat; generative, scored by running tests."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        home: str | Path | None = None,
        **view: int | None,
    ):
        super().__init__(**view)
        self.timeout, self.memory_bytes = timeout, memory_bytes
        label = "HumanEval test"
        self.ds, self.path = load_split("humaneval", None, "test", home)
        table = arrow_table(self.ds)
        check_columns(table, self.path, label, {c: (is_str, "string") for c in COLUMNS})
        nulls = {c: to_numpy_bool(pc.is_null(table.column(c))) for c in COLUMNS}
        bad = np.logical_or.reduce(list(nulls.values()))
        if bad.any():
            first_null = {i: next(c for c in COLUMNS if nulls[c][i]) for i in np.flatnonzero(bad)[:1].tolist()}
            raise bad_row_error(label, self.path, bad, lambda i: f"{first_null[i]} is null", "humaneval")
        self.order = shuffled_order(table.num_rows)

    @property
    def eval_type(self) -> str:
        return "generative"

    def get_example(self, index: int) -> Conversation:
        row = self.row(index)
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": f"{row['prompt']}\n{row['canonical_solution']}"},
            ],
            "task_id": row["task_id"],
            "entry_point": row["entry_point"],
            "test": row["test"],
        }

    def run(self, conversation: Conversation, completion: str) -> ExecutionResult:
        """Execute the completion against the problem's tests; the full result (stdout, error...)."""
        program, tests = program_and_tests(conversation, completion)
        return execute_code(program, tests=tests, timeout=self.timeout, memory_bytes=self.memory_bytes)

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        """True when the problem's tests ran to the end and passed against the completion's code,
        within the limits."""
        return self.run(conversation, completion).success
