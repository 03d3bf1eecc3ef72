"""Fit a training stage to a GPU's memory, from the compiled program rather than a formula.

XLA's buffer assignment knows exactly what a jitted step needs (parameters, optimizer state, the
activations the backward pass keeps, scratch), including what rematerialisation saves. This module
compiles a stage's train step, for this machine's device or for a named GPU without one
(``jaxchat.targets``), and reads ``memory_analysis()``:

- ``fit(stage, cfg, model_config, machine)``: when ``<stage>.device_batch_size`` or ``model.remat``
  is ``"auto"``, the largest device batch whose step fits in ``SAFETY`` of the memory JAX may use,
  remat turned on only when no batch fits without it; the total batch is kept by accumulation.
  A step that fits at no batch is refused before any work, with the numbers.
- ``inference_memory``: the engine's KV-cache prefill and decode step, and the eval forward.

The training stages call ``fit`` for this machine (``Stage.fit_to_device``); ``python -m jaxchat.plan``
and the GPU compile tests call it for named targets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxchat import runtime as runtimes
from jaxchat import sharding, targets
from jaxchat.common import JaxchatError
from jaxchat.config import ModelSection, RunConfig
from jaxchat.model import GPTConfig
from jaxchat.preflight import TRAINING_STAGES, human, memory_available
from jaxchat.runtime import Runtime
from jaxchat.training.build import abstract_state, build_model, build_optimizer
from jaxchat.training.horizon import rows_per_step
from jaxchat.training.step import make_train_step

# A program fits when its peak is at most this share of the memory JAX may use: XLA's figures are
# exact for its buffers; the rest covers allocator fragmentation (and matches XLA's own 95 % slop).
SAFETY = 0.95
# XLA's GPU compiler rematerialises on its own when a program exceeds ~80 % of the device's memory
# (a silent recompute: d20 at 32 × 2048 needs 69.3 GiB, compiled for an 80 GB card it shows 59.3).
# Measured with that limit lifted, a peak is what the program needs, not what XLA squeezed it into.
MEASURE_OPTIONS = {"xla_gpu_memory_limit_slop_factor": 10_000}


@dataclasses.dataclass(frozen=True)
class Memory:
    """XLA's memory figures for one compiled program on one device (bytes)."""

    arguments: int  # inputs: parameters, optimizer state, the batch
    outputs: int
    aliased: int  # outputs written over donated inputs (the train state)
    temporaries: int  # what the program allocates while it runs: activations, gradients, scratch
    peak: int  # the buffer assignment's peak (arguments + outputs − aliased + temporaries)

    @classmethod
    def of(cls, compiled: Any) -> Memory:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        peak = getattr(m, "peak_memory_in_bytes", 0) or total  # older jaxlibs and some backends: the sum
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes,
                   max(peak, total))


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where programs compile (a mesh of real or compile-only devices) and what they may use."""

    name: str  # a target's name, or this machine's device kind
    mesh: Mesh
    runtime: Runtime  # how the model runs there (the GPU form for a target)
    limit: int | None  # bytes JAX may use on one device; None when unknown
    where: str  # how ``limit`` was found

    @property
    def compiler_options(self) -> dict[str, Any]:
        """How programs are compiled to measure them (see MEASURE_OPTIONS; GPU only)."""
        return MEASURE_OPTIONS if self.runtime.backend == "gpu" else {}

    @property
    def budget(self) -> int | None:
        """What a program may use: ``SAFETY`` of the limit."""
        return None if self.limit is None else int(self.limit * SAFETY)

    def describe_budget(self) -> str:
        if self.limit is None:
            return "memory unknown"
        return f"{human(self.budget)} usable ({SAFETY:.0%} of {human(self.limit)}, {self.where})"


def for_target(name: str, model: Any = None, *, devices: int = 1, fsdp: int = 1) -> Machine:
    """``devices`` compile-only ``name`` GPUs (``jaxchat.targets``) in a ``data × fsdp`` mesh (``mesh.fsdp`` =
    ``fsdp``), running the model as a GPU run would; the memory is one device's."""
    target = targets.get(name)
    plan = runtimes.resolve(model or ModelSection(), "gpu", target.description)
    limit = int(target.memory * runtimes.GPU_MEMORY_FRACTION)
    return Machine(name=target.name, mesh=targets.mesh(target, devices, fsdp), runtime=plan, limit=limit,
                   where=f"{runtimes.GPU_MEMORY_FRACTION:.0%} of the {target.name}'s {human(target.memory)}")


def this_machine(plan: Runtime, available: tuple[int | None, str] | None = None, fsdp: int = 1) -> Machine:
    """Every device of the run (``mesh.fsdp`` = ``fsdp``) under ``plan``; ``available`` (bytes, where)
    overrides what they report."""
    limit, where = available if available is not None else memory_available(plan)
    return Machine(name=jax.devices()[0].device_kind, mesh=sharding.make_mesh(fsdp), runtime=plan, limit=limit,
                   where=where)


