"""The calculator tool: nanochat's accepted expressions, and every escape refused (None), quickly."""

import builtins
import time

import pytest

from jaxchat.engine import use_calculator
from jaxchat.engine import calculator


@pytest.mark.parametrize("expr, expected", [
    ("1+2", "3"),
    ("2 * (3 + 4) - 5", "9"),
    ("1,000 * 3", "3000"),  # thousands separators are dropped, as in nanochat
    ("10/4", "2.5"),
    ("6/3", "2.0"),  # Python's str of a true division, as nanochat
    ("7//2", "3"),
    ("-3 + +4", "1"),
    ("0.1 + 0.2", str(0.1 + 0.2)),
    ("  12 * 12  ", "144"),
    ("'strawberry'.count('r')", "3"),
    ('"mississippi".count("ss")', "2"),
    ("'a,b,c'.count(',')", "2"),  # commas inside a .count call are kept
    ("'banana'.count('a', 2)", "2"),
])
def test_accepted(expr, expected):
    assert use_calculator(expr) == expected


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')",
    "import os",
    "().__class__.__bases__[0].__subclasses__()",
    "'a'.__class__",
    "''.__class__.__mro__",
    "(lambda: 1)()",
    "x",
    "x + 1",
    "abs(-1)",
    "True",
    "2**3",
    "9**9**9",
    "10**100000",
    "[x for x in range(10**9)]",
    "sum(i for i in range(10**9))",
    "'a' * 10**9",
    "'a' * 999999999",
    "'ab' + 'cd'",
    "'abc'.upper().count('a')",
    "'abc'.count(x)",
    "x.count('a')",
    "'abc'.count('a', start=1)",
    "'abc'.count('a', 1.5)",
    "'abc'.index('a')",
    "open('/etc/passwd').read()",
    "exec('1')",
    "1/0",
    "1 if 1 else 2",
    "1; 2",
    "1 % 2",
    "1 << 2",
    "0x10",
    "1e5",
    "",
    "   ",
    "()",
    "(1, 2)",
    "9" * 400 + " * 2",  # a number far too large to be a real calculation
    "1" + "0" * 400 + ".0",  # float literal overflowing to inf
    "(" * 300 + "1" + ")" * 300,  # nested deeper than the parser allows
    "1+" * 2000 + "1",  # longer than any real tool call
])
def test_refused(expr):
    start = time.perf_counter()
    assert use_calculator(expr) is None
    assert time.perf_counter() - start < 0.5


def test_time_limit_applies():
    assert use_calculator("1+2", time_limit=-1.0) is None
    assert use_calculator("'abc'.count('a')", time_limit=-1.0) is None


def test_never_calls_eval_or_exec(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the calculator must not eval/exec model text")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert use_calculator("3*(4+5)") == "27"
    assert use_calculator("'strawberry'.count('r')") == "3"


def test_large_but_bounded_numbers_work():
    digits = "9" * 100
    assert use_calculator(f"{digits} * {digits}") == str(int(digits) ** 2)
    assert int(digits).bit_length() * 2 < calculator.MAX_INT_BITS


def test_non_string_input_is_refused():
    assert use_calculator(None) is None  # type: ignore[arg-type]
