"""Download one URL to one file: resumable, retried with exponential back-off, atomic.

Only the standard library (``urllib``) is used. The bytes go to ``<dest>.tmp``; the file gets its
final name (``os.replace``) only once the whole body has arrived and its size matches what the
server announced, so a file with the final name is always complete. A ``.tmp`` left by an earlier
run is resumed with an HTTP ``Range`` request.

``probe(urls)`` answers, in a few seconds at most, whether any of the hosts can be reached at all
(one TCP connection attempt each, in parallel, through the proxy when one is configured), so that a
machine without network is told so at once instead of after minutes of retries.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from jaxchat.data.cache import tmp_path_for

USER_AGENT = "jaxchat-downloader/0.1 (python-urllib)"
PROBE_TIMEOUT_S = 3.0
CHUNK_SIZE = 1 << 20
MAX_BACKOFF_S = 60.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_UNSAT = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(Exception):
    """A download that failed for good. ``network`` is True when the server could not be reached at all."""

    def __init__(self, message: str, network: bool = False):
        super().__init__(message)
        self.network = network


class _Retry(Exception):
    """A failure worth another attempt (server busy, connection dropped, short body)."""

    def __init__(self, message: str, network: bool = False):
        super().__init__(message)
        self.network = network


class Progress:
    """Thread-safe byte counter over a tqdm-like bar.

    The bar's total is the sum of the sizes known so far; with ``expected_files`` it also counts the
    files not started yet at the average known size, so the total size shows from the first file on.
    """

    def __init__(self, bar=None, expected_files: int = 0):
        self.bar = bar
        self.expected_files = expected_files
        self.known_bytes = 0
        self.known_files = 0
        self._lock = threading.Lock()

    def add_total(self, n: int, new_file: bool = False) -> None:
        """Add ``n`` bytes to the known total (``new_file``: the first size reported for a file)."""
        with self._lock:
            self.known_bytes += n
            self.known_files += int(new_file)
            if self.bar is not None:
                total = float(self.known_bytes)
                if 0 < self.known_files < self.expected_files:
                    total += (self.expected_files - self.known_files) * self.known_bytes / self.known_files
                self.bar.total = int(total)
                self.bar.refresh()

    def add_done(self, n: int) -> None:
        """Count ``n`` bytes as done (negative when a restart throws bytes away)."""
        if self.bar is not None and n:
            with self._lock:
                self.bar.update(n)


class _FileProgress:
    """One file's contribution to a shared ``Progress``; corrects itself when a download restarts."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.total: int | None = None
        self.done = 0

    def set_total(self, total: int | None) -> None:
        total = total or 0
        if self.progress is not None:
            self.progress.add_total(total - (self.total or 0), new_file=self.total is None)
        self.total = total

    def set_done(self, done: int) -> None:
        if self.progress is not None:
            self.progress.add_done(done - self.done)
        self.done = done


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect: {err.reason}"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _fetch_once(url: str, tmp: Path, timeout: float, fp: _FileProgress, chunk_size: int) -> None:
    """One attempt: resume ``tmp`` from its current size; return when it holds the whole body."""
    have = tmp.stat().st_size if tmp.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # Range not satisfiable: either the .tmp is already whole, or it is longer than the file.
            match = _CONTENT_RANGE_UNSAT.search(e.headers.get("Content-Range", "") if e.headers else "")
            if match and int(match.group(1)) == have:
                fp.set_total(have)
                fp.set_done(have)
                return
            tmp.unlink(missing_ok=True)
            fp.set_done(0)
            raise _Retry("server rejected the resume range; restarting from scratch") from None
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retry(_describe(e)) from None
        raise DownloadError(_describe(e)) from None
    except urllib.error.URLError as e:
        raise _Retry(_describe(e), network=True) from None
    except (TimeoutError, socket.timeout, ConnectionError) as e:
        raise _Retry(_describe(e), network=True) from None

    with response:
        status = getattr(response, "status", 200)
        total: int | None = None
        if status == 206:
            match = _CONTENT_RANGE.search(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                # The server answered a different range than asked: do not splice; start over.
                tmp.unlink(missing_ok=True)
                fp.set_done(0)
                raise _Retry(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            # A plain 200 (the server ignored Range, or there was nothing to resume): rewrite the file.
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            have = 0
            mode = "wb"
        fp.set_total(total if total is not None else have)
        fp.set_done(have)
        size = have
        with open(tmp, mode) as f:
            while True:
                chunk = response.read(chunk_size)
                if not chunk:
                    break
                f.write(chunk)
                size += len(chunk)
                fp.set_done(size)
    if total is not None and size != total:
        if size > total:
            tmp.unlink(missing_ok=True)
            fp.set_done(0)
        raise _Retry(f"got {size} of {total} bytes")
    if total is None:
        fp.set_total(size)


def _wait(url: str, reason: str, failures: int, retries: int, backoff: float, sleep: Callable[[float], None],
          on_retry: Callable[[str], None] | None) -> None:
    delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF_S)
    if on_retry is not None:
        on_retry(f"{url}: {reason}; retry {failures}/{retries} in {delay:g} s")
    sleep(delay)


def fetch(
    url: str,
    dest: str | Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: Progress | None = None,
    chunk_size: int = CHUNK_SIZE,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[str], None] | None = None,
) -> int:
    """Download ``url`` to ``dest`` and return its size in bytes.

    An existing ``dest`` is taken as complete and skipped (only this function's final rename creates
    it). Bytes are written to ``dest.tmp``; a ``.tmp`` from an earlier attempt is resumed with
    ``Range``. Connection errors, timeouts, 408/425/429/5xx and short bodies are retried up to
    ``retries`` times, waiting ``backoff · 2^k`` seconds (capped at 60 s); other HTTP errors fail at
    once. Raises ``DownloadError`` when the file could not be completed; the partial ``.tmp`` is kept
    so that the next run resumes it. ``on_retry`` (e.g. ``print``) is told about every retry before
    its wait, in one line, so that a slow failure is never silent.
    """
    dest = Path(dest)
    if dest.exists():
        size = dest.stat().st_size
        if progress is not None:
            progress.add_total(size, new_file=True)
            progress.add_done(size)
        return size
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(dest)
    fp = _FileProgress(progress)
    failures = 0
    all_network = True
    while True:
        try:
            _fetch_once(url, tmp, timeout, fp, chunk_size)
            os.replace(tmp, dest)
            return dest.stat().st_size
        except _Retry as e:
            failures += 1
            all_network = all_network and e.network
            if failures > retries:
                raise DownloadError(f"{e} (gave up after {failures} attempts)", network=all_network) from None
            _wait(url, str(e), failures, retries, backoff, sleep, on_retry)
        except (http.client.HTTPException, TimeoutError, ConnectionError) as e:
            # Raised mid-body (IncompleteRead, reset): the .tmp keeps what arrived; resume from there.
            failures += 1
            all_network = False
            if failures > retries:
                raise DownloadError(f"{_describe(e)} (gave up after {failures} attempts)") from None
            _wait(url, _describe(e), failures, retries, backoff, sleep, on_retry)


