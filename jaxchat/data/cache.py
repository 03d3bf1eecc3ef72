"""Where every downloaded item lives in ``$JAXCHAT_HOME`` (docs/DESIGN.md §0), and checks that it is there.

This module is the single source of truth for the cache layout: the downloader writes these paths
and the tasks / training code read them. It never touches the network.

Layout (``<home>`` = ``$JAXCHAT_HOME``, default ``~/.cache/jaxchat``)::

    <home>/base_data/shard_00000.parquet ...       FineWeb-Edu shards (column `text`)
    <home>/base_data_climbmix/shard_00000.parquet … ClimbMix shards (nanochat's current pretraining data, column
                                                    `text`): train shards 0, 1, … and the val shard 06542
    <home>/tasks/<name>/<config>/<split>.parquet    one file per HF dataset split (HF schema, unchanged)
    <home>/tasks/.hf_cache/                          datasets' Arrow cache of those files (derived; deletable)
    <home>/base_data/corpus.json                    only for shards made from local text (--from_text, offline mode):
                                                    where they came from and the command that remakes them
    <home>/identity_conversations.jsonl
    <home>/words_alpha.txt
    <home>/eval_bundle/{core.yaml, eval_meta_data.csv, eval_data/...}
    <home>/words_offline.txt                        offline mode: a word list made on this machine (spelling tasks)
    <home>/offline.json                             offline mode: what ``python -m jaxchat.data.offline`` prepared

``<config>`` is ``default`` for HF datasets without configs. The task files are:

    tasks/smoltalk/default/{train,test}.parquet              HuggingFaceTB/smol-smoltalk
    tasks/mmlu/auxiliary_train/train.parquet                 cais/mmlu, config auxiliary_train
    tasks/mmlu/all/{test,validation,dev}.parquet             cais/mmlu, config all
    tasks/gsm8k/main/{train,test}.parquet                    openai/gsm8k, config main
    tasks/arc/ARC-Easy/{train,validation,test}.parquet       allenai/ai2_arc
    tasks/arc/ARC-Challenge/{train,validation,test}.parquet  allenai/ai2_arc
    tasks/humaneval/default/test.parquet                     openai/openai_humaneval

(``cais/mmlu`` config ``all`` also has an ``auxiliary_train`` split; it repeats the
``auxiliary_train`` config's rows, so it is not downloaded.)
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxchat.common import JaxchatError, jaxchat_home

DOWNLOAD_MODULE = "python -m jaxchat.data.download"
FINEWEB_DIR = "base_data"
TASKS_DIR = "tasks"
HF_CACHE_DIR = ".hf_cache"
IDENTITY_FILE = "identity_conversations.jsonl"
WORDS_FILE = "words_alpha.txt"
EVAL_BUNDLE_DIR = "eval_bundle"
CORPUS_MARKER = "corpus.json"  # in base_data/: the shards were made from local text, not downloaded
WORDS_OFFLINE_FILE = "words_offline.txt"
OFFLINE_MANIFEST = "offline.json"
FINEWEB_COMMAND = f"{DOWNLOAD_MODULE} --only=fineweb --num_shards=8"
CLIMBMIX_DIR = "base_data_climbmix"  # nanochat's directory name for it too
CLIMBMIX_COMMAND = f"{DOWNLOAD_MODULE} --only=climbmix --num_shards=8"
# The pretraining corpora: name -> directory under $JAXCHAT_HOME. Each has its own, so they never mix.
CORPUS_DIRS = {"fineweb": FINEWEB_DIR, "climbmix": CLIMBMIX_DIR}
CORPORA = tuple(CORPUS_DIRS)
NO_CONFIG = "default"  # local directory name for HF datasets that have no config


@dataclass(frozen=True)
class HFSource:
    """One HF dataset config and the splits of it that jaxchat keeps locally."""

    name: str  # directory under tasks/
    repo: str  # HF dataset id
    config: str | None  # HF config name (None: the dataset has no configs)
    splits: tuple[str, ...]

    @property
    def local_config(self) -> str:
        """The directory name used for this config under ``tasks/<name>/``."""
        return self.config or NO_CONFIG

    @property
    def url(self) -> str:
        """The dataset's page on the HF hub (for messages)."""
        return f"https://huggingface.co/datasets/{self.repo}"


