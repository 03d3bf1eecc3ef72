"""jaxchat's main job: train the nanochat recipe stage by stage, on one GPU (or a CPU at demo size).

    python train.py --stage=STAGE [--config configs/NAME.toml] [--key=value ...]

Stages: download (fills $JAXCHAT_HOME with what the config needs), tokenizer, base, mid, sft,
chat_eval (evaluates the latest mid/sft checkpoint), report, and all (tokenizer → base → mid →
chat_eval mid → sft → chat_eval sft → report; download first with `--stage=download`).
`python train.py --help` lists every key with its default. Examples:

    python train.py --stage=base --config configs/d12.toml --base.num_iterations=500
    python train.py --stage=base --resume            # continue an interrupted run exactly
    python train.py --stage=sft --source_tag=d20 --tag=d20_sft2
"""

from __future__ import annotations

import sys

from jaxchat.recipe import STAGES


def _help() -> str:
    from jaxchat.config import RunConfig, keys

    lines = [__doc__.strip(), "", "options (key = default  [type]):",
             f"  --stage = (required)  one of {', '.join(STAGES)}",
             "  --config = (none)  a TOML preset: configs/{tiny,cpu_demo,d12,d20,d26}.toml"]
    for key, value, type_name in keys(RunConfig()):
        lines.append(f"  --{key} = {value!r}  [{type_name}]")
    return "\n".join(lines)


def parse(argv: list[str]):
    """(stage, RunConfig) from the command line: preset first, then overrides."""
    from jaxchat.common import JaxchatError
    from jaxchat.config import RunConfig, load_toml, override, parse_overrides, validate

    options = parse_overrides(argv)
    stage = options.pop("stage", None)
    if stage not in STAGES:
        raise JaxchatError(f"--stage={stage}: expected one of {', '.join(STAGES)}" if stage else
                           f"--stage is required: one of {', '.join(STAGES)}")
    preset = options.pop("config", None)
    config = load_toml(preset) if preset else RunConfig()
    return stage, validate(override(config, options))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    from jaxchat.common import JaxchatError
    from jaxchat.host_memory import retain_freed_host_memory

    retain_freed_host_memory()  # before JAX starts its CPU client; a no-op on GPU runs
    try:
        stage, cfg = parse(argv)
        from jaxchat.recipe import run_stage

        run_stage(stage, cfg)
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
