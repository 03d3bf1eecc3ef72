"""Run untrusted model-written Python (HumanEval completions) and score it against trusted tests.

These scores are rewards, so the verdict must be one the program cannot forge, and the program must
not be able to touch anything outside its scratch directory while it runs.

**The verdict.** ``execute_code(program, tests=...)`` runs two processes:

- the *program process* executes the program (HumanEval: the prompt's imports and the completion's
  code), then serves calls: it exports the names the program defined and, on request, calls one of
  its functions and sends back the result;
- the *test process* executes the tests (HumanEval: the prompt's helpers, ``check`` and
  ``check(entry_point)``; see ``humaneval.program_and_tests``) in its own interpreter. A name the
  tests use but do not define (``candidate``'s function, a module the program imported) is taken
  from the program's exports: a function becomes a stub that sends the arguments to the program
  process over a socket and returns the reply, a module is imported afresh (standard library
  only), a value is copied. Replies are decoded as plain data only (None, bool, int, float, complex,
  str, bytes, bytearray, list, tuple, dict, set, frozenset, range, dict views, Decimal, Fraction, an
  iterator's items, or an exception's type name and message); any other object arrives as an opaque
  value that equals only itself. No code of the program ever runs in the test process, and the
  tests' builtins (``abs``, ``sorted``…) are the real ones whatever the program defines or patches.

The success signal is a per-run random nonce (``secrets.token_hex(16)``) that the parent writes to
the test process's stdin; the test process writes it back, on a pipe that only it and the parent
hold, after the test code (``check(...)``) returned normally, and exits with status 0.
``ExecutionResult.success`` is True only when that pipe holds exactly the nonce, the test process
exited 0 and nothing timed out. The program cannot forge it, even though it can read its own source:
the nonce and the tests are not in its process at all (not in its source, files, memory, frames,
environment or file descriptors, so frame walking, ``gc``, ``/proc/self`` and reading stdin find
nothing), it has no handle on either pipe, and it cannot reach the test process: under namespaces
that process is in another pid namespace (and, when the parent is root, another user); under the
audit hook alone the hook refuses other processes' /proc entries, signals and ctypes (no ptrace).
Exiting early — ``sys.exit(0)``, ``os._exit(0)``, ``exit()``, ``quit()``, ``raise SystemExit``, a
``__main__`` block, ``atexit``, killing itself, closing stdout, exiting inside the function under
test — only closes the socket, and a test process whose program went away stops with status 3
without writing the nonce. Garbage on the socket stops it the same way. Without ``tests`` there is
no verdict: success is the program's exit status 0, which a program can always choose, so never use
that as a reward.

**What the verdict does not protect against.** A program that computes the right answers, or
hard-codes them for inputs it has memorised (the tests are public) or special-cases the inputs it is
called with; one that reaches the test process through a hole in the audit hook when that is the
only layer (see below); an interpreter crash only makes it fail. The tests and the prompt's helpers
are trusted: a wrong test gives a wrong verdict. A test that passes a function or a mutable object
to the program gets a copy's effects only (HumanEval's tests pass plain data).

**Containment, in layers** (``ExecutionResult.isolation`` says which ran):

1. ``"namespaces"`` (Linux, ``unshare`` from util-linux; probed once per process by running a
   program): the program process starts as pid 1 of new mount, pid, network, IPC and UTS
   namespaces (plus a user namespace when the parent is not root). Before any untrusted code runs,
   a setup stage (a separate ``python -S`` with ctypes, so that ctypes never loads where the
   program runs) builds a new root: a read-only tmpfs holding read-only, nosuid, nodev bind mounts
   of the system directories (/usr, /bin, /lib*, /etc) and of the Python installation, five device
   nodes (null, zero, full, random, urandom), the namespace's own /proc (read-only) and the scratch
   directory: a private 64 MiB tmpfs holding a copy of the program, the only writable place
   (nosuid, nodev, noexec), so not even the host's disk fills up; it pivots into the new root and
   detaches the host's. Then it drops privileges — to uid/gid 65534 (nobody) when the parent is
   root, otherwise all capabilities — empties the bounding and ambient sets, locks securebits
   ``NOROOT``, sets ``no_new_privs`` and execs the guard. If any step fails, the program does not
   run (the run fails with "isolation setup failed"). So nothing the program does can write outside
   its directory (the rest of the file system is read-only or absent: host sockets, /sys, /dev/shm,
   /tmp and the repository are not there), reach the network (its network namespace has only a
   loopback interface, down) or see other processes. Whatever it starts lives in its pid namespace:
   when the guard exits, or at the timeout (the parent SIGKILLs the namespace's init by its host pid
   and ``unshare``'s process group; ``unshare --kill-child`` does it if the parent dies), the kernel
   kills every process left in the namespace.
2. ``"audit-hook only"``: the fallback where namespaces are not available, and the second layer
   inside them. A fresh ``python -I -S -B`` process (site-packages on ``sys.path``, .pth files not
   run) in its own session, started in the scratch directory (its cwd, ``HOME`` and ``TMPDIR``);
   rlimits set before the program runs (address space, CPU seconds, file size, no core dumps; hard
   equal to soft, and changing them is refused); an audit hook (PEP 578, cannot be removed)
   refusing: opening for writing outside the scratch directory, opening a directory outside it or
   a relative path with a ``..`` component (so no ``dir_fd`` reaches outside), deleting, renaming,
   linking, chmod-ing or making directories outside it (paths relative to a ``dir_fd`` are resolved
   through /proc/self/fd), symlinks, other processes' /proc entries, starting processes
   (os.system/exec*/spawn*/fork/forkpty/posix_spawn/subprocess; ``_posixsubprocess.fork_exec`` is
   replaced before the program runs and loading the module again is refused), signalling processes,
   sockets that connect, bind or resolve, sqlite3 (``ATTACH`` writes anywhere), ``fcntl.ioctl``, and
   ``ctypes`` and the ``_testcapi``-like modules (refused with ImportError, so optional uses such as
   numpy's still import). The hook only calls functions it captured before the program ran, but it
   is still a check inside the program's own interpreter: a hole in it (a path object whose
   ``__fspath__`` answers differently on each call, an interpreter memory-corruption bug) is an
   escape when it is the only layer. Alone, it is protection against accidents, not an adversary.

stdout and stderr go to files outside the scratch directory (the processes hold only their file
descriptors; the file-size limit bounds them); the result keeps the last ``max_output_bytes`` of
each. Every wait is bounded: by the timeout, plus at most 5 s to reap a SIGKILLed process.

Cost per problem, measured twice over HumanEval's 164 canonical solutions on a shared 2-core
machine: 76–88 ms median wall time with namespaces (64–69 ms of CPU in the children), 49–56 ms with
the audit hook only (45–50 ms), against 70–72 ms (47–50 ms) for the single ``python -I`` process
this module ran before. The namespaces themselves cost about 20 ms of CPU and 25–30 ms of wall time
per run (``unshare``, the setup stage's interpreter and ctypes, namespace teardown).

No ``preexec_fn`` anywhere: it is documented as unsafe when the parent has threads (JAX has many).
"""

