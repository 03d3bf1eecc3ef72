"""The sandbox that scores HumanEval completions (jaxchat/tasks/sandbox.py).

Three properties, because these scores become RL rewards:

- the verdict cannot be forged: a wrong program that exits early, kills itself, patches builtins or
  returns objects that claim equality fails; the nonce that carries the verdict is out of its reach;
- nothing escapes: writing outside the work dir (also via dir_fd, sqlite3, a spawned process, ctypes),
  the network, and processes that outlive the timeout. Each layer is tested on its own: the audit hook
  alone (the fallback), and the namespaces with the audit hook switched off (as if the program had
  found a hole in it);
- honest programs score as before (the fixture problems' canonical solutions pass).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from jaxchat.tasks import sandbox
from jaxchat.tasks.humaneval import program_and_tests
from jaxchat.tasks.sandbox import (
    AUDIT_HOOK_ONLY,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_BYTES,
    NAMESPACES,
    execute_code,
)
from tests.fixtures.tasks import HUMANEVAL_PROBLEMS

SUM_EVEN, HYPOTENUSE = HUMANEVAL_PROBLEMS[0], HUMANEVAL_PROBLEMS[1]


def _parts(problem: dict, completion: str) -> tuple[str, str]:
    conversation = {"messages": [{"role": "user", "content": problem["prompt"]}], "test": problem["test"],
                    "entry_point": problem["entry_point"]}
    return program_and_tests(conversation, completion)


def _run(code: str, layer: str, *, tests: str | None = None, timeout: float = 5.0, hook: bool = True,
         memory_bytes: int = DEFAULT_MEMORY_BYTES, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES):
    return sandbox._run(code, tests, timeout, memory_bytes, max_output_bytes, layer, hook)


@pytest.fixture(params=[NAMESPACES, AUDIT_HOOK_ONLY])
def layer(request) -> str:
    """Each containment layer this machine has (namespaces need Linux and util-linux's unshare)."""
    if request.param == NAMESPACES and sandbox.isolation() != NAMESPACES:
        pytest.skip("no namespace isolation on this machine")
    return request.param


@pytest.fixture
def namespaces() -> None:
    if sandbox.isolation() != NAMESPACES:
        pytest.skip("no namespace isolation on this machine")


def test_namespaces_where_the_machine_has_them():
    """Where the parent is root on Linux with unshare (CI's machine), the probe must find namespaces:
    a silent fallback to the audit hook would weaken every score without failing a test."""
    if not (sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("unshare")):
        pytest.skip("not a root Linux machine with unshare")
    assert sandbox.isolation() == NAMESPACES
    result = execute_code("print('hi')")
    assert result.success and result.stdout == "hi\n" and result.isolation == NAMESPACES


def test_falls_back_to_the_audit_hook_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_isolation_cache", None)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.isolation() == AUDIT_HOOK_ONLY
    assert "audit hook only" in caplog.text
    result = execute_code("print(1 + 1)")
    assert result.success and result.stdout == "2\n" and result.isolation == AUDIT_HOOK_ONLY


# --------------------------------------------------------------------------- honest programs


def test_honest_programs_and_limits(layer, tmp_path):
    ok = _run("print(sum(range(10)))", layer)
    assert ok.success and ok.stdout.strip() == "45" and ok.error is None and ok.isolation == layer

    loop = _run("while True:\n    pass\n", layer, timeout=1)
    assert not loop.success and loop.timed_out and "timed out" in loop.error

    big = _run("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", layer, memory_bytes=256 * 1024 ** 2)
    assert not big.success and big.memory_exceeded and "allocated" not in big.stdout

    outside = tmp_path / "escaped.txt"
    wrote = _run(f"open({str(outside)!r}, 'w').write('x')", layer)
    assert not wrote.success and not outside.exists()
    via_path = _run(f"import pathlib; pathlib.Path({str(tmp_path / 'p.txt')!r}).write_text('x')", layer)
    assert not via_path.success and not (tmp_path / "p.txt").exists()
    removed = tmp_path / "keep.txt"
    removed.write_text("precious")
    rm = _run(f"import os; os.remove({str(removed)!r})", layer)
    assert not rm.success and removed.read_text() == "precious"

    inside = _run("import pathlib, tempfile\nopen('scratch.txt', 'w').write('ok')\n"
                  "pathlib.Path('p.txt').write_text('!')\nwith tempfile.TemporaryDirectory() as d: pass\n"
                  "print(open('scratch.txt').read() + open('p.txt').read())", layer)
    assert inside.success and inside.stdout.strip() == "ok!", inside.stderr
    for code in ("import os; os.system('true')", "import subprocess; subprocess.run(['true'])",
                 "import socket; socket.create_connection(('127.0.0.1', 9))"):
        result = _run(code, layer)
        assert not result.success and "not allowed" in result.error, (code, result.error)

    noisy = _run("print('x' * 5000)", layer, max_output_bytes=100)
    assert noisy.success and len(noisy.stdout) <= 101

    libraries = _run("import collections, typing, enum, dataclasses, logging, doctest, subprocess, asyncio\n"
                     "import numpy as np\nP = collections.namedtuple('P', 'x y'); T = typing.TypeVar('T')\n"
                     "logging.getLogger('x').warning('logged'); print(P(1, 2).y + int(np.arange(3).sum()))", layer)
    assert libraries.success and libraries.stdout.strip() == "5", libraries.stderr


def test_canonical_solutions_pass_and_wrong_ones_fail(layer):
    for problem in HUMANEVAL_PROBLEMS:
        solution = problem["prompt"] + problem["canonical_solution"]
        for completion in (solution, f"Here:\n```python\n{solution}\n```\nDone."):
            program, tests = _parts(problem, completion)
            result = _run(program, layer, tests=tests)
            assert result.success and result.error is None, (problem["task_id"], result.error, result.stderr)
        program, tests = _parts(problem, problem["prompt"] + "    return None\n")
        wrong = _run(program, layer, tests=tests)
        assert not wrong.success and wrong.error.startswith("tests failed") and 'File "tests.py"' in wrong.stderr


def test_values_cross_between_the_processes_as_plain_data(layer):
    program = """
import collections, decimal, fractions
class Thing:
    pass
def echo(x, *, twice=False):
    return (x, x) if twice else x
def make(kind):
    return {"gen": (i * i for i in range(3)), "range": range(1, 9, 2), "keys": {"a": 1}.keys(),
            "counter": collections.Counter("abca"), "thing": Thing(), "big": 3 ** 100,
            "dec": decimal.Decimal("1.10"), "frac": fractions.Fraction(1, 3), "nan": float("nan")}[kind]
def fail():
    raise ValueError("no luck")
TABLE = [1, 2.5, "three"]
"""
    tests = """
import math
for v in [None, True, 0, -7, 2 ** 70, 1.5, -0.0, float("inf"), 1 + 2j, "é\\ud800", b"\\x00\\xff", bytearray(b"ab"),
          [1, [2, (3,)]], (), {"k": [1], (1, 2): None}, {1, 2}, frozenset({3})]:
    out = echo(v)
    assert out == v and type(out) is type(v), (v, out)
assert echo(5, twice=True) == (5, 5)
assert list(make("gen")) == [0, 1, 4] and make("gen") != [0, 1, 4]
assert make("range") == range(1, 9, 2) and make("keys") == {"a"} and make("counter") == {"a": 2, "b": 1, "c": 1}
assert make("big") == 3 ** 100 and str(make("dec")) == "1.10"
thing = make("thing")
assert thing == thing and thing != make("thing") and "Thing" in repr(thing)
assert make("frac") * 3 == 1 and math.isnan(make("nan"))
try:
    fail()
except ValueError as e:
    assert str(e) == "no luck"
else:
    raise AssertionError("no exception")
assert TABLE == [1, 2.5, "three"] and collections.Counter("aa")["a"] == 2  # the program's module, imported here
"""
    result = _run(program, layer, tests=tests)
    assert result.success, result.stderr


# --------------------------------------------------------------------------- the verdict cannot be forged

_WRONG_SUM_EVEN = SUM_EVEN["prompt"] + "    return 0\n"
EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "exit()": "exit()",
    "quit()": "quit()",
    "raise SystemExit": "raise SystemExit",
    "raise SystemExit(0)": "raise SystemExit(0)",
    "__main__ block": "if __name__ == '__main__':\n    import sys\n    sys.exit(0)",
    "doctest exit status": "import doctest, sys\nsys.exit(doctest.testmod().failed)",
    "kill itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "atexit os._exit(0)": "import atexit, os\natexit.register(os._exit, 0)",
    "close stdout and stderr": "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)",
    "redirect stdout": "import io, sys\nsys.stdout = sys.stderr = io.StringIO()",
    "exit inside the function": "def sum_even(numbers):\n    import sys\n    sys.exit(0)",
    "os._exit inside the function": "def sum_even(numbers):\n    import os\n    os._exit(0)",
    "SystemExit inside the function": "def sum_even(numbers):\n    raise SystemExit(0)",
    "equal to everything": "class Any:\n    def __eq__(self, other):\n        return True\n"
                           "def sum_even(numbers):\n    return Any()",
    "write to every descriptor": "import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'0' * 32 + b'\\n')\n"
                                 "    except OSError:\n        pass",
    "fake a ready message": "import os, stat\nfor fd in range(3, 64):\n    try:\n"
                            "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
                            "            os.write(fd, b'[\"ready\",[[\"check\",\"f\",null]]]\\n')\n"
                            "    except OSError:\n        pass",
}