HF_SOURCES: tuple[HFSource, ...] = (
    HFSource("smoltalk", "HuggingFaceTB/smol-smoltalk", None, ("train", "test")),
    HFSource("mmlu", "cais/mmlu", "auxiliary_train", ("train",)),
    HFSource("mmlu", "cais/mmlu", "all", ("test", "validation", "dev")),
    HFSource("gsm8k", "openai/gsm8k", "main", ("train", "test")),
    HFSource("arc", "allenai/ai2_arc", "ARC-Easy", ("train", "validation", "test")),
    HFSource("arc", "allenai/ai2_arc", "ARC-Challenge", ("train", "validation", "test")),
    HFSource("humaneval", "openai/openai_humaneval", None, ("test",)),
)

# `--only` group of each item, for the command printed in error messages.
ITEMS: dict[str, str] = {
    "fineweb": "fineweb",
    "climbmix": "climbmix",
    "identity": "tasks",
    "words": "tasks",
    "eval_bundle": "eval",
    **{src.name: "tasks" for src in HF_SOURCES},
}


def _home(home: str | Path | None) -> Path:
    return Path(home) if home is not None else jaxchat_home()


def corpus_dir(corpus: str = "fineweb", home: str | Path | None = None) -> Path:
    """The shard directory of pretraining corpus ``corpus`` (``fineweb`` or ``climbmix``) in ``home``."""
    if corpus not in CORPUS_DIRS:
        raise JaxchatError(f"unknown pretraining corpus {corpus!r}; expected one of {', '.join(CORPORA)}")
    return _home(home) / CORPUS_DIRS[corpus]


def read_corpus_marker(directory: str | Path) -> dict[str, Any] | None:
    """The ``corpus.json`` of a shard directory made from local text (``--from_text``, the offline
    corpus), or None for downloaded FineWeb-Edu shards (no marker, or an unreadable one)."""
    path = Path(directory) / CORPUS_MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def fineweb_command(directory: str | Path | None = None) -> str:
    """The command that (re)makes the shards of ``directory`` (default ``$JAXCHAT_HOME/base_data``):
    the FineWeb-Edu download (the ClimbMix one for a ``base_data_climbmix`` directory), or, for shards
    made from local text, the command that made them (recorded in their ``corpus.json``), so that a
    hint never overwrites someone's own corpus with FineWeb."""
    directory = Path(directory) if directory is not None else jaxchat_home() / FINEWEB_DIR
    marker = read_corpus_marker(directory)
    if marker is not None:
        return marker["command"]
    return CLIMBMIX_COMMAND if directory.name == CLIMBMIX_DIR else FINEWEB_COMMAND


def quote_command(*words: str) -> str:
    """A shell command line from its words (quoted where needed)."""
    return " ".join(shlex.quote(w) for w in words)


def download_command(item: str, home: str | Path | None = None) -> str:
    """The exact shell command that downloads ``item`` (a key of ``ITEMS``) into ``home``; for
    ``fineweb``, the command that made the current shards when they came from local text."""
    group = ITEMS.get(item)
    if group is None:
        raise JaxchatError(f"unknown cache item {item!r}; expected one of {sorted(ITEMS)}")
    if group in CORPUS_DIRS:
        return fineweb_command(corpus_dir(group, home))
    return f"{DOWNLOAD_MODULE} --only {group}"


def tmp_path_for(path: Path) -> Path:
    """The in-progress name of ``path``: never mistaken for a complete file (``<name>.tmp``)."""
    return path.with_name(path.name + ".tmp")


def hf_source(name: str, config: str | None = None) -> HFSource:
    """The ``HFSource`` for local dataset ``name`` and config (None or 'default' for no config)."""
    wanted = None if config in (None, NO_CONFIG) else config
    for src in HF_SOURCES:
        if src.name == name and src.config == wanted:
            return src
    known = sorted({f"{s.name}/{s.local_config}" for s in HF_SOURCES})
    raise JaxchatError(f"unknown task dataset {name}/{config or NO_CONFIG}; expected one of {known}")


def task_file(name: str, config: str | None, split: str, home: str | Path | None = None) -> Path:
    """Path of the local parquet copy of one HF split (it may not exist yet)."""
    src = hf_source(name, config)
    if split not in src.splits:
        raise JaxchatError(
            f"{src.repo} config {src.local_config} has no split {split!r} in the cache; "
            f"expected one of {list(src.splits)}"
        )
    return _home(home) / TASKS_DIR / src.name / src.local_config / f"{split}.parquet"


def hf_cache_dir(home: str | Path | None = None) -> Path:
    """Directory for datasets' Arrow cache of the local task files (kept inside the jaxchat cache)."""
    return _home(home) / TASKS_DIR / HF_CACHE_DIR


def require_task_file(name: str, config: str | None, split: str, home: str | Path | None = None) -> Path:
    """Like ``task_file`` but raises JaxchatError, with the download command, when the file is missing."""
    path = task_file(name, config, split, home)
    if not path.is_file():
        src = hf_source(name, config)
        raise JaxchatError(
            f"{path} is missing (HF dataset {src.repo}, config {src.local_config}, split {split}); "
            f"download it with `{download_command(name)}`"
        )
    return path