from __future__ import annotations

import logging
import marshal
import os
import secrets
import select
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
_FILE_SIZE_LIMIT = 16 * 1024 * 1024
_WORK_DIR_BYTES = 64 * 1024 * 1024  # under namespaces the scratch directory is a tmpfs of this size

NAMESPACES = "namespaces"
AUDIT_HOOK_ONLY = "audit-hook only"

_NOBODY = 65534  # uid/gid the program runs as under namespaces when the parent is root
_SETUP_FAILED = 125  # exit status of the namespace setup stage when it could not isolate
_PROGRAM_GONE = 3  # exit status of the test process when the program stopped before the tests ended
_GRACE_S = 0.5  # after the tests, how long the program may take to flush and exit before it is killed
_REAP_S = 5.0  # bound on waiting for a SIGKILLed process to be reaped

# --------------------------------------------------------------------------- code run in the children
# Each child is ``python -I -S -B -c <source> <marshalled config, hex>``; the sources below are concatenated.
# They import little: at every run, each millisecond of start-up counts.

# The audit hook: the in-process layer (both processes). Everything it calls is captured before the
# program runs (a program can rebind os.path.realpath, builtins.isinstance... but not these).
_HOOK = r'''
def _install_audit_hook(root):
    """Refuse writes outside ``root`` (None: anywhere), processes, sockets, ctypes... (see sandbox.py)."""
    import os, stat, sys
    _lstat, _stat, _readlink, _getcwd = os.lstat, os.stat, os.readlink, os.getcwd
    _fspath, _getpid = os.fspath, os.getpid
    _S_ISLNK, _S_ISDIR = stat.S_ISLNK, stat.S_ISDIR
    _type, _str, _bytes, _int, _len, _decode = type, str, bytes, int, len, bytes.decode
    _PermissionError, _ImportError, _OSError, _TypeError = PermissionError, ImportError, OSError, TypeError
    _write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    # event -> ((index of a path argument that must lie inside root, index of its dir_fd argument or None), ...)
    _path_events = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)), "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.link": ((0, 2), (1, 3)), "os.truncate": ((0, None),),
        "os.utime": ((0, 3),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),), "os.setxattr": ((0, None),),
        "os.removexattr": ((0, None),), "os.chflags": ((0, None),), "os.lchflags": ((0, None),),
        "os.lchmod": ((0, None),), "os.lchown": ((0, None),), "shutil.rmtree": ((0, 1),),
        "shutil.copyfile": ((1, None),), "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
        "shutil.copytree": ((1, None),), "shutil.move": ((0, None), (1, None)), "shutil.chown": ((0, None),),
    }
    _forbidden = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
                  "os.killpg", "os.symlink", "os.startfile", "subprocess.Popen", "pty.spawn", "socket.connect",
                  "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
                  "socket.gethostbyaddr", "socket.getnameinfo", "sys.remote_exec", "webbrowser.open", "ctypes.",
                  "sqlite3.", "resource.setrlimit", "resource.prlimit", "fcntl.ioctl", "signal.pidfd_send_signal")
    _refused_modules = frozenset(("_ctypes", "ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi",
                                  "_testbuffer", "_testmultiphase", "_testsinglephase", "_testclinic",
                                  "_testimportmultiple", "_xxsubinterpreters", "_xxinterpchannels",
                                  "_ctypes_test", "_xxtestfuzz"))

    def text(p):
        t = _type(p)
        if t is _str:
            return p
        if t is _bytes:
            return _decode(p, "utf-8", "surrogateescape")
        v = _fspath(p)  # a path-like object: one call, its value is what is checked
        if _type(v) is _bytes:
            return _decode(v, "utf-8", "surrogateescape")
        if _type(v) is not _str:
            raise _PermissionError("sandbox: unsupported path object")
        return v

    def resolve(path):
        """The absolute path with every symlink resolved (os.path.realpath without Python-level helpers)."""
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        parts, todo, links = [], path.split("/")[::-1], 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if parts:
                    parts.pop()
                continue
            candidate = "/" + "/".join(parts + [c])
            try:
                mode = _lstat(candidate).st_mode
            except _OSError:
                parts.append(c)
                continue
            if _S_ISLNK(mode):
                links += 1
                if links > 40:
                    raise _PermissionError("sandbox: too many levels of symbolic links")
                target = _readlink(candidate)
                if target.startswith("/"):
                    parts = []
                todo.extend(target.split("/")[::-1])
            else:
                parts.append(c)
        return "/" + "/".join(parts)

    def at(dir_fd, p):
        """``p`` as the kernel will see it: relative to the directory open as ``dir_fd``, if any."""
        if dir_fd is None or dir_fd == -1 or dir_fd == -100 or p.startswith("/"):
            return p
        try:
            return _readlink(f"/proc/self/fd/{dir_fd}") + "/" + p
        except (_OSError, _TypeError):
            refuse("a dir_fd that cannot be resolved")

    top = None if root is None else resolve(root)
    proc_dev = _stat("/proc").st_dev if os.path.isdir("/proc") else None

    def inside(real):
        return top is not None and (real == top or real.startswith(top + "/"))

    def refuse(what, path=None):
        raise _PermissionError(f"sandbox: {what} is not allowed" + ("" if path is None else f": {path!r}"))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path is None or _type(path) is _int:
                return  # an already-open file descriptor
            p = text(path)
            if not p.startswith("/") and ".." in p.split("/"):
                # a relative path is checked from the cwd, but os.open(dir_fd=...) resolves it from another
                # directory (inside: directories outside cannot be opened) that '..' could leave
                refuse("a relative path with '..'", p)
            writing = (_type(mode) is _str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
                _type(flags) is _int and flags & _write_flags)
            if writing:
                if not inside(resolve(p)):
                    refuse("writing outside the work dir", p)
                return
            try:
                st = _stat(p)
            except _OSError:
                return
            if _S_ISDIR(st.st_mode):
                if not inside(resolve(p)):
                    refuse("opening a directory outside the work dir", p)  # would be a dir_fd for escapes
            elif st.st_dev == proc_dev:
                real = resolve(p).split("/")
                if _len(real) > 2 and real[2].isdigit() and real[2] != _str(_getpid()):
                    refuse("reading another process's /proc entries", p)
        elif event in _path_events:
            for i, j in _path_events[event]:
                if i < _len(args) and args[i] is not None and _type(args[i]) is not _int:
                    p = at(args[j] if j is not None and j < _len(args) else None, text(args[i]))
                    if not inside(resolve(p)):
                        refuse(f"{event} outside the work dir", p)
        elif event == "import":
            if args[0] in _refused_modules:
                raise _ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event.startswith(_forbidden):
            refuse(event)

    sys.addaudithook(hook)


def _refuse_fork_exec(*args, **kwargs):
    raise PermissionError("sandbox: starting processes is not allowed")
'''

