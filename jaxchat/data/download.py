"""Fill ``$JAXCHAT_HOME`` with everything the recipe reads (docs/DESIGN.md §0), so training never needs the network.

    python -m jaxchat.data.download                        # 8 FineWeb shards + task datasets + eval bundle
    python -m jaxchat.data.download --num_shards=240       # enough FineWeb-Edu for d20 (-1: all 1823)
    python -m jaxchat.data.download --only=fineweb --num_shards=8 --workers=8
    python -m jaxchat.data.download --only=climbmix --num_shards=170  # ClimbMix: 170 train shards + its val shard
    python -m jaxchat.data.download --corpus=climbmix      # ClimbMix shards (8 + val) + task datasets + eval bundle
    python -m jaxchat.data.download --only=tasks           # HF datasets, identity conversations, word list
    python -m jaxchat.data.download --only=eval            # the CORE eval bundle
    python -m jaxchat.data.download --from_text=DIR        # shards from your own .txt/.md/.jsonl corpus

``--only`` is one group (fineweb | tasks | eval; "" = all three; ``climbmix`` is the shards group with
``--corpus=climbmix``); ``--corpus`` picks the pretraining corpus whose shards are fetched: ``fineweb``
(FineWeb-Edu, the default) or ``climbmix`` (nanochat's current pretraining data, since March 2026).
``--num_shards`` counts all FineWeb-Edu shards (its last one is the val shard) but the ClimbMix TRAIN
shards: ClimbMix's val shard, the last one on the hub, always comes too (as nanochat downloads it).
``--workers`` parallel shard
downloads; ``--retries`` per file, with exponential back-off. ``--from_text=DIR`` downloads nothing:
it writes shards of ``--chars_per_shard`` characters from your own files into ``--out``
(default ``$JAXCHAT_HOME/base_data``). ``python train.py --stage=download`` runs this with the
number of shards its config needs.

What goes where (see ``jaxchat.data.cache`` for the full layout):

    base_data/shard_{i:05d}.parquet          FINEWEB_URL.format(i=i), i = 0 … 1822
    base_data_climbmix/shard_{i:05d}.parquet CLIMBMIX_URL.format(i=i), i = 0 … num_shards-1 and 6542 (val)
    tasks/<name>/<config>/<split>.parquet    ``datasets.load_dataset(repo, config, split=split).to_parquet``
    identity_conversations.jsonl             IDENTITY_URL
    words_alpha.txt                          WORDS_URL
    eval_bundle/                             EVAL_BUNDLE_URL, unzipped (the zip is deleted afterwards)

Every file is written as ``<name>.tmp`` and renamed when complete; existing files are skipped, so
re-running the same command resumes (partial ``.tmp`` downloads continue with HTTP Range). Before
fetching anything, one probe (a TCP connection to each host still needed, in parallel, at most
3 s) checks that the network is there at all: when no host answers, the command stops at once with
one ``error:`` line that points to the offline route (status 2), instead of minutes of retries. When
an item cannot be fetched, one line per item names it, its URL and where to put it by hand, and the
command exits with status 1 (a bad setting: one ``error:`` line, status 2); each retry says so in
one line. The URL constants are module attributes so they can be pointed at a mirror (or a test server).

Shards made from local text (``--from_text``, or the offline mode's corpus) carry a ``corpus.json``;
the FineWeb download leaves such a ``base_data/`` alone (one line says so) rather than mixing
FineWeb shards into someone's own corpus. ``--from_text`` again with the same source does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jaxchat import cli
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.data.cache import (
    CORPORA,
    CORPUS_DIRS,
    EVAL_BUNDLE_DIR,
    FINEWEB_DIR,
    HF_SOURCES,
    IDENTITY_FILE,
    WORDS_FILE,
    HFSource,
    ensure_available,
    read_corpus_marker,
    task_file,
    tmp_path_for,
)
from jaxchat.data.from_text import CHARS_PER_SHARD, ROW_GROUP_SIZE, existing_corpus, from_text_command, \
    shards_from_text, source_fingerprint
from jaxchat.data.http import PROBE_TIMEOUT_S, DownloadError, Progress, fetch, probe

__all__ = [
    "CLIMBMIX_MAX_SHARD",
    "CLIMBMIX_URL",
    "EVAL_BUNDLE_URL",
    "FINEWEB_URL",
    "IDENTITY_URL",
    "MAX_SHARD",
    "WORDS_URL",
    "DownloadConfig",
    "DownloadReport",
    "download_climbmix",
    "download_eval_bundle",
    "download_file",
    "download_fineweb",
    "download_hf_tasks",
    "download_task_files",
    "ensure_available",
    "main",
    "run",
]

FINEWEB_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{i:05d}.parquet"
MAX_SHARD = 1822  # the last shard index on the hub (1823 shards)
# ClimbMix-400B, reshuffled into parquet shards of one `text` column (nanochat/dataset.py at 92d63d4).
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{i:05d}.parquet"
CLIMBMIX_MAX_SHARD = 6542  # the last shard index on the hub (6543 shards); it is the val shard
IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
DEFAULT_SHARDS = 8  # enough to train the tokenizer (2B chars); d20 pretraining wants 240
DEFAULT_WORKERS = 4
DEFAULT_RETRIES = 5
GROUPS = ("fineweb", "tasks", "eval")
SHARD_GROUPS = ("fineweb", "climbmix")  # --only values that mean "the pretraining shards" (of that corpus)
PROG = "python -m jaxchat.data.download"
HF_ENDPOINT = "https://huggingface.co"  # where ``datasets`` fetches from (the HF_ENDPOINT variable overrides it)
OFFLINE_ROUTE = ("Without network, run the CPU demo offline (`bash runs/cpu_demo.sh --offline`: it pretrains on "
                 "Python's own documentation, or on your text with --from_text=DIR) or make shards from your "
                 "own text with `python -m jaxchat.data.download --from_text=DIR`")


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """What ``python -m jaxchat.data.download`` fetches (or, with ``from_text``, writes from local files)."""

    num_shards: int = DEFAULT_SHARDS  # FineWeb-Edu shards 0 … num_shards-1 (-1 = all 1823); ClimbMix: train shards, + val
    only: str = ""  # one group: fineweb | tasks | eval (climbmix: the ClimbMix shards); "" = all three
    corpus: str = "fineweb"  # the pretraining shards to fetch: fineweb (base_data/) | climbmix (base_data_climbmix/)
    workers: int = DEFAULT_WORKERS  # parallel shard downloads
    retries: int = DEFAULT_RETRIES  # retries per file (exponential back-off)
    from_text: str = ""  # DIR (or file): make shards from your own .txt/.md/.jsonl files instead of downloading
    chars_per_shard: int = CHARS_PER_SHARD  # with from_text: characters per shard
    out: str = ""  # with from_text: output directory; "" = $JAXCHAT_HOME/base_data


@dataclass
class DownloadReport:
    """What one download step did: items fetched, items already present, and one message per missing item."""

    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    nbytes: int = 0

    def merge(self, other: DownloadReport) -> DownloadReport:
        """Add ``other``'s counts to this report (returns self)."""
        self.fetched += other.fetched
        self.present += other.present
        self.missing += other.missing
        self.nbytes += other.nbytes
        return self


