"""Base-model evaluation: val bpb on the held-out shard and the CORE metric (SPEC §5, §9).

Usage::

    python -m jaxchat.eval.base -i base                        # latest base checkpoint, full CORE
    python -m jaxchat.eval.base -i base --tag d20 --step 21400 --core-max-per-task 500
    python -m jaxchat.eval.base -i mid --skip-core --bpb-tokens 1048576

Prints a table and appends a section to the report (``jaxchat.report``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxchat.common import JaxchatError

STAGES = ("base", "mid", "sft", "rl")
DEFAULT_BPB_TOKENS = 20 * 524_288  # nanochat: 20 batches of 524,288 tokens
DEFAULT_DEVICE_BATCH = 32


def val_bpb(graphdef: Any, params: Any, tokenizer: Any, *, seq_len: int, bpb_tokens: int = DEFAULT_BPB_TOKENS,
            device_batch_size: int = DEFAULT_DEVICE_BATCH, data_dir: str | Path | None = None) -> float:
    """Bits per byte over the first ``bpb_tokens`` target tokens of the validation shard.

    The val shard is the last ``shard_*.parquet`` of ``data_dir`` (default
    ``$JAXCHAT_HOME/base_data``), streamed by the pretraining pipeline in rows of ``seq_len``.
    """
    from jaxchat.data.pretrain import val_batches
    from jaxchat.data.shards import list_shards, split_shards
    from jaxchat.eval.bpb import evaluate_bpb

    if bpb_tokens < 1 or device_batch_size < 1:
        raise JaxchatError(f"bpb_tokens={bpb_tokens} and device_batch_size={device_batch_size}: expected both > 0")
    _, val_paths = split_shards(list_shards(data_dir))
    num_batches = max(1, bpb_tokens // (device_batch_size * seq_len))
    batches = val_batches(val_paths, tokenizer, rows=device_batch_size, seq_len=seq_len, num_batches=num_batches)
    return evaluate_bpb(graphdef, params, batches, tokenizer.token_bytes)


def evaluate_base(model: Any, tokenizer: Any, *, bpb_tokens: int = DEFAULT_BPB_TOKENS,
                  device_batch_size: int = DEFAULT_DEVICE_BATCH, core_max_per_task: int = -1,
                  skip_core: bool = False, skip_bpb: bool = False, data_dir: str | Path | None = None,
                  bundle_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Val bpb and CORE of ``model``: ``{"val_bpb": float|None, "core": float|None, "tasks": {...}}``.

    ``tasks`` maps each CORE task label to ``{"accuracy", "centered"}`` (empty with ``skip_core``).
    """
    from jaxchat.eval.core import evaluate_core
    from jaxchat.model import split_params

    graphdef, params = split_params(model)
    seq_len = model.config.sequence_len
    result: dict[str, Any] = {"val_bpb": None, "core": None, "tasks": {}}
    if not skip_bpb:
        t0 = time.time()
        result["val_bpb"] = val_bpb(graphdef, params, tokenizer, seq_len=seq_len, bpb_tokens=bpb_tokens,
                                    device_batch_size=device_batch_size, data_dir=data_dir)
        if progress:
            print(f"val bpb: {result['val_bpb']:.4f} ({time.time() - t0:.1f}s)", flush=True)
    if not skip_core:
        core = evaluate_core(graphdef, params, tokenizer, Path(bundle_dir) if bundle_dir else None,
                             max_per_task=core_max_per_task, seq_len=seq_len, progress=progress)
        result["core"], result["tasks"] = core["core"], core["tasks"]
    return result


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: val bpb, each CORE task's accuracy and centred accuracy, CORE."""
    lines = []
    if result.get("val_bpb") is not None:
        lines.append(f"{'val bpb':<36}{result['val_bpb']:>10.4f}")
    if result.get("core") is not None:
        lines += [f"{'Task':<36}{'Accuracy':>10}{'Centered':>10}", "-" * 56]
        lines += [f"{label:<36}{r['accuracy']:>10.4f}{r['centered']:>10.4f}" for label, r in result["tasks"].items()]
        lines += ["-" * 56, f"{'CORE':<36}{'':>10}{result['core']:>10.4f}"]
    return "\n".join(lines)