# The wire format between the program and the test process: one JSON document per line. Values are
# encoded by type; the decoder (which runs in the test process) builds plain data only.
_CODEC = r'''
from _json import encode_basestring_ascii as _quote, make_scanner as _make_scanner

_MAX_DEPTH = 100
_MAX_ITEMS = 1_000_000
_MAX_LINE = 64 * 1024 * 1024


def _enc(x, depth=0):
    """A JSON-able encoding of ``x`` (plain data; anything else becomes an opaque description)."""
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -(1 << 53) < x < (1 << 53) else ["i", format(x, "x")]
    if depth > _MAX_DEPTH:
        return _opaque(x)
    d = depth + 1
    if isinstance(x, int):  # subclasses (IntEnum...) travel as their int value
        return _enc(int.__int__(x), d)
    if isinstance(x, float):
        return ["f", float.__repr__(float.__float__(x))]
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, list):
        return ["l", [_enc(e, d) for e in list.__iter__(x)]]
    if isinstance(x, tuple):
        return ["t", [_enc(e, d) for e in tuple.__iter__(x)]]
    if isinstance(x, dict):
        return ["d", [[_enc(k, d), _enc(v, d)] for k, v in dict.items(x)]]
    if isinstance(x, frozenset):
        return ["fs", [_enc(e, d) for e in frozenset.__iter__(x)]]
    if isinstance(x, set):
        return ["s", [_enc(e, d) for e in set.__iter__(x)]]
    if isinstance(x, bytes):
        return ["b", bytes.hex(x)]
    if isinstance(x, bytearray):
        return ["ba", bytearray.hex(x)]
    if t is complex:
        return ["c", float.__repr__(x.real), float.__repr__(x.imag)]
    if t is range:
        return ["r", _enc(x.start, d), _enc(x.stop, d), _enc(x.step, d)]
    if t is type({}.keys()):
        return ["dk", [_enc(e, d) for e in x]]
    if t is type({}.values()):
        return ["dv", [_enc(e, d) for e in x]]
    if t is type({}.items()):
        return ["di", [[_enc(k, d), _enc(v, d)] for k, v in x]]
    module, name = getattr(t, "__module__", ""), getattr(t, "__name__", "")
    if module == "decimal" and name == "Decimal":
        return ["dec", str(x)]
    if module == "fractions" and name == "Fraction":
        return ["fr", _enc(x.numerator, d), _enc(x.denominator, d)]
    if module == "numpy" and getattr(x, "shape", None) == () and hasattr(x, "item"):
        return _enc(x.item(), d)  # a numpy scalar: its Python value
    if hasattr(t, "__next__") and hasattr(t, "__iter__"):  # an iterator (generator, map, filter, zip...)
        items = []
        for e in x:
            if len(items) >= _MAX_ITEMS:
                return _opaque(x)
            items.append(_enc(e, d))
        return ["it", items]
    return _opaque(x)


def _opaque(x):
    try:
        text = repr(x)[:200]
    except Exception:
        text = "?"
    try:
        truthy = bool(x)
    except Exception:
        truthy = True
    return ["o", str(getattr(type(x), "__qualname__", "object")), str(text), truthy is True]


class _Opaque:
    """A value the program returned that is not plain data: it equals only itself."""

    __slots__ = ("type_name", "text", "truthy")

    def __init__(self, type_name, text, truthy):
        self.type_name, self.text, self.truthy = type_name, text, truthy

    def __repr__(self):
        return f"<{self.type_name} from the program: {self.text}>"

    def __bool__(self):
        return self.truthy


def _dec(v, depth=0):
    """Plain data from an encoding; ValueError/TypeError for anything malformed."""
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return v
    if t is not list or not v or type(v[0]) is not str or depth > 2 * _MAX_DEPTH:
        raise ValueError("malformed value")
    tag, n, d = v[0], len(v), depth + 1
    if tag in ("l", "t", "s", "fs", "it", "dk", "dv") and n == 2 and type(v[1]) is list:
        items = [_dec(e, d) for e in v[1]]
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "fs":
            return frozenset(items)
        if tag == "it":
            return iter(items)
        if tag == "dk":
            return dict.fromkeys(items).keys()
        return dict(enumerate(items)).values()
    if tag in ("d", "di") and n == 2 and type(v[1]) is list:
        pairs = []
        for p in v[1]:
            if type(p) is not list or len(p) != 2:
                raise ValueError("malformed dict")
            pairs.append((_dec(p[0], d), _dec(p[1], d)))
        return dict(pairs) if tag == "d" else dict(pairs).items()
    strings = n >= 2 and all(type(e) is str for e in v[1:])
    if tag == "f" and n == 2 and strings:
        return float(v[1])
    if tag == "i" and n == 2 and strings:
        return int(v[1], 16)
    if tag == "b" and n == 2 and strings:
        return bytes.fromhex(v[1])
    if tag == "ba" and n == 2 and strings:
        return bytearray.fromhex(v[1])
    if tag == "c" and n == 3 and strings:
        return complex(float(v[1]), float(v[2]))
    if tag == "dec" and n == 2 and strings:
        import decimal
        return decimal.Decimal(v[1])
    if tag == "r" and n == 4:
        args = [_dec(e, d) for e in v[1:]]
        if any(type(a) is not int for a in args):
            raise ValueError("malformed range")
        return range(*args)
    if tag == "fr" and n == 3:
        num, den = _dec(v[1], d), _dec(v[2], d)
        if type(num) is not int or type(den) is not int:
            raise ValueError("malformed fraction")
        import fractions
        return fractions.Fraction(num, den)
    if tag == "o" and n == 4 and type(v[1]) is str and type(v[2]) is str and type(v[3]) is bool:
        return _Opaque(v[1], v[2], v[3])
    raise ValueError(f"malformed value with tag {tag!r}")


def _dumps(v):
    """JSON for the values ``_enc`` makes (None, bool, int, str, lists of them), ASCII only. The json
    module would import re and enum: 9 ms of every start."""
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is str:
        return _quote(v)
    if t is list:
        return "[" + ",".join([_dumps(e) for e in v]) + "]"
    raise TypeError(f"cannot send {t.__name__}")


class _ScanContext:  # what make_scanner reads (the json module's C decoder, without the module)
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"unexpected {name}")


_SCAN = _make_scanner(_ScanContext())


def _loads(line):
    text = line.decode("ascii")
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        raise ValueError("malformed message") from None
    if end != len(text):
        raise ValueError("trailing data in message")
    return value


def _send(wfile, message):
    wfile.write(_dumps(message).encode("ascii") + b"\n")
    wfile.flush()


def _recv(rfile):
    """The next message, or None at end of stream; ValueError for an oversized or malformed one."""
    line = rfile.readline(_MAX_LINE + 1)
    if not line:
        return None
    if len(line) > _MAX_LINE or not line.endswith(b"\n"):
        raise ValueError("message too long or truncated")
    return _loads(line[:-1])


def _channel(fd):
    """Buffered reader and writer on the socket ``fd`` (the socket module costs 4 ms to import)."""
    return open(fd, "rb", closefd=False), open(fd, "wb")


def _set_limits(limits):
    import resource
    for name, value in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (AttributeError, ValueError, OSError):
            pass  # a platform without this limit: the other layers still apply
'''

