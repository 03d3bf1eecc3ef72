"""jaxchat's main job: train the nanochat recipe stage by stage, on one GPU (or a CPU at demo size).

    python train.py --stage=STAGE [--config configs/NAME.toml] [--key=value ...]

Stages (jaxchat/stages.py): download (fills $JAXCHAT_HOME with what the config needs), tokenizer,
base, mid, sft, chat_eval (evaluates the latest mid/sft checkpoint), report, and all (tokenizer →
base → mid → chat_eval mid → sft → chat_eval sft → report; download first with `--stage=download`).
`python train.py --help` lists every key with its default. Examples:

    python train.py --stage=base --config configs/d12.toml --base.num_iterations=500
    python train.py --stage=base --resume            # continue an interrupted run exactly
    python train.py --stage=sft --source_tag=d20 --tag=d20_sft2
"""

from __future__ import annotations

import sys

from jaxchat import cli, stages
from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig, load_toml, override, parse_overrides, validate

PROG = "python train.py"


def parse(argv: list[str]) -> tuple[str, RunConfig]:
    """(stage, RunConfig) from the command line: preset first, then overrides."""
    options = parse_overrides(argv)
    stage = options.pop("stage", None)
    if stage not in stages.choices():
        raise JaxchatError(f"--stage={stage}: expected one of {', '.join(stages.choices())}" if stage else
                           f"--stage is required: one of {', '.join(stages.choices())}")
    preset = options.pop("config", None)
    config = load_toml(preset) if preset else RunConfig()
    return stage, validate(override(config, options, prog=PROG))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if cli.wants_help(argv):
        print(cli.help_text(__doc__, RunConfig(), extra=[
            ("stage", f"(required)  one of {', '.join(stages.choices())}"),
            ("config", "(none)  a TOML preset: configs/{tiny,cpu_demo,d12,d20,d26}.toml")]))
        return 0
    # Lazy: these import JAX, which --help does not need, and malloc's setting must precede JAX's start.
    from jaxchat.host_memory import retain_freed_host_memory

    retain_freed_host_memory()  # before JAX starts its CPU client; a no-op on GPU runs
    from jaxchat.recipe import run_stage

    def run() -> None:
        run_stage(*parse(argv))

    return cli.report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
