"""Plan a run without training: ``python -m jaxchat.plan --config configs/d20.toml [--target h100-80gb]``.

For each training stage, compiles the train step (for a named GPU without one, or for this machine)
and prints what one device holds: parameters, optimizer state, the temporaries XLA allocates
(activations, gradients, scratch), the device batch and remat (chosen when the preset says
``"auto"``, else as configured, with whether it fits), FLOPs per token and the expected time at an
assumed MFU. Then the engine's prefill and decode and the eval forward. Nothing is trained or written.

    python -m jaxchat.plan --config configs/d20_24gb.toml              # the preset's own target
    python -m jaxchat.plan --model.depth=26 --target=a100-40gb --base.device_batch_size=auto
    python -m jaxchat.plan --config configs/d20.toml --target=this     # this machine's device
    python -m jaxchat.plan --config configs/d20.toml --devices=8 --mesh.fsdp=8   # 8 H100s, FSDP over all 8

With ``--devices`` (a named target) or ``mesh.fsdp`` the step compiles for a ``data × fsdp`` mesh of
that many cards (default: ``mesh.fsdp`` of them, so one unless set): parameters and optimizer state
split ``mesh.fsdp`` ways, each device taking its own rows of every batch; memory is one device's and
the expected times divide the work over all of them. ``--target=this`` plans for every device here.

Named targets (jaxchat/targets): a100-80gb, h100-80gb, a100-40gb, rtx4090-24gb, rtx4080-16gb,
rtx4070-12gb. Planning for one needs XLA's GPU compiler (``pip install -e '.[cuda12]'``), not a GPU.
Every key of ``python train.py --help`` is accepted as well.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence

import jax

from jaxchat import cli, fit, runtime, sharding, targets
from jaxchat.common import JaxchatError
from jaxchat.config import RunConfig, build, override, parse_overrides, stages_run, validate
from jaxchat.model import estimate_flops, num_params
from jaxchat.preflight import human
from jaxchat.training.build import abstract_state, build_model, build_optimizer
from jaxchat.training.horizon import model_config as recipe_model, plan as base_plan, rows_per_step

PROG = "python -m jaxchat.plan"
DEFAULT_TARGET = "h100-80gb"  # the recipe's card when neither the command line nor the preset names one
DEFAULT_MFU = 0.4  # assumed for the time estimates: nanochat's d20 reaches ~48 % on H100s


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    """The plan's own keys (the rest are ``train.py``'s)."""

    stages: str = "recipe"  # comma-separated training stages to plan; recipe: the recipe's (2025: base,mid,sft; 2026: base,sft)
    mfu: float = DEFAULT_MFU  # model FLOPs utilisation assumed for the expected times
    inference: bool = True  # also compile the engine's prefill/decode and the eval forward
    devices: int = 0  # named target: how many cards (0: mesh.fsdp of them); with --target=this, all of this machine's


def parse(argv: Sequence[str]) -> tuple[RunConfig, PlanOptions, str]:
    """(run config, plan options, target) from the command line; ``target`` "this" = this machine."""
    options = parse_overrides(list(argv))
    preset = options.pop("config", None)
    own = {key: options.pop(key) for key in [f.name for f in dataclasses.fields(PlanOptions)] if key in options}
    plan = override(PlanOptions(), own, prog=PROG)
    target = options.pop("target", None)
    if target not in (None, "this"):
        targets.check_name(target)
    cfg = validate(build(preset, options, prog=PROG))
    if not 0 < plan.mfu <= 1:
        raise JaxchatError(f"mfu={plan.mfu}: expected a fraction in (0, 1]")
    if plan.devices < 0:
        raise JaxchatError(f"devices={plan.devices}: expected a positive number of cards (0: mesh.fsdp of them)")
    if target == "this" and plan.devices:
        raise JaxchatError(f"devices={plan.devices}: --target=this plans for every device of this machine; "
                           "--devices is for a named target")
    if target != "this" and plan.devices and plan.devices % cfg.mesh.fsdp:
        raise JaxchatError(f"mesh.fsdp={cfg.mesh.fsdp}: expected a positive divisor of the {plan.devices} devices")
    training = [name for name in stages_run("all", cfg.recipe) if name in ("base", "mid", "sft")]
    if plan.stages == "recipe":
        plan = dataclasses.replace(plan, stages=",".join(training))
    for stage in plan.stages.split(","):
        if stage not in training:
            raise JaxchatError(f"stages={plan.stages!r}: expected {', '.join(training)} (the {cfg.recipe} recipe's "
                               f"training stages), comma-separated, or recipe")
    return cfg, plan, target or cfg.target or DEFAULT_TARGET


def hours(total_flops: float, peak: float | None, mfu: float) -> str:
    if not peak:
        return "unknown (no peak FLOP/s for this device)"
    seconds = total_flops / (peak * mfu)
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def stage_steps(stage: str, cfg: RunConfig, model_config) -> tuple[int | None, int, str]:
    """(optimizer steps or None when set by the data, tokens per step, how the steps were chosen)."""
    if stage == "base":
        p = base_plan(cfg, model_config)
        return p.num_steps, p.total_batch_size, p.horizon_source
    section = getattr(cfg, stage)
    tokens = rows_per_step(stage, cfg, model_config) * cfg.model.sequence_len
    if section.num_iterations > 0:
        return section.num_iterations, tokens, f"{stage}.num_iterations"
    return None, tokens, "one epoch (its length is known once the data is read)"


def run(cfg: RunConfig, options: PlanOptions, target: str) -> int:
    """Print the plan (see the module docstring)."""
    fsdp = cfg.mesh.fsdp
    if target == "this":
        machine = fit.this_machine(runtime.for_this_machine(cfg.model), fsdp=fsdp)
        peak = machine.runtime.peak_flops
        where = f"this machine: {machine.name}"
    else:
        machine = fit.for_target(target, cfg.model, devices=options.devices or fsdp, fsdp=fsdp)
        peak = targets.get(target).peak_flops
        where = f"{target} ({targets.get(target).description}), compiled without a GPU"
    devices = sharding.batch_devices(machine.mesh)
    if devices > 1:
        where = f"{devices} × {where}"
    vocab = cfg.tokenizer.vocab_size
    model_config = recipe_model(cfg, vocab)
    flops = estimate_flops(model_config)
    _, params = build_model(model_config, cfg, machine.runtime, abstract=True)
    state = abstract_state(params, build_optimizer(params, model_config, cfg, "base"))

    def size(tree) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    def held(tree) -> str:
        """A tree's bytes, and one device's share of them in the mesh's layout when it splits them."""
        if fsdp == 1:
            return f"{human(size(tree))} (float32)"
        placed = sharding.abstract_on(tree, machine.mesh)
        share = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(placed))
        return f"{human(size(tree))} (float32), {human(share)} per device (mesh.fsdp={fsdp})"

    print(f"plan for {where}")
    rows = [
        ("model", f"depth {model_config.n_layer}, width {model_config.n_embd}, {model_config.n_head} heads, "
                  f"vocab {vocab:,}, context {model_config.sequence_len}: {num_params(model_config):,} parameters"),
        ("runtime", machine.runtime.describe()),
        *([("devices", f"{devices}: data {devices // fsdp} × fsdp {fsdp} (memory below is one device's)")]
          if devices > 1 else []),
        ("memory", machine.describe_budget()),
        ("parameters", held(state.params)),
        ("optimizer state", held(state.opt_state)),
        ("FLOPs/token", f"{flops:.3e} (training: 6 × matmul params + attention)"),
        ("assumed MFU", f"{options.mfu:.0%} of {peak / 1e12:.0f} TFLOP/s" + (f" per device × {devices}" if devices > 1
                                                                          else "") if peak else "no peak known"),
    ]
    print(_table(rows))
    header = ("stage", "device batch", "remat", "temporaries", "peak", "fits", "steps × tokens", "expected time")
    lines = []
    for stage in options.stages.split(","):
        chosen = fit.fit(stage, cfg, model_config, machine)
        steps, tokens, how = stage_steps(stage, cfg, model_config)
        all_peak = peak * devices if peak else peak  # the work is split over every device
        time = (hours(flops * steps * tokens, all_peak, options.mfu) if steps else
                f"{hours(flops * 1000 * tokens, all_peak, options.mfu)} per 1,000 steps")
        lines.append((stage, f"{chosen.rows} × {chosen.seq} × {chosen.accum}" + (" (auto)" if chosen.chosen else ""),
                      "on" if chosen.remat else "off", human(chosen.memory.temporaries), human(chosen.memory.peak),
                      "yes" if chosen.fits else "NO", f"{steps:,} × {tokens:,}" if steps else how, time))
    print()
    print(_markdown(header, lines))
    if options.inference:
        memory = fit.inference_memory(machine, model_config, cfg, eval_rows=_eval_rows(cfg))
        print()
        print(_markdown(("program", "shape", "peak", "fits"), [
            ("prefill", f"1 prompt × {model_config.sequence_len}, 8 samples", human(memory["prefill"].peak),
             _fits(memory["prefill"], machine)),
            ("decode", f"8 rows, cache {model_config.sequence_len}", human(memory["decode"].peak),
             _fits(memory["decode"], machine)),
            ("eval forward", f"{_eval_rows(cfg)} × {model_config.sequence_len}", human(memory["eval"].peak),
             _fits(memory["eval"], machine))]))
    return 0


def _eval_rows(cfg: RunConfig) -> int:
    rows = cfg.base.device_batch_size
    return rows if rows != "auto" else 8


def _fits(memory, machine) -> str:
    return "yes" if machine.budget is None or memory.peak <= machine.budget else "NO"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {text}" for label, text in rows)


def _markdown(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if cli.wants_help(argv):
        print(cli.help_text(__doc__, PlanOptions(), extra=[("config", "(none)  a TOML preset (configs/)")]))
        print("  ... and every key of `python train.py --help` (target = the GPU to plan for; 'this' = this machine)")
        return 0

    def plan() -> int:
        cfg, options, target = parse(argv)
        if target != "this":
            targets.compile_only_process()  # before JAX starts
        return run(cfg, options, target)

    return cli.report_errors(plan)


if __name__ == "__main__":
    sys.exit(main())