@pytest.mark.parametrize("trick", EARLY_EXITS.values(), ids=EARLY_EXITS.keys())
def test_a_wrong_program_cannot_pass_by_exiting_or_faking(trick, layer):
    program, tests = _parts(SUM_EVEN, f"{_WRONG_SUM_EVEN}\n{trick}\n")
    result = _run(program, layer, tests=tests)
    assert not result.success and result.error, result


def test_the_tests_builtins_are_not_the_programs():
    """hypotenuse's tests check ``abs(candidate(3, 4) - 5.0) < 1e-9``: patching or shadowing abs must not help."""
    wrong = HYPOTENUSE["prompt"] + "    return 0.0\n"
    for trick in ("import builtins\nbuiltins.abs = lambda x: 0", "abs = lambda x: 0", "import math\nmath.fabs = abs"):
        program, tests = _parts(HYPOTENUSE, f"{wrong}\n{trick}\n")
        result = execute_code(program, tests=tests)
        assert not result.success and "AssertionError" in result.stderr, (trick, result)


def test_the_prompts_helpers_are_the_tests_helpers():
    """A HumanEval/38-like problem: the tests check decode_cyclic against the prompt's encode_cyclic. A
    completion that redefines the helper as the identity (and the entry point too) must not pass."""
    prompt = ('def encode_cyclic(s: str):\n    """Rotate each group of three characters."""\n'
              '    groups = [s[3 * i:3 * i + 3] for i in range((len(s) + 2) // 3)]\n'
              '    return "".join(g[1:] + g[0] if len(g) == 3 else g for g in groups)\n\n\n'
              'def decode_cyclic(s: str):\n    """Inverse of encode_cyclic."""\n')
    problem = {"prompt": prompt, "entry_point": "decode_cyclic",
               "test": "def check(candidate):\n    for s in ('abcdef', 'hello world', 'xy'):\n"
                       "        assert candidate(encode_cyclic(s)) == s\n"}
    right = prompt + "    return encode_cyclic(encode_cyclic(s))\n"
    cheat = prompt + "    return s\n\ndef encode_cyclic(s):\n    return s\n"
    program, tests = _parts(problem, right)
    assert execute_code(program, tests=tests).success
    program, tests = _parts(problem, cheat)
    result = execute_code(program, tests=tests)
    assert not result.success and "AssertionError" in result.stderr, result