# The program process: limits, hook, the program, then (with tests) serve calls until the test process hangs up.
_GUARD = _HOOK + _CODEC + r'''

def _exports(namespace):
    import sys
    exports = []
    for name, value in list(namespace.items()):
        if type(name) is not str or name.startswith("__"):
            continue
        if type(value) is type(sys):
            exports.append([name, "m", str(getattr(value, "__name__", ""))])
        elif callable(value):
            exports.append([name, "f", None])
        else:
            try:
                exports.append([name, "v", _enc(value)])
            except Exception:
                exports.append([name, "v", _opaque(value)])
    return exports


def _serve(fd, namespace):
    rfile, wfile = _channel(fd)
    _send(wfile, ["ready", _exports(namespace)])
    while True:
        message = _recv(rfile)
        if message is None:
            return  # the tests are over
        _, name, args, kwargs = message
        try:
            if name not in namespace:
                raise NameError(f"name {name!r} is not defined")
            result = namespace[name](*[_dec(a) for a in args], **{k: _dec(v) for k, v in kwargs})
            reply = ["ok", _enc(result)]
        except Exception as exc:
            try:
                reply = ["err", type(exc).__name__, str(exc)[:2000]]
            except Exception:
                reply = ["err", "Exception", "?"]
        _send(wfile, reply)


def _guard_main():
    import builtins, marshal, os, sys
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    _set_limits(cfg["limits"])
    sys.path.extend(p for p in cfg["site"] if p not in sys.path)  # started with -S: no .pth processing
    import _sitebuiltins
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    import _posixsubprocess
    _posixsubprocess.fork_exec = _refuse_fork_exec  # subprocess still imports; spawning is refused
    with open(cfg["program"], encoding="utf-8") as f:
        source = f.read()
    if cfg["hook"]:
        _install_audit_hook(os.getcwd())
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(source, cfg["program"], "exec"), namespace)
    if cfg["fd"] is not None:
        _serve(cfg["fd"], namespace)


_guard_main()
'''