def _missing_message(what: str, url: str, dest: Path, reason: str) -> str:
    return (
        f"MISSING {what}: could not download {url} ({reason}); "
        f"without network, fetch it elsewhere and put it at {dest}"
    )


def _bar(desc: str, progress: bool) -> Any:
    # disable=None: show bars on a terminal only, so logs stay readable.
    return tqdm(total=0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None if progress else True)


class _Breaker:
    """Stops new attempts once the network is clearly unreachable (nothing succeeded, connection failed)."""

    def __init__(self):
        self.any_success = False
        self.down_reason: str | None = None

    def record(self, ok: bool, err: DownloadError | None = None) -> None:
        if ok:
            self.any_success = True
        elif err is not None and err.network and not self.any_success:
            self.down_reason = str(err)


def download_file(
    url: str,
    dest: Path,
    what: str,
    *,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    breaker: _Breaker | None = None,
) -> DownloadReport:
    """Fetch one URL to ``dest`` (skipped when ``dest`` exists); failures become a ``missing`` message."""
    report = DownloadReport()
    if dest.exists():
        report.present.append(what)
        report.nbytes += dest.stat().st_size
        if progress is not None:
            progress.add_total(dest.stat().st_size, new_file=True)
            progress.add_done(dest.stat().st_size)
        return report
    if breaker is not None and breaker.down_reason is not None:
        reason = "not tried: the network looks unreachable, see the first error"
        report.missing.append(_missing_message(what, url, dest, reason))
        return report
    try:
        size = fetch(url, dest, retries=retries, backoff=backoff, timeout=timeout, progress=progress,
                     on_retry=lambda line: tqdm.write(f"{what}: {line}", file=sys.stderr))
    except DownloadError as e:
        if breaker is not None:
            breaker.record(False, e)
        report.missing.append(_missing_message(what, url, dest, str(e)))
        return report
    except OSError as e:  # disk full, permissions: not worth retrying
        report.missing.append(_missing_message(what, url, dest, f"{type(e).__name__}: {e}"))
        return report
    if breaker is not None:
        breaker.record(True)
    report.fetched.append(what)
    report.nbytes += size
    return report


