"""jaxchat's main job: train the nanochat recipe stage by stage, on GPUs (or a CPU at demo size).

    python train.py --stage=STAGE [--config configs/NAME.toml] [--key=value ...]

Stages (jaxchat/stages.py): download (fills $JAXCHAT_HOME with what the config needs), tokenizer,
base, mid, sft, chat_eval (evaluates the latest mid/sft checkpoint), report, and all (tokenizer →
base → mid → chat_eval mid → sft → chat_eval sft → report; download first with `--stage=download`).
`--recipe=2026` trains nanochat 92d63d4's recipe instead (no mid: SFT starts from base; its defaults
in jaxchat/config.py RECIPE_DEFAULTS). `python train.py --help` lists every key with its default
(the 2025 recipe's). Examples:

    python train.py --stage=base --config configs/d12.toml --base.num_iterations=500
    python train.py --stage=base --resume            # continue an interrupted run exactly
    python train.py --stage=sft --source_tag=d20 --tag=d20_sft2
    python train.py --stage=all --config configs/gpt2_1gpu.toml   # the 2026 recipe's d24
    python train.py --stage=base --dist.coordinator=node0:1234 --dist.num_processes=2 --dist.process_id=0
                                                     # one of several machines (README: several GPUs)
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _quit_during_imports(signum, frame) -> None:  # main() replaces it once the imports are done
    print("\ninterrupted: stopped during start-up; nothing was written", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":  # `import jaxchat` loads JAX (~2 s): a Ctrl-C then must not print a traceback
    signal.signal(signal.SIGINT, _quit_during_imports)

from jaxchat import cli, stages  # noqa: E402
from jaxchat.common import JaxchatError, jaxchat_home  # noqa: E402
from jaxchat.config import RunConfig, build, explicit_keys, parse_overrides, sections_read, validate  # noqa: E402

PROG = "python train.py"


def parse(argv: list[str]) -> tuple[str, RunConfig]:
    """(stage, RunConfig) from the command line: preset first, then overrides."""
    options = parse_overrides(argv)
    stage = options.pop("stage", None)
    if stage not in stages.choices():
        raise JaxchatError(f"--stage={stage}: expected one of {', '.join(stages.choices())}" if stage else
                           f"--stage is required: one of {', '.join(stages.choices())}")
    preset = options.pop("config", None)
    return stage, validate(build(preset, options, prog=PROG), stage)  # only the settings this stage reads


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if cli.wants_help(argv):
        print(cli.help_text(__doc__, RunConfig(), extra=[
            ("stage", f"(required)  one of {', '.join(stages.choices())}"),
            ("config", "(none)  a TOML preset: configs/{tiny,cpu_demo,d12,d20,d26,d12_12gb,d16_16gb,d20_24gb,"
                       "gpt2_1gpu,cpu_demo_2026}.toml")]))
        return 0
    target: dict = {}  # the checkpoint directory of a single training stage, once parsed

    def status() -> str:
        """What is on disk now, for an interrupt message (true whenever it is called)."""
        # Never imported here (a handler may run in the middle of an import): only what is loaded.
        stage_module = sys.modules.get("jaxchat.training.stage")
        describe = getattr(stage_module, "checkpoint_status", None)
        if describe is None:
            return "stopped during start-up; nothing was written"
        directory = getattr(stage_module, "current_directory", None) or target.get("directory")
        return describe(directory) if directory else "no training stage had started; no checkpoint was written"

    def on_sigint(signum, frame) -> None:
        # First Ctrl-C in a training loop: stop at the next step boundary and save. Anywhere else (start-up,
        # evals between stages, the tokenizer) and on a second Ctrl-C: exit now, without unwinding through
        # JAX/XLA (a KeyboardInterrupt inside a compile could crash the interpreter's shutdown).
        stop = getattr(sys.modules.get("jaxchat.training.loop"), "STOP", None)
        if stop is not None and stop.request():
            print("\ninterrupt: stopping at the next step boundary, then saving a checkpoint (Ctrl-C again to "
                  "quit at once)", file=sys.stderr, flush=True)
            return
        message = f"\ninterrupted: {status()}"
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
        os._exit(cli.INTERRUPTED)

    quiet: list = []  # the real stdout, while a process other than 0 prints nothing
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        # Lazy: these import JAX, which --help does not need, and malloc's setting must precede JAX's start.
        from jaxchat import distributed
        from jaxchat.host_memory import retain_freed_host_memory
        from jaxchat.runtime import configure_process

        retain_freed_host_memory()  # before JAX starts its CPU client; a no-op on GPU runs
        configure_process()  # before JAX starts: 95 % of a GPU for XLA; a compile-only CUDA plugin is not tried
        from jaxchat.preflight import check_run
        from jaxchat.recipe import run_stage
        from jaxchat.training import stage as stage_module
        from jaxchat.training.loop import Interrupted

        stage_module.current_directory = None  # set by this run's first training stage (in-process callers)

        def run() -> None:
            stage, cfg = parse(argv)
            # Several processes (--dist.*): JAX's distributed runtime starts before JAX computes anything;
            # only process 0 prints (errors and warnings still do, on stderr).
            if "dist" in sections_read(stage, cfg.recipe) and distributed.initialize(cfg.dist):
                if not distributed.is_primary():
                    quiet.append(sys.stdout)
                    sys.stdout = open(os.devnull, "w")
            check_run(stage, cfg, explicit=explicit_keys(argv))  # tokenizer size, memory: before any work
            if stage in stages.checkpointed():
                target["directory"] = jaxchat_home() / "checkpoints" / stage / cfg.run_tag
            try:
                run_stage(stage, cfg)
            except Interrupted:
                raise
            except KeyboardInterrupt:  # raised by code rather than Ctrl-C: still say where the run stands
                raise Interrupted(status()) from None

        return cli.report_errors(run)
    finally:
        if quiet:
            sys.stdout.close()
            sys.stdout = quiet.pop()
        if previous is _quit_during_imports:  # a script about to exit: a Ctrl-C now changes nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        elif previous is not None:  # called in-process (tests): give the caller its handler back
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