# The test process: trusted tests, with the program's names bound to stubs that call the program process.
_RUNNER = _HOOK + _CODEC + r'''

def _abort(why):
    import os, sys
    sys.stderr.write(f"sandbox: {why}\n")
    sys.stderr.flush()
    os._exit(3)


def _exception(name, message):
    import builtins
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return RuntimeError(f"{name}: {message}")


class _Remote:
    """A function of the program: called with plain data, it runs in the program process."""

    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return f"<function {self._name} (runs in the sandboxed program)>"

    def __call__(self, *args, **kwargs):
        message = ["call", self._name, [_enc(a) for a in args], [[k, _enc(v)] for k, v in kwargs.items()]]
        try:
            _send(_CONN[1], message)
            reply = _recv(_CONN[0])
        except OSError:
            reply = None
        except Exception as exc:  # malformed JSON, too deep, too long
            _abort(f"malformed reply from the program ({type(exc).__name__})")
        if reply is None:
            _abort("the program stopped while the tests were running")
        try:
            if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
                return _dec(reply[1])
            ok = type(reply) is list and len(reply) == 3 and reply[0] == "err"
            if not (ok and type(reply[1]) is str and type(reply[2]) is str):
                raise ValueError("unexpected reply")
        except Exception as exc:
            _abort(f"malformed reply from the program ({type(exc).__name__}: {exc})")
        raise _exception(reply[1], reply[2])


_CONN = []


def _runner_main():
    import builtins, marshal, os, sys
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    given = marshal.loads(sys.stdin.buffer.read())  # from the parent, trusted
    sys.stdin.close()
    nonce, tests = given["nonce"], given["tests"]
    _set_limits(cfg["limits"])
    _CONN.extend(_channel(cfg["fd"]))
    if cfg["hook"]:
        _install_audit_hook(None)
    try:
        ready = _recv(_CONN[0])
    except Exception:
        ready = None
    if type(ready) is not list or len(ready) != 2 or ready[0] != "ready" or type(ready[1]) is not list:
        _abort("the program stopped before the tests started")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    builtin_names = set(dir(builtins))
    for item in ready[1]:
        if type(item) is not list or len(item) != 3 or type(item[0]) is not str or not item[0].isidentifier():
            _abort("malformed exports from the program")
        name, kind, payload = item
        if name in builtin_names or name.startswith("__"):
            continue  # the tests' builtins stay the real ones
        if kind == "f":
            namespace[name] = _Remote(name)
        elif kind == "m" and type(payload) is str and payload.partition(".")[0] in sys.stdlib_module_names:
            try:
                __import__(payload)
                namespace[name] = sys.modules[payload]
            except Exception:  # a module that does not import here: the name stays undefined
                pass
        elif kind == "v":
            try:
                namespace[name] = _dec(payload)
            except Exception as exc:
                _abort(f"malformed exports from the program ({type(exc).__name__})")
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
    except BaseException:
        import linecache, traceback  # only when the tests failed: their source lines in the traceback
        linecache.cache["tests.py"] = (len(tests), None, tests.splitlines(True), "tests.py")
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(cfg["verdict"], nonce.encode("ascii"))


_runner_main()
'''