def missing_files(item: str, home: str | Path | None = None) -> list[Path]:
    """The files of cache item ``item`` (see ``ensure_available``) that are not on disk ([] when complete)."""
    root = _home(home)
    if item in CORPUS_DIRS:
        directory = root / CORPUS_DIRS[item]
        n = len(list(directory.glob("shard_*.parquet"))) if directory.is_dir() else 0
        return [] if n >= 2 else [directory / f"shard_{i:05d}.parquet" for i in range(n, 2)]
    if item == "identity":
        return [] if (root / IDENTITY_FILE).is_file() else [root / IDENTITY_FILE]
    if item == "words":  # the spelling tasks also read the offline word list (jaxchat.tasks.spelling)
        return [] if (root / WORDS_FILE).is_file() or (root / WORDS_OFFLINE_FILE).is_file() else [root / WORDS_FILE]
    if item == "eval_bundle":
        return [root / EVAL_BUNDLE_DIR / p for p in ("core.yaml", "eval_meta_data.csv", "eval_data")
                if not (root / EVAL_BUNDLE_DIR / p).exists()]
    sources = [src for src in HF_SOURCES if src.name == item]
    if not sources:
        raise JaxchatError(f"unknown cache item {item!r}; expected one of {sorted(ITEMS)}")
    return [task_file(src.name, src.config, split, root) for src in sources for split in src.splits
            if not task_file(src.name, src.config, split, root).is_file()]


Need = str | tuple[str, str | None, str]


def require_available(needs: Iterable[Need], home: str | Path | None = None) -> None:
    """Check several cache items at once: one JaxchatError listing EVERY missing file, with the
    command(s) that fetch them, instead of one error per run for the first missing file.

    ``needs``: item names (``"identity"``, ``"mmlu"``: all of the item's files) and/or single task
    splits as ``(name, config, split)`` (``("mmlu", "auxiliary_train", "train")``)."""
    missing: dict[str, list[Path]] = {}
    for need in dict.fromkeys(needs):
        if isinstance(need, tuple):
            name, config, split = need
            path = task_file(name, config, split, home)
            files = [] if path.is_file() else [path]
        else:
            name, files = need, missing_files(need, home)
        if files:
            missing.setdefault(name, []).extend(files)
    if not missing:
        return
    files = [str(f) for fs in missing.values() for f in fs]
    commands = list(dict.fromkeys(download_command(item, home) for item in missing))
    shown = "; ".join(files[:12]) + (f"; and {len(files) - 12} more" if len(files) > 12 else "")
    raise JaxchatError(
        f"{len(files)} file(s) missing from the cache ({', '.join(missing)}): {shown}; "
        f"fetch them with `{'` and `'.join(commands)}`"
    )


def ensure_available(item: str, home: str | Path | None = None) -> Path:
    """Check that cache item ``item`` is complete on disk and return its path.

    Items: ``fineweb`` (``base_data/``, at least 2 shards), ``climbmix`` (``base_data_climbmix/``, the
    same), ``identity``, ``words``, ``eval_bundle``,
    and the task datasets ``smoltalk``, ``mmlu``, ``gsm8k``, ``arc``, ``humaneval`` (every split the
    downloader keeps; returns ``tasks/<name>``). Raises JaxchatError naming what is missing and the
    exact download command.
    """
    root = _home(home)
    command = download_command(item, root)
    if item in CORPUS_DIRS:
        directory = root / CORPUS_DIRS[item]
        n = len(list(directory.glob("shard_*.parquet"))) if directory.is_dir() else 0
        if n < 2:
            raise JaxchatError(
                f"{directory} holds {n} shard_*.parquet file(s), expected at least 2 "
                f"(the last is the validation shard); download them with `{command}`"
            )
        return directory
    if item == "identity":
        path = root / IDENTITY_FILE
    elif item == "words":
        path = root / WORDS_FILE
    elif item == "eval_bundle":
        path = root / EVAL_BUNDLE_DIR
        missing = [p for p in ("core.yaml", "eval_meta_data.csv", "eval_data") if not (path / p).exists()]
        if missing:
            raise JaxchatError(
                f"{path} is missing {', '.join(missing)}; download the CORE eval bundle with `{command}`"
            )
        return path
    else:
        require_available([item], root)  # every missing split at once
        return root / TASKS_DIR / item
    if not path.is_file():
        raise JaxchatError(f"{path} is missing; download it with `{command}`")
    return path
