"""The offline mode: make, on this machine, everything the CPU demo reads, without any network.

    python -m jaxchat.data.offline                      # pretraining corpus + word list + manifest in $JAXCHAT_HOME
    python -m jaxchat.data.offline --from_text=DIR      # pretrain on your own .txt/.md/.jsonl files instead
    python -m jaxchat.data.offline --check_network      # exit 0 when a download host answers, else 1 (one line)

then train with the key that makes every stage use what the machine has::

    python train.py --stage=all --config configs/cpu_demo.toml --data.offline=true

``bash runs/cpu_demo.sh`` does all of this by itself when the network is unreachable (or with
``--offline``). What is made (and what ``--data.offline=true`` uses instead of the downloads):

| recipe (network)                         | offline mode                                                        |
|------------------------------------------|---------------------------------------------------------------------|
| FineWeb-Edu shards                       | ``--from_text=DIR`` shards, else Python's own documentation         |
|                                          | (``jaxchat.data.corpus``: help topics + standard-library docstrings) |
| ``identity_conversations.jsonl``         | jaxchat's identity conversations, shipped with the package          |
| ``words_alpha.txt`` (spelling tasks)     | ``words_offline.txt``: ``/usr/share/dict/words`` if present, else    |
|                                          | the words of the pretraining corpus (lowercase, seen 3+ times)      |
| SmolTalk, MMLU, GSM8K, ARC, HumanEval    | used when they are in the cache, else skipped with one line each    |
| CORE eval bundle                         | used when present, else CORE is skipped (one line)                  |
| (your conversations)                     | ``--data.custom_json=a.jsonl,b.jsonl`` join the mid and SFT mixtures |
|                                          | (online too; CustomJSON format: one JSON list of messages per line)  |

Everything is deterministic: the same machine gives the same corpus, word list and mixtures. Files
already made are kept (re-running does nothing), and a ``base_data/`` that already holds shards
(downloaded FineWeb, or your text) is used as it is. ``$JAXCHAT_HOME/offline.json`` records what was
made, with the corpus's measurements; ``runs/cpu_demo.sh`` keeps using the offline mode in a home
that has it. ``resolve_config`` is what ``data.offline`` changes in a run's config (CORE and the
chat-eval tasks); ``jaxchat.tasks.mixtures`` builds the offline mixtures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jaxchat import cli
from jaxchat.common import JaxchatError, jaxchat_home
from jaxchat.data import corpus
from jaxchat.data.cache import (
    EVAL_BUNDLE_DIR,
    FINEWEB_DIR,
    IDENTITY_FILE,
    OFFLINE_MANIFEST,
    WORDS_FILE,
    WORDS_OFFLINE_FILE,
    read_corpus_marker,
    tmp_path_for,
)
from jaxchat.data.from_text import CHARS_PER_SHARD, shards_from_documents

PROG = "python -m jaxchat.data.offline"
SYSTEM_DICTIONARY = Path("/usr/share/dict/words")
MIN_WORD_COUNT = 3  # a corpus word enters the word list when it appears this often (typos and names rarely do)
MAX_WORD_LEN = 24
WORD_SAMPLE_CHARS = 50_000_000  # corpus characters read to make a word list (all of the default corpus)
MEASURE_CHARS = 20_000_000
CORPUS_VERSION = 2  # bump when jaxchat.data.corpus changes what it makes: the fingerprint then differs
# The default corpus (~2.7M characters) keeps a fifth of its documents for validation: ~550K characters,
# ~120K tokens, enough for the CPU demo's 65,536 val tokens with room to spare (10 % would be too few).
VAL_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """What ``python -m jaxchat.data.offline`` prepares (or, with ``check_network``, probes)."""

    from_text: str = ""  # DIR (or file): pretrain on your own .txt/.md/.jsonl files instead of Python's docs
    check_network: bool = False  # only probe the download hosts: exit 0 when one answers, 1 (one line) when none does
    timeout: float = 3.0  # seconds the network probe waits for a connection


# ---- the network -------------------------------------------------------------------------------------


def network_problem(timeout: float = 3.0) -> str | None:
    """None when one of the recipe's download hosts accepts a connection within ``timeout`` seconds;
    otherwise one line saying so and pointing to the offline route."""
    from jaxchat.data import download  # lazy: the downloader pulls in tqdm and datasets helpers

    urls = [download.FINEWEB_URL.format(i=0), os.environ.get("HF_ENDPOINT") or download.HF_ENDPOINT,
            download.IDENTITY_URL, download.WORDS_URL, download.EVAL_BUNDLE_URL]
    reason = download.probe(urls, timeout=timeout)
    if reason is None:
        return None
    return (f"the network is unreachable ({reason}); offline route: `{PROG}`, then train with "
            "--data.offline=true (runs/cpu_demo.sh does both)")


# ---- the pretraining corpus -------------------------------------------------------------------------


def python_docs_fingerprint() -> str:
    """Identifies the default corpus of this interpreter (its version, its standard library, our builder)."""
    key = f"{CORPUS_VERSION}\0{sys.version}\0{sysconfig.get_paths()['stdlib']}"
    return "python-docs-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def make_corpus(home: Path, from_text: str = "") -> dict[str, Any]:
    """Fill ``home/base_data`` (see the module docstring) unless it holds shards already; its ``corpus.json``
    (for downloaded FineWeb shards, a stand-in saying so)."""
    out = home / FINEWEB_DIR
    have = sorted(out.glob("shard_*.parquet")) if out.is_dir() else []
    if from_text:
        from jaxchat.data.download import DownloadConfig, run  # lazy: see network_problem

        run(DownloadConfig(from_text=from_text), home)  # writes, or finds the same shards; refuses others
        return read_corpus_marker(out) or {}
    if have:
        marker = read_corpus_marker(out)
        if marker is None:
            print(f"corpus: using the {len(have)} shards already in {out} (FineWeb-Edu or of unknown origin)")
            return {"source": "shards already in base_data (no corpus.json: FineWeb-Edu?)", "shards": len(have)}
        print(f"corpus: using the {len(have)} shards already in {out}, made from {marker.get('source', '?')}")
        return marker
    print(f"corpus: building it from {corpus.describe_source()} ...", flush=True)
    docs = corpus.python_docs()
    stats = corpus.measure(d.text for d in docs)
    shards_from_documents((d.text for d in docs), out, source=corpus.describe_source(), command=PROG,
                          fingerprint=python_docs_fingerprint(), chars_per_shard=CHARS_PER_SHARD,
                          val_fraction=VAL_FRACTION, extra={"kind": corpus.CORPUS_NAME, "stats": stats})
    marker = read_corpus_marker(out) or {}
    print(f"corpus: wrote {len(marker.get('shards', []))} shards to {out}: {stats['documents']:,} documents, "
          f"{stats['characters']:,} characters, {stats['words']:,} words ({stats['function_word_share']:.0%} "
          f"common English function words); the last shard ({marker['shards'][-1]['characters']:,} characters) "
          "is the validation shard")
    return marker


def corpus_texts(home: Path, max_chars: int) -> Iterable[str]:
    """The documents of ``home/base_data`` in order, ``max_chars`` characters at most."""
    from jaxchat.data.shards import iter_texts, list_shards  # lazy: parquet reading

    return iter_texts(list_shards(home / FINEWEB_DIR), max_chars=max_chars)


# ---- the word list ----------------------------------------------------------------------------------

_CORPUS_WORD = re.compile(r"(?<![\w.'-])([A-Z]?[a-z]+)(?![\w'(-]|\.\w)")


def dictionary_words(path: Path | None = None) -> list[str]:
    """The lowercase ASCII words of a system dictionary (default ``/usr/share/dict/words``; proper nouns
    and possessives left out), sorted."""
    with open(path or SYSTEM_DICTIONARY, encoding="utf-8", errors="replace") as f:
        words = {w.strip() for w in f}
    return sorted(w for w in words if w.isascii() and w.isalpha() and w.islower() and 2 <= len(w) <= MAX_WORD_LEN)


def corpus_words(texts: Iterable[str], min_count: int = MIN_WORD_COUNT) -> list[str]:
    """Words of running text: all-lowercase or Capitalised runs of letters (not identifiers such as
    ``snake_case``, ``CamelCase``, ``obj.attr`` or ``call(``), lowercased, seen ``min_count`` times, sorted."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(m.lower() for m in _CORPUS_WORD.findall(text))
    return sorted(w for w, c in counts.items() if c >= min_count and 2 <= len(w) <= MAX_WORD_LEN)


def make_word_list(home: Path) -> dict[str, Any]:
    """``home/words_offline.txt`` unless ``words_alpha.txt`` or it already exists; what was used."""
    if (home / WORDS_FILE).is_file():
        print(f"words: using {home / WORDS_FILE}")
        return {"file": WORDS_FILE, "source": "downloaded"}
    path = home / WORDS_OFFLINE_FILE
    if path.is_file():
        count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        print(f"words: using {path} ({count:,} words)")
        return {"file": WORDS_OFFLINE_FILE, "words": count}
    if SYSTEM_DICTIONARY.is_file() and (words := dictionary_words()):
        source = str(SYSTEM_DICTIONARY)
    else:
        words = corpus_words(corpus_texts(home, WORD_SAMPLE_CHARS))
        source = f"the pretraining corpus in {home / FINEWEB_DIR} (words seen {MIN_WORD_COUNT}+ times)"
    if len(words) < 20:
        raise JaxchatError(f"only {len(words)} words found in {source}; the spelling tasks need more "
                           f"(put one lowercase word per line in {path})")
    tmp = tmp_path_for(path)
    tmp.write_text("".join(w + "\n" for w in words), encoding="utf-8")
    os.replace(tmp, path)
    print(f"words: wrote {len(words):,} words from {source} to {path}")
    return {"file": WORDS_OFFLINE_FILE, "source": source, "words": len(words)}


# ---- everything -------------------------------------------------------------------------------------


def prepare(home: str | Path | None = None, from_text: str = "") -> dict[str, Any]:
    """Make what the offline mode reads in ``home`` (default ``$JAXCHAT_HOME``) and write
    ``offline.json``; returns its content."""
    from jaxchat.tasks.identity import JaxchatIdentity  # lazy: tasks are not needed to probe the network

    home = Path(home) if home is not None else jaxchat_home()
    home.mkdir(parents=True, exist_ok=True)
    marker = make_corpus(home, from_text)
    words = make_word_list(home)
    if (home / IDENTITY_FILE).is_file():
        identity: dict[str, Any] = {"file": IDENTITY_FILE}
        print(f"identity: using {home / IDENTITY_FILE}")
    else:
        identity = {"source": "jaxchat.tasks.identity (shipped)", "train": len(JaxchatIdentity("train")),
                    "test": len(JaxchatIdentity("test"))}
        print(f"identity: jaxchat's own {identity['train'] + identity['test']} conversations, shipped with the "
              f"package ({identity['test']} held out for validation)")
    bundle = (home / EVAL_BUNDLE_DIR / "core.yaml").is_file()
    corpus_info = {k: v for k, v in marker.items() if k != "shards"}
    shards = marker.get("shards")
    corpus_info["shards"] = len(shards) if isinstance(shards, list) else shards
    manifest = {
        "mode": "offline",
        "corpus": corpus_info,
        "words": words,
        "identity": identity,
        "core": "eval bundle present" if bundle else "skipped: the CORE eval bundle needs the network",
        "train": "python train.py --stage=all --config configs/cpu_demo.toml --data.offline=true",
    }
    tmp = tmp_path_for(home / OFFLINE_MANIFEST)
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, home / OFFLINE_MANIFEST)
    print(f"offline: ready ({home / OFFLINE_MANIFEST}); train with --data.offline=true")
    return manifest