# The namespace setup stage: runs as (namespace) root inside ``unshare``, builds the new root, drops
# privileges and execs the guard. It imports ctypes, which is why it is a separate interpreter.
_ISOLATE = r'''
import ctypes, marshal, os, sys


def _isolate():
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret, what):
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
    RDONLY, NOSUID, NODEV, NOEXEC = 0x1, 0x2, 0x4, 0x8  # MOUNT_ATTR_*
    AT_FDCWD, AT_RECURSIVE, MNT_DETACH = -100, 0x8000, 2
    SYS_MOUNT_SETATTR = 442  # the same on every architecture
    SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}[os.uname().machine]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.syscall.restype = ctypes.c_long

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    def mount(src, dst, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {src} on {dst}")

    def set_attr(path, attr_set, attr_clr=0, recursive=False):
        attr = MountAttr(attr_set, attr_clr, 0, 0)
        ret = libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(path.encode()),
                           ctypes.c_long(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                           ctypes.c_long(ctypes.sizeof(attr)))
        check(ret, f"mount_setattr {path}")

    new = cfg["newroot"]
    os.umask(0o022)  # the directories made in the new root must be traversable by the program's user
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for path, kind, target in cfg["binds"]:
        inner = new + path
        os.makedirs(os.path.dirname(inner), exist_ok=True)
        if kind == "symlink":
            os.symlink(target, inner)
        elif kind == "dir":
            os.makedirs(inner, exist_ok=True)
            mount(path, inner, None, MS_BIND | MS_REC)
            set_attr(inner, RDONLY | NOSUID | NODEV, recursive=True)
        else:  # a device node
            open(inner, "w").close()
            mount(path, inner, None, MS_BIND)
            set_attr(inner, RDONLY | NOSUID | NOEXEC)
    work = cfg["work"]  # a private tmpfs at the same path, holding a copy of the program
    with open(work + "/program.py", "rb") as f:
        program = f.read()
    os.makedirs(new + work, exist_ok=True)
    owner = f",uid={cfg['uid']},gid={cfg['uid']}" if cfg["drop"] == "setuid" else ""
    mount("tmpfs", new + work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={cfg['work_bytes']},mode=0755{owner}")
    with open(new + work + "/program.py", "wb") as f:
        f.write(program)
    os.makedirs(new + "/proc", exist_ok=True)
    mount("/proc", new + "/proc", None, MS_BIND | MS_REC)  # unshare --mount-proc: this pid namespace's
    set_attr(new + "/proc", RDONLY | NOSUID | NODEV | NOEXEC, recursive=True)
    os.makedirs(new + "/tmp", exist_ok=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        if not os.path.lexists(new + "/dev/" + name):
            os.symlink(target, new + "/dev/" + name)
    set_attr(new, RDONLY)
    os.chdir(new)
    check(libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), ctypes.c_char_p(b"."), ctypes.c_char_p(b".")), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir(work)

    PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 28, 38, 47
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            check(-1, "drop the capability bounding set")
    check(libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0), "clear ambient capabilities")  # PR_CAP_AMBIENT_CLEAR_ALL
    # NOROOT (uid 0 gains no capabilities at exec) and NO_CAP_AMBIENT_RAISE, locked; KEEP_CAPS and
    # NO_SETUID_FIXUP locked off, so that setresuid below clears every capability
    check(libc.prctl(PR_SET_SECUREBITS, 0xEB, 0, 0, 0), "set securebits")
    if cfg["drop"] == "setuid":
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    else:  # inside a user namespace: keep the uid, lose every capability

        class CapHeader(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class CapData(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        data = (CapData * 2)()
        check(libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), data), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "set the parent-death signal")  # cleared by setresuid
    if open("/proc/self/status").read().split("CapEff:")[1].split()[0].strip("0"):
        raise OSError("capabilities survived the drop")
    os.execv(cfg["argv"][0], cfg["argv"])


try:
    _isolate()
except BaseException as exc:
    sys.stderr.write(f"sandbox: isolation setup failed: {exc}\n")
    sys.stderr.flush()
    os._exit(125)
'''


@dataclass
class ExecutionResult:
    """Outcome of ``execute_code``.

    ``success``: with ``tests``, the tests ran to the end and passed (the verdict in the module
    docstring); without, the program exited with status 0. Both within the limits. ``isolation``:
    the containment that ran, ``"namespaces"`` or ``"audit-hook only"``.
    """

    success: bool
    stdout: str
    stderr: str
    error: str | None = None  # one line: why it failed
    timed_out: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None  # the program process's exit status
    isolation: str = AUDIT_HOOK_ONLY


# --------------------------------------------------------------------------- which layer this machine has

_isolation_lock = threading.Lock()
_isolation_cache: str | None = None
_namespace_mode: str | None = None  # "setuid" (parent is root) or "userns"


def isolation() -> str:
    """The containment ``execute_code`` uses on this machine: ``"namespaces"`` when a probe run in
    namespaces works, else ``"audit-hook only"``. Probed once per process (tens of milliseconds)."""
    global _isolation_cache, _namespace_mode
    with _isolation_lock:
        if _isolation_cache is None:
            _isolation_cache, why = AUDIT_HOOK_ONLY, "not Linux or no unshare (util-linux) on PATH"
            if sys.platform.startswith("linux") and shutil.which("unshare"):
                modes = ("setuid", "userns") if os.geteuid() == 0 else ("userns",)
                for mode in modes:
                    _namespace_mode = mode
                    probe = _run("print('ok')", None, 10.0, DEFAULT_MEMORY_BYTES, 4096, NAMESPACES, True)
                    if probe.success and probe.stdout.strip() == "ok":
                        _isolation_cache = NAMESPACES
                        break
                    why = probe.error
            if _isolation_cache != NAMESPACES:
                logger.warning("sandbox: no namespace isolation on this machine (%s); untrusted code runs "
                               "with the in-process audit hook only", why)
        return _isolation_cache