def shard_indices(corpus: str, num_shards: int) -> list[int]:
    """The shard indices ``--corpus=corpus --num_shards=num_shards`` fetches, in name order.

    FineWeb-Edu: ``0 … num_shards-1`` (-1: all 1823; the last is the val shard). ClimbMix: the train
    shards ``0 … num_shards-1`` (-1: all 6542) and the val shard 6542, which is always fetched, as
    ``python -m nanochat.dataset -n N`` does. JaxchatError for a count out of range.
    """
    if corpus == "climbmix":
        if not (num_shards == -1 or 0 < num_shards <= CLIMBMIX_MAX_SHARD):
            raise JaxchatError(f"--num_shards={num_shards}: expected 1 … {CLIMBMIX_MAX_SHARD} ClimbMix train shards "
                               f"(the val shard shard_{CLIMBMIX_MAX_SHARD:05d} always comes too), or -1 for all of them")
        n = CLIMBMIX_MAX_SHARD if num_shards == -1 else num_shards
        return [*range(n), CLIMBMIX_MAX_SHARD]
    if corpus != "fineweb":
        raise JaxchatError(f"--corpus={corpus!r}: expected one of {', '.join(CORPORA)}")
    total = MAX_SHARD + 1
    n = total if num_shards == -1 else num_shards
    if not 0 < n <= total:
        raise JaxchatError(f"--num_shards={num_shards}: expected 1 … {total} shards, or -1 for all of them")
    return list(range(n))


def _corpus_url(corpus: str) -> str:
    return CLIMBMIX_URL if corpus == "climbmix" else FINEWEB_URL  # read at call time: tests point them elsewhere