# ---- the programs ------------------------------------------------------------------------------


def _placed(tree: Any, mesh: Mesh, spec: Any = None) -> Any:
    """ShapeDtypeStructs of ``tree`` placed on ``mesh`` (replicated, or ``spec``'s sharding)."""
    where = spec if spec is not None else sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), tree)


def train_step_memory(machine: Machine, model_config: GPTConfig, cfg: RunConfig, stage: str, *, rows: int,
                      seq: int, accum: int, remat: bool) -> Memory:
    """Compile ``stage``'s train step for micro-batches of ``rows`` × ``seq`` tokens on each device
    (``accum`` of them); the memory is one device's."""
    return _train_step_memory(machine, model_config, cfg, stage, rows, seq, accum, remat)


@functools.lru_cache(maxsize=256)  # the search and the plan ask for the same shapes more than once
def _train_step_memory(machine: Machine, model_config: GPTConfig, cfg: RunConfig, stage: str, rows: int, seq: int,
                       accum: int, remat: bool) -> Memory:
    plan = dataclasses.replace(machine.runtime, remat=remat)
    graphdef, params = build_model(model_config, cfg, plan, abstract=True)
    tx = build_optimizer(params, model_config, cfg, stage, runtime=plan)
    mesh = machine.mesh
    state = sharding.abstract_on(abstract_state(params, tx), mesh)
    global_rows = rows * sharding.batch_devices(mesh)
    batch = _placed({key: jax.ShapeDtypeStruct((accum, global_rows, seq), jnp.int32) for key in ("inputs", "targets")},
                    mesh, sharding.batch_sharding(mesh))
    lrm = _placed(jax.ShapeDtypeStruct((), jnp.float32), mesh)
    step = make_train_step(graphdef, tx, mesh=mesh, state_sharding=sharding.state_shardings(state, mesh))
    lowered = step.lower(state, batch, lrm)
    return Memory.of(lowered.compile(compiler_options=machine.compiler_options))


def inference_memory(machine: Machine, model_config: GPTConfig, cfg: RunConfig, *, eval_rows: int,
                     samples: int = 8) -> dict[str, Memory]:
    """Compile the engine's prefill (a full-context prompt, ``samples`` rows) and decode step, and the
    eval forward (val bpb on ``eval_rows`` × context): {"prefill", "decode", "eval"} → Memory."""
    from jaxchat.engine.engine import _device_functions  # lazy: the engine's jitted pair
    from jaxchat.eval.bpb import _bpb_step

    mesh, seq = machine.mesh, model_config.sequence_len
    graphdef, params = build_model(model_config, cfg, machine.runtime, abstract=True)
    params = _placed(params, mesh)
    prefill, step = _device_functions(graphdef, model_config, jnp.dtype(machine.runtime.dtype))
    scalar = functools.partial(jax.ShapeDtypeStruct, ())
    key = _placed(jax.eval_shape(lambda: jax.random.key(0)), mesh)
    args = (_placed(jax.ShapeDtypeStruct((1, seq), jnp.int32), mesh), _placed(scalar(jnp.int32), mesh), key,
            _placed(scalar(jnp.float32), mesh))
    static = dict(num_samples=samples, cache_len=seq, top_k=50, greedy=False)
    options = machine.compiler_options
    out = {"prefill": Memory.of(prefill.lower(params, *args, **static).compile(compiler_options=options))}
    _, cache, _ = jax.eval_shape(functools.partial(prefill, **static), params, *args)
    tokens = _placed(jax.ShapeDtypeStruct((samples,), jnp.int32), mesh)
    out["decode"] = Memory.of(step.lower(params, _placed(cache, mesh), tokens, key, args[3], top_k=50,
                                         greedy=False).compile(compiler_options=options))
    totals = _placed((scalar(jnp.float32), scalar(jnp.int32)), mesh)
    rows = _placed(jax.ShapeDtypeStruct((eval_rows, seq), jnp.int32), mesh)
    token_bytes = _placed(jax.ShapeDtypeStruct((model_config.vocab_size,), jnp.int32), mesh)
    out["eval"] = Memory.of(_bpb_step.lower(graphdef, params, totals, rows, rows, token_bytes)
                            .compile(compiler_options=options))
    return out


# ---- the choice --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fit:
    """A stage's device batch and remat on a machine, and what its compiled step needs."""

    stage: str
    rows: int  # per device and micro-batch
    seq: int
    accum: int
    devices: int  # that split each micro-batch
    remat: bool
    memory: Memory
    machine: str
    budget: int | None
    chosen: bool  # True when decided here ("auto"), False when the config fixed both

    @property
    def fits(self) -> bool:
        return self.budget is None or self.memory.peak <= self.budget

    def describe(self) -> str:
        how = "chosen to fit" if self.chosen else "as configured"
        spread = f" × {self.devices} devices" if self.devices > 1 else ""
        return (f"{self.rows} rows × {self.seq} × {self.accum} micro-batches{spread}, remat {'on' if self.remat else 'off'} "
                f"({how}): compiled step peaks at {human(self.memory.peak)}"
                + ("" if self.budget is None else f" of {human(self.budget)} usable on {self.machine}"))


