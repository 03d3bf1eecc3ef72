"""Weights in and out of jaxchat: ``python -m jaxchat.convert COMMAND PATH [--key=value ...]``.

    python -m jaxchat.convert import-nanochat ~/.cache/nanochat --stage=sft --tag=d20   # nanochat's run → jaxchat
    python -m jaxchat.convert export-hf out/d20-hf --stage=sft --tag=d20                # → transformers
    python -m jaxchat.convert export-nanochat out/nanochat --stage=sft --tag=d20        # → nanochat
    python -m jaxchat.convert import-hf out/d20-hf --stage=sft --tag=d20_back           # transformers → jaxchat

import-nanochat PATH: a nanochat base dir (``<stage>_checkpoints/<tag>/`` and ``tokenizer/`` inside),
  a checkpoint directory, or one ``model_XXXXXX.pt``; nanochat 16788ee's or 92d63d4's format. Its
  ``--stage`` is nanochat's (base, mid, sft, rl; rl lands in jaxchat's sft unless ``--as_stage``); the
  checkpoint lands in ``$JAXCHAT_HOME/checkpoints/<stage>/<tag>/<step>/`` and its tokenizer in
  ``$JAXCHAT_HOME/tokenizer``, so every jaxchat tool (eval, chat, web, ``--source_tag`` fine-tuning)
  works on it. Files are read without running pickled code (``jaxchat.interop.safe_pickle``).
export-nanochat OUT: the files nanochat's checkpoint_manager loads (16788ee's format for a 2025
  model, 92d63d4's for a 2026 one), under ``OUT/<stage>_checkpoints/<tag>/`` and ``OUT/tokenizer/``.
export-hf OUT: a ``NanoChatForCausalLM`` directory for Hugging Face transformers (config.json,
  model.safetensors, tokenizer.json with the chat template, generation_config.json); needs
  ``pip install -e '.[interop]'`` (safetensors). Models transformers cannot express (the 2026
  recipe's) are refused, naming what it lacks.
import-hf PATH: the inverse, into ``checkpoints/<stage>/<tag>/``.

Everything is also callable from Python: ``jaxchat.interop.nanochat.import_nanochat`` /
``export_nanochat``, ``jaxchat.interop.hf.export_hf_checkpoint`` / ``import_hf_checkpoint``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxchat import cli
from jaxchat.common import JaxchatError
from jaxchat.config import override, parse_overrides

PROG = "python -m jaxchat.convert"


@dataclasses.dataclass(frozen=True)
class ImportNanochat:
    """import-nanochat PATH."""

    stage: str = ""  # nanochat's stage: base | mid | sft | rl (required)
    tag: str = ""  # jaxchat's tag for it, and the nanochat run's tag in a base dir (required)
    step: int = -1  # -1: the latest
    tokenizer: str = ""  # nanochat's tokenizer directory (default: found beside the checkpoint)
    replace_tokenizer: bool = False  # replace a different tokenizer in $JAXCHAT_HOME that checkpoints use (it is kept as tokenizer.old-<fp>/)
    as_stage: str = ""  # the jaxchat stage to write (default: the same; sft for rl)
    overwrite: bool = False  # replace an existing jaxchat checkpoint of that step


@dataclasses.dataclass(frozen=True)
class Export:
    """export-nanochat OUT / export-hf OUT."""

    stage: str = "sft"  # the jaxchat checkpoint to export
    tag: str = ""  # default: the latest tag
    step: int = -1  # -1: the latest
    overwrite: bool = False  # replace existing files in OUT


@dataclasses.dataclass(frozen=True)
class ImportHF:
    """import-hf PATH."""

    stage: str = "sft"  # the jaxchat stage to write
    tag: str = ""  # required
    step: int = 0  # the step number to give it
    replace_tokenizer: bool = False  # replace a different tokenizer in $JAXCHAT_HOME that checkpoints use (kept as tokenizer.old-<fp>/)
    overwrite: bool = False  # replace an existing jaxchat checkpoint of that step


def _step(value: int) -> int | None:
    return None if value < 0 else value


def import_nanochat(path: Path, c: ImportNanochat) -> str:
    from jaxchat.interop.nanochat import import_nanochat as run  # lazy: JAX, Orbax; --help needs neither

    _require(c, "stage", "tag")
    where = run(path, c.stage, c.tag, _step(c.step), tokenizer_dir=c.tokenizer or None,
                replace_tokenizer=c.replace_tokenizer, as_stage=c.as_stage or None, overwrite=c.overwrite)
    return f"imported {path} → {where}"


def export_nanochat(path: Path, c: Export) -> str:
    from jaxchat.interop.nanochat import export_nanochat as run  # lazy: JAX, Orbax; --help needs neither

    return f"exported → {run(path, c.stage, c.tag or None, _step(c.step), overwrite=c.overwrite)}"


def export_hf(path: Path, c: Export) -> str:
    from jaxchat.interop.hf import export_hf_checkpoint  # lazy: JAX, Orbax; --help needs neither

    where = export_hf_checkpoint(path, c.stage, c.tag or None, _step(c.step), overwrite=c.overwrite)
    return (f"exported → {where}; load it with transformers: AutoModelForCausalLM.from_pretrained({str(where)!r}) "
            f"and AutoTokenizer.from_pretrained({str(where)!r})")


def import_hf(path: Path, c: ImportHF) -> str:
    from jaxchat.interop.hf import import_hf_checkpoint  # lazy: JAX, Orbax; --help needs neither

    _require(c, "tag")
    where = import_hf_checkpoint(path, c.stage, c.tag, step=c.step, replace_tokenizer=c.replace_tokenizer,
                                 overwrite=c.overwrite)
    return f"imported {path} → {where}"


COMMANDS: dict[str, tuple[type, Callable[[Path, Any], str]]] = {
    "import-nanochat": (ImportNanochat, import_nanochat),
    "export-nanochat": (Export, export_nanochat),
    "export-hf": (Export, export_hf),
    "import-hf": (ImportHF, import_hf),
}


def _require(config: Any, *keys: str) -> None:
    missing = [f"--{key}" for key in keys if not getattr(config, key)]
    if missing:
        raise JaxchatError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")


def parse(argv: Sequence[str]) -> tuple[str, Path, Any]:
    """(command, path, its config) from the command line; JaxchatError naming what is wrong."""
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        got = f"{argv[0]!r}: " if argv else ""
        raise JaxchatError(f"{got}expected a command: {', '.join(COMMANDS)} (`{PROG} --help`)")
    command = argv.pop(0)
    if not argv or argv[0].startswith("--"):
        raise JaxchatError(f"{command}: expected a path after the command ({PROG} {command} PATH --key=value ...)")
    path = Path(argv.pop(0)).expanduser()
    kind, _ = COMMANDS[command]
    return command, path, override(kind(), parse_overrides(argv), prog=f"{PROG} {command}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if cli.wants_help(argv):
        print(__doc__.strip())
        for name, (kind, _) in COMMANDS.items():
            print(f"\n{name} PATH, options (key = default  [type]):")
            print("\n".join(cli.help_text("", kind()).splitlines()[3:]))
        return 0

    def run() -> None:
        command, path, config = parse(argv)
        print(COMMANDS[command][1](path, config))

    return cli.report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