_bind_plan_cache: list[list[str]] | None = None


def _bind_plan() -> list[list[str]]:
    """What the new root contains besides the scratch directory: [host path, kind, symlink target]."""
    global _bind_plan_cache
    if _bind_plan_cache is not None:
        return _bind_plan_cache
    plan, symlinks, dirs = [], [], []
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"):
        if os.path.islink(path):
            target = os.readlink(path)
            symlinks.append((path, os.path.normpath(os.path.join("/", target))))
            plan.append([path, "symlink", target])
        elif os.path.isdir(path):
            dirs.append(path)
            plan.append([path, "dir", ""])
    paths = sysconfig.get_paths()
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
              *site.getsitepackages(), *(paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    python |= {os.path.realpath(p) for p in python if p}

    def covered(p: str) -> bool:
        for link, target in symlinks:  # follow the replicated top-level symlinks (/lib -> usr/lib)
            if p == link or p.startswith(link + "/"):
                p = target + p[len(link):]
        return any(p == d or p.startswith(d + "/") for d in dirs)

    for p in sorted((os.path.normpath(p) for p in python if p and os.path.isdir(p)), key=len):
        if not covered(p):
            dirs.append(p)
            plan.append([p, "dir", ""])
    for name in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists(f"/dev/{name}"):
            plan.append([f"/dev/{name}", "device", ""])
    _bind_plan_cache = plan
    return plan


# --------------------------------------------------------------------------- running


def execute_code(
    code: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    tests: str | None = None,
) -> ExecutionResult:
    """Run ``code`` as a Python program in the sandbox described in the module docstring.

    With ``tests`` (Python source that raises when the program is wrong, e.g. HumanEval's ``check``
    plus ``check(entry_point)``), ``success`` means those tests ran to the end and passed against the
    program's functions; without, it only means exit status 0. ``timeout`` bounds the whole run.
    Returns an ``ExecutionResult`` (never raises for anything the program does). ``stdout`` and
    ``stderr`` keep the last ``max_output_bytes`` bytes of each process's output.
    """
    return _run(code, tests, timeout, memory_bytes, max_output_bytes, isolation(), True)


def _env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.defpath,
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",  # numpy, if imported, must not spawn a thread pool per core
    }


def _run(code: str, tests: str | None, timeout: float, memory_bytes: int, max_output_bytes: int, layer: str,
         audit_hook: bool) -> ExecutionResult:
    """``execute_code`` with the containment chosen: ``layer`` (NAMESPACES or AUDIT_HOOK_ONLY) and whether
    the in-process audit hook is installed (tests turn it off to check the namespace layer on its own)."""
    deadline = time.monotonic() + timeout
    nonce = secrets.token_hex(16)
    limits = {"RLIMIT_AS": memory_bytes, "RLIMIT_DATA": memory_bytes, "RLIMIT_CPU": max(1, int(timeout) + 1),
              "RLIMIT_FSIZE": _FILE_SIZE_LIMIT, "RLIMIT_CORE": 0}
    with tempfile.TemporaryDirectory(prefix="jaxchat-sandbox-") as tmp_name:
        tmp = Path(tmp_name)
        work = tmp / "work"
        work.mkdir()
        (work / "program.py").write_text(code, encoding="utf-8")
        out_path, err_path, tests_err_path = tmp / "stdout.txt", tmp / "stderr.txt", tmp / "tests-stderr.txt"
        program = runner = None
        verdict, timed_out, start_error = b"", False, None
        with ExitStack() as stack:
            out = stack.enter_context(open(out_path, "ab"))  # shared by both processes: append-only
            err = stack.enter_context(open(err_path, "wb"))
            tests_err = stack.enter_context(open(tests_err_path, "wb"))
            program_sock = tests_sock = None
            if tests is not None:
                program_sock, tests_sock = socket.socketpair()
                stack.callback(program_sock.close)
                stack.callback(tests_sock.close)
            guard_cfg = {"program": "program.py", "fd": None if program_sock is None else program_sock.fileno(),
                         "limits": limits, "site": [p for p in site.getsitepackages() if os.path.isdir(p)],
                         "hook": audit_hook}
            guard_argv = [sys.executable, "-I", "-S", "-B", "-c", _GUARD, marshal.dumps(guard_cfg).hex()]
            try:
                if layer == NAMESPACES:
                    cmd, cwd = _namespace_command(tmp, work, guard_argv), tmp
                else:
                    cmd, cwd = guard_argv, work
                pass_fds = () if program_sock is None else (program_sock.fileno(),)
                program = subprocess.Popen(cmd, cwd=cwd, env=_env(work), stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=err, pass_fds=pass_fds, start_new_session=True)
                if tests is not None:
                    program_sock.close()
                    verdict_r, verdict_w = os.pipe()
                    stack.callback(os.close, verdict_r)
                    input_r, input_w = os.pipe()
                    try:
                        runner_cfg = {"fd": tests_sock.fileno(), "verdict": verdict_w, "hook": audit_hook,
                                      "limits": limits}
                        runner = subprocess.Popen(
                            [sys.executable, "-I", "-S", "-B", "-c", _RUNNER, marshal.dumps(runner_cfg).hex()], cwd=tmp,
                            env=_env(tmp), stdin=input_r, stdout=out, stderr=tests_err,
                            pass_fds=(tests_sock.fileno(), verdict_w), start_new_session=True)
                    except BaseException:
                        os.close(input_w)
                        raise
                    finally:
                        os.close(input_r)
                        os.close(verdict_w)
                        tests_sock.close()
                    _write_all(input_w, marshal.dumps({"nonce": nonce, "tests": tests}), deadline)  # closes input_w
                    timed_out = not _wait(runner, deadline)
                    if not timed_out:
                        verdict = _read_available(verdict_r)
                        _wait(program, min(deadline, time.monotonic() + _GRACE_S))
                else:
                    timed_out = not _wait(program, deadline)
            except OSError as exc:  # could not start a process: nothing ran
                start_error = f"could not start the sandbox: {exc}"
            finally:
                _kill(runner, tree=False)
                _kill(program, tree=layer == NAMESPACES)
        stdout = _tail(out_path, max_output_bytes)
        program_stderr = _tail(err_path, max_output_bytes)
        tests_stderr = _tail(tests_err_path, max_output_bytes)
    rc = None if program is None else program.returncode
    if tests is None:
        success = rc == 0 and not timed_out and start_error is None
    else:
        success = (not timed_out and start_error is None and runner is not None and runner.returncode == 0
                   and verdict == nonce.encode("ascii"))
    if success:
        error = None
    elif start_error is not None:
        error = start_error
    elif timed_out:
        error = f"timed out after {timeout:g} s"
    elif rc == _SETUP_FAILED and "sandbox: isolation setup failed" in program_stderr:
        error = _last_line(program_stderr)
    elif tests is None:
        error = _describe_exit(rc, program_stderr)
    elif runner.returncode == _PROGRAM_GONE:
        error = f"the program stopped before the tests finished ({_describe_exit(rc, program_stderr)})"
    else:
        error = "tests failed: " + _describe_exit(runner.returncode, tests_stderr)
    return ExecutionResult(
        success=success,
        stdout=stdout,
        stderr=program_stderr + tests_stderr,
        error=error,
        timed_out=timed_out,
        memory_exceeded="MemoryError" in program_stderr or "MemoryError" in tests_stderr,
        returncode=rc,
        isolation=layer,
    )


