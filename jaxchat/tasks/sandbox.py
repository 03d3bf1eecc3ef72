"""Run untrusted model-written Python (HumanEval completions) in a contained subprocess.

Containment, in layers:

- a fresh ``python -I -B`` process (no user site, no env-driven imports, no .pyc writes) in its own
  session, started in a new temporary directory (its cwd, ``HOME`` and ``TMPDIR``), deleted afterwards;
- wall-clock timeout: the whole process group is killed (SIGKILL);
- rlimits set inside the child before the code runs: address space (memory), CPU seconds, file size,
  no core dumps; hard limits equal soft ones, so the code cannot raise them;
- an audit hook (PEP 578, cannot be removed once installed) refusing: opening files for writing,
  deleting, renaming, chmod-ing or making directories/links anywhere outside the temp dir; starting
  processes (fork/exec/spawn/subprocess/system); sockets (connect/bind/getaddrinfo...). ctypes stays
  importable (numpy needs it).
- stdout/stderr go to files in the temp dir (bounded by the file-size limit), not to pipes in memory.

This is protection against accidents of generated code (infinite loops, huge allocations, stray
writes), not a security boundary against an adversary: use a container or VM for that.

The rlimits are set by a guard script in the child, not by ``preexec_fn``: ``preexec_fn`` is
documented as unsafe when the parent has threads (JAX has many), where it can deadlock the fork.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
_FILE_SIZE_LIMIT = 16 * 1024 * 1024

# Runs in the child before the untrusted program: argv = [guard, program, mem, cpu_s, fsize].
_GUARD = r'''
import os, resource, sys

program_path, mem, cpu, fsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_CPU, cpu),
                     (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(limit, (value, value))
    except (ValueError, OSError):
        pass  # a platform without this limit: the other layers still apply

ROOT = os.path.realpath(os.getcwd())
with open(program_path, encoding="utf-8") as f:
    SOURCE = f.read()

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_FORBIDDEN = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
              "os.killpg", "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto",
              "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname", "sys.remote_exec", "os.startfile",
              "webbrowser.open")
_PATH_EVENTS = {"os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
                "os.link": 2, "os.symlink": 2, "os.truncate": 1, "os.utime": 1, "os.chflags": 1, "os.lchflags": 1,
                "os.lchmod": 1, "os.lchown": 1, "os.mkfifo": 1, "os.mknod": 1, "os.setxattr": 1,
                "os.removexattr": 1, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.copytree": 2,
                "shutil.move": 2}

def _inside(path):
    if isinstance(path, int):  # an already-open file descriptor
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == ROOT or real.startswith(ROOT + os.sep)

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the work dir is not allowed: {path!r}")
    elif event in _PATH_EVENTS:
        for p in args[:_PATH_EVENTS[event]]:
            if isinstance(p, (str, bytes, os.PathLike)) and not _inside(p):
                raise PermissionError(f"sandbox: {event} outside the work dir is not allowed: {p!r}")
    elif event.startswith(_FORBIDDEN):
        raise PermissionError(f"sandbox: {event} is not allowed")

sys.addaudithook(_hook)
del resource
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(SOURCE, "program.py", "exec"), namespace)
'''


@dataclass
class ExecutionResult:
    """Outcome of ``execute_code``: ``success`` is True only for a clean exit (status 0) within the limits."""

    success: bool
    stdout: str
    stderr: str
    error: str | None = None  # one line: why it failed
    timed_out: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None


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


def execute_code(
    code: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> ExecutionResult:
    """Run ``code`` as a Python program in the sandbox described in the module docstring.

    Returns an ``ExecutionResult`` (never raises for anything the program does). ``stdout`` and
    ``stderr`` keep the last ``max_output_bytes`` bytes of each.
    """
    with tempfile.TemporaryDirectory(prefix="jaxchat-sandbox-") as work:
        root = Path(work)
        (root / "guard.py").write_text(_GUARD, encoding="utf-8")
        (root / "program.py").write_text(code, encoding="utf-8")
        out_path, err_path = root / "stdout.txt", root / "stderr.txt"
        env = {
            "PATH": os.defpath,
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1",  # numpy, if imported, must not spawn a thread pool per core
        }
        limits = [str(memory_bytes), str(max(1, int(timeout) + 1)), str(_FILE_SIZE_LIMIT)]
        cmd = [sys.executable, "-I", "-B", str(root / "guard.py"), str(root / "program.py"), *limits]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group: children it may have started too
                except ProcessLookupError:
                    pass
                proc.wait()
        stdout, stderr = _tail(out_path, max_output_bytes), _tail(err_path, max_output_bytes)
    rc = proc.returncode
    memory = "MemoryError" in stderr
    if timed_out:
        error = f"timed out after {timeout:g} s"
    elif rc == 0:
        error = None
    elif rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        error = f"killed by signal {name}" + (" (CPU time limit)" if name == "SIGXCPU" else "")
    else:
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
        error = f"exit status {rc}: {last}" if last else f"exit status {rc}"
    return ExecutionResult(
        success=rc == 0 and not timed_out,
        stdout=stdout,
        stderr=stderr,
        error=error,
        timed_out=timed_out,
        memory_exceeded=memory,
        returncode=rc,
    )