def test_the_nonce_is_out_of_the_programs_reach(monkeypatch, layer):
    """Everything a program can look at (frames, gc, its descriptors, stdin, environment, /proc) holds no
    nonce: the known one never shows up in what it prints, and it fails."""
    nonce = "5eed" * 8
    monkeypatch.setattr(sandbox.secrets, "token_hex", lambda n: nonce)
    snoop = r"""
import gc, os, re, sys
found = set()
def look(x):
    found.update(re.findall(r"[0-9a-f]{32}", x if isinstance(x, str) else repr(x)))
def attempt(f):
    try:
        f()
    except BaseException as e:
        print("refused:", type(e).__name__, e)
def frames():
    f = sys._getframe()
    while f is not None:
        look(f.f_locals); look(f.f_globals); f = f.f_back
def objects():
    for o in gc.get_objects():
        look(o)
def descriptors():
    for fd in range(256):
        try:
            os.set_blocking(fd, False)
            look(os.read(fd, 1 << 16))
        except OSError:
            pass
def proc():
    for pid in os.listdir("/proc"):
        for name in ("cmdline", "environ", "fd"):
            try:
                p = f"/proc/{pid}/{name}"
                look(os.listdir(p) if name == "fd" else open(p, "rb").read())
            except OSError:
                pass
attempt(frames); attempt(objects); attempt(descriptors); attempt(proc)
attempt(lambda: look(sys.stdin.read())); look(dict(os.environ))
print("FOUND", sorted(found))
sys.exit(0)
"""
    program, tests = _parts(SUM_EVEN, f"{_WRONG_SUM_EVEN}\n{snoop}")
    result = _run(program, layer, tests=tests)
    assert not result.success and "FOUND" in result.stdout, result
    assert nonce not in result.stdout + result.stderr


