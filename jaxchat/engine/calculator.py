"""The calculator tool the assistant calls from ``<|python_start|> … <|python_end|>`` (docs/DESIGN.md §10).

nanochat's rules: an expression is either pure arithmetic (digits, ``+ - * / ( ) .`` and spaces;
commas are dropped first so ``1,000 * 3`` works; no ``**``) or one string ``.count(...)`` call such as
``'strawberry'.count('r')``. Anything else — names, other attributes, calls, imports, dunders,
lambdas, comprehensions, powers, string arithmetic — is refused and gives ``None``, as does an
expression that errors (``1/0``), overflows, or runs past the time limit.

Unlike nanochat we never ``eval`` the model's text: it is parsed with :mod:`ast` and the tree is
walked against an allow-list by a tiny interpreter. The interpreter checks a deadline at every node
(cooperative, so it works in any thread — ``signal.alarm`` only works in the main thread, and the web
server generates from worker threads) and caps the size of every intermediate number, so no single
operation can run long either.
"""

from __future__ import annotations

import ast
import math
import operator
import time

__all__ = ["use_calculator", "MAX_EXPR_CHARS", "MAX_INT_BITS", "TIME_LIMIT_S"]

# The model writes short expressions; anything much longer is garbage and only costs parse time.
MAX_EXPR_CHARS = 1000
# ~300 decimal digits. Keeps every multiplication cheap and every result printable (Python refuses
# to str() ints over 4300 digits).
MAX_INT_BITS = 1000
TIME_LIMIT_S = 1.0

_ARITHMETIC_CHARS = frozenset("0123456789*+-/.() ")
_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,  # "//" is made of allowed characters; nanochat accepts it too
}
_UNARY_OPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class _Refused(Exception):
    """The expression is outside the allow-list, too big, or too slow."""


def use_calculator(expr: str, *, time_limit: float = TIME_LIMIT_S) -> str | None:
    """Evaluate the tool call ``expr``; return the result as text, or None if refused or failing.

    Arithmetic results are formatted like Python's ``str`` (``6/3`` → ``'2.0'``, as nanochat); a
    ``.count`` call gives the count (``'strawberry'.count('r')`` → ``'3'``).
    """
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    deadline = time.monotonic() + time_limit
    try:
        # A .count call keeps its commas (they may be what is counted); arithmetic drops them.
        tree = _parse(expr)
        if tree is not None and _is_count_call(tree.body):
            value = _count(tree.body, deadline)
        else:
            arithmetic = expr.replace(",", "")
            if not arithmetic.strip() or not set(arithmetic) <= _ARITHMETIC_CHARS:
                return None
            tree = _parse(arithmetic)
            if tree is None:
                return None
            value = _arith(tree.body, deadline)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return str(value)
    except (_Refused, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError):
        return None


def _parse(text: str) -> ast.Expression | None:
    try:
        return ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _check_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _Refused("time limit")


def _arith(node: ast.AST, deadline: float) -> int | float:
    """Evaluate an arithmetic node: number literals, + - * / //, unary ±, nothing else."""
    _check_time(deadline)
    if isinstance(node, ast.Constant):
        # bool is an int subclass but `True` is a name in the source, never arithmetic.
        if type(node.value) not in (int, float):
            raise _Refused("not a number")
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _arith(node.left, deadline), _arith(node.right, deadline)
        return _bounded(_BINARY_OPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_arith(node.operand, deadline))
    raise _Refused(type(node).__name__)


def _bounded(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _Refused("number too large")
    return value


def _is_count_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "count"
        and not node.keywords
    )


def _count(node: ast.Call, deadline: float) -> int:
    """``'literal'.count('literal'[, start[, end]])`` with literal arguments only."""
    _check_time(deadline)
    receiver = node.func.value  # type: ignore[attr-defined]
    if not (isinstance(receiver, ast.Constant) and type(receiver.value) is str):
        raise _Refused("count() must be called on a string literal")
    if not 1 <= len(node.args) <= 3:
        raise _Refused("count() takes 1 to 3 arguments")
    sub = node.args[0]
    if not (isinstance(sub, ast.Constant) and type(sub.value) is str):
        raise _Refused("count()'s first argument must be a string literal")
    bounds = [_arith(arg, deadline) for arg in node.args[1:]]
    if any(type(b) is not int for b in bounds):
        raise _Refused("count()'s start/end must be integers")
    return receiver.value.count(sub.value, *bounds)