def row_candidates(total_rows: int, devices: int = 1) -> list[int]:
    """Rows per device and micro-batch that make up ``total_rows`` a step exactly on ``devices``."""
    return [r for r in range(1, total_rows // devices + 1) if total_rows % (r * devices) == 0]


def largest_fitting(candidates: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of ``candidates`` (ascending) for which ``fits`` holds, by bisection: memory grows
    with the rows, so each probe halves the range (a compile each)."""
    lo, hi, best = 0, len(candidates) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            best, lo = candidates[mid], mid + 1
        else:
            hi = mid - 1
    return best


def stage_shape(stage: str, cfg: RunConfig, model_config: GPTConfig,
                source_meta: dict | None = None) -> tuple[int | str, int, int]:
    """(rows setting, total rows per optimizer step, longest row) of a training stage's config
    (``source_meta``: the checkpoint it starts from, for an SFT batch inherited from it)."""
    if stage not in TRAINING_STAGES:
        raise JaxchatError(f"{stage}: expected a training stage ({', '.join(TRAINING_STAGES)})")
    total = rows_per_step(stage, cfg, model_config, source_meta)
    return getattr(cfg, stage).device_batch_size, total, cfg.model.sequence_len  # SFT rows are at most the context


def micro_batches(stage: str, rows_per_step: int, rows: int, devices: int, what: str) -> int:
    """Micro-batches per step: ``rows_per_step`` ÷ (``rows`` per device × ``devices``). JaxchatError
    naming the numbers when it does not divide (``what``: the setting behind ``rows_per_step``)."""
    per_micro_batch = rows * devices
    if rows_per_step % per_micro_batch:
        raise JaxchatError(
            f"{stage}: {what} is not a multiple of {rows} rows ({stage}.device_batch_size, per device) "
            f"× {devices} device{'s' if devices > 1 else ''} = {per_micro_batch} rows; change "
            f"{stage}.device_batch_size or the batch")
    return rows_per_step // per_micro_batch


def fit(stage: str, cfg: RunConfig, model_config: GPTConfig, machine: Machine,
        measure: Callable[[int, bool], Memory] | None = None, source_meta: dict | None = None) -> Fit:
    """``stage``'s device batch and remat on ``machine`` (see the module docstring). ``measure(rows,
    remat)`` defaults to compiling the step (tests inject their own)."""
    setting, total, seq = stage_shape(stage, cfg, model_config, source_meta)
    remat_options = (False, True) if cfg.model.remat == "auto" else (cfg.model.remat,)
    devices = sharding.batch_devices(machine.mesh)
    if measure is None:
        def measure(rows: int, remat: bool) -> Memory:
            return train_step_memory(machine, model_config, cfg, stage, rows=rows, seq=seq,
                                     accum=total // (rows * devices), remat=remat)
    measure = functools.lru_cache(maxsize=None)(measure)
    budget = machine.budget
    if setting != "auto":
        micro_batches(stage, total, setting, devices, f"{total} rows per step")
    candidates = row_candidates(total, devices) if setting == "auto" else [setting]
    if not candidates:
        raise JaxchatError(f"{stage}: {total} rows per step cannot be split over {devices} devices")

    def result(rows: int, remat: bool, chosen: bool) -> Fit:
        return Fit(stage, rows, seq, total // (rows * devices), devices, remat, measure(rows, remat), machine.name,
                   budget, chosen)

    if setting != "auto" and len(remat_options) == 1:
        return result(setting, remat_options[0], chosen=False)
    if budget is None:  # nothing to fit against: the configured batch (or the largest), remat as set or off
        return result(candidates[-1], remat_options[0], chosen=True)
    for remat in remat_options:
        rows = largest_fitting(candidates, lambda r: measure(r, remat).peak <= budget)
        if rows is not None:
            return result(rows, remat, chosen=True)
    smallest = measure(candidates[0], remat_options[-1])
    tried = f"{candidates[0]} row{'s' if candidates[0] > 1 else ''} × {seq} tokens" + (
        " with remat" if remat_options[-1] else " without remat")
    raise JaxchatError(
        f"{stage}: depth {model_config.n_layer} does not fit {machine.name} even at {tried}: the compiled step "
        f"peaks at {human(smallest.peak)} (inputs {human(smallest.arguments)}: parameters, optimizer state, "
        f"batch; temporaries {human(smallest.temporaries)}) and {machine.describe_budget()}; lower model.depth "
        f"or model.sequence_len" + ("" if remat_options[-1] else ", or set model.remat=auto"))