def format_markdown(result: dict[str, Any], settings: dict[str, Any]) -> str:
    """The report section body: settings, headline metrics, then the per-task CORE table."""
    lines = [f"- {key}: {value}" for key, value in settings.items()]
    if result.get("val_bpb") is not None:
        lines.append(f"- val bpb: {result['val_bpb']:.4f}")
    if result.get("core") is not None:
        lines.append(f"- CORE: {result['core']:.4f}")
        lines += ["", "| Task | Accuracy | Centered |", "|---|---|---|"]
        lines += [f"| {label} | {r['accuracy']:.4f} | {r['centered']:.4f} |" for label, r in result["tasks"].items()]
    return "\n".join(lines) + "\n"


def write_report(stage: str, result: dict[str, Any], settings: dict[str, Any]) -> str:
    """Write the ``<stage>-eval`` report section; CORE (and val bpb) go to the stage's column of the
    report card's final table. Returns the file."""
    from jaxchat.report import write_section

    metrics = {}
    if result.get("core") is not None:
        metrics["CORE"] = result["core"]
    if result.get("val_bpb") is not None:
        metrics["val bpb"] = result["val_bpb"]
    return str(write_section(f"{stage}-eval", f"Base evaluation ({stage} checkpoint)",
                             format_markdown(result, settings), metrics=metrics))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m jaxchat.eval.base", description="val bpb and CORE (SPEC §5, §9)")
    p.add_argument("-i", "--source", required=True, choices=STAGES, help="checkpoint stage to evaluate")
    p.add_argument("-g", "--tag", default=None, help="model tag, e.g. d20 (default: the latest written)")
    p.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--core-max-per-task", type=int, default=-1, help="CORE items per task (-1: all)")
    p.add_argument("--bpb-tokens", type=int, default=DEFAULT_BPB_TOKENS, help="val tokens for bpb")
    p.add_argument("--device-batch-size", type=int, default=DEFAULT_DEVICE_BATCH, help="rows per bpb batch")
    p.add_argument("--skip-core", action="store_true", help="only val bpb")
    p.add_argument("--skip-bpb", action="store_true", help="only CORE")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: load the checkpoint, evaluate, print the table, write the report section."""
    args = parse_args(argv)
    try:
        if args.skip_core and args.skip_bpb:
            raise JaxchatError("--skip-core and --skip-bpb together leave nothing to evaluate")
        if args.core_max_per_task == 0 or args.core_max_per_task < -1:
            raise JaxchatError(f"--core-max-per-task {args.core_max_per_task}: expected -1 (all) or a positive number")
        # Missing data fails here, before the (slow) model load.
        if not args.skip_core:
            from jaxchat.eval.core import load_bundle

            load_bundle()
        if not args.skip_bpb:
            from jaxchat.data.shards import list_shards, split_shards

            split_shards(list_shards())
        from jaxchat.checkpoint import evaluated_checkpoint, load_model

        model, tokenizer, meta = load_model(args.source, tag=args.tag, step=args.step)
        result = evaluate_base(model, tokenizer, bpb_tokens=args.bpb_tokens, device_batch_size=args.device_batch_size,
                               core_max_per_task=args.core_max_per_task, skip_core=args.skip_core,
                               skip_bpb=args.skip_bpb)
    except JaxchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    settings = {**evaluated_checkpoint(args.source, meta),
                "CORE items per task": "all" if args.core_max_per_task == -1 else args.core_max_per_task}
    if not args.skip_bpb:
        settings["bpb tokens"] = f"{args.bpb_tokens:,}"
    try:
        print(f"report section written to {write_report(args.source, result, settings)}")
    except JaxchatError as e:  # the results are printed above; say why the report has no section
        print(f"error: report not written: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
