"""Base-model evaluation: val bpb on the held-out shard and the CORE metric (docs/DESIGN.md §5, §9).

Usage::

    python -m jaxchat.eval.base                                # latest base checkpoint, full CORE
    python -m jaxchat.eval.base --source=base --tag=d20 --step=21400 --core_max_per_task=500
    python -m jaxchat.eval.base --source=mid --skip_core --bpb_tokens=1048576

``--source`` is the stage whose checkpoint is evaluated (a stage with checkpoints: base, mid, sft);
``--tag=""`` and ``--step=-1`` pick the latest tag and step. ``--core_max_per_task=-1`` runs every
CORE item; ``--bpb_tokens`` val tokens are scored in batches of ``--device_batch_size`` rows.
Prints a table and appends a section to the report (``jaxchat.report``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxchat import cli, sharding, stages
from jaxchat.checkpoint import evaluated_checkpoint
from jaxchat.common import JaxchatError
from jaxchat.data.pretrain import val_batches
from jaxchat.data.shards import list_shards, split_shards
from jaxchat.eval.bpb import evaluate_bpb
from jaxchat.eval.core import evaluate_core, load_bundle
from jaxchat.model import load as model_load
from jaxchat.model import split_params
from jaxchat.report import write_section

PROG = "python -m jaxchat.eval.base"
DEFAULT_BPB_TOKENS = 20 * 524_288  # nanochat: 20 batches of 524,288 tokens
DEFAULT_DEVICE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class BaseEvalConfig:
    """What ``python -m jaxchat.eval.base`` evaluates, and how."""

    source: str = "base"  # the stage whose checkpoint is evaluated (a stage with checkpoints)
    tag: str = ""  # model tag, e.g. d20; "" = the latest written
    step: int = -1  # checkpoint step; -1 = the last
    core_max_per_task: int = -1  # CORE items per task; -1 = all
    bpb_tokens: int = DEFAULT_BPB_TOKENS  # val tokens for bpb
    device_batch_size: int = DEFAULT_DEVICE_BATCH  # rows per bpb batch
    skip_core: bool = False  # only val bpb
    skip_bpb: bool = False  # only CORE


def validate(config: BaseEvalConfig) -> BaseEvalConfig:
    """``config`` if every value is usable; a one-line JaxchatError naming the key otherwise."""
    stages.check_checkpointed(config.source, "--source")
    if config.step < -1:
        raise JaxchatError(f"--step={config.step}: expected a checkpoint step >= 0, or -1 for the last")
    if config.core_max_per_task == 0 or config.core_max_per_task < -1:
        raise JaxchatError(f"--core_max_per_task={config.core_max_per_task}: expected -1 (all) or a positive number")
    for key in ("bpb_tokens", "device_batch_size"):
        if getattr(config, key) < 1:
            raise JaxchatError(f"--{key}={getattr(config, key)}: expected a positive number")
    if config.skip_core and config.skip_bpb:
        raise JaxchatError("--skip_core and --skip_bpb together leave nothing to evaluate")
    return config


def val_bpb(graphdef: Any, params: Any, tokenizer: Any, *, seq_len: int, bpb_tokens: int = DEFAULT_BPB_TOKENS,
            device_batch_size: int = DEFAULT_DEVICE_BATCH, data_dir: str | Path | None = None) -> float:
    """Bits per byte over the first ``bpb_tokens`` target tokens of the validation shard.

    The val shard is the last ``shard_*.parquet`` of ``data_dir`` (default
    ``$JAXCHAT_HOME/base_data``), streamed by the pretraining pipeline in rows of ``seq_len``.
    """
    if bpb_tokens < 1 or device_batch_size < 1:
        raise JaxchatError(f"bpb_tokens={bpb_tokens} and device_batch_size={device_batch_size}: expected both > 0")
    _, val_paths = split_shards(list_shards(data_dir))
    mesh = sharding.make_mesh()  # every device takes device_batch_size rows of each batch
    rows = device_batch_size * sharding.batch_devices(mesh)
    num_batches = max(1, bpb_tokens // (rows * seq_len))
    batches = val_batches(val_paths, tokenizer, rows=rows, seq_len=seq_len, num_batches=num_batches)
    return evaluate_bpb(graphdef, params, batches, tokenizer.token_bytes, mesh=mesh)


def evaluate_base(model: Any, tokenizer: Any, *, bpb_tokens: int = DEFAULT_BPB_TOKENS,
                  device_batch_size: int = DEFAULT_DEVICE_BATCH, core_max_per_task: int = -1,
                  skip_core: bool = False, skip_bpb: bool = False, data_dir: str | Path | None = None,
                  bundle_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Val bpb and CORE of ``model``: ``{"val_bpb": float|None, "core": float|None, "tasks": {...}}``.

    ``tasks`` maps each CORE task label to ``{"accuracy", "centered"}`` (empty with ``skip_core``).
    """
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
                             max_per_task=core_max_per_task, seq_len=seq_len, progress=progress,
                             mesh=sharding.make_mesh())
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
    metrics = {}
    if result.get("core") is not None:
        metrics["CORE"] = result["core"]
    if result.get("val_bpb") is not None:
        metrics["val bpb"] = result["val_bpb"]
    return str(write_section(f"{stage}-eval", f"Base evaluation ({stage} checkpoint)",
                             format_markdown(result, settings), metrics=metrics))


def run(config: BaseEvalConfig) -> dict[str, Any]:
    """Load the checkpoint, evaluate it, print the table, write the report section; the result
    (``evaluate_base``'s dict). Bad settings and missing data are refused before the model loads."""
    validate(config)
    if not config.skip_core:
        load_bundle()
    if not config.skip_bpb:
        split_shards(list_shards())
    model, tokenizer, meta = model_load.load_model(config.source, tag=config.tag or None,
                                                   step=None if config.step == -1 else config.step)
    result = evaluate_base(model, tokenizer, bpb_tokens=config.bpb_tokens, device_batch_size=config.device_batch_size,
                           core_max_per_task=config.core_max_per_task, skip_core=config.skip_core,
                           skip_bpb=config.skip_bpb)
    print(format_table(result))
    settings = {**evaluated_checkpoint(config.source, meta),
                "CORE items per task": "all" if config.core_max_per_task == -1 else config.core_max_per_task}
    if not config.skip_bpb:
        settings["bpb tokens"] = f"{config.bpb_tokens:,}"
    try:
        print(f"report section written to {write_report(config.source, result, settings)}")
    except JaxchatError as e:  # the results are printed above; say why the report has no section
        raise JaxchatError(f"report not written: {e}") from e
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (see the module docstring); the exit status (2 with one ``error:`` line)."""
    return cli.main(run, BaseEvalConfig(), argv, prog=PROG, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