def _namespace_command(tmp: Path, work: Path, guard_argv: list[str]) -> list[str]:
    """``unshare`` + the setup stage, which builds the new root and execs ``guard_argv`` in it."""
    mode = _namespace_mode or ("setuid" if os.geteuid() == 0 else "userns")
    newroot = tmp / "root"
    newroot.mkdir()
    flags = ["--mount", "--net", "--pid", "--fork", "--mount-proc", "--ipc", "--uts", "--kill-child"]
    if mode == "userns":
        flags.insert(0, "--map-root-user")
    cfg = {"newroot": str(newroot), "work": str(work), "binds": _bind_plan(), "drop": mode, "uid": _NOBODY,
           "work_bytes": _WORK_DIR_BYTES, "argv": guard_argv}
    return [shutil.which("unshare") or "unshare", *flags, "--", sys.executable, "-I", "-S", "-B", "-c", _ISOLATE,
            marshal.dumps(cfg).hex()]


def _ready(fd: int, events: int, deadline: float) -> bool:
    """Wait until ``fd`` has ``events`` (select.POLLIN/POLLOUT) or ``deadline``; poll, not select: no
    FD_SETSIZE limit in a parent with many open files."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write ``data`` to the pipe ``fd`` and close it, giving up at ``deadline`` or when the reader is gone."""
    try:
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            if time.monotonic() >= deadline or not _ready(fd, select.POLLOUT, deadline):
                return
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
    except OSError:  # the reader exited (BrokenPipeError): it will be reported by its exit status
        pass
    finally:
        os.close(fd)


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for ``proc`` until ``deadline``; True when it exited. A pidfd wakes us when it exits
    (``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, most of a short run)."""
    if proc.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            _ready(pidfd, select.POLLIN, deadline)
        finally:
            os.close(pidfd)
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


def _read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except (BlockingIOError, OSError):
        return b""


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the namespace's init, for an ``unshare`` process)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields and fields[1] == str(pid):
                found.append(int(entry))
    return found


def _kill(proc: subprocess.Popen | None, *, tree: bool) -> None:
    """SIGKILL ``proc`` and its process group (and with ``tree``, its children first: a pid namespace's
    init, whose death kills the whole namespace); reap it within a bounded wait."""
    if proc is None or proc.poll() is not None:
        return
    if tree:
        for child in _children(proc.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=_REAP_S)
    except subprocess.TimeoutExpired:
        logger.warning("sandbox: process %d did not exit after SIGKILL", proc.pid)


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return ("…" + text) if size > limit else text


def _last_line(text: str) -> str:
    return next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")


def _describe_exit(rc: int | None, stderr: str) -> str:
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return f"killed by signal {name}" + (" (CPU time limit)" if name == "SIGXCPU" else "")
    last = _last_line(stderr)
    return f"exit status {rc}: {last}" if last else f"exit status {rc}"