def test_timeouts_in_the_program_and_in_its_functions():
    for completion in ("while True:\n    pass\n", SUM_EVEN["prompt"] + "    while True:\n        pass\n"):
        program, tests = _parts(SUM_EVEN, completion)
        result = execute_code(program, tests=tests, timeout=1)
        assert not result.success and result.timed_out and "timed out" in result.error


# --------------------------------------------------------------------------- escapes, each layer on its own


def _escape_targets(tmp_path: Path) -> list[Path]:
    """Directories outside the work dir: one that only the host sees (tmp_path) and, where we may write
    there, one that exists inside the namespaces too (the Python installation, bound read-only)."""
    return [tmp_path] + ([Path(sys.prefix)] if os.access(sys.prefix, os.W_OK) else [])


ESCAPES = {
    "dir_fd write": "import os\nfd = os.open({d!r}, os.O_RDONLY)\n"
                    "out = os.open({name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=fd)\nos.write(out, b'x')",
    "dir_fd unlink": "import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.unlink({keep!r}, dir_fd=fd)",
    "dir_fd from inside": "import os\nos.makedirs('a/b')\nroot = os.open('.', os.O_RDONLY)\nos.chdir('a/b')\n"
                          "up = os.open('..', os.O_RDONLY, dir_fd=root)  # the cwd's parent is inside, root's is not\n"
                          "os.close(os.open({name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=up))\nprint('ESCAPED')",
    "sqlite3": "import sqlite3\ndb = sqlite3.connect({path!r})\ndb.execute('create table t (x)')\ndb.commit()",
    "sqlite3 attach": "import sqlite3\ndb = sqlite3.connect(':memory:')\n"
                      "db.execute(\"attach database '{path}' as e\")\ndb.execute('create table e.t (x)')",
    "fork_exec": "import _posixsubprocess, os\nr, w = os.pipe()\n"
                 "_posixsubprocess.fork_exec(['/usr/bin/touch', {path!r}], [b'/usr/bin/touch'], True, (), None, None,"
                 " -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None, -1, None, False)\n"
                 "import time; time.sleep(0.3)",
    "ctypes system()": "import ctypes\nctypes.CDLL(None).system(b'touch {path}')",
}


@pytest.mark.parametrize("hook", [True, False], ids=["with audit hook", "namespaces alone"])
@pytest.mark.parametrize("escape", ESCAPES.values(), ids=ESCAPES.keys())
def test_nothing_is_written_or_deleted_outside(escape, hook, layer, tmp_path):
    if not hook and layer != NAMESPACES:
        pytest.skip("without the audit hook only the namespaces contain the program")
    for directory in _escape_targets(tmp_path):
        name = f"jaxchat-escape-{uuid.uuid4().hex}"
        keep = directory / f"{name}-keep"
        keep.write_text("precious")
        try:
            code = escape.format(d=str(directory), name=name, keep=keep.name, path=str(directory / name))
            result = _run(code, layer, hook=hook)
            assert not (hook and result.success), (code, result)  # without the hook, system() just returns 1
            assert not (directory / name).exists() and keep.read_text() == "precious", (code, result)
            assert "ESCAPED" not in result.stdout, (code, result)
        finally:
            for p in (directory / name, keep):
                p.unlink(missing_ok=True)


@pytest.mark.parametrize("escape", ESCAPES.values(), ids=ESCAPES.keys())
def test_escapes_through_execute_code(escape, tmp_path):
    """The escapes above, through the public entry point with its defaults (the layers this machine has)."""
    name, keep = "escaped.txt", tmp_path / "keep.txt"
    keep.write_text("precious")
    result = execute_code(escape.format(d=str(tmp_path), name=name, keep=keep.name, path=str(tmp_path / name)))
    assert not result.success and not (tmp_path / name).exists() and keep.read_text() == "precious", result
    assert "ESCAPED" not in result.stdout, result


def test_no_network(layer):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        for hook in ((True, False) if layer == NAMESPACES else (True,)):
            code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')"
            result = _run(code, layer, hook=hook)
            assert not result.success, result
            with pytest.raises(socket.timeout):
                server.accept()
    finally:
        server.close()


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


_DAEMON = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv({sleep!r}, ["sleep", {marker!r}])
    os._exit(0)