def download_shards(
    corpus: str,
    indices: Sequence[int],
    home: str | Path | None = None,
    *,
    url: str | None = None,
    workers: int = DEFAULT_WORKERS,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> DownloadReport:
    """Download shards ``indices`` of ``corpus`` into its directory of ``home`` with a thread pool.

    ``url`` is a format string with ``{i}`` (default ``FINEWEB_URL`` / ``CLIMBMIX_URL``).
    """
    url = url or _corpus_url(corpus)
    if workers < 1:
        raise JaxchatError(f"--workers={workers}: expected at least 1")
    subdir = CORPUS_DIRS[corpus]
    directory = (Path(home) if home is not None else jaxchat_home()) / subdir
    directory.mkdir(parents=True, exist_ok=True)
    breaker = _Breaker()
    report = DownloadReport()
    n = len(indices)
    with _bar(corpus, progress) as bar:
        shared = Progress(bar, expected_files=n)

        def one(i: int) -> DownloadReport:
            dest = directory / f"shard_{i:05d}.parquet"
            return download_file(
                url.format(i=i), dest, f"{subdir}/{dest.name}", progress=shared,
                retries=retries, backoff=backoff, timeout=timeout, breaker=breaker,
            )

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, future in enumerate(as_completed([pool.submit(one, i) for i in indices]), 1):
                report.merge(future.result())
                bar.set_postfix_str(f"{k}/{n} shards", refresh=True)
    report.fetched.sort()
    report.present.sort()
    report.missing.sort()
    return report


def download_fineweb(num_shards: int = DEFAULT_SHARDS, home: str | Path | None = None, **options: Any
                     ) -> DownloadReport:
    """Download FineWeb-Edu shards ``0 … num_shards-1`` (-1: all) into ``<home>/base_data``.
    ``options``: :func:`download_shards`' (``url``, ``workers``, ``retries``, ``backoff``, ``timeout``,
    ``progress``)."""
    return download_shards("fineweb", shard_indices("fineweb", num_shards), home, **options)


def download_climbmix(num_shards: int = DEFAULT_SHARDS, home: str | Path | None = None, **options: Any
                      ) -> DownloadReport:
    """Download ClimbMix train shards ``0 … num_shards-1`` (-1: all 6542) and the val shard 6542 into
    ``<home>/base_data_climbmix`` (nanochat 92d63d4's ``nanochat/dataset.py``). ``options``: as
    :func:`download_fineweb`'s."""
    return download_shards("climbmix", shard_indices("climbmix", num_shards), home, **options)


LoadFn = Callable[..., Any]


def _default_load_fn() -> LoadFn:
    from datasets import load_dataset  # lazy: slow to import, only this step needs it

    return load_dataset


@contextlib.contextmanager
def _hf_logs_once():
    """huggingface_hub and datasets log through their own handlers AND the root logger's (which absl
    sets up when JAX or Orbax is imported), so every retry line came out twice: stop the propagation
    to the root logger while we fetch, for the loggers that have a handler of their own."""
    changed = []
    for name in ("huggingface_hub", "datasets"):
        logger = logging.getLogger(name)
        if logger.handlers and logger.propagate:
            logger.propagate = False
            changed.append(logger)
    try:
        yield
    finally:
        for logger in changed:
            logger.propagate = True


def _hf_split(src: HFSource, split: str, dest: Path, load_fn: LoadFn) -> None:
    """Fetch one split with ``datasets`` and save it as ``dest`` (via ``dest.tmp``)."""
    args = (src.repo,) if src.config is None else (src.repo, src.config)
    ds = load_fn(*args, split=split)
    tmp = tmp_path_for(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.to_parquet(str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _looks_like_network(err: BaseException) -> bool:
    names = " ".join(type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None)
    keywords = ("Connection", "Timeout", "Offline", "HTTP")
    return isinstance(err, (OSError, TimeoutError)) or any(k in names for k in keywords)


def download_hf_tasks(
    home: str | Path | None = None,
    *,
    load_fn: LoadFn | None = None,
    sources: Sequence[HFSource] = HF_SOURCES,
) -> DownloadReport:
    """Save each HF dataset split of ``sources`` as ``tasks/<name>/<config>/<split>.parquet``.

    ``load_fn`` defaults to ``datasets.load_dataset`` (called as ``load_fn(repo[, config], split=...)``
    and expected to return something with ``to_parquet``). Once a split fails with a network-looking
    error and none has succeeded, the remaining ones are reported without being tried.
    """
    home = Path(home) if home is not None else jaxchat_home()
    report = DownloadReport()
    down: str | None = None
    any_ok = False
    for src in sources:
        for split in src.splits:
            dest = task_file(src.name, src.config, split, home)
            what = f"tasks/{src.name}/{src.local_config}/{split}.parquet"
            if dest.exists():
                report.present.append(what)
                report.nbytes += dest.stat().st_size
                continue
            config = "" if src.config is None else f", {src.config!r}"
            by_hand = (
                f"datasets.load_dataset({src.repo!r}{config}, split={split!r}).to_parquet('{split}.parquet')"
            )
            if down is not None:
                reason = "not tried: the Hugging Face Hub looks unreachable, see the first error"
            else:
                try:
                    print(f"fetching {src.repo} {src.local_config}/{split} ...", file=sys.stderr)
                    load = load_fn or _default_load_fn()
                    with _hf_logs_once():
                        _hf_split(src, split, dest, load)
                    any_ok = True
                    report.fetched.append(what)
                    report.nbytes += dest.stat().st_size
                    continue
                except Exception as e:  # datasets raises many types; any failure means "missing"
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
                    if not any_ok and _looks_like_network(e):
                        down = reason
            report.missing.append(
                f"MISSING {what}: could not download {src.url} ({reason}); without network, run "
                f"`{by_hand}` elsewhere and put the file at {dest}"
            )
    return report


def _find_bundle_root(extracted: Path) -> Path:
    """The directory holding core.yaml in an unzipped bundle (the zip has an ``eval_bundle/`` top folder)."""
    if (extracted / "core.yaml").is_file():
        return extracted
    for candidate in sorted(extracted.rglob("core.yaml")):
        return candidate.parent
    contents = sorted(p.name for p in extracted.iterdir())
    raise JaxchatError(f"the eval bundle zip has no core.yaml (contents: {contents})")


def download_eval_bundle(
    home: str | Path | None = None,
    *,
    url: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> DownloadReport:
    """Download ``eval_bundle.zip`` and unzip it to ``<home>/eval_bundle`` (via a temp dir + rename)."""
    url = url or EVAL_BUNDLE_URL
    home = Path(home) if home is not None else jaxchat_home()
    target = home / EVAL_BUNDLE_DIR
    if (target / "core.yaml").is_file():
        return DownloadReport(present=[EVAL_BUNDLE_DIR])
    home.mkdir(parents=True, exist_ok=True)
    zip_path = home / "eval_bundle.zip"
    with _bar("eval_bundle.zip", progress) as bar:
        report = download_file(
            url, zip_path, "eval_bundle.zip", progress=Progress(bar), retries=retries, backoff=backoff, timeout=timeout
        )
    if report.missing:
        note = f"put it at {zip_path} (it is unzipped to {target} on the next run)"
        report.missing = [m.replace(f"put it at {zip_path}", note) for m in report.missing]
        return report
    staging = Path(tempfile.mkdtemp(prefix=".eval_bundle.", suffix=".tmp", dir=home))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(staging)  # extractall drops absolute and '..' member paths
        except zipfile.BadZipFile as e:
            zip_path.unlink(missing_ok=True)  # a corrupt zip must not be skipped as complete next time
            message = _missing_message(EVAL_BUNDLE_DIR, url, zip_path, f"bad zip file ({e}); deleted it")
            return DownloadReport(missing=[message])
        root = _find_bundle_root(staging)
        if target.exists():
            shutil.rmtree(target)  # an incomplete bundle (no core.yaml) from some earlier attempt
        os.replace(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    zip_path.unlink(missing_ok=True)
    return DownloadReport(fetched=[EVAL_BUNDLE_DIR], nbytes=report.nbytes)


def download_task_files(
    home: str | Path | None = None,
    *,
    identity_url: str | None = None,
    words_url: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> DownloadReport:
    """Download identity_conversations.jsonl and words_alpha.txt into ``home``."""
    home = Path(home) if home is not None else jaxchat_home()
    report = DownloadReport()
    breaker = _Breaker()
    for url, name in ((identity_url or IDENTITY_URL, IDENTITY_FILE), (words_url or WORDS_URL, WORDS_FILE)):
        with _bar(name, progress) as bar:
            report.merge(download_file(url, home / name, name, progress=Progress(bar), retries=retries,
                                       backoff=backoff, timeout=timeout, breaker=breaker))
    return report


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def urls_needed(config: DownloadConfig, home: str | Path, *, skip_fineweb: bool = False) -> list[str]:
    """The URLs that ``run(config)`` would still fetch into ``home`` (what is complete is skipped)."""
    home = Path(home)
    urls: list[str] = []
    corpus = effective_corpus(config)
    if (config.only == "" or config.only in SHARD_GROUPS) and not skip_fineweb:
        directory, url = home / CORPUS_DIRS[corpus], _corpus_url(corpus)
        urls += [url.format(i=i) for i in shard_indices(corpus, config.num_shards)
                 if not (directory / f"shard_{i:05d}.parquet").exists()]
    if config.only in ("", "tasks"):
        if any(not task_file(s.name, s.config, split, home).exists() for s in HF_SOURCES for split in s.splits):
            urls.append(os.environ.get("HF_ENDPOINT") or HF_ENDPOINT)
        urls += [url for url, name in ((IDENTITY_URL, IDENTITY_FILE), (WORDS_URL, WORDS_FILE))
                 if not (home / name).exists()]
    if config.only in ("", "eval") and not (home / EVAL_BUNDLE_DIR / "core.yaml").is_file():
        urls.append(EVAL_BUNDLE_URL)
    return urls


def check_network(config: DownloadConfig, home: str | Path, *, skip_fineweb: bool = False,
                  timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when nothing needs fetching or a host of what does answers; else the one-line reason
    (with the offline route) for stopping before any download starts."""
    urls = urls_needed(config, home, skip_fineweb=skip_fineweb)
    reason = probe(urls, timeout=timeout) if urls else None
    if reason is None:
        return None
    return f"the network is unreachable ({reason}); nothing was downloaded. {OFFLINE_ROUTE}"


def effective_corpus(config: DownloadConfig) -> str:
    """The corpus whose shards ``config`` fetches: ``--only=climbmix`` means ``--corpus=climbmix``."""
    return "climbmix" if config.only == "climbmix" else config.corpus


def validate(config: DownloadConfig) -> DownloadConfig:
    """``config`` if every value is usable; a one-line JaxchatError naming the key otherwise."""
    if config.corpus not in CORPORA:
        raise JaxchatError(f"--corpus={config.corpus!r}: expected one of {', '.join(CORPORA)}")
    if config.only not in ("", *GROUPS, "climbmix"):
        raise JaxchatError(f"--only={config.only!r}: expected one of {', '.join(GROUPS)}, climbmix "
                           "(or nothing for all three)")
    if config.only in SHARD_GROUPS and config.corpus != "fineweb" and config.only != config.corpus:
        raise JaxchatError(f"--only={config.only} with --corpus={config.corpus}: the shards group is "
                           f"--only={config.corpus} (or --only=fineweb with the default corpus)")
    shard_indices(effective_corpus(config), config.num_shards)  # the count, for that corpus
    if config.workers < 1:
        raise JaxchatError(f"--workers={config.workers}: expected at least 1")
    if config.retries < 0:
        raise JaxchatError(f"--retries={config.retries}: expected a number >= 0")
    if config.chars_per_shard < 1:
        raise JaxchatError(f"--chars_per_shard={config.chars_per_shard}: expected a positive number")
    if config.out and not config.from_text:
        raise JaxchatError(f"--out={config.out!r}: only used with --from_text=DIR (downloads go to $JAXCHAT_HOME)")
    return config


def run(config: DownloadConfig, home: str | Path | None = None) -> DownloadReport:
    """Download what ``config`` asks for into ``home`` (default ``$JAXCHAT_HOME``), printing a summary
    per group and, on stderr, one line per item that could not be fetched; what was done.

    With ``config.from_text`` it downloads nothing and writes shards from those files instead (the
    report's ``fetched`` lists them). Bad settings are refused (JaxchatError) before anything starts.
    """
    validate(config)
    home = Path(home) if home is not None else jaxchat_home()
    if config.from_text:
        out = Path(config.out) if config.out else home / FINEWEB_DIR
        command = from_text_command(config.from_text, config.chars_per_shard, config.out or None)
        fingerprint = source_fingerprint(config.from_text)
        if existing_corpus(out, fingerprint, config.chars_per_shard) is not None:
            paths = sorted(out.glob("shard_*.parquet"))
            nbytes = sum(p.stat().st_size for p in paths)
            print(f"{out} already holds the {len(paths)} shards made from {config.from_text} (unchanged since); "
                  "nothing to do")
            return DownloadReport(present=[str(p) for p in paths], nbytes=nbytes)
        paths = shards_from_text(config.from_text, out, chars_per_shard=config.chars_per_shard,
                                 row_group_size=ROW_GROUP_SIZE, command=command)
        nbytes = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} shards ({_human(nbytes)}) to {out}; the last, {paths[-1].name}, is the "
              "validation shard")
        return DownloadReport(fetched=[str(p) for p in paths], nbytes=nbytes)
    report = DownloadReport()
    kw = {"retries": config.retries}
    corpus = effective_corpus(config)
    shard_dir = home / CORPUS_DIRS[corpus]
    marker = read_corpus_marker(shard_dir) if list(shard_dir.glob("shard_*.parquet")) else None
    want_shards = config.only == "" or config.only in SHARD_GROUPS
    skip_fineweb = marker is not None and want_shards
    unreachable = check_network(config, home, skip_fineweb=skip_fineweb)
    if unreachable:
        raise JaxchatError(unreachable)
    name = "FineWeb-Edu" if corpus == "fineweb" else "ClimbMix"
    if skip_fineweb:
        print(f"{corpus}: skipped: {shard_dir} holds the shards made from {marker.get('source', '?')} "
              f"(by `{marker['command']}`); to pretrain on {name}, move them away and run this again")
    elif want_shards:
        r = download_shards(corpus, shard_indices(corpus, config.num_shards), home, workers=config.workers, **kw)
        have = len(r.fetched) + len(r.present)
        print(f"{corpus}: {have} of {have + len(r.missing)} shards in {shard_dir} "
              f"({_human(r.nbytes)}; {len(r.fetched)} downloaded, {len(r.present)} already there)")
        report.merge(r)
    if config.only in ("", "tasks"):
        r = download_hf_tasks(home).merge(download_task_files(home, **kw))
        print(f"tasks: {len(r.fetched) + len(r.present)} files in {home} ({_human(r.nbytes)}; "
              f"{len(r.fetched)} downloaded, {len(r.present)} already there)")
        report.merge(r)
    if config.only in ("", "eval"):
        r = download_eval_bundle(home, **kw)
        report.merge(r)
        if not r.missing:
            print(f"eval: CORE bundle in {home / EVAL_BUNDLE_DIR}")
    for message in report.missing:
        print(message, file=sys.stderr)
    if report.missing:
        print(f"{len(report.missing)} item(s) missing; re-run the same command to resume.", file=sys.stderr)
    else:
        print(f"done: {_human(report.nbytes)} in {home}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; the exit status: 0 when everything asked for is in the cache, 1 when items are
    missing (one line each), 2 for a bad setting or input, or no network at all (one ``error:`` line)."""
    def run_cli(config: DownloadConfig) -> int:
        return 1 if run(config).missing else 0

    return cli.main(run_cli, DownloadConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