def _endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) that fetching ``url`` connects to first: the proxy's when one applies, else the URL's."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            return proxy_parts.hostname, proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def probe(urls: Iterable[str], timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when at least one of the hosts of ``urls`` accepts a TCP connection within ``timeout``
    seconds; otherwise one line saying why none did (name lookup and connection attempts run in
    parallel threads, so this takes ``timeout`` seconds at most even when DNS hangs)."""
    endpoints = list(dict.fromkeys(e for e in map(_endpoint, urls) if e is not None))
    if not endpoints:
        return None
    errors: dict[tuple[str, int], str] = {}
    reached = threading.Event()
    lock = threading.Lock()

    def attempt(endpoint: tuple[str, int]) -> None:
        try:
            with socket.create_connection(endpoint, timeout=timeout):
                reached.set()
        except OSError as e:
            with lock:
                errors[endpoint] = _describe(e)

    threads = [threading.Thread(target=attempt, args=(e,), daemon=True) for e in endpoints]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if reached.is_set():
            return None
    if reached.is_set():
        return None
    host, port = endpoints[0]
    with lock:
        reason = errors.get(endpoints[0], f"no answer within {timeout:g} s")
    others = f" (nor {len(endpoints) - 1} other host(s))" if len(endpoints) > 1 else ""
    return f"cannot connect to {host}:{port}{others}: {reason}"
