"""The tokenizer stage: train BPE on the first characters of the TRAIN shards, save it, report.

    python -m jaxchat.tokenizer.train                                       # the d20 recipe's tokenizer
    python -m jaxchat.tokenizer.train --tokenizer.vocab_size=8192 --tokenizer.max_chars=50_000_000

The ``tokenizer`` section is the one of ``train.py`` (``--stage=tokenizer`` runs the same training):
``vocab_size`` (special tokens included), ``max_chars`` characters to train on, each document cut to
``doc_cap`` characters. ``--data_dir=""`` reads ``$JAXCHAT_HOME/base_data``; ``--out_dir=""`` writes
``$JAXCHAT_HOME/tokenizer``. The validation shard (the last one) is never read. The save is atomic,
so an interrupted run never leaves a tokenizer that loads half-written.

A tokenizer that checkpoints were trained with (its fingerprint is in the meta of a step under
``$JAXCHAT_HOME/checkpoints/*/*/``) is not replaced: the run is refused before any work, unless
``--tokenizer.replace=true``; then, once the new one is trained, the old directory is moved to
``tokenizer.old-<fingerprint[:12]>/`` beside it (never deleted), where those checkpoints can get it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxchat import cli, stages
from jaxchat.common import JaxchatError
from jaxchat.config import TokenizerSection
from jaxchat.data.shards import iter_texts, list_shards, split_shards
from jaxchat.report import write_section
from jaxchat.tokenizer import default_tokenizer_dir
from jaxchat.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer
from jaxchat.tokenizer.constants import MIN_VOCAB_SIZE

PROG = "python -m jaxchat.tokenizer.train"


@dataclasses.dataclass(frozen=True)
class TokenizerTrainConfig:
    """What ``python -m jaxchat.tokenizer.train`` trains, from where, to where."""

    data_dir: str = ""  # shard directory; "" = $JAXCHAT_HOME/base_data
    out_dir: str = ""  # where the tokenizer is saved; "" = $JAXCHAT_HOME/tokenizer
    tokenizer: TokenizerSection = TokenizerSection()


def saved_fingerprint(directory: Path) -> str | None:
    """The fingerprint of the tokenizer saved in ``directory``; None when there is none. A tokenizer
    that no longer loads is identified by the fingerprint its ``tokenizer.json`` records."""
    json_path = directory / "tokenizer.json"
    if not json_path.is_file():
        return None
    try:
        return Tokenizer.from_directory(directory).fingerprint()
    except JaxchatError:
        try:
            fingerprint = json.loads(json_path.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None
        return fingerprint if isinstance(fingerprint, str) else None


def _aside(out: Path, fingerprint: str) -> Path:
    """Where a replaced tokenizer goes: ``<out>.old-<fingerprint[:12]>`` (``-2``, ``-3``… if taken)."""
    aside = out.with_name(f"{out.name}.old-{fingerprint[:12]}")
    n = 2
    while aside.exists():
        aside, n = out.with_name(f"{out.name}.old-{fingerprint[:12]}-{n}"), n + 1
    return aside


def check_replacement(out: Path, replace: bool) -> tuple[str, list[Path]] | None:
    """Before any work: JaxchatError when the tokenizer in ``out`` is one that checkpoints were trained
    with and ``replace`` is false (saying how to proceed). Returns ``(its fingerprint, the checkpoints)``
    when there are such checkpoints (and ``replace``), else None."""
    fingerprint = saved_fingerprint(out)
    if fingerprint is None:
        return None
    # Function-local: jaxchat.checkpoint imports JAX and Orbax, needed only when a tokenizer already exists.
    from jaxchat.checkpoint import tokenizer_users

    users = tokenizer_users(fingerprint)
    if not users:
        return None
    if not replace:
        raise JaxchatError(
            f"refusing to replace {out}: {len(users)} checkpoint(s) were trained with this tokenizer "
            f"({fingerprint[:12]}), e.g. {users[-1]}; a new one would orphan them. To train a new tokenizer anyway "
            f"pass --tokenizer.replace=true: the current one is then moved to {_aside(out, fingerprint)}/ (never "
            f"deleted), where those checkpoints can get it back")
    return fingerprint, users


def train_tokenizer(
    max_chars: int = 2_000_000_000,
    doc_cap: int = 10_000,
    vocab_size: int = 65536,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    replace: bool = False,
) -> Tokenizer:
    """Train on up to ``max_chars`` characters of the train shards (documents cut to ``doc_cap``).

    Saves to ``out_dir`` (default ``$JAXCHAT_HOME/tokenizer``), writes the "Tokenizer training"
    report section, prints a summary and returns the tokenizer. A tokenizer there that checkpoints
    were trained with is refused before any work unless ``replace``, and then moved aside, never
    deleted (``check_replacement``).
    """
    for name, value in (("max_chars", max_chars), ("doc_cap", doc_cap)):
        if value < 1:
            raise JaxchatError(f"{name} is {value}, expected a positive number")
    out = Path(out_dir) if out_dir is not None else default_tokenizer_dir()
    replaced = check_replacement(out, replace)
    train_paths, val_paths = split_shards(list_shards(data_dir))
    print(
        f"tokenizer: vocab {vocab_size:,} from up to {max_chars:,} chars of {len(train_paths)} train shard(s) "
        f"(docs cut to {doc_cap:,} chars; {val_paths[0].name} held out)"
    )
    seen = {"chars": 0, "docs": 0}
    with tqdm(total=max_chars, unit="char", unit_scale=True, desc="tokenizer", file=sys.stderr) as bar:

        def texts() -> Iterator[str]:
            for text in iter_texts(train_paths, max_chars=max_chars, doc_cap=doc_cap):
                seen["chars"] += len(text)
                seen["docs"] += 1
                bar.update(len(text))
                yield text

        t0 = time.perf_counter()
        tokenizer = Tokenizer.train_from_iterator(texts(), vocab_size)
        train_s = time.perf_counter() - t0
        bar.total = seen["chars"]  # the shards may hold fewer characters than asked for
        bar.refresh()

    if replaced is not None:
        old_fingerprint, users = replaced
        if old_fingerprint == tokenizer.fingerprint():
            print(f"tokenizer: the new tokenizer is identical to the current one ({old_fingerprint[:12]}); "
                  f"the {len(users)} checkpoint(s) trained with it stay valid")
        else:
            aside = _aside(out, old_fingerprint)
            os.replace(out, aside)
            print(f"tokenizer: moved the previous tokenizer ({old_fingerprint[:12]}, used by {len(users)} "
                  f"checkpoint(s)) to {aside}")
    tokenizer.save(out)
    if Tokenizer.from_directory(out) != tokenizer:  # cheap end-to-end check of what others will load
        raise JaxchatError(f"{out}: the saved tokenizer does not load back identically")
    summary = _summary(tokenizer, out, train_s, seen["chars"], seen["docs"], max_chars, doc_cap)
    print(summary)
    write_section("tokenizer", stages.get("tokenizer").title, summary, fresh=True)
    return tokenizer


def _summary(tok: Tokenizer, out: Path, seconds: float, chars: int, docs: int, max_chars: int, doc_cap: int) -> str:
    lengths = np.asarray(tok.token_bytes[: tok.n_merge_tokens], dtype=np.float64)
    n_special = len(SPECIAL_TOKENS)
    rows = [
        ("max_chars", f"{max_chars:,}"),
        ("doc_cap", f"{doc_cap:,}"),
        ("characters trained on", f"{chars:,} ({docs:,} documents)"),
        ("training time", f"{seconds:.1f} s"),
        ("vocab size", f"{tok.get_vocab_size():,} ({tok.n_merge_tokens:,} merge tokens + {n_special} special)"),
        ("special ids", f"{tok.n_merge_tokens}-{tok.get_vocab_size() - 1} ({SPECIAL_TOKENS[0]} = {tok.bos_token_id})"),
        ("token bytes min / max / mean", f"{lengths.min():.0f} / {lengths.max():.0f} / {lengths.mean():.2f}"),
        ("fingerprint", tok.fingerprint()),
        ("saved to", str(out)),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def validate(config: TokenizerTrainConfig) -> TokenizerTrainConfig:
    """``config`` if every value is usable; a one-line JaxchatError naming the key otherwise."""
    section = config.tokenizer
    if section.vocab_size < MIN_VOCAB_SIZE:
        raise JaxchatError(f"--tokenizer.vocab_size={section.vocab_size}: expected at least {MIN_VOCAB_SIZE} "
                           f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens)")
    for key in ("max_chars", "doc_cap"):
        if getattr(section, key) < 1:
            raise JaxchatError(f"--tokenizer.{key}={getattr(section, key)}: expected a positive number")
    return config


def run(config: TokenizerTrainConfig) -> Tokenizer:
    """Train, save and report the tokenizer ``config`` describes (``train_tokenizer``); returns it."""
    validate(config)
    section = config.tokenizer
    return train_tokenizer(section.max_chars, section.doc_cap, section.vocab_size, config.data_dir or None,
                           config.out_dir or None, replace=section.replace)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; the exit status (2 with a one-line ``error: ...`` on bad input or data)."""
    return cli.main(run, TokenizerTrainConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