def is_offline_home(home: str | Path | None = None) -> bool:
    """True when ``home`` was prepared by ``prepare`` (the demo keeps the offline mode there)."""
    return ((Path(home) if home is not None else jaxchat_home()) / OFFLINE_MANIFEST).is_file()


# ---- what data.offline changes in a run -------------------------------------------------------------


def resolve_config(cfg: Any, offline: bool | None = None, home: str | Path | None = None) -> Any:
    """``cfg`` (a RunConfig) adjusted to what this machine has when the offline mode is on
    (``offline``, default ``cfg.data.offline``); unchanged otherwise. One line per change:

    - CORE (``base.core_every``) is turned off when the eval bundle is not in the cache;
    - the chat-eval tasks (``chat_eval.tasks``) are those whose data is in the cache.
    """
    if offline is None:
        offline = bool(getattr(getattr(cfg, "data", None), "offline", False))
    if not offline:
        return cfg
    from jaxchat.tasks.mixtures import CHAT_EVAL_NEEDS, available_chat_eval_tasks  # lazy: builds nothing

    root = Path(home) if home is not None else jaxchat_home()
    changes: dict[str, Any] = {}
    if cfg.base.core_every != 0 and not (root / EVAL_BUNDLE_DIR / "core.yaml").is_file():
        print(f"offline: CORE skipped (base.core_every=0): the eval bundle is not in {root / EVAL_BUNDLE_DIR} "
              "and needs the network", file=sys.stderr)
        changes["base"] = dataclasses.replace(cfg.base, core_every=0)
    spec = cfg.chat_eval.tasks.strip()
    names = list(CHAT_EVAL_NEEDS) if spec == "all" else [n.strip() for n in spec.replace("|", ",").split(",") if n.strip()]
    have, skipped = available_chat_eval_tasks([n for n in names if n in CHAT_EVAL_NEEDS], root)
    if skipped:
        datasets = [name for name in skipped if CHAT_EVAL_NEEDS[name] != "words"]
        why = [f"{', '.join(datasets)}: their test sets are not in {root / 'tasks'} (they come from the Hugging "
               "Face Hub)"] if datasets else []
        why += [f"{name}: {reason}" for name, reason in skipped.items() if name not in datasets]
        if not have:
            raise JaxchatError(f"offline: no chat-eval task of {spec!r} has its data here ({'; '.join(why)})")
        print(f"offline: chat_eval on {','.join(have)} only; skipped {'; '.join(why)}", file=sys.stderr)
        changes["chat_eval"] = dataclasses.replace(cfg.chat_eval, tasks=",".join(have))
    return dataclasses.replace(cfg, **changes) if changes else cfg


# ---- the command line -------------------------------------------------------------------------------


def run(config: OfflineConfig) -> int:
    if config.timeout <= 0:
        raise JaxchatError(f"--timeout={config.timeout:g}: expected a positive number of seconds")
    if config.check_network:
        problem = network_problem(config.timeout)
        if problem is None:
            return 0
        print(problem, file=sys.stderr)
        return 1
    prepare(from_text=config.from_text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring); the exit status (2 with one ``error:`` line)."""
    return cli.main(run, OfflineConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