time.sleep(0.5)  # the grandchild is running, in its own session
print("spawned", flush=True)
{then}
"""


@pytest.mark.parametrize("then", ["time.sleep(60)", "pass"], ids=["timeout", "normal exit"])
def test_no_process_outlives_the_run(then, namespaces):
    """A double-forked grandchild in its own session (the audit hook off, so that it can start) dies
    with the namespace: at the timeout kill, and when the program simply exits."""
    marker = f"{int(time.time()) % 1000 + 1000}.{uuid.uuid4().int % 10 ** 9:09d}"  # a valid, unique sleep duration
    code = _DAEMON.format(sleep=shutil.which("sleep"), marker=marker, then=then)
    result = _run(code, NAMESPACES, hook=False, timeout=2)
    assert "spawned" in result.stdout, result
    assert result.timed_out == (then != "pass")
    deadline = time.monotonic() + 2
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _processes_with(marker)
    for pid in survivors:
        os.kill(pid, 9)
    assert not survivors


def test_a_setsid_child_does_not_survive_the_timeout():
    """``_posixsubprocess.fork_exec`` with ``call_setsid``: a child in its own session, which a process-group
    kill misses. Through the public entry point: refused by the audit hook, contained by the namespaces."""
    marker = f"{int(time.time()) % 1000 + 1000}.{uuid.uuid4().int % 10 ** 9:09d}"
    code = ("import _posixsubprocess, os, time\nr, w = os.pipe()\n"
            f"_posixsubprocess.fork_exec([{shutil.which('sleep')!r}, {marker!r}], [{shutil.which('sleep').encode()!r}],"
            " True, (), None, None, -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None, -1, None, False)\n"
            "time.sleep(60)")
    result = execute_code(code, timeout=1)
    time.sleep(0.2)
    survivors = _processes_with(marker)
    for pid in survivors:
        os.kill(pid, 9)
    assert not result.success and not survivors, result


def test_spawning_is_refused_by_the_audit_hook(layer):
    for code in ("import os\nos.fork()", "import _posixsubprocess\n_posixsubprocess.fork_exec()",
                 "import importlib.util as u, importlib.machinery as m\n"
                 "u.module_from_spec(m.PathFinder.find_spec('_posixsubprocess'))",
                 "import os\nos.forkpty()", "import multiprocessing\nmultiprocessing.Process(target=print).start()"):
        result = _run(code, layer)
        assert not result.success and ("not allowed" in result.error or "ImportError" in result.error), (code, result)


def test_the_namespaces_view(namespaces, tmp_path):
    """What the program sees with the audit hook off: nobody, no capabilities, a read-only system, no
    repository, no host processes, no network interfaces up."""
    code = r"""
import os
status = open('/proc/self/status').read()
print('uid', os.getuid(), 'caps', status.split('CapEff:')[1].split()[0])
print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
print('repo', os.path.exists(%r), 'tmp_path', os.path.exists(%r))
for target in ('/usr/jaxchat-escape', '/etc/jaxchat-escape', '/tmp/jaxchat-escape', '/dev/shm/x',
               '/proc/sys/kernel/hostname'):
    try:
        open(target, 'w').write('x')
        print('WROTE', target)
    except OSError as e:
        print('refused', target, e.errno)
print('net', open('/proc/net/dev').read().count(':'))
""" % (str(Path(__file__).resolve().parent), str(tmp_path))
    result = _run(code, NAMESPACES, hook=False)
    assert result.success, result
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if not line.startswith("refused"))
    expected_uid = "65534" if os.geteuid() == 0 else "0"
    assert lines["uid"] == f"{expected_uid} caps 0000000000000000"
    assert lines["pids"] == "[1]" and lines["repo"] == "False tmp_path False" and "WROTE" not in result.stdout
    assert lines["net"] == "1"  # only lo


def test_user_namespace_mode(namespaces, monkeypatch):
    """The mode used when the parent is not root (user namespace, capabilities dropped), checked here
    even as root: it must isolate just as well."""
    monkeypatch.setattr(sandbox, "_namespace_mode", "userns")
    code = ("import os\nprint(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
            "try:\n    open('/usr/jaxchat-escape', 'w')\nexcept OSError as e:\n    print('refused', e.errno)")
    result = _run(code, NAMESPACES, hook=False)
    if "isolation setup failed" in (result.error or ""):
        pytest.skip(f"user namespaces unavailable: {result.error}")
    assert result.success and result.stdout.split() == ["0", "0000000000000000", "refused", "30"], result
    assert not os.path.exists("/usr/jaxchat-escape")


def test_setup_failure_is_reported_not_ignored(namespaces, monkeypatch):
    """If the namespace setup cannot isolate, the program must not run at all."""
    monkeypatch.setattr(sandbox, "_bind_plan_cache", [["/nonexistent-for-jaxchat", "dir", ""]])
    result = _run("print('ran')", NAMESPACES)
    assert not result.success and "ran" not in result.stdout
    assert re.search(r"isolation setup failed", result.error), result
